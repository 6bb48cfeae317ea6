"""Fuzz driver for the checkpoint readers, run in its own process by `test_fuzz.py`.

    python tests/weights/fuzz_readers.py --pth X.pth --safetensors Y.safetensors --cases N --seed S --workdir D

Seeded mutations of a real `.pth` and `.safetensors`: byte flips (raw, and inside records re-zipped
with valid CRCs so the pickle machine sees them), truncations, inflated zip sizes and header
lengths, swapped records, recompressed records (deflated, sizes lied about, deflate bombs), and
mutated safetensors headers. Each case must load or raise `CheckpointError`; anything else
(another exception, a hang past `--case-timeout`) is recorded. The address space is capped with
`RLIMIT_AS` (`--mem-mb`), so a runaway allocation fails the case instead of the machine; a crash
kills this process, which the test sees. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import random
import resource
import signal
import struct
import sys
import time
import traceback
import zipfile
import zlib
from pathlib import Path

import numpy as np

from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.safetensors_io import read_safetensors
from f3d_jax.weights.torch_pickle import read_pth


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang


# ---- zip helpers -------------------------------------------------------------------------------


def _records(blob: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return [(i, z.read(i)) for i in z.infolist()]


def _rezip(records: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data, method in records:
            z.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return out.getvalue()


def _central_entries(blob: bytes) -> list[int]:
    """Offsets of the central directory headers."""
    out, at = [], blob.find(b"PK\x01\x02")
    while at >= 0:
        out.append(at)
        at = blob.find(b"PK\x01\x02", at + 4)
    return out


def _mutate_bytes(rng: random.Random, data: bytes, n: int) -> bytes:
    b = bytearray(data)
    if not b:
        return bytes(b)
    for _ in range(n):
        kind = rng.random()
        i = rng.randrange(len(b))
        if kind < 0.6:
            b[i] ^= 1 << rng.randrange(8)
        elif kind < 0.75:
            b[i] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif kind < 0.85:
            del b[i : i + rng.randint(1, 8)]
        elif kind < 0.95:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:  # duplicate a segment (repeats opcodes)
            j = min(len(b), i + rng.randint(1, 64))
            b[j:j] = b[i:j]
    return bytes(b)


def _pth_case(rng: random.Random, blob: bytes, recs: list[tuple[zipfile.ZipInfo, bytes]]) -> tuple[str, bytes]:
    kind = rng.randrange(9)
    names = [i.filename for i, _ in recs]
    if kind == 0:
        return "flip", _mutate_bytes(rng, blob, rng.randint(1, 16))
    if kind == 1:
        return "truncate", blob[: rng.randrange(len(blob))]
    if kind == 2:  # inflate/deflate the sizes of a central entry
        b = bytearray(blob)
        at = rng.choice(_central_entries(blob))
        field = rng.choice((20, 24))  # compressed size, uncompressed size
        val = rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)))
        b[at + field : at + field + 4] = struct.pack("<I", val)
        return "sizes", bytes(b)
    pkl = next(i for i, n in enumerate(names) if n.endswith("data.pkl"))
    items = [(i.filename, d, zipfile.ZIP_STORED) for i, d in recs]
    if kind in (3, 4):  # mutate data.pkl (or another record) and re-zip with a valid CRC
        idx = pkl if kind == 3 or rng.random() < 0.5 else rng.randrange(len(items))
        name, data, m = items[idx]
        items[idx] = (name, _mutate_bytes(rng, data, rng.randint(1, 6)), m)
        return "rezip-mutated", _rezip(items)
    if kind == 5:  # swap two records' contents (or names)
        i, j = rng.sample(range(len(items)), 2)
        (ni, di, mi), (nj, dj, mj) = items[i], items[j]
        if rng.random() < 0.5:
            items[i], items[j] = (ni, dj, mi), (nj, di, mj)
        else:
            items[i], items[j] = (nj, di, mi), (ni, dj, mj)
        return "swap", _rezip(items)
    if kind == 6:  # recompress some records, possibly lying about their sizes afterwards
        for k in rng.sample(range(len(items)), rng.randint(1, min(8, len(items)))):
            items[k] = (items[k][0], items[k][1], zipfile.ZIP_DEFLATED)
        out = _rezip(items)
        if rng.random() < 0.5:
            b = bytearray(out)
            at = rng.choice(_central_entries(out))
            b[at + 24 : at + 28] = struct.pack("<I", rng.choice((0, 1, 100, 1 << 31, rng.randrange(1 << 32))))
            out = bytes(b)
        return "recompressed", out
    if kind == 7:  # a deflate bomb in place of a record (declared at its honest or its original size)
        k = rng.randrange(len(items))
        bomb = _bomb(rng.choice((1 << 20, 8 << 20, 64 << 20)))
        items[k] = (items[k][0], b"", zipfile.ZIP_STORED)
        out = bytearray(_rezip(items))
        # Splice the raw deflate stream into record k and fix the method and sizes by hand.
        with zipfile.ZipFile(io.BytesIO(bytes(out))) as z:
            info = z.infolist()[k]
        local = info.header_offset
        nlen, xlen = struct.unpack("<HH", out[local + 26 : local + 30])
        start = local + 30 + nlen + xlen
        declared = rng.choice((len(recs[k][1]), 1 << 31, 0xFFFFFFFF))
        out[start:start] = bomb
        struct.pack_into("<H", out, local + 8, 8)
        struct.pack_into("<II", out, local + 18, len(bomb), declared)
        cd = _central_entries(bytes(out))
        # Central entries after the spliced data moved by len(bomb); fix their local offsets.
        for at in cd:
            off = struct.unpack("<I", out[at + 42 : at + 46])[0]
            if off > local:
                struct.pack_into("<I", out, at + 42, off + len(bomb))
        at = cd[k]
        struct.pack_into("<H", out, at + 10, 8)
        struct.pack_into("<II", out, at + 20, len(bomb), declared)
        eocd = bytes(out).rfind(b"PK\x05\x06")
        struct.pack_into("<I", out, eocd + 16, struct.unpack("<I", out[eocd + 16 : eocd + 20])[0] + len(bomb))
        return "bomb", bytes(out)
    # kind 8: duplicate a record name
    k = rng.randrange(len(items))
    items.insert(rng.randrange(len(items) + 1), items[k])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return "duplicate", _rezip(items)


@functools.lru_cache(maxsize=None)
def _bomb(size: int) -> bytes:
    """A raw deflate stream of `size` zero bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    return b"".join([*(c.compress(zeros) for _ in range(size >> 20)), c.flush()])


def _st_case(rng: random.Random, blob: bytes) -> tuple[str, bytes]:
    kind = rng.randrange(5)
    n = int.from_bytes(blob[:8], "little")
    if kind == 0:
        return "flip", _mutate_bytes(rng, blob, rng.randint(1, 16))
    if kind == 1:
        return "truncate", blob[: rng.randrange(len(blob))]
    if kind == 2:
        val = rng.choice((0, 1, n - 1, n + 1, n * 2, 1 << 40, (1 << 64) - 1, rng.randrange(1 << 64)))
        return "header-length", val.to_bytes(8, "little") + blob[8:]
    header = json.loads(blob[8 : 8 + n])
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    spec = header[name]
    choice = rng.randrange(7)
    if choice == 0:
        spec["dtype"] = rng.choice(("F8_E4M3", "U16", "C64", "F32", "BF16", "I64", "", 7))
    elif choice == 1:
        spec["shape"] = rng.choice(([], [0], [1 << 62, 0], [-1], [10**30], spec["shape"][::-1], [1] * 40, [2.5]))
    elif choice == 2:
        b, e = spec["data_offsets"]
        spec["data_offsets"] = rng.choice(([e, b], [b, e + 4], [b - 4, e - 4], [0, e - b], [b, 1 << 63], [b]))
    elif choice == 3:
        other = header[rng.choice(names)]
        spec["data_offsets"] = list(other["data_offsets"])
    elif choice == 4:
        header["__metadata__"] = rng.choice(({"a": 1}, [], {"x": {"y": "z"}}, None))
    elif choice == 5:
        header[name] = rng.choice(([], "x", {"dtype": "F32"}, {**spec, "extra": 1}))
    else:
        text = json.dumps(header)
        return "header-bytes", (len(text) + 16).to_bytes(8, "little") + text.encode() + b"[" * 16 + blob[8 + n :]
    text = json.dumps(header).encode()
    return "header-json", len(text).to_bytes(8, "little") + text + blob[8 + n :]


def _touch(obj) -> None:
    """Reads every array the reader returned (an out-of-bounds view would crash here)."""
    todo = [obj]
    while todo:
        v = todo.pop()
        if isinstance(v, np.ndarray):
            np.ascontiguousarray(v).tobytes()
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            todo.extend(v)


def _peak_rss_mb() -> int:
    """This process's own peak RSS. Not `ru_maxrss`: Linux carries the parent's peak across fork + exec,
    so a fuzz process started by a big pytest would report pytest's memory. `VmHWM` is per address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # not Linux: the best available


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pth", type=Path, required=True)
    ap.add_argument("--safetensors", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--mem-mb", type=int, default=1536)
    ap.add_argument("--case-timeout", type=int, default=10)
    a = ap.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (a.mem_mb << 20, a.mem_mb << 20))
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(a.seed)
    pth, st = a.pth.read_bytes(), a.safetensors.read_bytes()
    recs = _records(pth)
    counts = {"loaded": 0, "refused": 0}
    kinds: dict[str, int] = {}
    failures = []
    slowest = 0.0
    t0 = time.perf_counter()
    target = a.workdir / "case.bin"
    for case in range(a.cases):
        is_pth = case % 3 != 2
        kind, blob = _pth_case(rng, pth, recs) if is_pth else _st_case(rng, st)
        kind = ("pth:" if is_pth else "st:") + kind
        kinds[kind] = kinds.get(kind, 0) + 1
        target.write_bytes(blob)
        t = time.perf_counter()
        signal.alarm(a.case_timeout)
        try:
            _touch(read_pth(target) if is_pth else read_safetensors(target))
            counts["loaded"] += 1
        except CheckpointError as e:
            counts["refused"] += 1
            if "\n" in str(e) and "does not match" not in str(e):
                failures.append({"case": case, "kind": kind, "error": f"multi-line message: {e}"[:500]})
        except BaseException as e:  # noqa: BLE001 - what the fuzz test is for
            failures.append({"case": case, "kind": kind, "error": f"{type(e).__name__}: {str(e)[:300]}",
                             "trace": traceback.format_exc()[-1500:]})
            (a.workdir / f"failure_{case}.bin").write_bytes(blob)
        finally:
            signal.alarm(0)
        slowest = max(slowest, time.perf_counter() - t)
    summary = {"cases": a.cases, **counts, "kinds": kinds, "failures": failures[:20], "n_failures": len(failures),
               "seconds": round(time.perf_counter() - t0, 2), "slowest_case_s": round(slowest, 3),
               "maxrss_mb": _peak_rss_mb()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
