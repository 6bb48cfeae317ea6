"""Checkpoint readers: torch.save zip (restricted unpickler), safetensors, HF folders and HF cache."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from conftest import fixture_path
from f3d_jax.weights.constructor import (
    checkpoint_constructor,
    hf_config_constructor,
    official_load_model_rewrite,
    with_defaults,
)
from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.safetensors_io import read_hf_folder, read_safetensors, resolve_hf_repo
from f3d_jax.weights.torch_pickle import Namespace, read_pth

from .conftest import HF_CASES, MODEL_CASES

_BLOCK = re.compile(r"^(enc_blocks|dec_blocks2?)\.(\d+)\.")


# ---- official fixture files ----------------------------------------------------------------------


def _expected_croco_keys(case_kwargs: dict, manifest_name: str) -> list[str]:
    """Key list of a tiny CroCo: the released manifest's keys with the block lists cut to depth."""
    manifest = json.loads(fixture_path("networks", "manifests", f"{manifest_name}.json").read_text())
    depth = {"enc_blocks": case_kwargs["enc_depth"], "dec_blocks": case_kwargs["dec_depth"]}
    keys = []
    for entry in manifest["state_dict"]:
        m = _BLOCK.match(entry["key"])
        if m is None or int(m.group(2)) < depth[m.group(1)]:
            keys.append(entry["key"])
    return keys


@pytest.mark.parametrize("case", MODEL_CASES)
def test_read_pth_keys_shapes_dtypes(case, pth_file, case_meta):
    meta = case_meta(case)
    ckpt = read_pth(pth_file(case))
    sd = ckpt["model"]
    assert isinstance(sd, OrderedDict)
    if "pth_state_dict_keys" in meta:
        assert list(sd) == meta["pth_state_dict_keys"]  # same keys, same order as state_dict()
    else:
        manifest = "CroCo" if meta["checkpoint_format"] == "args" else "CroCo_V2_ViTBase_SmallDecoder"
        assert list(sd) == _expected_croco_keys(meta["constructor_kwargs"], manifest)
    for k, v in sd.items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32, k
        assert v.flags.c_contiguous and not v.flags.writeable, k  # read-only views of their storage
        assert np.isfinite(v).all(), k

    # Shapes implied by the constructor (tiny widths): the reader gets every dimension right.
    cls, kw = checkpoint_constructor(ckpt, pth_file(case))
    kw = with_defaults(cls, kw)
    p, ce, cd = kw["patch_size"], kw["enc_embed_dim"], kw["dec_embed_dim"]
    assert sd["patch_embed.proj.weight"].shape == (ce, 3, p, p)
    assert sd["mask_token"].shape == (1, 1, cd)
    assert sd["enc_blocks.0.attn.qkv.weight"].shape == (3 * ce, ce)
    assert sd["enc_blocks.0.mlp.fc1.weight"].shape == (4 * ce, ce)
    assert sd["decoder_embed.weight"].shape == (cd, ce)
    assert sd["dec_blocks.0.cross_attn.projq.weight"].shape == (cd, cd)
    if cls == "CroCoNet":
        assert sd["prediction_head.weight"].shape == (p * p * 3, cd)
        if kw["pos_embed"] == "cosine":
            n = (kw["img_size"] // p) ** 2
            assert sd["enc_pos_embed"].shape == (n, ce) and sd["dec_pos_embed"].shape == (n, cd)
    elif kw["head_type"] == "linear":
        assert sd["downstream_head1.proj.weight"].shape == (4 * p * p, cd)
    # dec_blocks2 is a separate, different copy (swapped weights would go unnoticed otherwise).
    if cls != "CroCoNet":
        assert not np.array_equal(sd["dec_blocks.0.attn.qkv.weight"], sd["dec_blocks2.0.attn.qkv.weight"])


def test_read_pth_containers(pth_file, case_meta):
    v1 = read_pth(pth_file("croco_v1"))
    assert set(v1) == {"model", "args"}
    assert isinstance(v1["args"], Namespace)
    assert v1["args"].to_dict() == {"model": case_meta("croco_v1")["constructor"]}
    v2 = read_pth(pth_file("croco_v2"))
    assert set(v2) == {"model", "croco_kwargs"}
    assert v2["croco_kwargs"] == case_meta("croco_v2")["constructor_kwargs"]
    m = read_pth(pth_file("mast3r"))
    assert m["args"].model == case_meta("mast3r")["constructor"]


@pytest.mark.parametrize("case", ["dust3r_dpt", "mast3r"])
def test_read_pth_shared_tensors(case, pth_file):
    sd = read_pth(pth_file(case))["model"]
    for head in ("downstream_head1", "downstream_head2"):
        for i in range(4):
            a = sd[f"{head}.dpt.scratch.layer{i + 1}_rn.weight"]
            b = sd[f"{head}.dpt.scratch.layer_rn.{i}.weight"]
            # One storage on disk: two read-only views of one buffer (no copy per name).
            assert np.array_equal(a, b) and a is not b and np.shares_memory(a, b)
            assert not a.flags.writeable and not b.flags.writeable


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_folder_matches_pth_bit_for_bit(case, pth_file, hf_folder, case_meta):
    meta = case_meta(case)
    tensors, metadata = read_safetensors(hf_folder(case) / "model.safetensors")
    assert sorted(tensors) == sorted(meta["hf_safetensors_keys"])
    assert metadata == meta["hf_safetensors_metadata"]

    config, sd = read_hf_folder(hf_folder(case))
    pth = read_pth(pth_file(case))
    assert set(sd) == set(meta["pth_state_dict_keys"]) == set(pth["model"])
    for k, v in pth["model"].items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        assert sd[k].tobytes() == v.tobytes(), k

    # config.json (with its `Infinity` tokens) describes the model the official load_model builds.
    assert config["depth_mode"][1] == -np.inf and config["conf_mode"][2] == np.inf
    hf_cls, hf_kw = hf_config_constructor(config, hf_folder(case) / "config.json")
    cls, kw = checkpoint_constructor(pth, pth_file(case))
    assert hf_cls == cls
    assert with_defaults(hf_cls, hf_kw) == with_defaults(cls, official_load_model_rewrite(cls, kw))


# ---- hand-made torch.save archives (no torch needed) ---------------------------------------------


class _P:
    """Writes protocol-2 pickle opcodes, enough to reproduce what torch.save emits."""

    def __init__(self) -> None:
        self.b = bytearray(b"\x80\x02")

    def raw(self, s: bytes) -> _P:
        self.b += s
        return self

    def glob(self, module: str, name: str) -> _P:
        return self.raw(b"c" + f"{module}\n{name}\n".encode())

    def str(self, s: str) -> _P:
        e = s.encode()
        return self.raw(b"X" + struct.pack("<I", len(e)) + e)

    def int(self, v: int) -> _P:
        return self.raw(b"J" + struct.pack("<i", v))

    def ints(self, vs: tuple[int, ...]) -> _P:
        self.raw(b"(")
        for v in vs:
            self.int(v)
        return self.raw(b"t")

    def tensor(self, storage: str, key: str, numel: int, offset: int, size: tuple, stride: tuple) -> _P:
        self.glob("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        self.raw(b"(").str("storage").glob("torch", storage).str(key).str("cpu").int(numel).raw(b"tQ")
        self.int(offset).ints(size).ints(stride).raw(b"\x89")  # requires_grad=False
        self.glob("collections", "OrderedDict").raw(b")R")  # backward_hooks
        return self.raw(b"tR")

    def done(self) -> bytes:
        self.raw(b".")
        return bytes(self.b)


def _state_dict_pickle(tensors: list[tuple[str, tuple]]) -> bytes:
    """`{'model': OrderedDict(name=tensor, ...)}` with tensors given as _P.tensor arguments."""
    p = _P().raw(b"}(").str("model").glob("collections", "OrderedDict").raw(b")R(")
    for name, args in tensors:
        p.str(name).tensor(*args)
    return p.raw(b"uu").done()


def _write_archive(path: Path, pkl: bytes, records: dict[str, bytes], byteorder: str | None = "little") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        z.writestr("archive/version", "3\n")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def test_handmade_strided_offset_shared_and_dtypes(tmp_path):
    base = np.arange(24, dtype="<f4")
    bf = np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16)
    longs = np.array([7, -8, 1 << 40], dtype="<i8")
    pkl = _state_dict_pickle(
        [
            ("plain", ("FloatStorage", "0", 24, 0, (4, 6), (6, 1))),
            ("transposed", ("FloatStorage", "0", 24, 0, (6, 4), (1, 6))),  # shares record 0
            ("window", ("FloatStorage", "0", 24, 5, (2, 3), (6, 2))),  # offset + step 2
            ("scalar", ("FloatStorage", "0", 24, 23, (), ())),
            ("bf16", ("BFloat16Storage", "1", 3, 0, (3,), (1,))),
            ("long", ("LongStorage", "2", 3, 0, (3,), (1,))),
            ("empty", ("FloatStorage", "0", 24, 0, (0, 5), (5, 1))),
        ]
    )
    path = _write_archive(
        tmp_path / "m.pth", pkl, {"0": base.tobytes(), "1": bf.tobytes(), "2": longs.tobytes()}
    )
    sd = read_pth(path)["model"]
    grid = base.reshape(4, 6)
    np.testing.assert_array_equal(sd["plain"], grid)
    np.testing.assert_array_equal(sd["transposed"], grid.T)
    # Views of record 0 share its one buffer; none can be written through.
    assert np.shares_memory(sd["transposed"], sd["plain"]) and np.shares_memory(sd["window"], sd["plain"])
    assert not any(a.flags.writeable for a in sd.values())
    np.testing.assert_array_equal(sd["window"], [[5, 7, 9], [11, 13, 15]])
    assert sd["scalar"].shape == () and sd["scalar"] == 23
    assert sd["bf16"].dtype == ml_dtypes.bfloat16 and sd["bf16"].tolist() == [1.5, -2.0, 3.25]
    assert sd["long"].dtype == np.int64 and sd["long"].tolist() == [7, -8, 1 << 40]
    assert sd["empty"].shape == (0, 5)


def test_handmade_big_endian(tmp_path):
    vals = np.array([1.0, -2.5, 3e-8], dtype=">f4")
    pkl = _state_dict_pickle([("w", ("FloatStorage", "0", 3, 0, (3,), (1,)))])
    path = _write_archive(tmp_path / "be.pth", pkl, {"0": vals.tobytes()}, byteorder="big")
    w = read_pth(path)["model"]["w"]
    assert w.dtype == np.float32 and w.tolist() == vals.astype("<f4").tolist()


def test_handmade_namespace_and_python_values(tmp_path):
    # argparse.Namespace rebuilt by NEWOBJ + BUILD, numpy scalars and bytes as protocol 2 writes them.
    ns_state = pickle.dumps({"lr": 1e-4, "model": "CroCoNet()", "best": np.float64(0.25), "tag": b"ab", "s": {1}},
                            protocol=2)
    body = ns_state[2:-1]  # the dict without PROTO/STOP
    pkl = _P().raw(b"}(").str("args").glob("argparse", "Namespace").raw(b")\x81").raw(body).raw(b"b")
    pkl = pkl.str("epoch").int(3).raw(b"u").done()
    path = _write_archive(tmp_path / "ns.pth", pkl, {})
    ckpt = read_pth(path)
    assert ckpt["epoch"] == 3
    args = ckpt["args"]
    assert isinstance(args, Namespace) and args.model == "CroCoNet()"
    assert args.to_dict() == {"lr": 1e-4, "model": "CroCoNet()", "best": 0.25, "tag": b"ab", "s": {1}}


# ---- security: nothing in the pickle ever runs -----------------------------------------------


class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _marker_cmd(marker: Path) -> str:
    return f"touch {marker}"


@pytest.mark.parametrize(
    "make, global_name",
    [
        (lambda m: _Evil(os.system, _marker_cmd(m)), f"{os.system.__module__}.system"),
        (lambda m: _Evil(eval, f"open({str(m)!r}, 'w').close()"), "builtins.eval"),
        (lambda m: _Evil(exec, f"open({str(m)!r}, 'w').close()"), "builtins.exec"),
        (lambda m: _Evil(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
        (lambda m: _Evil(shutil.rmtree, str(m.parent)), "shutil.rmtree"),
    ],
    ids=["os.system", "eval", "exec", "Popen", "rmtree"],
)
def test_malicious_global_is_refused_and_nothing_runs(tmp_path, make, global_name):
    marker = tmp_path / "pwned"
    # Hidden after a legitimate state dict, like a poisoned real checkpoint.
    payload = {"model": OrderedDict(), "args": make(marker)}
    path = _write_archive(tmp_path / "evil.pth", pickle.dumps(payload, protocol=2), {})
    with pytest.raises(CheckpointError) as e:
        read_pth(path)
    msg = str(e.value)
    assert "evil.pth" in msg and f"'{global_name}'" in msg and "nothing was executed" in msg
    assert not marker.exists()
    assert path.exists()  # rmtree did not run either


def test_malicious_global_protocol_4_stack_global(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_archive(tmp_path / "evil4.pth", pickle.dumps(_Evil(os.system, _marker_cmd(marker)), protocol=4), {})
    with pytest.raises(CheckpointError, match=r"system"):
        read_pth(path)
    assert not marker.exists()


def test_fake_storage_class_refused(tmp_path):
    pkl = _state_dict_pickle([("w", ("UntypedStorage_os_system", "0", 3, 0, (3,), (1,)))])
    path = _write_archive(tmp_path / "s.pth", pkl, {"0": bytes(12)})
    with pytest.raises(CheckpointError, match=r"s\.pth: .*'torch\.UntypedStorage_os_system'"):
        read_pth(path)


# ---- damaged and foreign files ---------------------------------------------------------------


def test_truncated_pth(tmp_path, pth_file):
    data = pth_file("croco_v1").read_bytes()
    for n in (len(data) // 2, 4096, 100):
        bad = tmp_path / f"trunc{n}.pth"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=rf"trunc{n}\.pth: truncated or corrupt zip"):
            read_pth(bad)


def test_corrupted_record_crc(tmp_path, pth_file):
    src = pth_file("croco_v1")
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("checkpoint/data/3")
    data = bytearray(src.read_bytes())
    # The local header's extra field (torch pads it for alignment) differs from the central one.
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 2] ^= 0xFF
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped\.pth: record 'checkpoint/data/3' cannot be read"):
        read_pth(bad)


def test_missing_and_short_records(tmp_path):
    pkl = _state_dict_pickle([("w", ("FloatStorage", "0", 6, 0, (2, 3), (3, 1)))])
    with pytest.raises(CheckpointError, match=r"nodata\.pth: record 'archive/data/0' is missing"):
        read_pth(_write_archive(tmp_path / "nodata.pth", pkl, {}))
    with pytest.raises(CheckpointError, match=r"short\.pth: record 'archive/data/0' holds 20 bytes .* needs 24"):
        read_pth(_write_archive(tmp_path / "short.pth", pkl, {"0": bytes(20)}))
    big = _state_dict_pickle([("w", ("FloatStorage", "0", 6, 2, (2, 3), (3, 1)))])  # offset 2: runs past the end
    with pytest.raises(CheckpointError, match=r"over\.pth: tensor of shape \(2, 3\) .* does not fit"):
        read_pth(_write_archive(tmp_path / "over.pth", big, {"0": bytes(24)}))


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("something/readme.txt", "hi")
    with pytest.raises(CheckpointError, match=r"other\.pth: zip archive is not a torch\.save checkpoint: no data\.pkl"):
        read_pth(path)


def test_foreign_and_empty_files(tmp_path, hf_folder):
    png = tmp_path / "photo.pth"
    shutil.copyfile(fixture_path("networks", "image_preprocessing", "photos", "Chateau1.png"), png)
    with pytest.raises(CheckpointError, match=r"photo\.pth: not a PyTorch checkpoint: this is a PNG image"):
        read_pth(png)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: the file is empty"):
        read_pth(empty)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a PyTorch checkpoint: this is a safetensors"):
        read_pth(hf_folder("dust3r_linear") / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"nothere\.pth: no such file"):
        read_pth(tmp_path / "nothere.pth")
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
    with pytest.raises(CheckpointError, match=r"old\.pth: .*legacy \(pre-1\.6, non-zip\) torch\.save"):
        read_pth(legacy)
    bare = tmp_path / "bare.pth"
    bare.write_bytes(pickle.dumps({"model": {}}, protocol=4))
    with pytest.raises(CheckpointError, match=r"bare\.pth: .*bare pickle"):
        read_pth(bare)
    xz = tmp_path / "checkpoint.pth.xz"
    shutil.copyfile(fixture_path("networks", "croco_v1", "checkpoint.pth.xz"), xz)
    with pytest.raises(CheckpointError, match=r"xz-compressed"):
        read_pth(xz)


def test_truncated_and_foreign_safetensors(tmp_path, hf_folder, pth_file):
    data = (hf_folder("dust3r_linear") / "model.safetensors").read_bytes()
    for n in (len(data) - 1, len(data) // 2, 200, 5):
        bad = tmp_path / f"t{n}.safetensors"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=rf"t{n}\.safetensors: .*(truncated|not a safetensors)"):
            read_safetensors(bad)
    empty = tmp_path / "e.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"e\.safetensors: the file is empty"):
        read_safetensors(empty)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth: not a safetensors file: this is a zip"):
        read_safetensors(pth_file("croco_v1"))


def test_hf_folder_errors(tmp_path, hf_folder):
    src = hf_folder("dust3r_linear")
    no_cfg = tmp_path / "no_cfg"
    no_cfg.mkdir()
    shutil.copyfile(src / "model.safetensors", no_cfg / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no_cfg: no config\.json"):
        read_hf_folder(no_cfg)
    no_w = tmp_path / "no_weights"
    no_w.mkdir()
    shutil.copyfile(src / "config.json", no_w / "config.json")
    with pytest.raises(CheckpointError, match=r"no_weights: no model\.safetensors"):
        read_hf_folder(no_w)
    (no_w / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        read_hf_folder(no_w)


# ---- Hugging Face cache (offline) --------------------------------------------------------------


def _make_hub_cache(root: Path, repo_id: str, src: Path, commit: str) -> Path:
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in ("config.json", "README.md", "model.safetensors"):
        shutil.copyfile(src / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def offline_hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_resolve_hf_repo_from_local_cache(tmp_path, hf_folder, case_meta, offline_hub):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = _make_hub_cache(tmp_path / "hub", "naver/Tiny_DUSt3R", hf_folder("dust3r_linear"), commit)
    for local_only in (True, None):  # explicit, and through the hub's offline mode
        folder = resolve_hf_repo("naver/Tiny_DUSt3R", cache_dir=tmp_path / "hub", local_files_only=local_only)
        assert folder.resolve() == snap.resolve()
    folder = resolve_hf_repo("naver/Tiny_DUSt3R", revision=commit, cache_dir=tmp_path / "hub", local_files_only=True)
    assert folder.resolve() == snap.resolve()
    config, sd = read_hf_folder(folder)
    assert set(sd) == set(case_meta("dust3r_linear")["pth_state_dict_keys"])
    assert config["head_type"] == "linear"


def test_resolve_hf_repo_not_cached(tmp_path, offline_hub):
    (tmp_path / "hub").mkdir()
    with pytest.raises(CheckpointError, match=r"hf://naver/Missing: cannot resolve the Hugging Face repo"):
        resolve_hf_repo("naver/Missing", cache_dir=tmp_path / "hub", local_files_only=True)


def test_load_model_from_hub_repo_id(tmp_path, hf_folder, offline_hub):
    """`load_model("org/name")` goes through the hub cache (never the network) to the same params as the folder."""
    import jax

    import f3d_jax

    _make_hub_cache(tmp_path / "hub", "naver/Tiny_DUSt3R", hf_folder("dust3r_linear"), "ab" * 20)
    from_repo = f3d_jax.load_model("naver/Tiny_DUSt3R", cache_dir=tmp_path / "hub")
    from_folder = f3d_jax.load_model(hf_folder("dust3r_linear"))
    assert from_repo.config == from_folder.config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                                     from_repo.params, from_folder.params))
    with pytest.raises(CheckpointError, match="naver/Missing"):
        f3d_jax.load_model("naver/Missing", cache_dir=tmp_path / "hub")
