"""Time and peak memory of the largest legitimate load: a full-size MASt3R `.pth` through `f3d_jax.load_model`.

    python experiments/bench_load.py [--pythonpath DIR] [--keep]

Writes (to a temporary folder, removed afterwards) a `torch.save`-format zip with the key names,
shapes and shared tensors of the released `MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric`
(from the fixtures manifest; ~2.7 GB of random float32 weights) using numpy + zipfile only (no
torch), then runs `f3d_jax.load_model(path)` in a fresh subprocess (with `PYTHONPATH=DIR`, so
the same file can time another checkout, e.g. the code before a change) and prints the wall time
of the load, the time of the import alone, and the subprocess's peak RSS (`ru_maxrss`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"


class _Pickle:
    """Protocol-2 opcodes, as `torch.save` writes them for `{'model': OrderedDict, 'args': Namespace}`."""

    def __init__(self) -> None:
        self.b = bytearray(b"\x80\x02")

    def raw(self, s: bytes) -> _Pickle:
        self.b += s
        return self

    def glob(self, module: str, name: str) -> _Pickle:
        return self.raw(b"c" + f"{module}\n{name}\n".encode())

    def str(self, s: str) -> _Pickle:
        e = s.encode()
        return self.raw(b"X" + struct.pack("<I", len(e)) + e)

    def int(self, v: int) -> _Pickle:
        return self.raw(b"J" + struct.pack("<i", v))

    def ints(self, vs: list[int]) -> _Pickle:
        self.raw(b"(")
        for v in vs:
            self.int(v)
        return self.raw(b"t")

    def tensor(self, key: str, shape: list[int]) -> _Pickle:
        numel = int(np.prod(shape))
        strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]
        self.glob("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        self.raw(b"(").str("storage").glob("torch", "FloatStorage").str(key).str("cpu").int(numel).raw(b"tQ")
        self.int(0).ints(shape).ints(strides).raw(b"\x89")
        self.glob("collections", "OrderedDict").raw(b")R")
        return self.raw(b"tR")


def write_checkpoint(path: Path, manifest: dict, seed: int = 0) -> int:
    """Writes the checkpoint; returns the number of bytes of tensor data."""
    shared = {g[1]: g[0] for g in manifest.get("shared_tensor_groups", [])}  # second name -> first
    entries = manifest["state_dict"]
    keys: dict[str, str] = {}
    p = _Pickle().raw(b"}(").str("model").glob("collections", "OrderedDict").raw(b")R(")
    for e in entries:
        k = e["key"]
        keys[k] = keys[shared[k]] if k in shared and shared[k] in keys else str(len(set(keys.values())))
        p.str(k).tensor(keys[k], e["shape"])
    p.raw(b"u").str("args").glob("argparse", "Namespace").raw(b")\x81}").str("model").str(manifest["constructor"])
    p.raw(b"sbu.")
    rng = np.random.default_rng(seed)
    nbytes = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.writestr("checkpoint/data.pkl", bytes(p.b))
        z.writestr("checkpoint/byteorder", "little")
        z.writestr("checkpoint/version", "3\n")
        written = set()
        for e in entries:
            key = keys[e["key"]]
            if key in written:
                continue
            written.add(key)
            arr = (rng.standard_normal(int(np.prod(e["shape"])), dtype=np.float32) * 0.02).astype("<f4")
            with z.open(f"checkpoint/data/{key}", "w", force_zip64=True) as f:
                f.write(memoryview(arr).cast("B"))
            nbytes += arr.nbytes
    return nbytes


_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
import jax, f3d_jax
t1 = time.perf_counter()
model = f3d_jax.load_model(sys.argv[1])
jax.block_until_ready(model.params)
t2 = time.perf_counter()
n = sum(x.size for x in jax.tree.leaves(model.params))
print(json.dumps({"f3d_jax": f3d_jax.__file__, "import_s": round(t1 - t0, 2), "load_s": round(t2 - t1, 2),
                  "params": int(n), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""


def machine() -> str:
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), "?")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} CPUs, {int(mem) // 2**20 if mem != '?' else '?'} GiB RAM, {platform.platform()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pythonpath", default=str(REPO_ROOT), help="checkout whose f3d_jax is timed")
    ap.add_argument("--fixtures", default=os.environ.get("F3D_FIXTURES", str(REPO_ROOT.parent / "shared" / "fixtures")))
    ap.add_argument("--tmp", default=None, help="folder for the temporary checkpoint (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint (prints its path)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="time this existing file (kept) instead of writing one")
    a = ap.parse_args()
    manifest = json.loads((Path(a.fixtures) / "networks" / "manifests" / f"{NAME}.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="bench_load.", dir=a.tmp))
    try:
        path = a.checkpoint or tmp / "checkpoint.pth"
        t = time.perf_counter()
        nbytes = sum(int(np.prod(e["shape"])) * 4 for e in manifest["state_dict"]) - sum(
            int(np.prod(next(e["shape"] for e in manifest["state_dict"] if e["key"] == g[1]))) * 4
            for g in manifest.get("shared_tensor_groups", []))
        if a.checkpoint is None:
            nbytes = write_checkpoint(path, manifest)
        print(f"{'wrote' if a.checkpoint is None else 'using'} {path} ({path.stat().st_size / 1e9:.2f} GB, {nbytes / 1e9:.2f} GB of tensors) "
              f"in {time.perf_counter() - t:.1f}s", flush=True)
        env = {**os.environ, "PYTHONPATH": a.pythonpath, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path.resolve())], env=env, capture_output=True, text=True,
                             cwd=tmp)  # not the repo: `-c` puts the cwd first on sys.path
        if out.returncode:
            sys.exit(f"load failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["tensor_gb"] = round(nbytes / 1e9, 3)
        result["machine"] = machine()
        print(json.dumps(result))
        if a.keep:
            print(f"kept {path}")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
