"""Full-size network forward: DUSt3R-512-DPT and MASt3R (ViT-L encoder, ViT-B decoders) on one pair.

Command (CPU, ~10 min on 2 cores):
    python experiments/bench_networks.py                         # fp32, 512x384, both models
    F3D_REFERENCE_ROOT=/path/to/ref python experiments/bench_networks.py   # + official PyTorch, same weights
    python experiments/bench_networks.py --dtype bf16 --attention cudnn    # on a GPU

Weights are random (built abstractly, then filled from a seeded pool: no download, no random-init
compile). Each measurement runs in a fresh process so peak memory is clean. With the reference env
the official model is loaded with the *same* weights (strict `load_state_dict`) and fed the same
pair: the script prints the max output difference next to the time ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (add_reference_paths, machine, peak_rss_mb, reference_python,  # noqa: E402
                           run_worker, summarize)

MODELS = {"dust3r_dpt": "DUSt3R_ViTLarge_BaseDecoder_512_dpt",
          "mast3r": "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
          "dust3r_224": "DUSt3R_ViTLarge_BaseDecoder_224_linear"}


def random_params(abstract, seed: int = 0):
    """Fill an abstract params tree with structured random numbers (fast for ~700 M params).

    Matrices and conv kernels ~ N(0, 1/fan_in); LayerNorm scales 1 + N(0, 0.02^2); biases and other vectors
    N(0, 0.02^2) (biases near 1 would grow the activations through a DPT head until `exp` depth overflows
    and the training loss is NaN)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(1 << 20).astype(np.float32)

    def fill(path, s):
        n = math.prod(s.shape)
        fan_in = s.shape[0] if len(s.shape) == 2 else (math.prod(s.shape[:-1]) if len(s.shape) > 2 else 1)
        off = int(rng.integers(0, pool.size))
        reps = -(-(off + n) // pool.size)
        flat = np.tile(pool, reps)[off:off + n] if reps > 1 else pool[off:off + n]
        scale = 1.0 / math.sqrt(max(fan_in, 1)) if len(s.shape) >= 2 else 0.02
        arr = flat.reshape(s.shape) * scale
        if len(s.shape) == 1 and s.shape[0] > 0 and "scale" in jax.tree_util.keystr(path[-1:]):
            arr = arr + 1.0  # LayerNorm scales near 1
        return arr

    return jax.tree_util.tree_map_with_path(fill, abstract)


def jax_worker(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from f3d_jax.models.config import config_from_official
    from f3d_jax.models.model import abstract_params, stereo_forward
    from f3d_jax.weights.registry import get_checkpoint_info

    info = get_checkpoint_info(MODELS[args.model])
    config = config_from_official(info.class_name, dict(info.inference_kwargs))
    np_params = random_params(abstract_params(config), args.seed)
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), np_params)
    h, w = args.height, args.width
    rng = np.random.default_rng(args.seed + 1)
    img1 = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    img2 = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    ts = np.array([[h, w]], np.int32)
    impl = None if args.attention == "xla" else args.attention
    t0 = time.perf_counter()
    lowered = stereo_forward.lower(config, params, img1, img2, ts, ts, False, impl)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(params, img1, img2, ts, ts))
        times.append(time.perf_counter() - t)
    res = {"side": "f3d-jax", "model": args.model, "dtype": args.dtype, "attention": args.attention,
           "compile_s": compile_s, "forward": summarize(times), "gflop": flops / 1e9,
           "peak_rss_mb": peak_rss_mb(), "device": str(jax.devices()[0].device_kind)}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        res["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    if args.export:
        from safetensors.numpy import save_file

        from f3d_jax.weights.convert import params_to_state_dict
        sd = params_to_state_dict(config, np_params)
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(args.export, "sd.safetensors"))
        np.savez(os.path.join(args.export, "io.npz"), img1=img1, img2=img2,
                 **{f"pred1.{k}": np.asarray(v, np.float32) for k, v in out[0].items()},
                 **{f"pred2.{k}": np.asarray(v, np.float32) for k, v in out[1].items()})
        (Path(args.export) / "kwargs.json").write_text(json.dumps([info.class_name, dict(info.inference_kwargs)]))
    return res


def torch_worker(args) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    add_reference_paths(Path(os.environ["F3D_REFERENCE_ROOT"]))
    torch.set_num_threads(os.cpu_count() or 1)
    class_name, kwargs = json.loads((Path(args.export) / "kwargs.json").read_text())
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if class_name == "AsymmetricMASt3R":
        from mast3r.model import AsymmetricMASt3R as cls
    else:
        from dust3r.model import AsymmetricCroCo3DStereo as cls
    model = cls(**kwargs).eval()
    model.load_state_dict(load_file(os.path.join(args.export, "sd.safetensors")), strict=True)
    io = np.load(os.path.join(args.export, "io.npz"))
    h, w = io["img1"].shape[1:3]
    ts = torch.tensor([[h, w]], dtype=torch.int32)
    v1 = {"img": torch.from_numpy(io["img1"]).permute(0, 3, 1, 2).contiguous(), "true_shape": ts, "instance": ["0"]}
    v2 = {"img": torch.from_numpy(io["img2"]).permute(0, 3, 1, 2).contiguous(), "true_shape": ts, "instance": ["1"]}
    times = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t = time.perf_counter()
            p1, p2 = model(v1, v2)
            times.append(time.perf_counter() - t)
    diff = 0.0
    for k, v in list(p1.items()):
        ref = io[f"pred1.{k}"]
        diff = max(diff, float(np.abs(v.numpy() - ref).max() / max(1.0, np.abs(ref).max())))
    return {"side": "official", "model": args.model, "forward": summarize(times), "peak_rss_mb": peak_rss_mb(),
            "max_rel_diff_vs_f3d": diff, "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dust3r_dpt", "mast3r"], choices=list(MODELS))
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--export", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(jax_worker(args) if args.worker == "jax" else torch_worker(args)))
        return

    print(f"machine: {machine()}")
    ref = reference_python()
    if ref is None:
        print("official implementation: not measured (set F3D_REFERENCE_ROOT to the reference env with torch)")
    for name in args.models:
        common = ["--height", str(args.height), "--width", str(args.width), "--repeats", str(args.repeats),
                  "--seed", str(args.seed), "--model", name]
        with tempfile.TemporaryDirectory() as tmp:
            jx = run_worker([__file__, "--worker", "jax", "--dtype", args.dtype, "--attention", args.attention,
                             *common, *(["--export", tmp] if ref else [])])
            f = jx["forward"]
            gflops = jx["gflop"] / f["median_s"]
            print(f"\n{name} {args.height}x{args.width} {args.dtype} attention={args.attention} on {jx['device']}")
            print(f"  f3d-jax : {f['median_s']:.3f} s/pair (min {f['min_s']:.3f}, max {f['max_s']:.3f}, n={f['n']}), "
                  f"compile {jx['compile_s']:.1f} s, {jx['gflop']:.0f} GFLOP/pair = {gflops:.1f} GFLOP/s, "
                  f"peak RSS {jx['peak_rss_mb']:.0f} MB"
                  + (f", device peak {jx['device_peak_mb']:.0f} MB" if "device_peak_mb" in jx else ""))
            if ref:
                tr = run_worker([__file__, "--worker", "torch", *common, "--export", tmp], python=ref[0])
                t = tr["forward"]
                print(f"  official: {t['median_s']:.3f} s/pair (min {t['min_s']:.3f}, n={t['n']}), torch {tr['torch']} "
                      f"({tr['threads']} threads), peak RSS {tr['peak_rss_mb']:.0f} MB; "
                      f"max rel. output diff {tr['max_rel_diff_vs_f3d']:.1e}")
                print(f"  speed-up vs official: {t['median_s'] / f['median_s']:.2f}x")


if __name__ == "__main__":
    main()
