"""Tiled CroCo-Stereo inference: f3d-jax `f3d_jax.stereoflow.tiled_pred` vs the official `stereoflow.engine.tiled_pred`.

Full-size CroCo-Stereo (ViT-L/16 encoder 1024/24/16, ViT-B decoder 768/12/12, RoPE100, DPT head; the released
`crocostereo.pth` architecture) with seeded random weights, crop 352x704, `conf_expsigmoid_15_3`, overlap 0.7, on a
random 1080x1920 pair (56 tiles). Reported: tiles, tiles/s and seconds per image (steady state: compiled
beforehand), compile time, peak memory (CPU: the process's peak RSS; GPU: the device's peak bytes in use).

When `F3D_REFERENCE_ROOT` (a folder with the official `croco/` checkout and, optionally, its `venv/`) is set, the
official `tiled_pred` (one network call per tile) runs on the same input with the same weights in a worker
process (`$F3D_REFERENCE_ROOT/venv/bin/python` when present; torch on the same device), and the same-run speed
ratio and the largest difference of the predictions are printed.

The machine may be too slow for a whole 1080p image twice: `--size H W` takes a smaller image (the throughput in
tiles/s is what compares; seconds per 1080p image are then extrapolated from it and said so), `--official-tiles K`
times the official loop on its first K tiles only.

Also printed: the FLOPs of one tile (XLA's cost analysis of one network call), the GFLOP/s both sides achieve
on that same work (the official head computes more: ~1.85 TFLOP/tile against our 1.80), the machine's float32
matmul rate measured in the same run (numpy's BLAS and jax on a 4096^3 product), the speed-up ceiling it implies
(official s/tile over FLOPs/peak), and /proc/loadavg next to each figure (a shared machine skews every number:
compare only figures taken at the same load). `--per-core` runs one single-threaded XLA CPU device per core
with the tiles sharded over them (tiles in parallel instead of each op split over the cores).

    python experiments/bench_stereoflow.py                        # 1080p, both implementations
    python experiments/bench_stereoflow.py --size 352 1056 --official-tiles 3
    python experiments/bench_stereoflow.py --size 352 880 --official-tiles 2 --per-core
    python experiments/bench_stereoflow.py --tiny                 # smoke test (small backbone)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import peak_rss_mb  # noqa: E402

FULL_1080P = (1080, 1920)
CROP = (352, 704)
CONF_MODE = "conf_expsigmoid_15_3"
VITL = dict(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_num_heads=12, dec_depth=12,
            pos_embed="RoPE100")
TINY = dict(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=48, dec_num_heads=4, dec_depth=8,
            pos_embed="RoPE100")
_ALIAS = [(re.compile(r"\.act_([1-4])_postprocess\."), lambda m: f".act_postprocess.{int(m.group(1)) - 1}."),
          (re.compile(r"\.layer([1-4])_rn\."), lambda m: f".layer_rn.{int(m.group(1)) - 1}.")]


def _canonical(key: str) -> str:
    for pat, rep in _ALIAS:
        key = pat.sub(rep, key)
    return key


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random official state dict, the same in both processes (numpy only): weights ~ N(0, 1/fan_in) from
    windows of one Gaussian pool at offsets drawn from the key's name, biases 0, LayerNorm weights 1. Both names
    of a shared tensor get the same array."""
    pool = np.random.default_rng(seed).standard_normal(1 << 22, dtype=np.float32)
    out = {}
    for key, shape in shapes.items():
        canon = _canonical(key)
        leaf = canon.rsplit(".", 1)[-1]
        n = math.prod(shape)
        if leaf == "bias" or len(shape) < 2:
            norm = ("norm" in canon) and leaf == "weight"
            out[key] = np.ones(shape, np.float32) if norm else np.zeros(shape, np.float32)
            continue
        transposed = ".act_postprocess.0.1." in canon or ".act_postprocess.1.1." in canon  # ConvTranspose (in, out, k, k)
        fan_in = n // shape[1] if transposed else n // shape[0]
        off = int.from_bytes(canon.encode()[-8:].rjust(8, b"\0"), "little") % pool.size
        w = np.resize(np.roll(pool, off), n).reshape(shape) * np.float32(1 / math.sqrt(fan_in))
        out[key] = w.astype(np.float32)
    return out


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB (`_bench_common.peak_rss_mb`: VmHWM)."""
    return peak_rss_mb() / 1024.0


def official_worker(npz: str) -> None:
    """`--worker-official NPZ`: the official tiled_pred (torch only) on the pair and settings saved in NPZ; prints
    one JSON line and saves the prediction next to NPZ."""
    import torch

    root = Path(os.environ["F3D_REFERENCE_ROOT"])
    sys.path.insert(0, str(root / "croco"))
    from models.croco_downstream import CroCoDownstreamBinocular
    from models.head_downstream import PixelwiseTaskWithDPT
    from stereoflow import engine

    d = np.load(npz)
    meta = json.loads(str(d["meta"]))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    head = PixelwiseTaskWithDPT()
    head.num_channels = 2
    croco_args = {**meta["croco_args"], "img_size": tuple(meta["crop"])}
    net = CroCoDownstreamBinocular(head, **croco_args).eval()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    sd = {k: torch.from_numpy(v) for k, v in random_state_dict(shapes, meta["seed"]).items()}
    print("   official load_state_dict:", net.load_state_dict(sd, strict=True), file=sys.stderr)
    del sd
    dev = meta["device"]
    net = net.to(dev)
    img1 = torch.from_numpy(d["img1"].transpose(0, 3, 1, 2).copy()).to(dev)
    img2 = torch.from_numpy(d["img2"].transpose(0, 3, 1, 2).copy()).to(dev)
    k = meta["official_tiles"]
    overlap, crop = meta["overlap"], tuple(meta["crop"])
    if k:  # time the official per-tile loop on its first k tiles only (same calls as tiled_pred makes)
        offs = [(sy, sx) for sy in engine._overlapping(img1.shape[2], crop[0], overlap)
                for sx in engine._overlapping(img1.shape[3], crop[1], overlap)][:k]
        with torch.no_grad():
            t0 = time.perf_counter()
            for sy, sx in offs:
                net(engine._crop(img1, sy, sx), engine._crop(img2, sy, sx))
            if dev == "cuda":
                torch.cuda.synchronize()
            seconds, tiles, pred = time.perf_counter() - t0, len(offs), None
    else:
        t0 = time.perf_counter()
        pred, _, _ = engine.tiled_pred(net, None, img1, img2, None, overlap=overlap, crop=crop,
                                       conf_mode=meta["conf_mode"], with_conf=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        tiles = len(list(engine._overlapping(img1.shape[2], crop[0], overlap))) * \
            len(list(engine._overlapping(img1.shape[3], crop[1], overlap)))
        np.save(npz + ".pred.npy", pred.cpu().numpy().transpose(0, 2, 3, 1))
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else peak_rss_gib()
    print(json.dumps(dict(seconds=seconds, tiles=tiles, peak_gib=peak, full=pred is not None)))


def matmul_peak_gflops(n: int = 4096, reps: int = 3) -> dict[str, float]:
    """This machine's measured float32 matmul rate (GFLOP/s, best of `reps` n x n x n products): numpy (the BLAS
    numpy links) and jax (precision highest): the practical ceiling of a model made of matmuls."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = {}
    f = jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest"))
    aj = jnp.asarray(a)
    for name, fn in (("numpy", lambda: a @ a), ("jax", lambda: f(aj, aj).block_until_ready())):
        fn()
        best = min(_timed(fn) for _ in range(reps))
        out[name] = 2 * n**3 / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def reference_python() -> str | None:
    root = os.environ.get("F3D_REFERENCE_ROOT")
    if not root:
        return None
    py = Path(root) / "venv" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=list(FULL_1080P), metavar=("H", "W"),
                    help="image size (default 1080 1920)")
    ap.add_argument("--overlap", type=float, default=0.7)
    ap.add_argument("--tiles-per-step", type=int, default=None, help="tiles per network step (default: 1 on CPU, 8 on GPU)")
    ap.add_argument("--official-tiles", type=int, default=0,
                    help="time the official loop on its first K tiles only (0: the whole official tiled_pred)")
    ap.add_argument("--no-official", action="store_true")
    ap.add_argument("--official-first", action="store_true", help="run the official implementation before ours")
    ap.add_argument("--tiny", action="store_true", help="small backbone, crop 64x96 (smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-core", action="store_true",
                    help="CPU: one single-threaded XLA device per core, the tiles sharded over them (sets XLA_FLAGS "
                         "before jax starts; --tiles-per-step then defaults to the core count)")
    args = ap.parse_args()
    if args.per_core:  # must precede the first `import jax`
        cores = len(os.sched_getaffinity(0))
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={cores}"
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

    import jax
    import jax.numpy as jnp

    import f3d_jax
    from f3d_jax.models.binocular import BinocularModel, CroCoDownstreamConfig, binocular_forward
    from f3d_jax.stereoflow import plan_tiles, tiled_pred
    from f3d_jax.weights.convert import convert_state_dict, expected_torch_shapes

    f3d_jax.disable_compile_cache()  # compile time is part of the report
    crop = (64, 96) if args.tiny else CROP
    croco_args = TINY if args.tiny else VITL
    hw = tuple(args.size)
    config = CroCoDownstreamConfig(**croco_args, img_size=crop, task="stereo")
    plan = plan_tiles(hw, crop, args.overlap)
    full_plan = plan_tiles(FULL_1080P, CROP, args.overlap)
    backend = jax.default_backend()
    device = "cuda" if backend == "gpu" else "cpu"
    print(f"machine: {os.cpu_count()} cores, jax {jax.__version__} {backend} ({jax.device_count()} x "
          f"{jax.devices()[0].device_kind}); CroCo-Stereo {'tiny' if args.tiny else 'ViT-L/ViT-B-dec'} crop {crop}, "
          f"image {hw[0]}x{hw[1]}: {plan.num_tiles} tiles (a 1080p image: {full_plan.num_tiles})", flush=True)

    rng = np.random.default_rng(args.seed + 1)
    img1 = np.tanh(rng.standard_normal((1, *hw, 3), dtype=np.float32)) * np.float32(2)
    img2 = np.roll(img1, -24, axis=2)  # a horizontally shifted copy: a constant disparity

    results: dict = {"image": list(hw), "tiles": plan.num_tiles, "crop": list(crop), "overlap": args.overlap}

    def ours() -> np.ndarray:
        t0 = time.perf_counter()
        sd = random_state_dict(expected_torch_shapes(config), args.seed)
        params = convert_state_dict(config, sd, "random", consume=True)
        del sd
        model = BinocularModel(config, params, tile_conf_mode=CONF_MODE, criterion="LaplacianLossBounded2()")
        t_load = time.perf_counter() - t0
        x1, x2 = jnp.asarray(img1), jnp.asarray(img2)
        t1 = jnp.zeros((1, *crop, 3), jnp.float32)
        cost = binocular_forward.lower(config, params, t1, t1).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        results["gflop_per_tile"] = float(cost["flops"]) / 1e9  # XLA's count for one network call on one tile
        t0 = time.perf_counter()
        pred, conf = tiled_pred(model, x1, x2, overlap=args.overlap, tiles_per_step=args.tiles_per_step,
                                shard=args.per_core or None)
        pred.block_until_ready()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred, conf = tiled_pred(model, x1, x2, overlap=args.overlap, tiles_per_step=args.tiles_per_step,
                                shard=args.per_core or None)
        pred.block_until_ready()
        secs = time.perf_counter() - t0
        if backend == "gpu":
            peak = jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30
        else:
            peak = peak_rss_gib()
        results["f3d"] = dict(seconds=secs, tiles_per_s=plan.num_tiles / secs, compile_s=max(first - secs, 0.0),
                              weights_s=t_load, peak_gib=peak,
                              s_per_1080p_image=full_plan.num_tiles / (plan.num_tiles / secs))
        gfs = results["gflop_per_tile"] * plan.num_tiles / secs
        results["f3d"]["gflop_s"] = gfs
        print(f"f3d-jax : {plan.num_tiles / secs:.3f} tiles/s, {secs:.1f} s for this image "
              f"(-> {results['f3d']['s_per_1080p_image']:.0f} s per 1080p image), compile {first - secs:.1f} s, "
              f"peak {peak:.2f} GiB; {results['gflop_per_tile']:.0f} GFLOP/tile -> {gfs:.1f} GFLOP/s "
              f"(load {load_average()})", flush=True)
        return np.asarray(pred)

    def official() -> np.ndarray | None:
        py = reference_python()
        if py is None or args.no_official:
            print("official: skipped (set F3D_REFERENCE_ROOT to a folder with the croco checkout)")
            return None
        with tempfile.TemporaryDirectory() as tmp:
            npz = str(Path(tmp) / "inputs.npz")
            meta = dict(croco_args=croco_args, crop=list(crop), overlap=args.overlap, conf_mode=CONF_MODE,
                        seed=args.seed, device=device, official_tiles=args.official_tiles)
            np.savez(npz, img1=img1, img2=img2, meta=json.dumps(meta))
            out = subprocess.run([py, __file__, "--worker-official", npz], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"official worker failed:\n{out.stderr[-4000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            pred = np.load(npz + ".pred.npy") if r["full"] else None
        tps = r["tiles"] / r["seconds"]
        results["official"] = dict(seconds=r["seconds"], tiles=r["tiles"], tiles_per_s=tps, peak_gib=r["peak_gib"],
                                   s_per_1080p_image=full_plan.num_tiles / tps)
        line = (f"official: {tps:.3f} tiles/s ({r['tiles']} tiles in {r['seconds']:.1f} s; -> "
                f"{full_plan.num_tiles / tps:.0f} s per 1080p image), peak {r['peak_gib']:.2f} GiB")
        if "gflop_per_tile" in results:  # the same work counted for both (the official head does more FLOPs)
            results["official"]["gflop_s"] = results["gflop_per_tile"] * tps
            line += f"; {results['official']['gflop_s']:.1f} GFLOP/s of the same {results['gflop_per_tile']:.0f} GFLOP/tile"
        print(line + f" (load {load_average()})", flush=True)
        return pred

    if backend == "cpu":
        results["matmul_peak_gflop_s"] = peak = matmul_peak_gflops()
        print(f"float32 4096^3 matmul on this CPU: numpy {peak['numpy']:.0f} GFLOP/s, jax {peak['jax']:.0f} GFLOP/s "
              f"(load {load_average()})", flush=True)
    if args.official_first:
        ref = official()
        got = ours()
    else:
        got = ours()
        ref = official()
    if "official" in results:
        ratio = results["f3d"]["tiles_per_s"] / results["official"]["tiles_per_s"]
        results["speedup"] = ratio
        line = f"speed-up (same run, same {device.upper()}): {ratio:.2f}x the official tiles/s"
        if ref is not None:
            diff = float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))
            results["max_rel_diff"] = diff
            line += f"; predictions differ by {diff:.2e} of their largest magnitude"
        print(line)
        peak = results.get("matmul_peak_gflop_s")
        if peak and "gflop_per_tile" in results:
            best = max(peak.values())
            floor = results["gflop_per_tile"] / best  # seconds per tile even at the matmul peak
            bound = floor and (1 / results["official"]["tiles_per_s"]) / floor
            results["max_speedup_at_matmul_peak"] = bound
            print(f"ceiling: {results['gflop_per_tile']:.0f} GFLOP/tile at the {best:.0f} GFLOP/s matmul peak = "
                  f"{floor:.1f} s/tile, i.e. at most {bound:.2f}x the official tiles/s on this CPU in float32")
    results["load_average"] = load_average()
    print(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker-official":
        official_worker(sys.argv[2])
    else:
        main()
