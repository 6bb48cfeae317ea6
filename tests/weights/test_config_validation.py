"""Constructor arguments from every source are validated before anything is built.

Sources: the `.pth` `args.model` string, the CroCo v2 `croco_kwargs` dict, a Hugging Face
`config.json` and the `f3d_model.json` of `save_model`. Each bad value must give a
`CheckpointError` naming the problem, fast, and every released constructor must still pass.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import f3d_jax
from conftest import RELEASED_NETWORKS, fixture_path
from f3d_jax.models.config import CroCoConfig, config_from_official
from f3d_jax.models.model import Model, abstract_params
from f3d_jax.weights.constructor import (
    checkpoint_constructor,
    f3d_config_constructor,
    hf_config_constructor,
    official_load_model_rewrite,
    parse_constructor,
)
from f3d_jax.weights.convert import expected_torch_shapes
from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.registry import get_checkpoint_info, list_checkpoints

from .conftest import MODEL_CASES

_FAST_S = 2.0  # every refusal below takes milliseconds of CPU; process time, so a loaded machine does not matter

_DEEP_LIST: list = [1]
for _ in range(100_000):
    _DEEP_LIST = [_DEEP_LIST]

# (constructor string, part of the message)
BAD_STRINGS = [
    ("CroCoNet(pos_embed='RoPEnan')", "pos_embed='RoPEnan' should be 'cosine' or 'RoPE<frequency>'"),
    ("CroCoNet(pos_embed='RoPEinf')", "finite frequency"),
    ("CroCoNet(pos_embed='RoPE-1')", "finite frequency"),
    ("CroCoNet(pos_embed='RoPE0')", "finite frequency"),
    ("CroCoNet(pos_embed='RoPE1e999')", "finite frequency"),
    ("CroCoNet(pos_embed='RoPE1_0')", "finite frequency"),  # float() would accept the underscore
    ("CroCoNet(img_size=-224)", "img_size=-224 should be an int or a (height, width) pair of ints in [1, 4096]"),
    ("CroCoNet(img_size=(224, 0))", "img_size=(224, 0) should be"),
    ("CroCoNet(img_size=8192)", "in [1, 4096]"),
    ("CroCoNet(enc_depth=10**7)", "non-literal value `10 ** 7`"),
    ("CroCoNet(enc_depth=10000000)", "enc_depth=10000000 should be a positive int (at most 64)"),
    ("CroCoNet(enc_depth=" + "9" * 4000 + ")", "number literal of 4000 characters is too long"),
    ("CroCoNet(enc_depth=" + "9" * 5000 + ")", "number literal of 5000 characters is too long"),
    ("CroCoNet(img_size=" + "[" * 150 + "]" * 150 + ")", "brackets nested deeper than 4 levels"),
    ("CroCoNet(enc_depth=" + "-" * 15000 + "1)", "more than 256 operators"),
    ("CroCoNet(enc_depth=" + "1+" * 8000 + "1)", "more than 256 operators"),
    ("CroCoNet(enc_depth=" + "not " * 4000 + "1)", "too many Python keywords"),
    ("CroCoNet(enc_depth=f" + "()" * 5000 + ")", "more than 256 operators"),
    ("CroCoNet(pos_embed=f'{" + "1+" * 3000 + "1}')", "f-strings are not accepted"),
    ("CroCoNet(pos_embed='" + "A" * 19_000 + "')", "should be a short name"),
    ("CroCoNet(pos_embed='" + "A" * 30_000 + "')", "string of 30022 characters is too long"),
    ("CroCoNet(enc_num_heads=7)", "enc_embed_dim=768 is not divisible by enc_num_heads=7"),
    ("CroCoNet(dec_embed_dim=96, dec_num_heads=16, pos_embed='RoPE100')", "RoPE-2D needs a head width divisible by 4"),
    ("CroCoNet(enc_embed_dim=770, enc_num_heads=1)", "cosine position table needs a width divisible by 4"),
    ("CroCoNet(img_size=(224, 230))", "img_size=(224, 230) is not a multiple of patch_size=16"),
    ("CroCoNet(patch_size=100)", "patch_size=100 should be a positive int (at most 64)"),
    ("CroCoNet(mlp_ratio=1e999)", "mlp_ratio=inf should be a finite number in (0, 16]"),
    ("CroCoNet(mlp_ratio=0)", "mlp_ratio=0 should be a finite number"),
    ("CroCoNet(mlp_ratio=0.001, enc_embed_dim=64, enc_num_heads=1)", "leaves an empty MLP"),
    ("CroCoNet(mask_ratio=1.0)", "mask_ratio=1.0 should be a number in [0, 1)"),
    ("CroCoNet(patch_size=True)", "patch_size=True should be a positive int"),
    ("CroCoNet(norm_im2_in_dec=1)", "norm_im2_in_dec=1 should be a bool"),
    ("AsymmetricCroCo3DStereo(conf_mode=('exp', 1e999, 1e999))", "should have bounds min < max"),
    ("AsymmetricCroCo3DStereo(conf_mode=('exp', -inf, inf))", "should have a finite min"),
    ("AsymmetricCroCo3DStereo(conf_mode=('sigmoid', 0, inf))", "finite max for 'sigmoid'"),
    ("AsymmetricCroCo3DStereo(depth_mode=('cube', -inf, inf))", "should name one of 'linear', 'square', 'exp'"),
    ("AsymmetricCroCo3DStereo(head_type='conv')", "head_type='conv' should be one of"),
    ("AsymmetricCroCo3DStereo(freeze='all')", "freeze='all' should be one of"),
    ("AsymmetricCroCo3DStereo(patch_embed_cls='PatchEmbed')", "patch_embed_cls='PatchEmbed' should be one of"),
    ("AsymmetricMASt3R(output_mode='pts3d+desc\u00b2')", "should be 'pts3d' or 'pts3d+desc<D>'"),
    ("AsymmetricMASt3R(output_mode='pts3d+desc99999')", "D in [1, 1024]"),
    ("AsymmetricMASt3R(desc_mode='unnorm')", "desc_mode='unnorm' should be one of 'norm'"),
]


@pytest.mark.parametrize("s, problem", BAD_STRINGS, ids=[f"s{i}" for i in range(len(BAD_STRINGS))])
def test_bad_constructor_strings_are_refused_fast(s, problem):
    t = time.process_time()
    with pytest.raises(CheckpointError) as e:
        parse_constructor(s)
    assert time.process_time() - t < _FAST_S
    msg = str(e.value)
    assert problem in msg
    assert "\n" not in msg and len(msg) < 1000  # one short line, whatever the input's size
    # the same string as a checkpoint's args.model names the file
    with pytest.raises(CheckpointError, match=r"^evil\.pth: "):
        checkpoint_constructor({"model": {}, "args": {"model": s}}, "evil.pth")


# (keyword arguments, part of the message): the dict sources (croco_kwargs, config.json, f3d_model.json)
BAD_KWARGS = [
    ({"pos_embed": "RoPEnan"}, "pos_embed='RoPEnan' should be"),
    ({"pos_embed": "RoPE-100"}, "finite frequency"),
    ({"img_size": -1}, "img_size=-1 should be"),
    ({"img_size": [224, -224]}, "img_size=(224, -224) should be"),
    ({"enc_depth": 10**7}, "enc_depth=10000000 should be a positive int (at most 64)"),
    ({"enc_depth": 10**4000}, "enc_depth=<13288-bit int> should be a positive int"),
    ({"enc_depth": True}, "enc_depth=True should be a positive int"),
    ({"enc_depth": 12.0}, "enc_depth=12.0 should be a positive int"),
    ({"img_size": _DEEP_LIST}, "a list nested deeper than 3 levels"),
    ({"img_size": list(range(10**5))}, "longer than 16 items"),
    ({"mlp_ratio": math.nan}, "mlp_ratio=nan should be a finite number"),
    ({"mlp_ratio": math.inf}, "mlp_ratio=inf should be a finite number"),
    ({"mask_ratio": -0.1}, "mask_ratio=-0.1 should be a number in [0, 1)"),
    ({"enc_num_heads": 5}, "enc_embed_dim=768 is not divisible by enc_num_heads=5"),
    ({"img_size": [100, 64]}, "img_size=(100, 64) is not a multiple of patch_size=16"),
    ({"pos_embed": "R" * 10**6}, "should be a short name"),
    ({"x" * 10**6: 1}, "unknown keyword argument(s) 'xxxx"),
    ({"enc_depth": {"a": 1}}, "enc_depth: unsupported value of type dict"),
]


def _sources(kw: dict) -> list:
    return [
        ("croco_kwargs", lambda: checkpoint_constructor({"model": {}, "croco_kwargs": kw}, "v2.pth"), "v2.pth"),
        ("config.json", lambda: hf_config_constructor({"head_type": "linear", **kw}, "hf/config.json"), "hf/config.json"),
        ("f3d_model.json", lambda: f3d_config_constructor({"class": "CroCoNet", "kwargs": kw, "format": 1}, "m/f3d"),
         "m/f3d"),
    ]


@pytest.mark.parametrize("kw, problem", BAD_KWARGS, ids=[f"kw{i}" for i in range(len(BAD_KWARGS))])
def test_bad_kwargs_are_refused_from_every_dict_source(kw, problem):
    for name, call, source in _sources(kw):
        t = time.process_time()
        with pytest.raises(CheckpointError) as e:
            call()
        assert time.process_time() - t < _FAST_S, name
        msg = str(e.value)
        assert msg.startswith(f"{source}: ") and problem in msg, (name, msg[:300])
        assert len(msg) < 1000, name


@pytest.mark.parametrize(
    "meta, problem",
    [
        ({"class": "CroCoNet", "kwargs": {}, "format": True}, "unsupported format True"),
        ({"class": "CroCoNet", "kwargs": {}, "format": 2}, "unsupported format 2"),
        ({"class": "Evil", "kwargs": {}, "format": 1}, "unknown class 'Evil'"),
        ({"class": "CroCoNet", "kwargs": {}, "format": 1, "extra": 0}, "expected exactly the keys"),
        ({"class": "CroCoNet", "kwargs": [], "format": 1}, "'kwargs' should be an object"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_bad_f3d_model_json_layouts(meta, problem):
    with pytest.raises(CheckpointError, match=r"^m/f3d_model\.json: ") as e:
        f3d_config_constructor(meta, "m/f3d_model.json")
    assert problem in str(e.value)


def test_every_released_constructor_is_accepted(case_meta):
    """Registry entries, manifests (training and inference strings, HF config) and fixture cases."""
    strings = []
    for name in list_checkpoints():
        info = get_checkpoint_info(name)
        if info.constructor:
            strings.append(info.constructor)
    for name in RELEASED_NETWORKS:
        m = json.loads(fixture_path("networks", "manifests", f"{name}.json").read_text())
        strings.append(m["constructor"])
        hf = m.get("huggingface")
        if hf:
            cls, kw = hf_config_constructor(hf["config_json_reconstructed"])
            config_from_official(cls, kw)
    strings += [case_meta(case)["constructor"] for case in MODEL_CASES]
    assert len(strings) >= 8 + 8 + 5
    for s in strings:
        cls, kw = parse_constructor(s)
        for kwargs in (kw, official_load_model_rewrite(cls, kw)):
            config = config_from_official(cls, kwargs)
            assert config.official_class == cls
            # f3d_model.json as save_model writes it round-trips through the validation
            meta = json.loads(json.dumps({"class": cls, "kwargs": _asdict(config), "format": 1}))
            assert config_from_official(*f3d_config_constructor(meta)) == config


def _asdict(config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def test_abstract_build_allocates_no_table():
    """A cosine table of 1M tokens x 256 (1 GB in float32) is a shape under eval_shape, never built."""
    config = CroCoConfig(img_size=4096, patch_size=4, enc_embed_dim=256, enc_depth=1, enc_num_heads=4,
                         dec_embed_dim=256, dec_depth=1, dec_num_heads=4)
    tracemalloc.start()
    try:
        t = time.process_time()
        shapes = expected_torch_shapes(config)
        params = abstract_params(config)
        elapsed = time.process_time() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert shapes["enc_pos_embed"] == (1024 * 1024, 256) and shapes["dec_pos_embed"] == (1024 * 1024, 256)
    assert params["enc_pos_embed"].shape == (1024 * 1024, 256)
    assert peak < 64 << 20, f"abstract build traced {peak / 2**20:.0f} MiB"
    assert elapsed < 10


# ---- hostile files through load_model ---------------------------------------------------------------


def _rewrite_pkl(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    """Copy of a torch zip checkpoint with one pickled string (BINUNICODE) replaced."""
    with zipfile.ZipFile(src) as z:
        records = [(info.filename, z.read(info)) for info in z.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            if name.endswith("/data.pkl"):
                opcode = b"X" + len(old).to_bytes(4, "little") + old
                assert data.count(opcode) == 1
                data = data.replace(opcode, b"X" + len(new).to_bytes(4, "little") + new)
            z.writestr(name, data)
    dst.write_bytes(out.getvalue())
    return dst


def _assert_refused_fast(src: Path, problem: str, max_s: float = 10.0) -> None:
    t = time.process_time()
    with pytest.raises(CheckpointError) as e:
        f3d_jax.load_model(src)
    elapsed = time.process_time() - t
    msg = str(e.value)
    assert msg.startswith(str(src)), msg[:300]
    assert problem in msg, msg[:500]
    assert elapsed < max_s, f"{elapsed:.1f} s"


@pytest.mark.parametrize(
    "constructor, problem",
    [
        ("AsymmetricCroCo3DStereo(pos_embed='RoPEnan')", "pos_embed='RoPEnan' should be"),
        ("AsymmetricCroCo3DStereo(enc_depth=10**7)", "non-literal value"),
        ("AsymmetricCroCo3DStereo(enc_depth=" + "7" * 4000 + ")", "number literal of 4000 characters"),
        ("AsymmetricCroCo3DStereo(img_size=" + "(" * 200 + ")" * 200 + ")", "brackets nested deeper"),
        ("AsymmetricCroCo3DStereo(img_size=-512, pos_embed='RoPE100')", "img_size=-512 should be"),
        # valid values, but a far bigger model than the file holds: refused by the block count,
        # before 64 + 2 * 64 blocks of width 8192 are built even abstractly
        ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', enc_embed_dim=8192, enc_depth=64, enc_num_heads=128, "
         "dec_embed_dim=8192, dec_depth=64, dec_num_heads=128)", "enc_blocks: the constructor says 64 block(s)"),
    ],
)
def test_hostile_pth_constructor(tmp_path, pth_file, case_meta, constructor, problem):
    src = pth_file("dust3r_linear")
    bad = _rewrite_pkl(src, tmp_path / "bad.pth", case_meta("dust3r_linear")["constructor"].encode(),
                       constructor.encode())
    _assert_refused_fast(bad, problem, max_s=3.0)


def test_claimed_huge_model_with_tiny_tensors_is_refused_before_the_full_build(hf_folder):
    """A valid constructor at the limits (64 + 2 x 64 blocks of width 8192) over a state dict that has
    every key name but tiny tensors: refused by comparing every block with a one-block model, without
    building the 192 blocks abstractly (which takes 10+ s)."""
    from f3d_jax.weights.convert import check_state_dict
    from f3d_jax.weights.safetensors_io import read_hf_folder

    _, sd = read_hf_folder(hf_folder("dust3r_linear"))
    block = re.compile(r"^(enc_blocks|dec_blocks2?)\.1\.(.*)$")
    hostile = {k: v for k, v in sd.items() if not re.match(r"^(enc_blocks|dec_blocks2?)\.", k)}
    for k, v in sd.items():
        m = block.match(k)
        if m:
            hostile.update({f"{m.group(1)}.{i}.{m.group(2)}": v for i in range(64)})
    hostile["enc_norm.weight"] = hostile["dec_norm.weight"] = np.zeros(8192, np.float32)
    config = config_from_official("AsymmetricCroCo3DStereo", dict(
        pos_embed="RoPE100", enc_embed_dim=8192, enc_depth=64, enc_num_heads=128, dec_embed_dim=8192,
        dec_depth=64, dec_num_heads=128, landscape_only=False))
    t = time.process_time()
    with pytest.raises(CheckpointError) as e:
        check_state_dict(config, hostile, "h.pth")
    assert time.process_time() - t < 5
    msg = str(e.value)
    assert msg.startswith("h.pth: checkpoint does not match AsymmetricCroCo3DStereo (enc_embed_dim=8192, enc_depth=64")
    # every key is mis-shaped, every block's included, but the two norms set to 8192 and the two
    # linear heads' biases (4 * 16 * 16 outputs whatever the width)
    assert f"{len(hostile) - 4} mis-shaped key(s)" in msg and len(hostile) > 3000
    assert "decoder_embed.weight: checkpoint (48, 64), model expects (8192, 8192)" in msg


def test_hostile_croco_kwargs(tmp_path, pth_file):
    bad = _rewrite_pkl(pth_file("croco_v2"), tmp_path / "v2.pth", b"RoPE100", b"RoPEnan")
    _assert_refused_fast(bad, "pos_embed='RoPEnan' should be 'cosine' or 'RoPE<frequency>'")


def test_absurd_cosine_table_is_refused_without_allocating(tmp_path, pth_file, case_meta):
    """img_size=4096 with patch_size=1 asks for two 16.7M-token cosine tables (4 + 3 GB): the shapes
    are compared abstractly, so nothing of that size is ever built."""
    constructor = case_meta("croco_v1")["constructor"]
    hostile = constructor.replace("img_size=64, patch_size=8", "img_size=4096, patch_size=1")
    assert hostile != constructor
    bad = _rewrite_pkl(pth_file("croco_v1"), tmp_path / "v1.pth", constructor.encode(), hostile.encode())
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as e:
            f3d_jax.load_model(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "enc_pos_embed: checkpoint (64, 64), model expects (16777216, 64)" in str(e.value)
    assert peak < 256 << 20, f"{peak / 2**20:.0f} MiB traced"


def _hf_copy(hf_folder, tmp_path: Path, config_text: str) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copyfile(hf_folder("dust3r_linear") / "model.safetensors", folder / "model.safetensors")
    (folder / "config.json").write_text(config_text)
    return folder


@pytest.mark.parametrize(
    "edit, problem",
    [
        ({"pos_embed": "RoPEnan"}, "pos_embed='RoPEnan' should be"),
        ({"img_size": [-512, 512]}, "img_size=(-512, 512) should be"),
        ({"enc_depth": True}, "enc_depth=True should be a positive int"),
        ({"enc_num_heads": 3}, "enc_embed_dim=64 is not divisible by enc_num_heads=3"),
        ({"img_size": [500, 512]}, "img_size=(500, 512) is not a multiple of patch_size=16"),
        ({"conf_mode": ["exp", 1, None]}, "should be a (name, min, max) triple"),
    ],
)
def test_hostile_config_json(tmp_path, hf_folder, edit, problem):
    config = json.loads((hf_folder("dust3r_linear") / "config.json").read_text())
    folder = _hf_copy(hf_folder, tmp_path, json.dumps({**config, **edit}))
    _assert_refused_fast(folder, problem)
    with pytest.raises(CheckpointError, match=r"config\.json: "):
        f3d_jax.load_model(folder)


@pytest.mark.parametrize(
    "text",
    [
        '{"enc_depth": ' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError inside json.loads
        '{"enc_depth": ' + "9" * 5000 + "}",  # ValueError: exceeds the integer-string limit
        '{"mlp_ratio": NaN}',
        "[]",
        "\xff\xfe",
    ],
    ids=["nested", "5000-digits", "nan", "list", "not-utf8"],
)
def test_malformed_config_json_is_a_checkpoint_error(tmp_path, hf_folder, text):
    folder = _hf_copy(hf_folder, tmp_path, text)
    t = time.process_time()
    with pytest.raises(CheckpointError) as e:
        f3d_jax.load_model(folder)
    assert time.process_time() - t < 10
    assert str(e.value).startswith(str(folder))


def test_load_model_converts_any_unexpected_error(tmp_path, monkeypatch):
    """The last line of defence: an error no check anticipated still comes out as CheckpointError."""
    import f3d_jax.weights.torch_pickle as tp

    f = tmp_path / "x.pth"
    f.write_bytes(b"PK\x03\x04 not really")
    for exc in (MemoryError(), RecursionError("deep"), OverflowError("big"), TypeError("odd"), ValueError("x" * 10**5)):
        def boom(path, _exc=exc):
            raise _exc
        monkeypatch.setattr(tp, "read_pth", boom)
        with pytest.raises(CheckpointError) as e:
            f3d_jax.load_model(f)
        msg = str(e.value)
        assert msg.startswith(f"{f}: cannot load the checkpoint ({type(exc).__name__}") and len(msg) < 1000
    with pytest.raises(CheckpointError, match="expected a path"):
        f3d_jax.load_model(12345)


# ---- f3d_model.json of an orbax directory --------------------------------------------------------


TINY = CroCoConfig(img_size=16, patch_size=8, enc_embed_dim=16, enc_depth=1, enc_num_heads=2,
                   dec_embed_dim=16, dec_depth=1, dec_num_heads=2, pos_embed="RoPE100")


def tiny_model(offset: float = 0.0) -> Model:
    """A tiny CroCoNet with deterministic params (no jit, no random init)."""
    import jax

    leaves, treedef = jax.tree.flatten(abstract_params(TINY))
    arrays = [np.arange(math.prod(s.shape), dtype=np.float32).reshape(s.shape) / 100 + offset + i
              for i, s in enumerate(leaves)]
    return Model(TINY, jax.tree.unflatten(treedef, arrays))


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    return f3d_jax.save_model(tiny_model(), tmp_path_factory.mktemp("orbax") / "tiny")


def _orbax_copy(saved: Path, tmp_path: Path, meta_text: str | None = None) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(saved, dst)
    if meta_text is not None:
        (dst / "f3d_model.json").write_text(meta_text)
    return dst


def _meta(saved: Path) -> dict:
    return json.loads((saved / "f3d_model.json").read_text())


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: {**m, "kwargs": {**m["kwargs"], "pos_embed": "RoPEnan"}}, "pos_embed='RoPEnan' should be"),
        (lambda m: {**m, "kwargs": {**m["kwargs"], "img_size": [-16, 16]}}, "img_size=(-16, 16) should be"),
        (lambda m: {**m, "kwargs": {**m["kwargs"], "enc_depth": 10**7}}, "enc_depth=10000000 should be"),
        (lambda m: {**m, "kwargs": {**m["kwargs"], "enc_num_heads": 3}}, "not divisible by enc_num_heads=3"),
        (lambda m: {**m, "class": "os.system"}, "unknown class 'os.system'"),
        (lambda m: {**m, "format": 7}, "unsupported format 7"),
        # valid config, other shapes than the stored params: refused from orbax's metadata alone
        (lambda m: {**m, "kwargs": {**m["kwargs"], "enc_depth": 2}}, "enc_blocks: the constructor says 2 block(s)"),
        (lambda m: {**m, "kwargs": {**m["kwargs"], "enc_embed_dim": 32}}, "enc_norm: the constructor says width 32"),
        (lambda m: {**m, "kwargs": {**m["kwargs"], "patch_size": 4}},
         "patch_embed.proj.kernel: stored (8, 8, 3, 16) float32, model expects (4, 4, 3, 16) floating"),
    ],
)
def test_hostile_f3d_model_json(tmp_path, saved_tiny, edit, problem):
    dst = _orbax_copy(saved_tiny, tmp_path, json.dumps(edit(_meta(saved_tiny))))
    _assert_refused_fast(dst, problem)


def test_orbax_shapes_sampled_on_a_one_block_model(tmp_path, saved_tiny, monkeypatch):
    """Above 64 blocks the stored shapes are first compared with a one-block-per-stack model; the
    threshold set to 0 runs that path on the tiny model."""
    import f3d_jax.weights.convert as convert

    monkeypatch.setattr(convert, "_SAMPLE_ABOVE_BLOCKS", 0)
    meta = _meta(saved_tiny)
    dst = _orbax_copy(saved_tiny, tmp_path, json.dumps({**meta, "kwargs": {**meta["kwargs"], "patch_size": 4}}))
    _assert_refused_fast(dst, "3 mis-shaped param(s): ")
    _assert_refused_fast(dst, "patch_embed.proj.kernel: checkpoint (8, 8, 3, 16), model expects (4, 4, 3, 16)")
    back = f3d_jax.load_model(saved_tiny)  # and a matching checkpoint passes it
    assert back.config == TINY


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"class": ' + "[" * 30_000 + "]" * 30_000 + "}", "JSON nested 30001 levels deep"),
        ('{"format": ' + "1" * 5000 + "}", "invalid JSON"),
        ('{"format": NaN}', "NaN is not accepted"),
        (" " * (70 << 10) + "{}", "larger than 65536 bytes"),
        ("{", "invalid JSON"),
    ],
    ids=["nested", "5000-digits", "nan", "huge", "truncated"],
)
def test_malformed_f3d_model_json(tmp_path, saved_tiny, text, problem):
    dst = _orbax_copy(saved_tiny, tmp_path, text)
    with pytest.raises(CheckpointError, match=r"f3d_model\.json: ") as e:
        f3d_jax.load_model(dst)
    assert problem in str(e.value)


def test_orbax_metadata_problems_are_checkpoint_errors(tmp_path, saved_tiny):
    import jax
    import orbax.checkpoint as ocp

    # a stored tensor that is not floating: refused from the metadata, before any restore
    dst = _orbax_copy(saved_tiny, tmp_path)
    params = jax.tree.map(np.asarray, tiny_model().params)
    params["mask_token"] = params["mask_token"].astype(np.int32)
    shutil.rmtree(dst / "params")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(dst / "params", params)
    ckptr.wait_until_finished()
    _assert_refused_fast(dst, "mask_token: stored (1, 1, 16) int32, model expects (1, 1, 16) floating")
    # garbage metadata, missing metadata
    meta_file = dst / "params" / "_METADATA"
    meta_file.write_text("{" * 50_000)
    _assert_refused_fast(dst, "unreadable orbax metadata")
    meta_file.unlink()
    _assert_refused_fast(dst, "no _METADATA file")
