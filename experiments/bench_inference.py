"""Pair-inference throughput: f3d-jax engine vs official `dust3r.inference.inference`.

Complete symmetrized graphs with random full-size weights (ViT-L/16 encoder 1024/24/16, ViT-B
decoders 768/12/12, RoPE100):

* `224`: DUSt3R-224-linear, N images of 224x224 (default N = 8: 56 pairs), batch 8;
* `512`: DUSt3R-512-DPT, N images of 512x384 (W x H; default N = 4: 12 pairs), batch 4.

Reported per setting: pairs/s and s/pair (steady state: compiled beforehand), encoder / decoder
wall-time split, the host share of the wall time (device-to-host transfer + building the official
layout, and everything outside the encoder and decoder), the fraction of the device's peak FLOP/s
(FLOPs counted by XLA's cost analysis of a CPU lowering of the same steps: GPU cost analysis has no
flops; the peak comes from a table of known devices or `--peak-tflops`), peak device memory
(`memory_stats()['peak_bytes_in_use']`; on CPU the process's peak RSS), compile time (AOT lower +
compile of the two jitted steps; the run then loads them from a throw-away persistent cache).

`--device cpu|gpu|tpu` (default: jax's default backend) picks where f3d-jax runs; the official
`inference` runs on the same device (torch 'cuda' for gpu; tpu: the official code has no TPU path, it
runs on CPU and this is said). When `F3D_REFERENCE_ROOT` (a folder with the official `dust3r/`
checkout) is set, the official code runs on the same inputs with the same weights: in this process if
torch is importable here, otherwise in a worker process of `$F3D_REFERENCE_ROOT/venv/bin/python`,
and the same-run speed ratio is printed; otherwise the official figures measured on the development
CPU (fp32, 2 threads: 2.4 s/pair at 224, 11.9 s/pair at 512-DPT) give an indicative ratio, and this is said.

`--accuracy` also measures the bf16 choices against fp32 on the first batch of pairs: bf16 trunk with
float32 heads (the engine's `dtype=bfloat16`, the default mixed precision, as the official autocast) and
bf16 everywhere (heads included), as max relative error of every output.

    python experiments/bench_inference.py                 # both settings, defaults
    python experiments/bench_inference.py --settings 224 --n 8
    python experiments/bench_inference.py --device gpu --dtype bfloat16 --attention-impl cudnn --accuracy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def official_worker(inputs: str) -> None:
    """`--worker-official NPZ`: run the official `inference` (torch only, no jax) on the pairs, weights and
    settings saved in NPZ; save pred1/pts3d next to it and print one JSON line (seconds)."""
    import numpy as np
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _bench_common import add_reference_paths
    add_reference_paths(Path(os.environ["F3D_REFERENCE_ROOT"]))
    from dust3r.inference import inference as official_inference
    from dust3r.model import AsymmetricCroCo3DStereo

    d = np.load(inputs, allow_pickle=False)
    meta = json.loads(str(d["meta"]))
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["kwargs"].items()}
    net = AsymmetricCroCo3DStereo(**kw).eval()
    sd = {k[3:]: torch.from_numpy(np.ascontiguousarray(d[k])) for k in d.files if k.startswith("sd.")}
    print("   official load_state_dict:", net.load_state_dict(sd, strict=False), file=sys.stderr)
    net = net.to(meta["device"])
    imgs = [dict(img=torch.from_numpy(np.ascontiguousarray(d[f"img{k}"].transpose(0, 3, 1, 2))),
                 true_shape=np.array([d[f"img{k}"].shape[1:3]], np.int32), idx=k,
                 instance=str(k)) for k in range(meta["n"])]
    pairs = [(imgs[i], imgs[j]) for i, j in d["pairs"]]
    t0 = time.perf_counter()
    with torch.no_grad():
        out = official_inference(pairs, net, meta["device"], batch_size=meta["batch"], verbose=False)
    if meta["device"] == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if meta["device"] == "cuda" else None
    np.save(inputs + ".pts3d.npy", out["pred1"]["pts3d"].float().cpu().numpy())
    print(json.dumps(dict(seconds=seconds, peak_bytes=peak)))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker-official":
    official_worker(sys.argv[2])
    sys.exit(0)

import jax  # noqa: E402

# Compiled steps are compiled AOT first (timed), then picked up from this cache by the timed run.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="f3d_bench_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common  # noqa: E402

from f3d_jax.infer import engine as E  # noqa: E402
from f3d_jax.infer import steps as S  # noqa: E402
from f3d_jax.infer.pairs import make_pairs  # noqa: E402
from f3d_jax.models.config import DUSt3RConfig  # noqa: E402
from f3d_jax.models.model import Model, abstract_params  # noqa: E402

OFFICIAL_S_PER_PAIR = {"224": 2.4, "512": 11.9}  # official fp32, 2 threads, development CPU
SETTINGS = {
    "224": dict(head_type="linear", img_size=(224, 224), hw=(224, 224), n=8, batch=8),
    "512": dict(head_type="dpt", img_size=(512, 512), hw=(384, 512), n=4, batch=4),
}


def machine() -> str:
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    devs = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{_bench_common.machine()}; {ncpu} cores usable; {platform.platform()}; "
            f"jax {jax.__version__} backend {jax.default_backend()} ({jax.device_count()} x {devs})")


def make_config(head_type: str, img_size: tuple[int, int]) -> DUSt3RConfig:
    return DUSt3RConfig(img_size=img_size, patch_size=16, enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
                        dec_embed_dim=768, dec_depth=12, dec_num_heads=12, pos_embed="RoPE100", head_type=head_type,
                        output_mode="pts3d", landscape_only=False, patch_embed_cls="PatchEmbedDust3R")


def random_params(config: DUSt3RConfig, seed: int = 0) -> dict:
    """Seeded random weights without a jitted init: kernels ~ N(0, 1/fan_in) (windows of one
    Gaussian pool at random offsets, fast), biases 0, norm scales 1."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(1 << 22, dtype=np.float32)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return jnp.ones(s.shape, s.dtype)
        if name == "bias" or len(s.shape) < 2:
            return jnp.zeros(s.shape, s.dtype)
        fan_in = math.prod(s.shape[:-1])
        w = np.roll(pool, int(rng.integers(pool.size)))
        w = np.resize(w, math.prod(s.shape)).reshape(s.shape) * np.float32(1 / np.sqrt(fan_in))
        return jnp.asarray(w, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract_params(config))


def random_images(n: int, hw: tuple[int, int], seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    imgs = []
    for k in range(n):
        # smooth-ish images in [-1, 1] (exact content does not matter for speed)
        img = np.tanh(rng.standard_normal((1, *hw, 3), dtype=np.float32)).astype(np.float32)
        imgs.append(dict(img=img, true_shape=np.array([hw], np.int32), idx=k, instance=str(k)))
    return imgs


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# Dense peak FLOP/s (TFLOP/s) per device kind substring: (bf16, fp32 without TF32). Public spec sheets.
PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3),
               "T4": (65.0, 8.1), "TPU v4": (275.0, 275.0 / 2), "TPU v5 lite": (197.0, 98.5),
               "TPU v5p": (459.0, 229.5), "TPU v6": (918.0, 459.0)}


def peak_tflops(device: jax.Device, dtype, override: float | None) -> float | None:
    if override:
        return override
    for kind, (bf16, fp32) in PEAK_TFLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return bf16 if dtype is not None else fp32
    return None


def peak_device_gib(device: jax.Device) -> tuple[float, str]:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "peak_bytes_in_use"
    return peak_rss_gib(), "process peak RSS (CPU: device = host memory)"


def _flops(lowered) -> float:
    ca = lowered.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def cpu_flops(eng: E.InferenceEngine, hw: tuple[int, int], n: int) -> tuple[float, float]:
    """XLA flops per encoder step and per (unstepped) decoder step, from a CPU lowering on abstract inputs
    (GPU cost analysis counts no flops; a loop body would be counted once)."""
    cpu_mesh = S.make_mesh(jax.devices("cpu")[:1])
    be, bs = eng.encoder_batch_size, eng.batch_size
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), eng.params)
    sf, sp = (jax.ShapeDtypeStruct(a.shape, a.dtype) for a in eng.empty_store(hw, n))
    f32, i32 = jnp.float32, jnp.int32
    static = dict(config=eng.config, impl=None, mesh=cpu_mesh)
    enc = S.encode_step.lower(params, sf, sp, jax.ShapeDtypeStruct((be, *hw, 3), f32),
                              jax.ShapeDtypeStruct((be, 2), i32), np.int32(0), **static)
    idx, ts = jax.ShapeDtypeStruct((bs,), i32), jax.ShapeDtypeStruct((bs, 2), i32)
    dec = S.decode_step.lower(params, sf, sp, sf, sp, idx, idx, ts, ts, **static, hw1=hw, hw2=hw, pairs_per_step=None)
    return _flops(enc), _flops(dec)


def aot_compile(eng: E.InferenceEngine, hw: tuple[int, int], n: int) -> float:
    """Lower + compile the encoder and decoder steps with the exact arguments of the run; seconds."""
    t0 = time.perf_counter()
    be, bs = eng.encoder_batch_size, eng.batch_size
    sf, sp = eng.empty_store(hw, n)
    img = jax.device_put(np.zeros((be, *hw, 3), np.float32), eng._data)
    ts = jax.device_put(np.tile(np.array(hw, np.int32), (be, 1)), eng._data)
    static = dict(config=eng.config, impl=eng.attention_impl, mesh=eng.mesh)
    S.encode_step.lower(eng.params, sf, sp, img, ts, np.int32(0), **static).compile()
    idx = jax.device_put(np.zeros(bs, np.int32), eng._data)
    tsb = jax.device_put(np.tile(np.array(hw, np.int32), (bs, 1)), eng._data)
    args = (eng.params, sf, sp, sf, sp, idx, idx, tsb, tsb)
    S.decode_step.lower(*args, **static, hw1=hw, hw2=hw, pairs_per_step=eng._pairs_per_step(hw, hw)).compile()
    return time.perf_counter() - t0


def run_official(config: DUSt3RConfig, params: dict, imgs: list, pairs: list, batch: int, device: str):
    """Official `inference` on the same pairs and weights on `device` ('cpu' / 'cuda'), or None with the reason.

    Returns:
      ((seconds, pred1 pts3d (P, H, W, 3), peak device bytes or None), None) or (None, why).
    """
    root = os.environ.get("F3D_REFERENCE_ROOT")
    if not root:
        return None, "F3D_REFERENCE_ROOT is not set"
    from f3d_jax.infer.pairs import pairs_to_edges
    from f3d_jax.models.config import config_to_official
    from f3d_jax.weights.convert import params_to_state_dict

    _, kw = config_to_official(config)
    sd = params_to_state_dict(config, params)
    try:
        import torch  # noqa: F401
        python = sys.executable
    except ImportError:
        py = Path(root) / "venv" / "bin" / "python"
        if not py.exists():
            return None, f"torch is not installed here and {py} does not exist"
        python = str(py)
    index = {id(im): k for k, im in enumerate(imgs)}
    edges = np.array([[index[id(a)], index[id(b)]] for a, b in pairs], np.int64)
    assert (edges == pairs_to_edges(pairs)).all()
    with tempfile.TemporaryDirectory(prefix="f3d_bench_off_") as tmp:
        path = os.path.join(tmp, "inputs.npz")
        meta = dict(kwargs=kw, n=len(imgs), batch=batch, device=device)
        np.savez(path, meta=json.dumps(meta, default=lambda v: list(v) if isinstance(v, tuple) else str(v)),
                 pairs=edges, **{f"img{k}": im["img"] for k, im in enumerate(imgs)},
                 **{f"sd.{k}": np.asarray(v) for k, v in sd.items()})
        del sd
        out = subprocess.run([python, str(Path(__file__).resolve()), "--worker-official", path],
                             capture_output=True, text=True, env={**os.environ, "F3D_REFERENCE_ROOT": root})
        if out.returncode != 0:
            return None, f"official worker failed: {out.stderr[-2000:]}"
        for line in out.stderr.splitlines():
            if "load_state_dict" in line:
                print(line)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        return (res["seconds"], np.load(path + ".pts3d.npy"), res["peak_bytes"]), None


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1e-12, np.abs(b).max()))


def accuracy(model: Model, pairs: list, batch: int, impl: str | None, devices) -> None:
    """bf16 choices vs fp32 on the first batch of pairs: max relative error per output."""
    sub = pairs[:batch]
    ref = E.InferenceEngine(model, batch, devices=devices)(sub)
    mixed = E.InferenceEngine(model, batch, dtype=jnp.bfloat16, attention_impl=impl, devices=devices)(sub)
    all_bf16 = Model(model.config, jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, model.params))
    allb = E.InferenceEngine(all_bf16, batch, attention_impl=impl, devices=devices)(sub)
    for label, res in (("bf16 trunk + fp32 heads (default dtype=bfloat16)", mixed), ("bf16 everywhere", allb)):
        errs = ", ".join(f"{p}.{k} {max_rel(res[p][k], ref[p][k]):.2e}" for p in ("pred1", "pred2") for k in ref[p])
        print(f"   accuracy vs fp32, {label}: max rel. error {errs}")


def bench(name: str, n: int, batch: int, dtype, impl: str | None, official: bool, official_first: bool,
          device: str, peak_override: float | None, check_accuracy: bool) -> None:
    s = SETTINGS[name]
    hw = s["hw"]
    config = make_config(s["head_type"], s["img_size"])
    devices = jax.devices(device)[:1]
    dev = devices[0]
    print(f"\n== DUSt3R-{name}-{s['head_type']}: N={n} images {hw[1]}x{hw[0]} (WxH), complete symmetrized graph, "
          f"batch {batch}, dtype {jnp.dtype(dtype).name if dtype else 'float32'}, device {dev.device_kind} ({device})")
    t0 = time.perf_counter()
    with jax.default_device(dev):
        params = random_params(config)
    jax.block_until_ready(params)
    print(f"   random weights: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f} M params "
          f"in {time.perf_counter() - t0:.1f} s")
    model = Model(config, params)
    imgs = random_images(n, hw)
    pairs = make_pairs(imgs, "complete", symmetrize=True)
    eng = E.InferenceEngine(model, batch, dtype=dtype, attention_impl=impl, devices=devices,
                            encoder_batch_size=min(batch, n))
    t_compile = aot_compile(eng, hw, n)
    f_enc, f_dec = cpu_flops(eng, hw, n)
    f_img, f_pair = f_enc / eng.encoder_batch_size / 1e9, f_dec / eng.batch_size / 1e9
    print(f"   decoder step: {eng.batch_size} pairs, run {eng._pairs_per_step(hw, hw) or eng.batch_size} "
          "at a time (InferenceEngine pairs_per_step)")
    print(f"   compile (encoder + decoder steps, AOT): {t_compile:.1f} s; XLA cost analysis (CPU lowering): "
          f"{f_img:.0f} GFLOP per image encode, {f_pair:.0f} GFLOP per pair decode+heads")
    # The official code on this graph: consecutive pairs of a complete symmetrized graph are not
    # (a, b), (b, a) neighbours, so its symmetrized-batch shortcut never applies: 2 encodes per pair.
    ours_pp = (n * f_img + len(pairs) * f_pair) / len(pairs)
    off_pp = 2 * f_img + f_pair
    print(f"   work per pair: f3d-jax {ours_pp:.0f} GFLOP, official {off_pp:.0f} GFLOP "
          f"(ratio {off_pp / ours_pp:.2f}x = the speed-up at equal per-FLOP efficiency)")

    torch_dev = "cuda" if device == "gpu" else "cpu"
    if official and device == "tpu":
        print("   official code has no TPU path: it runs on the host CPU")
    got, why = None, "--no-official"
    if official and official_first:  # the order is a knob: the second side runs in a warmer, fuller process
        got, why = run_official(config, params, imgs, pairs, batch, torch_dev)
    t0 = time.perf_counter()
    res = eng(pairs, verbose=False)
    wall = time.perf_counter() - t0
    st = eng.stats
    assert st.encoder_images == n and st.n_pairs == len(pairs)
    fetch_s, collate_s = getattr(st, "fetch_s", 0.0), getattr(st, "collate_s", 0.0)  # (older engines: absent)
    host = fetch_s + collate_s
    outside = wall - st.encode_s - st.decode_s
    print(f"   f3d-jax: {len(pairs)} pairs in {wall:.1f} s = {len(pairs) / wall:.3f} pairs/s "
          f"({wall / len(pairs):.3f} s/pair)")
    print(f"     encoder {st.encode_s:.2f} s ({st.encoder_images} images, {st.encode_s / n:.3f} s/image), "
          f"decoder+heads {st.decode_s:.2f} s ({st.decode_s / len(pairs):.3f} s/pair)")
    print(f"     host share of wall time: {100 * host / wall:.1f}% (device-to-host {fetch_s:.3f} s + official "
          f"layout {collate_s:.3f} s); outside encoder/decoder: {100 * outside / wall:.1f}% ({outside:.3f} s)")
    achieved = (n * f_img + len(pairs) * f_pair) / wall / 1e3  # TFLOP/s
    pk = peak_tflops(dev, dtype, peak_override)
    frac = f" = {100 * achieved / pk:.1f}% of the device's peak {pk:.0f} TFLOP/s" if pk else \
        " (peak FLOP/s of this device unknown: pass --peak-tflops)"
    print(f"     achieved: {achieved * 1e3:.1f} GFLOP/s over the whole run{frac}; encoder "
          f"{n * f_img / st.encode_s:.1f} GFLOP/s, decoder {len(pairs) * f_pair / st.decode_s:.1f} GFLOP/s")
    mem, how = peak_device_gib(dev)
    print(f"     peak device memory: {mem:.2f} GiB ({how})")
    finite = all(np.isfinite(v).all() for p in ("pred1", "pred2") for v in res[p].values())
    print(f"     outputs finite: {finite}")

    if official and not official_first:
        got, why = run_official(config, params, imgs, pairs, batch, torch_dev)
    if got is not None:
        t_off, ref, off_peak = got
        err = np.abs(res["pred1"]["pts3d"] - ref).max() / max(1.0, np.abs(ref).max())
        peak_txt = f"; peak GPU memory {off_peak / 2**30:.2f} GiB" if off_peak else ""
        print(f"   official ({torch_dev}): {t_off:.1f} s = {len(pairs) / t_off:.3f} pairs/s "
              f"({t_off / len(pairs):.3f} s/pair); pred1.pts3d max rel. diff {err:.2e}{peak_txt}")
        print(f"   SPEED-UP vs official (same run): {t_off / wall:.2f}x")
    else:
        ref_s = OFFICIAL_S_PER_PAIR[name]
        print(f"   official not run ({why}); vs the official figure measured on the development CPU "
              f"({ref_s} s/pair, fp32, 2 threads): {ref_s / (wall / len(pairs)):.2f}x (indicative: other machine "
              "load / another run)")
    if check_accuracy:
        accuracy(model, pairs, batch, impl, devices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["224", "512"], choices=list(SETTINGS))
    ap.add_argument("--n", type=int, default=None, help="images per graph (default 8 at 224, 4 at 512)")
    ap.add_argument("--batch", type=int, default=None, help="pairs per decoder step (default 8 at 224, 4 at 512)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--attention-impl", default=None, help="e.g. cudnn on GPU")
    ap.add_argument("--device", default=None, choices=["cpu", "gpu", "tpu"],
                    help="where both implementations run (default: jax's default backend)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak TFLOP/s for the FLOP fraction (default: a table of known devices)")
    ap.add_argument("--accuracy", action="store_true", help="bf16 (trunk / heads) vs fp32 max relative errors")
    ap.add_argument("--no-official", action="store_true", help="skip the official implementation")
    ap.add_argument("--official-first", action="store_true", help="run the official implementation before ours")
    args = ap.parse_args()
    device = args.device or jax.default_backend()
    try:
        jax.devices(device)
    except RuntimeError as e:
        raise SystemExit(f"--device {device}: no such jax backend here ({e})") from None
    print("machine:", machine())
    dtype = None if args.dtype == "float32" else jnp.bfloat16
    for name in args.settings:
        s = SETTINGS[name]
        bench(name, args.n or s["n"], args.batch or s["batch"], dtype, args.attention_impl, not args.no_official,
              args.official_first, device, args.peak_tflops, args.accuracy)


if __name__ == "__main__":
    main()
