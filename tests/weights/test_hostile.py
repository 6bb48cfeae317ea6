"""Targeted hostile checkpoints: each attack of issue 10 is refused with a CheckpointError, fast and cheaply."""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.safetensors_io import read_hf_folder, read_safetensors
from f3d_jax.weights.torch_pickle import Namespace, read_pth

from .test_readers import _P, _state_dict_pickle, _write_archive


class _PL(_P):
    """`_P` with integers of any size (LONG1 beyond 32 bits)."""

    def int(self, v: int) -> _PL:
        if -(2**31) <= v < 2**31:
            return super().int(v)
        n = (v.bit_length() + 8) // 8
        return self.raw(b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True))


def _big_state_dict_pickle(tensors: list[tuple[str, tuple]]) -> bytes:
    p = _PL().raw(b"}(").str("model").glob("collections", "OrderedDict").raw(b")R(")
    for name, args in tensors:
        p.str(name).tensor(*args)
    return p.raw(b"uu").done()


@contextlib.contextmanager
def _peak_bytes():
    """Yields a list that receives the peak traced allocation (numpy reports to tracemalloc)."""
    out: list[int] = []
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def _refused(path: Path, match: str, reader=read_pth) -> CheckpointError:
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as e:
        reader(path)
    assert time.perf_counter() - t < 5
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    return e.value


def _pkl_archive(tmp_path: Path, name: str, body: bytes, records: dict[str, bytes] | None = None) -> Path:
    """`{'x': <body>}` as a torch.save archive (body: opcodes leaving one object on the stack)."""
    pkl = _P().raw(b"}").str("x").raw(body).raw(b"s").done()
    return _write_archive(tmp_path / name, pkl, records or {})


_DTYPE_F8 = b"cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R"
_PLAIN_F8_STATE = b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
_SCALAR = b"cnumpy.core.multiarray\nscalar\n"


# ---- dtype and numpy-scalar tricks --------------------------------------------------------------


def test_numpy_scalar_of_a_plain_dtype_loads(tmp_path):
    path = _pkl_archive(tmp_path, "ok.pth", _SCALAR + _DTYPE_F8 + _PLAIN_F8_STATE + b"C\x08" + struct.pack("<d", 0.25)
                        + b"\x86R")
    x = read_pth(path)["x"]
    assert x == 0.25 and x.dtype == np.float64


def test_dtype_with_subarray_state_is_refused(tmp_path):
    # The segfault of the issue: dtype('f8') whose BUILD state adds a (1000000,) sub-array shape.
    sub = b"(K\x03X\x01\x00\x00\x00<" + _DTYPE_F8 + _PLAIN_F8_STATE + b"J\x40\x42\x0f\x00\x85\x86NNJ\x00\x12\x7a\x00J\x08\x00\x00\x00K\x00tb"
    path = _pkl_archive(tmp_path, "subarray.pth", _SCALAR + _DTYPE_F8 + sub + b"C\x08" + bytes(8) + b"\x86R")
    _refused(path, "numpy dtype state that changes float64")
    # A sub-array / structured / object dtype by name.
    for i, name in enumerate((b"V8", b"O8", b"U4", b"c8")):
        body = b"cnumpy\ndtype\nX" + struct.pack("<I", len(name)) + name + b"\x89\x88\x87R"
        _refused(_pkl_archive(tmp_path, f"dt{i}.pth", body), "refusing a numpy dtype outside")


def test_numpy_scalar_with_wrong_byte_count_is_refused(tmp_path):
    for n in (4, 9, 4096):
        path = _pkl_archive(tmp_path, f"s{n}.pth", _SCALAR + _DTYPE_F8 + _PLAIN_F8_STATE + b"B" + struct.pack("<I", n)
                            + bytes(n) + b"\x86R")
        _refused(path, f"holds {n} bytes, not 8")
    fake = _pkl_archive(tmp_path, "fake.pth", _SCALAR + b"X\x02\x00\x00\x00f8C\x08" + bytes(8) + b"\x86R")
    _refused(fake, "not a plain number")


# ---- BUILD / state on allow-listed globals ------------------------------------------------------


@pytest.mark.parametrize("body, match", [
    (b"ccollections\nOrderedDict\n}b", "BUILD .* on a Global"),  # on the class itself
    (b"cargparse\nNamespace\n}b", "BUILD .* on a Global"),
    (b"ccollections\nOrderedDict\n)RK\x01b", "OrderedDict state must be a dict"),
    (b"cargparse\nNamespace\n)\x81}X\x07\x00\x00\x00to_dictK\x01sb", "attribute 'to_dict' is not allowed"),
    (b"cargparse\nNamespace\n)\x81}K\x01K\x01sb", "state must be a dict of attribute names"),
    (b"cargparse\nNamespace\n)\x81]b", "state must be a dict of attribute names"),
    (b"c_codecs\nencode\n}b", "BUILD .* on a Global"),
    (_DTYPE_F8 + b"(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb", "dtype state that changes"),
    (b"cnumpy\ndtype\n}b", "BUILD .* on a Global"),
])
def test_build_on_allow_listed_globals_is_refused(tmp_path, body, match):
    _refused(_pkl_archive(tmp_path, "build.pth", body), match)


def test_build_on_a_tensor_is_refused(tmp_path):
    p = _P().raw(b"}").str("w").tensor("FloatStorage", "0", 3, 0, (3,), (1,)).raw(b"}b").raw(b"s")
    _refused(_write_archive(tmp_path / "t.pth", p.done(), {"0": bytes(12)}), "BUILD .* on a ndarray")


def test_namespace_state_never_leaks_between_loads(tmp_path):
    evil = _pkl_archive(tmp_path, "a.pth", b"cargparse\nNamespace\n)\x81}X\x05\x00\x00\x00modelX\x01\x00\x00\x00ysb")
    before = dict(vars(Namespace))
    assert read_pth(evil)["x"].model == "y"
    assert dict(vars(Namespace)) == before and not hasattr(Namespace, "model")
    clean = _pkl_archive(tmp_path, "b.pth", b"cargparse\nNamespace\n)\x81}b")
    assert read_pth(clean)["x"].to_dict() == {}


# ---- zip tricks ---------------------------------------------------------------------------------


def _one_tensor(numel: int) -> bytes:
    return _state_dict_pickle([("w", ("FloatStorage", "0", numel, 0, (numel,), (1,)))])


def test_duplicate_record_names_are_refused(tmp_path):
    path = tmp_path / "dup.pth"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as z:
        warnings.simplefilter("ignore")
        z.writestr("archive/data.pkl", _one_tensor(3))
        z.writestr("archive/data/0", np.ones(3, "<f4").tobytes())
        z.writestr("archive/data/0", np.zeros(3, "<f4").tobytes())
    _refused(path, "holds the record 'archive/data/0' more than once")


def _patch_sizes(path: Path, name: str, *, file_size: int) -> None:
    """Rewrites the declared uncompressed size of record `name` (central and local headers)."""
    b = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(name).header_offset
    struct.pack_into("<I", b, local + 22, file_size)
    at = b.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack("<H", b[at + 28 : at + 30])[0]
        if b[at + 46 : at + 46 + n] == name.encode():
            struct.pack_into("<I", b, at + 24, file_size)
        at = b.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(b))


def _deflated_archive(path: Path, pkl: bytes, records: dict[str, bytes], pkl_method=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl, compress_type=pkl_method)
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return path


def test_record_inflating_past_its_declared_size_is_refused(tmp_path):
    # 64 MiB of zeros deflated (64 KiB on disk), declared as the 12 bytes its storage needs.
    path = _deflated_archive(tmp_path / "bomb.pth", _one_tensor(3), {"0": bytes(64 << 20)})
    _patch_sizes(path, "archive/data/0", file_size=12)
    with _peak_bytes() as peak:
        _refused(path, "inflates past its declared size of 12 bytes")
    assert peak[0] < 64 << 20


def test_genuinely_huge_compressed_record_is_refused(tmp_path):
    # 512 MiB of zeros honestly declared, ~0.5 MiB on disk: refused before anything is allocated.
    numel = 1 << 27
    path = tmp_path / "huge.pth"
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    zeros = bytes(16 << 20)
    raw = b"".join([*(c.compress(zeros) for _ in range(32)), c.flush()])
    crc = 0  # never reached: the record is refused from its declared sizes
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _one_tensor(numel))
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, b"")  # placeholder, replaced below
    # Rebuild by hand: local header + raw deflate stream + central directory.
    with zipfile.ZipFile(path) as z:
        pkl_info = z.getinfo("archive/data.pkl")
        pkl = z.read(pkl_info)
    out = bytearray()
    entries = []
    for name, data, method, size, c32 in (("archive/data.pkl", pkl, 0, len(pkl), zlib.crc32(pkl)),
                                          ("archive/data/0", raw, 8, numel * 4, crc)):
        entries.append((name, len(out), method, len(data), size, c32))
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, c32, len(data), size, len(name), 0)
        out += name.encode() + data
    cd = len(out)
    for name, off, method, csize, size, c32 in entries:
        out += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, c32, csize, size, len(name),
                           0, 0, 0, 0, 0, off) + name.encode()
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(out) - cd, cd, 0)
    path.write_bytes(bytes(out))
    with _peak_bytes() as peak:
        _refused(path, "would inflate to 536870912 bytes .* zip bomb")
    assert peak[0] < 16 << 20


def test_compressed_data_pkl_bomb_is_refused(tmp_path):
    # A data.pkl of 80 MiB (a huge string) deflated to ~200 KiB: over the 64 MiB cap, never inflated.
    body = b"\x80\x02X" + struct.pack("<I", 80 << 20) + bytes(80 << 20) + b"."
    path = _deflated_archive(tmp_path / "pklbomb.pth", body, {}, pkl_method=zipfile.ZIP_DEFLATED)
    _refused(path, "data.pkl' declares 83886088 bytes, more than the 67108864 allowed")
    _patch_sizes(path, "archive/data.pkl", file_size=1000)  # and lying about its size
    _refused(path, "inflates past its declared size of 1000 bytes")


def test_two_names_sharing_one_records_bytes_are_refused(tmp_path):
    path = _write_archive(tmp_path / "overlap.pth", _one_tensor(3), {"0": bytes(12), "1": bytes(12)})
    b = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        target = z.getinfo("archive/data/0").header_offset
    at = b.find(b"PK\x01\x02")
    while at >= 0:  # point data/1's central entry at data/0's local header
        n = struct.unpack("<H", b[at + 28 : at + 30])[0]
        if b[at + 46 : at + 46 + n] == b"archive/data/1":
            struct.pack_into("<I", b, at + 42, target)
        at = b.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(b))
    _refused(path, "two zip records share the same data")


# ---- view amplification, out-of-bounds views, deep pickles, huge ints ---------------------------


def test_one_storage_viewed_hundreds_of_times_costs_one_copy(tmp_path):
    numel = 1 << 20  # 4 MiB
    views = [(f"v{i}", ("FloatStorage", "0", numel, i, (numel - i,), (1,))) for i in range(500)]
    path = _write_archive(tmp_path / "views.pth", _state_dict_pickle(views), {"0": np.ones(numel, "<f4").tobytes()})
    with _peak_bytes() as peak:
        sd = read_pth(path)["model"]
    assert len(sd) == 500 and peak[0] < 2 * 4 * numel  # ~1x the storage, not 500x
    assert all(np.shares_memory(v, sd["v0"]) and not v.flags.writeable for v in sd.values())
    assert float(sd["v499"].sum()) == numel - 499


@pytest.mark.parametrize("offset, size, stride, match", [
    (0, (4, 4), (5, 1), "does not fit"),
    (15, (2,), (1,), "does not fit"),
    (0, (2, 2), (1, 15), "does not fit"),
    (-1, (1,), (1,), "out of range"),
    (0, (2,), (-1,), "out of range"),
    (0, (1,) * 17, (1,) * 17, "out of range"),
    (0, (1 << 60,), (0,), "out of range"),
    (0, (16, 16), (0, 0), "does not fit"),  # more elements than the storage (stride-0 expansion)
    (0, (0, 1 << 47, 1 << 47), (1, 1, 1), "malformed empty tensor"),
])
def test_out_of_bounds_views_are_refused(tmp_path, offset, size, stride, match):
    pkl = _big_state_dict_pickle([("w", ("FloatStorage", "0", 16, offset, size, stride))])
    _refused(_write_archive(tmp_path / "oob.pth", pkl, {"0": bytes(64)}), match)


def test_storage_used_with_two_dtypes_or_sizes_is_refused(tmp_path):
    pkl = _state_dict_pickle([("a", ("FloatStorage", "0", 4, 0, (4,), (1,))), ("b", ("IntStorage", "0", 4, 0, (4,), (1,)))])
    _refused(_write_archive(tmp_path / "2dt.pth", pkl, {"0": bytes(16)}), "used both as float32 x 4 and as int32 x 4")
    pkl = _state_dict_pickle([("a", ("FloatStorage", "0", 4, 0, (4,), (1,)))])
    _refused(_write_archive(tmp_path / "big.pth", pkl, {"0": bytes(20)}), "holds 20 bytes but its storage needs 16")


def test_deeply_nested_pickle_is_refused_fast(tmp_path):
    body = b"\x80\x02" + b"]" + b"(]" * 500 + b"e" * 500 + b"."  # lists 500 deep, marks only 500
    path = _write_archive(tmp_path / "deep.pth", body, {})
    _refused(path, "nested more than 100 levels")
    path = _write_archive(tmp_path / "deep2.pth", b"\x80\x02)" + b"\x85" * 100_000 + b".", {})
    _refused(path, "nested more than 100 levels")


def test_huge_long4_integer_is_refused(tmp_path):
    body = b"\x8b" + struct.pack("<i", 1 << 22) + b"\x01" * (1 << 22)  # a 10-million-digit integer
    _refused(_pkl_archive(tmp_path, "long.pth", body), "integer of 4194304 bytes")


# ---- safetensors and HF folders -----------------------------------------------------------------


def _st(path: Path, header: dict, data: bytes, raw_header: bytes | None = None) -> Path:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_safetensors_header_attacks(tmp_path):
    ok = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    a, meta = read_safetensors(_st(tmp_path / "ok.safetensors", ok, np.arange(2, dtype="<f4").tobytes()))
    assert a["a"].tolist() == [0.0, 1.0] and not a["a"].flags.writeable and meta == {}
    cases = {
        "dup": (None, b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],'
                      b'"data_offsets":[4,8]}}', "duplicate key 'a'"),
        "dtype": ({"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, None, "dtype 'F8_E4M3', not one of"),
        "span": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, None, "does not match its data_offsets"),
        "past": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, None, "does not match"),
        "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, None, "overlapping or gapped"),
        "gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, None, "overlapping or gapped"),
        "dims": ({"a": {"dtype": "U8", "shape": [1] * 17, "data_offsets": [0, 1]}}, None, "malformed entry"),
        "bigint": (None, b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,8]}}', "5000 digits"),
        "deep": (None, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested"),
        "meta": ({"__metadata__": {"x": 1}, **ok}, None, "__metadata__ must map strings"),
        "nan": (None, b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', "NaN is not accepted"),
    }
    for name, (header, raw, match) in cases.items():
        _refused(_st(tmp_path / f"{name}.safetensors", header, bytes(8), raw), match, reader=read_safetensors)
    huge = tmp_path / "hdr.safetensors"
    huge.write_bytes((200 << 20).to_bytes(8, "little") + b"{" + bytes(300 << 20 >> 10))
    _refused(huge, "truncated safetensors file: header claims", reader=read_safetensors)


def _hf(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_hf_index_cannot_leave_the_folder(tmp_path):
    outside = tmp_path / "outside.safetensors"
    _st(outside, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    for i, shard in enumerate([str(outside), "../outside.safetensors", "sub/../../outside.safetensors", "C:\\x",
                               "a\\..\\..\\outside.safetensors", ""]):
        folder = _hf(tmp_path, f"f{i}")
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
        _refused(folder, "is not a plain relative path inside the folder", reader=read_hf_folder)
    link = _hf(tmp_path, "link")
    (link / "evil.safetensors").symlink_to(outside)
    (link / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "evil.safetensors"}}))
    _refused(link, "resolves outside the folder", reader=read_hf_folder)
    dirlink = _hf(tmp_path, "dirlink")
    (dirlink / "sub").symlink_to(tmp_path)
    (dirlink / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "sub/outside.safetensors"}}))
    _refused(dirlink, "resolves outside the folder", reader=read_hf_folder)
    single = _hf(tmp_path, "single")
    (single / "model.safetensors").symlink_to(outside)
    _refused(single, "resolves outside the folder", reader=read_hf_folder)
    # Inside the folder, a sharded checkpoint loads; a tensor stored in two shards does not.
    good = _hf(tmp_path, "good")
    (good / "sub").mkdir()
    shutil.copyfile(outside, good / "sub" / "s1.safetensors")
    (good / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "sub/s1.safetensors"}}))
    assert read_hf_folder(good)[1]["a"].shape == (2,)
    shutil.copyfile(outside, good / "s2.safetensors")
    (good / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "sub/s1.safetensors", "b": "s2.safetensors"}}))
    _refused(good, "stored in more than one shard", reader=read_hf_folder)


def test_hf_cache_snapshot_symlinks_into_blobs_are_allowed(tmp_path, hf_folder):
    repo = tmp_path / "models--naver--x"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(hf_folder("dust3r_linear") / name, repo / "blobs" / name.replace(".", "_"))
        (snap / name).symlink_to(Path("../../blobs") / name.replace(".", "_"))
    config, sd = read_hf_folder(snap)
    assert config["head_type"] == "linear" and "enc_norm.weight" in sd


def test_hf_config_json_attacks(tmp_path):
    for name, text, match in [
        ("deep", "[" * 50 + "]" * 50, r"JSON nested 50 levels deep \(at most 16"),
        ("deeper", '{"a":' * 100_000 + "1" + "}" * 100_000, "JSON nested 100000 levels deep"),
        ("digits", '{"enc_depth": ' + "1" * 5000 + "}", "5000 digits"),
        ("dup", '{"a": 1, "a": 2}', "duplicate key"),
        ("utf", b'{"a": "\xff"}', "not UTF-8 text"),
        ("list", "[1, 2]", "expected a JSON object"),
    ]:
        folder = _hf(tmp_path, name)
        (folder / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        _refused(folder / "config.json" if name not in ("list",) else folder, match,
                 reader=lambda p, f=folder: read_hf_folder(f))
    big = _hf(tmp_path, "big")
    (big / "config.json").write_text('{"a": "' + "x" * (2 << 20) + '"}')
    _refused(big, "larger than 1048576 bytes", reader=read_hf_folder)
