"""Benchmark of MASt3R's fast reciprocal matching: ours (`f3d_jax.matching`) against the official
`mast3r.fast_nn.fast_reciprocal_NNs` on the same descriptors, the same device, in the same run.

Descriptors: smooth random fields over the image (sines of the pixel position plus noise, L2-normalised, 24
channels, float16 like MASt3R's stored descriptors), two views of the same field shifted by a few pixels, so
the reciprocal walk behaves as on real descriptors (basins, most queries converge in 2-4 rounds).

Settings timed (each in a fresh process per side, after one warm-up call):
  * dot:  `dist='dot', block_size=2**13`  (the sparse-GA setting; brute force in the official code)
  * l2:   the official CPU default (scipy KDTree) against our brute-force 'l2'
Each row prints median seconds per call, the ratio official/ours, whether the match sets are identical,
the number of matches, and peak RSS (peak device memory on GPU) of each worker.

Command:  F3D_REFERENCE_ROOT=/path/to/ref python experiments/bench_matching.py [--device cpu|gpu|tpu]
          [--size 512x384 ...] [--repeats 3] [--threads 1]
Without F3D_REFERENCE_ROOT only our side runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from experiments._bench_common import add_reference_paths, machine, peak_rss_mb, reference_python  # noqa: E402

JAX_PLATFORM = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


def make_descriptors(w: int, h: int, seed: int = 0, dim: int = 24):
    import numpy as np

    rng = np.random.default_rng(seed)
    freq = rng.normal(size=(2, dim)) * 12.0
    phase = rng.uniform(0, 2 * np.pi, dim)

    def field(dx: float, dy: float):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        xx, yy = (xx + dx) / max(w, h), (yy + dy) / max(w, h)
        f = np.sin(xx[..., None] * freq[0] + yy[..., None] * freq[1] + phase) + 0.15 * rng.normal(size=(h, w, dim))
        return (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float16)

    return field(0.0, 0.0), field(3.0, -2.0)


def worker_ours(path: str, setting: str, repeats: int) -> dict:
    import jax
    import numpy as np

    from f3d_jax.matching import fast_reciprocal_nns

    d = np.load(path)
    a, b = jax.device_put(d["a"]), jax.device_put(d["b"])
    kw = dict(dist="dot", block_size=2**13) if setting == "dot" else dict(dist="l2")
    t0 = time.perf_counter()
    xy1, xy2 = fast_reciprocal_nns(a, b, 8, **kw)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        xy1, xy2 = fast_reciprocal_nns(a, b, 8, **kw)
        times.append(time.perf_counter() - t0)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    return dict(median_s=sorted(times)[len(times) // 2], first_call_s=first, n=len(xy1),
                matches=np.c_[xy1, xy2].tolist(), peak_rss_mb=peak_rss_mb(), device=str(dev.device_kind),
                device_peak_mb=(stats or {}).get("peak_bytes_in_use", 0) / 2**20 or None)


def worker_official(path: str, setting: str, repeats: int, device: str, root: str) -> dict:
    import numpy as np
    import torch

    add_reference_paths(Path(root))
    from mast3r.fast_nn import fast_reciprocal_NNs

    d = np.load(path)
    tdev = "cuda" if device == "gpu" else "cpu"
    # float32 tensors: torch's float16 matmul rounds the scores to float16 (ties); ours upcasts (exact float32)
    a, b = (torch.from_numpy(d[k].astype(np.float32)).to(tdev) for k in ("a", "b"))
    if setting == "dot":
        kw = dict(device=tdev, dist="dot", block_size=2**13)
    else:  # the official CPU default: scipy KDTree on numpy arrays
        a, b = d["a"], d["b"]
        kw = dict(device="cpu")
    fast_reciprocal_NNs(a, b, subsample_or_initxy1=8, ret_xy=True, **kw)  # warm-up
    times = []
    for _ in range(repeats):
        if tdev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        xy1, xy2 = fast_reciprocal_NNs(a, b, subsample_or_initxy1=8, ret_xy=True, **kw)
        if tdev == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return dict(median_s=sorted(times)[len(times) // 2], n=len(xy1), matches=np.c_[xy1, xy2].tolist(),
                peak_rss_mb=peak_rss_mb(),
                device_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if tdev == "cuda" else None)


def _run(argv: list[str], python: str, device: str, threads: int) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "JAX_PLATFORMS": JAX_PLATFORM[device],
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + (f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                                                          f" intra_op_parallelism_threads={threads}" if device == "cpu" else "")}
    r = subprocess.run([python, str(Path(__file__).resolve()), *argv], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(f"  [worker failed: {' '.join(argv[:2])}]\n{r.stderr[-1500:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=tuple(JAX_PLATFORM), default="cpu")
    ap.add_argument("--size", action="append", help="WxH (repeatable; default 224x160 and 512x384)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each worker (default 1)")
    ap.add_argument("--worker", nargs=3, metavar=("SIDE", "NPZ", "SETTING"), help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        side, path, setting = args.worker
        out = worker_ours(path, setting, args.repeats) if side == "ours" else worker_official(
            path, setting, args.repeats, args.device, args.root)
        print(json.dumps(out))
        return

    ref = reference_python()
    print(f"machine: {machine()}; device {args.device}; {args.threads} thread(s) per worker")
    print("official side:", f"{ref[1]}" if ref else "not run (set F3D_REFERENCE_ROOT)")
    print(f"{'size':>9} {'setting':>7} {'ours s':>9} {'official s':>10} {'ratio':>7} {'same':>5} {'matches':>8}"
          f" {'ours MB':>8} {'off. MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.size or ["224x160", "512x384"]:
            w, h = (int(v) for v in size.lower().split("x"))
            import numpy as np

            a, b = make_descriptors(w, h)
            path = str(Path(tmp) / f"desc_{w}x{h}.npz")
            np.savez(path, a=a, b=b)
            for setting in ("dot", "l2"):
                common = ["--worker", "ours", path, setting, "--repeats", str(args.repeats), "--device", args.device]
                ours = _run(common, sys.executable, args.device, args.threads)
                off = None
                if ref:
                    common[1] = "official"
                    off = _run([*common, "--root", str(ref[1])], ref[0], args.device, args.threads)
                if ours is None:
                    continue
                mem = lambda r: r.get("device_peak_mb") or r["peak_rss_mb"]  # noqa: E731
                same = "-" if off is None else str(sorted(map(tuple, ours["matches"])) == sorted(map(tuple, off["matches"])))
                ratio = f"{off['median_s'] / ours['median_s']:.1f}x" if off else "-"
                offs = f"{off['median_s']:.3f}" if off else "-"
                offm = f"{mem(off):.0f}" if off else "-"
                print(f"{size:>9} {setting:>7} {ours['median_s']:>9.3f} {offs:>10} {ratio:>7} {same:>5} {ours['n']:>8}"
                      f" {mem(ours):>8.0f} {offm:>8}   (ours first call incl. compile {ours['first_call_s']:.2f} s)")


if __name__ == "__main__":
    main()
