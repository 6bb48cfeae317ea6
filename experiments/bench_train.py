"""Training-step benchmark: full-size CroCo v2 ViT-L pretraining and DUSt3R-512 DPT steps (random data).

Reports per model: step time, tokens/s (input patch tokens of both images of every pair), peak memory, XLA's
FLOP count of the step and the model FLOP utilisation (MFU = FLOP / step time / peak FLOP/s of the device:
the datasheet dense peak of a GPU/TPU for the dtype, or on CPU a float32 matmul measured in the same run).
With F3D_REFERENCE_ROOT set (the official code + a torch venv, as for bench_networks.py) the official step
(same model, same batch shapes and data, AdamW with the official groups, DUSt3R's symmetrised
`loss_of_one_batch` with the official criterion) runs in a second process and the ratio is printed.

  python experiments/bench_train.py --models croco dust3r --batch 1 --steps 1          # CPU, reduced batch
  F3D_REFERENCE_ROOT=/path/to/ref python experiments/bench_train.py --batch 1 --steps 1
  python experiments/bench_train.py --batch 16 --steps 10 --dtype bf16 --attention cudnn   # one GPU

Measured on the 2-core CPU dev machine (heavily shared, load ~10: noisy), CroCo v2 ViT-L/Base, batch 2 pairs,
fp32: f3d-jax 136 s/step vs official 359 s/step (2.6x; 1.11 TFLOP/step by XLA's count; peak RSS 9.9 GB vs
8.8 GB), before the `--remat` option (that run kept everything: `--remat none`). DUSt3R-512 DPT, batch 1, fp32,
idle machine, `--remat blocks` (without remat XLA asks for 36 GB; 23 GB RAM here): f3d-jax 138.7 s/step vs
official 131.7 s/step (0.95x), peak RSS 19.7 GB vs 20.9 GB (`--models dust3r --batch 1 --steps 1`, 2026-11-28).
The FLOP count (and so the MFU) is that of the step without rematerialisation (recomputed work is not counted),
taken from XLA's cost analysis of the step lowered with `--remat none` whatever `--remat` runs.

The DUSt3R criterion is `ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)` (f3d_jax.train.losses).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import add_reference_paths, machine, peak_rss_mb, reference_python, run_worker  # noqa: E402

MODELS = {
    "croco": ("CroCoNet(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_num_heads=12, "
              "dec_depth=12, pos_embed='RoPE100')", (224, 224)),
    "dust3r": ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
               "head_type='dpt', output_mode='pts3d', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
               "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, "
               "dec_num_heads=12)", (384, 512)),
}
CRITERION = "ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)"
# dense datasheet peaks (FLOP/s) by device kind substring and dtype
PEAKS = {"H100": {"bf16": 989e12, "fp32": 67e12}, "H200": {"bf16": 989e12, "fp32": 67e12},
         "A100": {"bf16": 312e12, "fp32": 19.5e12}, "TPU v5p": {"bf16": 459e12}, "TPU v5": {"bf16": 197e12},
         "TPU v4": {"bf16": 275e12}, "TPU v6": {"bf16": 918e12}}


def batch_arrays(model: str, b: int, seed: int = 0) -> dict:
    """The same random batch on both sides (numpy, NHWC): images, and for DUSt3R a plausible geometry."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = MODELS[model][1]
    out = {}
    for v in ("view1", "view2"):
        d = {"img": rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32),
             "true_shape": np.tile(np.array([h, w], np.int32), (b, 1))}
        if model == "dust3r":
            z = rng.uniform(1, 5, (b, h, w)).astype(np.float32)
            u, vv = np.meshgrid(np.arange(w) - w / 2, np.arange(h) - h / 2)
            d["pts3d"] = np.stack([u * z / 500, vv * z / 500, z], -1).astype(np.float32)
            d["valid_mask"] = rng.uniform(size=(b, h, w)) > 0.05
            d["camera_pose"] = np.tile(np.eye(4, dtype=np.float32), (b, 1, 1))
        out[v] = d
    return out


def loss_fn_of(model: str, cfg, precision, remat: str):
    """(loss function of the train step, criterion text) for `model` ('croco' or 'dust3r')."""
    from f3d_jax.train import loop
    from f3d_jax.train.losses import build_criterion

    if model == "croco":
        return loop.croco_loss_fn(cfg, True, precision, remat), "MaskedMSE(norm_pix_loss=True)"
    return loop.stereo_loss_fn(cfg, build_criterion(CRITERION), precision=precision, remat=remat), CRITERION


def jax_worker(args) -> dict:
    import jax
    import jax.numpy as jnp
    from bench_networks import random_params

    from f3d_jax.models.config import config_from_official
    from f3d_jax.models.model import abstract_params
    from f3d_jax.train import loop, optim
    from f3d_jax.weights.constructor import parse_constructor, with_defaults

    name, kw = parse_constructor(MODELS[args.model][0])
    cfg = config_from_official(name, with_defaults(name, kw))
    precision = None if args.precision == "auto" else args.precision
    loss_fn, criterion = loss_fn_of(args.model, cfg, precision, args.remat)
    if args.attention == "cudnn":  # the stereo step's attention (CroCo's forward has no impl switch)
        import functools

        loop.symmetric_forward = functools.partial(loop.symmetric_forward, impl="cudnn")
    params = jax.device_put(random_params(abstract_params(cfg), args.seed))
    trainable = loop.trainable_mask(cfg)
    tx = optim.make_optimizer(optim.OptimConfig(), params, 1e-4, trainable)
    compute = jnp.bfloat16 if args.dtype == "bf16" else None
    step = jax.jit(loop.make_train_step(loss_fn, tx, trainable=trainable, compute_dtype=compute), donate_argnums=0)
    state = loop.init_state(params, tx)
    del params
    batch = jax.device_put(loop.numeric(batch_arrays(args.model, args.batch, args.seed)))
    key = jax.random.key(0)
    t = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    flops = model_flops(args, cfg, state, batch, key, tx, trainable, compute, precision, compiled)
    state, m = compiled(state, batch, key)  # warm-up (first execution)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, m = compiled(state, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    dev = jax.devices()[0]
    res = {"side": "f3d-jax", "device": f"{dev.platform}:{dev.device_kind}", "compile_s": compile_s,
           "step_s": sorted(times)[len(times) // 2], "all_s": times, "flops": flops,
           "loss": float(m["loss"]), "criterion": criterion, "peak_rss_mb": peak_rss_mb()}
    stats = dev.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        res["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    else:
        ma = compiled.memory_analysis()
        if ma is not None:
            res["xla_live_mb"] = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                                  - ma.alias_size_in_bytes) / 2**20
    res["peak_flops"], res["peak_source"] = peak_flops(dev, args.dtype)
    return res


def model_flops(args, cfg, state, batch, key, tx, trainable, compute, precision, compiled) -> float:
    """FLOPs of one step of the model without rematerialisation (the MFU convention: recomputation is not
    useful work). XLA's cost analysis counts a `lax.scan` body once, so with `--remat blocks|dots` (block
    stacks under scan) the count is taken from the same step lowered with remat off (lowered, not compiled)."""
    import jax

    from f3d_jax.train import loop

    def count(c) -> float:
        c = c.cost_analysis()
        c = c[0] if isinstance(c, list) else c
        return float((c or {}).get("flops", float("nan")))

    if args.remat == "none":
        return count(compiled)
    plain, _ = loss_fn_of(args.model, cfg, precision, None)
    step = jax.jit(loop.make_train_step(plain, tx, trainable=trainable, compute_dtype=compute))
    return count(step.lower(state, batch, key))


def peak_flops(dev, dtype: str) -> tuple[float, str]:
    for kind, peaks in PEAKS.items():
        if kind.lower() in dev.device_kind.lower() and dtype in peaks:
            return peaks[dtype], f"datasheet {kind} {dtype}"
    if dev.platform == "cpu":
        import jax
        import jax.numpy as jnp

        a = jnp.ones((2048, 2048), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        t = time.perf_counter()
        for _ in range(5):
            f(a).block_until_ready()
        return 5 * 2 * 2048**3 / (time.perf_counter() - t), "measured 2048^3 fp32 matmul on this CPU"
    return float("nan"), "unknown device peak"


def torch_worker(args) -> dict:
    import numpy as np
    import torch

    add_reference_paths(Path(os.environ["F3D_REFERENCE_ROOT"]))
    torch.manual_seed(args.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as dust3r/training.py
        torch.backends.cudnn.allow_tf32 = True
    arrays = batch_arrays(args.model, args.batch, args.seed)

    def view(d, tag):
        out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in d.items()}
        out["img"] = out["img"].permute(0, 3, 1, 2).contiguous()
        out["instance"] = [f"{tag}{i}" for i in range(args.batch)]
        return out

    if args.model == "croco":
        from models.criterion import MaskedMSE
        from models.croco import CroCoNet
        model = CroCoNet(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_num_heads=12,
                         dec_depth=12, pos_embed="RoPE100").to(dev)
        crit = MaskedMSE(norm_pix_loss=True)
        v1, v2 = view(arrays["view1"], "a"), view(arrays["view2"], "b")

        def loss_of():
            out, mask, target = model(v1["img"], v2["img"])
            return crit(out, mask, target)
    else:
        from dust3r.inference import loss_of_one_batch
        from dust3r.losses import L21, ConfLoss, Regr3D
        from dust3r.model import AsymmetricCroCo3DStereo
        inf = math.inf
        model = AsymmetricCroCo3DStereo(
            pos_embed="RoPE100", patch_embed_cls="ManyAR_PatchEmbed", img_size=(512, 512), head_type="dpt",
            output_mode="pts3d", depth_mode=("exp", -inf, inf), conf_mode=("exp", 1, inf), enc_embed_dim=1024,
            enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12).to(dev)
        crit = ConfLoss(Regr3D(L21, norm_mode="avg_dis"), alpha=0.2)
        v1, v2 = view(arrays["view1"], "a"), view(arrays["view2"], "b")

        def loss_of():
            return loss_of_one_batch((v1, v2), model, crit, dev, symmetrize_batch=True, use_amp=bool(args.amp),
                                     ret="loss")[0]
    import utils.misc as umisc  # croco/utils/misc.py
    model.train()
    opt = torch.optim.AdamW(umisc.get_parameter_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(enabled=bool(args.amp and dev == "cuda"))

    def one():
        with torch.autocast(dev, enabled=bool(args.amp and args.model == "croco" and dev == "cuda")):
            loss = loss_of()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if dev == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    one()  # warm-up
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = one()
        times.append(time.perf_counter() - t)
    res = {"side": "official", "device": dev, "step_s": sorted(times)[len(times) // 2], "all_s": times,
           "loss": loss, "torch": torch.__version__, "amp": bool(args.amp), "peak_rss_mb": peak_rss_mb()}
    if dev == "cuda":
        res["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def tokens_per_step(model: str, batch: int) -> int:
    h, w = MODELS[model][1]
    return batch * 2 * (h // 16) * (w // 16)  # input patch tokens of both views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["croco", "dust3r"], choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=1, help="pairs per step")
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--precision", default="auto", choices=["auto", "highest", "high", "default"])
    ap.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
    ap.add_argument("--remat", default="blocks", choices=["none", "blocks", "dots"],
                    help="f3d-jax side: rematerialisation of the training forward (f3d_jax.nn.remat)")
    ap.add_argument("--amp", type=int, default=0, help="official side: CUDA autocast (CroCo's --amp 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(jax_worker(args) if args.worker == "jax" else torch_worker(args)))
        return
    print(f"machine: {machine()}")
    ref = reference_python()
    if ref is None:
        print("official implementation: not measured (set F3D_REFERENCE_ROOT to the reference env with torch)")
    for name in args.models:
        common = ["--batch", str(args.batch), "--steps", str(args.steps), "--seed", str(args.seed), "--model", name]
        jx = run_worker([__file__, "--worker", "jax", "--dtype", args.dtype, "--precision", args.precision,
                         "--attention", args.attention, "--remat", args.remat, *common])
        tok = tokens_per_step(name, args.batch)
        mfu = jx["flops"] / jx["step_s"] / jx["peak_flops"]
        mem = (f"device peak {jx['device_peak_mb']:.0f} MB" if "device_peak_mb" in jx
               else f"XLA live buffers {jx.get('xla_live_mb', float('nan')):.0f} MB")
        print(f"\n{name} {MODELS[name][1][0]}x{MODELS[name][1][1]} batch {args.batch} {args.dtype} remat={args.remat} "
              f"on {jx['device']} "
              f"(criterion: {jx['criterion']})")
        print(f"  f3d-jax : {jx['step_s']:.3f} s/step (all {['%.3f' % t for t in jx['all_s']]}), "
              f"{tok / jx['step_s']:.0f} tokens/s, {args.batch / jx['step_s']:.3f} pairs/s, compile "
              f"{jx['compile_s']:.1f} s, {jx['flops'] / 1e12:.2f} TFLOP/step, MFU {100 * mfu:.1f}% "
              f"(peak {jx['peak_flops'] / 1e12:.3f} TFLOP/s, {jx['peak_source']}), {mem}, "
              f"peak RSS {jx['peak_rss_mb']:.0f} MB")
        if ref:
            py, _ = ref
            tr = run_worker([__file__, "--worker", "torch", "--amp", str(args.amp), *common], python=py)
            mem_t = (f"device peak {tr['device_peak_mb']:.0f} MB" if "device_peak_mb" in tr else "")
            print(f"  official: {tr['step_s']:.3f} s/step (all {['%.3f' % t for t in tr['all_s']]}), "
                  f"{tok / tr['step_s']:.0f} tokens/s, torch {tr['torch']} amp={tr['amp']} {mem_t} "
                  f"peak RSS {tr['peak_rss_mb']:.0f} MB")
            print(f"  speed-up f3d-jax / official: {tr['step_s'] / jx['step_s']:.2f}x")


if __name__ == "__main__":
    main()
