"""Pair-inference throughput: f3d-jax engine vs official `dust3r.inference.inference`.

Complete symmetrized graphs with random full-size weights (ViT-L/16 encoder 1024/24/16, ViT-B
decoders 768/12/12, RoPE100):

* `224`: DUSt3R-224-linear, N images of 224x224 (default N = 8: 56 pairs), batch 8;
* `512`: DUSt3R-512-DPT, N images of 512x384 (W x H; default N = 4: 12 pairs), batch 4.

Reported per setting: pairs/s and s/pair (steady state: compiled beforehand), encoder / decoder
wall-time split, compile time (AOT lower + compile of the two jitted steps; the run then loads
them from a throw-away persistent cache), peak RSS of the process (CPU: host = device memory).
When `F3D_REFERENCE_ROOT` (a folder with the official `dust3r/` checkout) and torch are
importable, the official `inference` runs on the same inputs with the same weights in the same
process and the speed ratio is printed; otherwise the official figures measured on the
development CPU (fp32, 2 threads: 2.4 s/pair at 224, 11.9 s/pair at 512-DPT) are used for an
indicative ratio and this is said.

    python experiments/bench_inference.py                 # both settings, defaults
    python experiments/bench_inference.py --settings 224 --n 8
    python experiments/bench_inference.py --dtype bfloat16 --attention-impl cudnn   # GPU
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import jax

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


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def aot_compile(eng: E.InferenceEngine, hw: tuple[int, int], n: int) -> tuple[float, float, float]:
    """Lower + compile the encoder and decoder steps with the exact arguments of the run.

    Returns:
      (seconds, XLA flops per encoder step, XLA flops per decoder step).
    """
    t0 = time.perf_counter()
    be, bs = eng.encoder_batch_size, eng.batch_size
    sf, sp = eng.empty_store(hw, n)
    img = jax.device_put(np.zeros((be, *hw, 3), np.float32), eng._data)
    ts = jax.device_put(np.tile(np.array(hw, np.int32), (be, 1)), eng._data)
    static = dict(config=eng.config, impl=eng.attention_impl, mesh=eng.mesh)
    enc = S.encode_step.lower(eng.params, sf, sp, img, ts, np.int32(0), **static).compile()
    idx = jax.device_put(np.zeros(bs, np.int32), eng._data)
    tsb = jax.device_put(np.tile(np.array(hw, np.int32), (bs, 1)), eng._data)
    args = (eng.params, sf, sp, sf, sp, idx, idx, tsb, tsb)
    S.decode_step.lower(*args, **static, hw1=hw, hw2=hw, pairs_per_step=eng._pairs_per_step(hw, hw)).compile()
    seconds = time.perf_counter() - t0
    # XLA counts a loop body once: count the flops on the unstepped batch (lowered, not compiled)
    dec = S.decode_step.lower(*args, **static, hw1=hw, hw2=hw, pairs_per_step=None)
    return seconds, _flops(enc), _flops(dec)


def run_official(config: DUSt3RConfig, params: dict, pairs: list, batch: int):
    """Official `inference` on the same pairs and weights, or None (with the reason) if unavailable."""
    root = os.environ.get("F3D_REFERENCE_ROOT")
    if not root:
        return None, "F3D_REFERENCE_ROOT is not set"
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    sys.path.insert(0, str(Path(root) / "dust3r"))
    try:
        from dust3r.inference import inference as official_inference
        from dust3r.model import AsymmetricCroCo3DStereo
    except Exception as e:  # noqa: BLE001 - report any import problem of the checkout
        return None, f"cannot import dust3r from {root}: {e!r}"
    from f3d_jax.models.config import config_to_official
    from f3d_jax.weights.convert import params_to_state_dict

    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    _, kw = config_to_official(config)
    net = AsymmetricCroCo3DStereo(**kw).eval()
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params_to_state_dict(config, params).items()}
    print("   official load_state_dict:", net.load_state_dict(sd, strict=False))

    def to_torch(v):
        return dict(img=torch.from_numpy(np.ascontiguousarray(v["img"].transpose(0, 3, 1, 2))),
                    true_shape=v["true_shape"], idx=v["idx"], instance=v["instance"])

    tp = {}
    tpairs = []
    for a, b in pairs:
        for v in (a, b):
            tp.setdefault(id(v), to_torch(v))
        tpairs.append((tp[id(a)], tp[id(b)]))
    t0 = time.perf_counter()
    with torch.no_grad():
        out = official_inference(tpairs, net, "cpu", batch_size=batch, verbose=False)
    return (time.perf_counter() - t0, out), None


def bench(name: str, n: int, batch: int, dtype, impl: str | None, official: bool, official_first: bool) -> None:
    s = SETTINGS[name]
    hw = s["hw"]
    config = make_config(s["head_type"], s["img_size"])
    print(f"\n== DUSt3R-{name}-{s['head_type']}: N={n} images {hw[1]}x{hw[0]} (WxH), complete symmetrized graph, "
          f"batch {batch}, dtype {jnp.dtype(dtype).name if dtype else 'float32'}")
    t0 = time.perf_counter()
    params = random_params(config)
    jax.block_until_ready(params)
    print(f"   random weights: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f} M params "
          f"in {time.perf_counter() - t0:.1f} s")
    model = Model(config, params)
    imgs = random_images(n, hw)
    pairs = make_pairs(imgs, "complete", symmetrize=True)
    eng = E.InferenceEngine(model, batch, dtype=dtype, attention_impl=impl, devices=jax.devices()[:1],
                            encoder_batch_size=min(batch, n))
    t_compile, f_enc, f_dec = aot_compile(eng, hw, n)
    f_img, f_pair = f_enc / eng.encoder_batch_size / 1e9, f_dec / eng.batch_size / 1e9
    print(f"   decoder step: {eng.batch_size} pairs, run {eng._pairs_per_step(hw, hw) or eng.batch_size} "
          "at a time (InferenceEngine pairs_per_step)")
    print(f"   compile (encoder + decoder steps, AOT): {t_compile:.1f} s; XLA cost analysis: "
          f"{f_img:.0f} GFLOP per image encode, {f_pair:.0f} GFLOP per pair decode+heads")
    # The official code on this graph: consecutive pairs of a complete symmetrized graph are not
    # (a, b), (b, a) neighbours, so its symmetrized-batch shortcut never applies: 2 encodes per pair.
    ours_pp = (n * f_img + len(pairs) * f_pair) / len(pairs)
    off_pp = 2 * f_img + f_pair
    print(f"   work per pair: f3d-jax {ours_pp:.0f} GFLOP, official {off_pp:.0f} GFLOP "
          f"(ratio {off_pp / ours_pp:.2f}x = the speed-up at equal per-FLOP efficiency)")

    if official and official_first:  # the order is a knob: the second side runs in a warmer, fuller process
        got, why = run_official(config, params, pairs, batch)
    t0 = time.perf_counter()
    res = eng(pairs, verbose=False)
    wall = time.perf_counter() - t0
    st = eng.stats
    assert st.encoder_images == n and st.n_pairs == len(pairs)
    other = wall - st.encode_s - st.decode_s
    print(f"   f3d-jax: {len(pairs)} pairs in {wall:.1f} s = {len(pairs) / wall:.3f} pairs/s "
          f"({wall / len(pairs):.2f} s/pair)")
    print(f"     encoder {st.encode_s:.1f} s ({st.encoder_images} images, {st.encode_s / n:.2f} s/image), "
          f"decoder+heads {st.decode_s:.1f} s ({st.decode_s / len(pairs):.2f} s/pair), "
          f"collation/host {other:.1f} s")
    print(f"     achieved: encoder {n * f_img / st.encode_s:.1f} GFLOP/s, "
          f"decoder {len(pairs) * f_pair / st.decode_s:.1f} GFLOP/s")
    print(f"     peak RSS of the process so far: {peak_rss_gib():.2f} GiB")
    finite = all(np.isfinite(v).all() for p in ("pred1", "pred2") for v in res[p].values())
    print(f"     outputs finite: {finite}")

    if not (official and official_first):
        got, why = run_official(config, params, pairs, batch) if official else (None, "--no-official")
    if got is not None:
        t_off, out = got
        ref = out["pred1"]["pts3d"].numpy()
        err = np.abs(res["pred1"]["pts3d"] - ref).max() / max(1.0, np.abs(ref).max())
        print(f"   official: {t_off:.1f} s = {len(pairs) / t_off:.3f} pairs/s ({t_off / len(pairs):.2f} s/pair); "
              f"pred1.pts3d max rel. diff {err:.2e}")
        print(f"   SPEED-UP vs official (same run): {t_off / wall:.2f}x")
    else:
        ref_s = OFFICIAL_S_PER_PAIR[name]
        print(f"   official not run ({why}); vs the official figure measured on the development CPU "
              f"({ref_s} s/pair, fp32, 2 threads): {ref_s / (wall / len(pairs)):.2f}x (indicative: other machine "
              "load / another run)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["224", "512"], choices=list(SETTINGS))
    ap.add_argument("--n", type=int, default=None, help="images per graph (default 8 at 224, 4 at 512)")
    ap.add_argument("--batch", type=int, default=None, help="pairs per decoder step (default 8 at 224, 4 at 512)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--attention-impl", default=None, help="e.g. cudnn on GPU")
    ap.add_argument("--no-official", action="store_true", help="skip the official implementation")
    ap.add_argument("--official-first", action="store_true", help="run the official implementation before ours")
    args = ap.parse_args()
    print("machine:", machine())
    dtype = None if args.dtype == "float32" else jnp.bfloat16
    for name in args.settings:
        s = SETTINGS[name]
        bench(name, args.n or s["n"], args.batch or s["batch"], dtype, args.attention_impl, not args.no_official,
              args.official_first)


if __name__ == "__main__":
    main()
