"""Per-component time split and FLOPs of one CroCo-Stereo ViT-L tile (crop 352x704): f3d-jax vs the official torch.

(`ref` is the folder of `../shared/tools/reference_env.sh`: the official checkouts and their torch venv.)

    PYTHONPATH=. python experiments/profile_stereoflow.py ours [--batch B] [--reps R]
    F3D_REFERENCE_ROOT=ref ref/venv/bin/python experiments/profile_stereoflow.py official [--batch B]

Components: encoder (patch embed + 24 blocks + enc_norm, both images), decoder (decoder_embed + 12 blocks +
dec_norm), DPT act_postprocess (+ layer_rn), refinenets (4..2 and refinenet1's fusion), output head (refinenet1's
upsampling + the head convs). Ours runs each component as its own jit (precision highest) and reports XLA's cost
analysis FLOPs; the official side times its submodules with forward hooks. `--cpu-time` reports process CPU
seconds instead of wall seconds: with both sides pinned to one core and one thread (below), the compute each
component costs, comparable across runs on a loaded machine (wall times are not).

    taskset -c 0 env PYTHONPATH=. XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python experiments/profile_stereoflow.py ours --cpu-time
    taskset -c 0 env OMP_NUM_THREADS=1 F3D_REFERENCE_ROOT=ref ref/venv/bin/python \
        experiments/profile_stereoflow.py official --cpu-time
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_stereoflow import CROP, VITL, random_state_dict  # noqa: E402


CLOCK = time.perf_counter  # --cpu-time: time.process_time (CPU seconds of the process, robust on a loaded machine)


def ours(batch: int, reps: int) -> None:
    import jax
    import jax.numpy as jnp

    from f3d_jax.models.binocular import CroCoDownstreamConfig, _module, binocular_forward
    from f3d_jax.nn.layers import conv3x3_of_upsampled
    from f3d_jax.nn.precision import matmul_precision
    from f3d_jax.weights.convert import convert_state_dict, expected_torch_shapes

    config = CroCoDownstreamConfig(**VITL, img_size=CROP, task="stereo")
    params = convert_state_dict(config, random_state_dict(expected_torch_shapes(config), 0), "random", consume=True)
    rng = np.random.default_rng(1)
    img1 = jnp.asarray(np.tanh(rng.standard_normal((batch, *CROP, 3), dtype=np.float32)) * 2)
    img2 = jnp.roll(img1, -24, axis=2)
    hw = CROP

    def mod(p):
        return _module(config, p)

    @jax.jit
    def enc(p, a, b):
        with matmul_precision("highest", jnp.float32):
            return mod(p)._encode_pair(a, b, None, None)

    @jax.jit
    def dec(p, e1, f2, pos1, pos2):
        with matmul_precision("highest", jnp.float32):
            m = mod(p)
            x, y = m.decoder_embed(e1[-1]), m.decoder_embed(f2)
            out = []
            for blk in m.dec_blocks:
                x = blk(x, y, pos1, pos2, None)
                out.append(x)
            out[-1] = m.dec_norm(x)
            return out

    def hooked(p, e1, d):
        decout = e1 + d
        return [decout[h] for h in config.hooks]

    @jax.jit
    def act(p, toks):
        with matmul_precision("highest", jnp.float32):
            dpt = mod(p).head.dpt
            nh, nw = hw[0] // 16, hw[1] // 16
            layers = []
            for k in range(4):
                x = toks[k].reshape(toks[k].shape[0], nh, nw, -1)
                for layer in dpt.act_postprocess[k]:
                    x = layer(x)
                layers.append(dpt.scratch.layer_rn[k](x))
            return layers

    @jax.jit
    def refine(p, layers):
        with matmul_precision("highest", jnp.float32):
            s = mod(p).head.dpt.scratch
            path4 = s.refinenet4(layers[3])
            path3 = s.refinenet3(path4, layers[2])
            path2 = s.refinenet2(path3, layers[1])
            return s.refinenet1.fuse(path2, layers[0])

    @jax.jit
    def outhead(p, fused1):
        with matmul_precision("highest", jnp.float32):
            dpt = mod(p).head.dpt
            h, rn1 = dpt.head, dpt.scratch.refinenet1.out_conv
            out = conv3x3_of_upsampled(fused1, h["0"].kernel[...], h["0"].bias[...], rn1.kernel[0, 0], rn1.bias[...])
            out = conv3x3_of_upsampled(out, h["2"].kernel[...], h["2"].bias[...])
            return h["4"](jax.nn.relu(out))

    def flops(fn, *a):
        ca = fn.lower(*a).compile().cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        return float(ca.get("flops", float("nan")))

    def timeit(fn, *a):
        out = jax.block_until_ready(fn(*a))  # compile + warm
        ts = []
        for _ in range(reps):
            t0 = CLOCK()
            out = jax.block_until_ready(fn(*a))
            ts.append(CLOCK() - t0)
        return out, min(ts)

    rows = []
    e, t = timeit(enc, params, img1, img2)
    rows.append(("encoder", t, flops(enc, params, img1, img2)))
    e1, f2, pos1, pos2 = e
    d, t = timeit(dec, params, e1, f2, pos1, pos2)
    rows.append(("decoder", t, flops(dec, params, e1, f2, pos1, pos2)))
    toks = hooked(params, e1, d)
    layers, t = timeit(act, params, toks)
    rows.append(("act_postprocess+layer_rn", t, flops(act, params, toks)))
    fused, t = timeit(refine, params, layers)
    rows.append(("refinenets", t, flops(refine, params, layers)))
    _, t = timeit(outhead, params, fused)
    rows.append(("output head", t, flops(outhead, params, fused)))
    _, t = timeit(lambda a, b: binocular_forward(config, params, a, b), img1, img2)
    whole = flops(jax.jit(lambda p, a, b: binocular_forward(config, p, a, b)), params, img1, img2)
    rows.append(("whole forward (one jit)", t, whole))
    report("ours", batch, rows)


def report(side: str, batch: int, rows) -> None:
    print(f"{side}, batch {batch} tiles, {CLOCK.__name__}; load {open('/proc/loadavg').read().split()[:3]}")
    for name, t, f in rows:
        gf = f"{f / t / 1e9:7.1f} GFLOP/s  {f / batch / 1e9:8.1f} GFLOP/tile" if f == f else ""
        print(f"  {name:28s} {t / batch:8.3f} s/tile  {gf}")
    print(json.dumps(dict(side=side, batch=batch, rows=[(n, t / batch, f / batch if f == f else None)
                                                         for n, t, f in rows])))


def official(batch: int, reps: int) -> None:
    import torch

    root = Path(os.environ["F3D_REFERENCE_ROOT"])
    sys.path.insert(0, str(root / "croco"))
    from models.croco_downstream import CroCoDownstreamBinocular
    from models.head_downstream import PixelwiseTaskWithDPT

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    head = PixelwiseTaskWithDPT()
    head.num_channels = 2
    net = CroCoDownstreamBinocular(head, **VITL, img_size=CROP).eval()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in random_state_dict(shapes, 0).items()})
    dpt = net.head.dpt
    groups = {"encoder": [net.patch_embed, *net.enc_blocks, net.enc_norm],
              "decoder": [net.decoder_embed, *net.dec_blocks, net.dec_norm],
              "act_postprocess+layer_rn": [*dpt.act_postprocess, *dpt.scratch.layer_rn],
              "refinenets": [dpt.scratch.refinenet4, dpt.scratch.refinenet3, dpt.scratch.refinenet2,
                             dpt.scratch.refinenet1],
              "output head": [dpt.head]}
    acc = {k: 0.0 for k in groups}
    start = {}
    for g, mods in groups.items():
        for m in mods:
            m.register_forward_pre_hook(lambda mod, inp, g=g: start.__setitem__(id(mod), CLOCK()))
            m.register_forward_hook(lambda mod, inp, out, g=g: acc.__setitem__(
                g, acc[g] + CLOCK() - start[id(mod)]))
    rng = np.random.default_rng(1)
    img1 = np.tanh(rng.standard_normal((batch, *CROP, 3), dtype=np.float32)) * 2
    a = torch.from_numpy(img1.transpose(0, 3, 1, 2).copy())
    b = torch.roll(a, -24, dims=3)
    best = None
    with torch.no_grad():
        for _ in range(reps + 1):
            for k in acc:
                acc[k] = 0.0
            t0 = CLOCK()
            net(a, b)
            tot = CLOCK() - t0
            if best is None or tot < best[0]:
                best = (tot, dict(acc))
    tot, parts = best
    rows = [(k, v, float("nan")) for k, v in parts.items()] + [("whole forward", tot, float("nan"))]
    report("official", batch, rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("side", choices=("ours", "official"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true", help="report process CPU seconds instead of wall seconds")
    args = ap.parse_args()
    if args.cpu_time:
        CLOCK = time.process_time
    (ours if args.side == "ours" else official)(args.batch, args.reps)
