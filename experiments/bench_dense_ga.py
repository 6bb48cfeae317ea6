"""Benchmark of the dense global alignment (issue 4): speed, peak memory and XLA memory analysis.

For each configuration (N = 4, 8, 12, 16 on 'complete' and 'swin-3' graphs at 160x112, plus one 512x384
case) a FRESH subprocess generates a synthetic room scene (f3d_jax/eval/synthetic.py, 'moderate' noise),
runs the MST initialisation and the jitted optimisation loop, and reports: init time, compile time,
per-iteration time, µs per edge-pixel-iteration, peak RSS of the init, and peak RSS of the optimisation
(device copies of the inputs + the loop, compilation excluded) above the baseline, with bytes per edge-pixel. With F3D_REFERENCE_ROOT
pointing at the official checkouts (see shared/tools/reference_env.sh: DEST/{dust3r,croco}, DEST/venv with
torch), the official PointCloudOptimizer runs on the same inputs in its own subprocess (1 torch thread) and
the ratios are printed; otherwise the official baseline quoted by the issue is printed (one CPU thread:
~0.3 µs per edge-pixel-iteration, ~150-250 B per edge-pixel peak memory).

Finally it prints `jax.jit(align_dense).lower(...).compile().memory_analysis()` of the whole loop for
N = 50 and N = 100 at 512x384 on a complete graph, from abstract inputs (jax.ShapeDtypeStruct, no data),
with float32 and bfloat16 storage of the predictions.

Devices: `--device cpu|gpu|tpu` (default cpu) runs our side on that JAX platform and the official side on the same
device (torch 'cuda' for gpu; the official code has no TPU path). Each row also prints the analytic FLOPs and
bytes of one iteration (`ga_cost`: the loss's edge-pixel arithmetic and the reads of the stored predictions and
confidences, the floor any implementation must stream each iteration), the achieved GFLOP/s and GB/s, the
fraction of the device's memory-bandwidth bound where its peak bandwidth is known (`PEAK_BANDWIDTH`), and the
peak device memory where the backend reports it (`device.memory_stats()`, GPU/TPU; torch.cuda for the official).
On a GPU/TPU the default configurations add N=16 at 512x384 (the issue-12 figure of record).

Command (all of it, ~10-20 min on 2 CPU cores):   python experiments/bench_dense_ga.py
Quick smoke run:                                   python experiments/bench_dense_ga.py --quick
On a GPU, official side included:                  F3D_REFERENCE_ROOT=... python experiments/bench_dense_ga.py --device gpu --quick
MST initialisation only, ours vs official:        python experiments/bench_dense_ga.py --init-only [--config 16,complete,256,192]
Options: --niter K (loop length timed, default 50), --threads T (CPU cores given to each worker, default 1,
the official baseline's setting), --config N,GRAPH,W,H (repeatable: replaces the default list),
--chunk-pixels C (override the backend's loss blocking), --storage float32|bfloat16,
--only-memory-analysis, --no-memory-analysis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JAX_PLATFORM = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}
# peak memory bandwidth (bytes/s) by device-kind substring (vendor figures), first match wins
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100-SXM4-80GB", 2.04e12),
                  ("A100", 1.56e12), ("L4", 3.0e11), ("T4", 3.2e11), ("V100", 9.0e11),
                  ("TPU v5p", 2.76e12), ("TPU v5 lite", 8.19e11), ("TPU v5e", 8.19e11), ("TPU v4", 1.2e12),
                  ("TPU v6", 1.64e12))
# flops of one edge-pixel term of the loss with its hand-written gradient (losses._fused_term): 3x3 apply 15,
# residual 6, squared norm 5, sqrt + slope + weight (log conf x keep x edge weight) 6, dL/dr 3, g_M 18, g_t 3,
# g_cam 3 = 59 (a sqrt or a log counted as one); two terms (pred_i, pred_j) per edge-pixel
FLOPS_PER_EDGE_PIXEL = 2 * 59


def ga_cost(E: int, n: int, P: int, storage_bytes: int) -> dict:
    """Analytic cost of one dense GA iteration: flops, and the bytes that must stream from memory (the stored
    predictions + confidences of both terms, 4 values per edge-pixel each; plus the per-image float32 planes:
    camera points read and their gradient written, depth/Adam state ~ 12 values per image-pixel)."""
    return dict(flops=FLOPS_PER_EDGE_PIXEL * E * P,
                bytes=2 * E * P * 4 * storage_bytes + 12 * n * P * 4)


def peak_bandwidth(device_kind: str) -> float | None:
    for key, bw in PEAK_BANDWIDTH:
        if key.lower() in device_kind.lower():
            return bw
    return None
ISSUE_BASELINE_US = 0.3  # official, one CPU thread, µs per edge-pixel-iteration (issue 4)
ISSUE_BASELINE_BYTES = (150, 250)  # official peak memory per edge-pixel


# ---------------------------------------------------------------------------------------------------------
# small helpers (no jax import at module level: the official worker runs in the reference venv)


def make_edges(n: int, graph: str) -> list[tuple[int, int]]:
    """Symmetrised pair list in the official `make_pairs` order ('complete' or cyclic 'swin-k')."""
    sys.path.insert(0, str(REPO))
    from f3d_jax.eval.synthetic import make_edges as edges_array

    return [tuple(map(int, e)) for e in edges_array(n, graph)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the RSS high-water mark (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pin_threads(threads: int) -> None:
    if threads > 0 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, set(cpus))


# ---------------------------------------------------------------------------------------------------------
# workers (one fresh process per configuration)


def write_inputs(path: str, n: int, graph: str, H: int, W: int, seed: int) -> None:
    sys.path.insert(0, str(REPO))
    import numpy as np

    from f3d_jax.eval.synthetic import make_predictions, make_scene

    scene = make_scene(n, H, W, seed=seed)
    edges = np.array(make_edges(n, graph), np.int32)
    pr = make_predictions(scene, edges, "moderate", seed=seed + 1)
    np.savez(path, edges=edges, pred1_pts3d=pr["pred1_pts3d"], pred1_conf=pr["pred1_conf"],
             pred2_pts3d=pr["pred2_pts3d"], pred2_conf=pr["pred2_conf"])


def worker_jax(inputs: str, niter: int, threads: int, chunk_pixels: int | None = None,
               storage: str = "float32", init_only: bool = False) -> dict:
    pin_threads(threads)
    sys.path.insert(0, str(REPO))
    import numpy as np

    data = dict(np.load(inputs))
    import jax
    if init_only:
        return init_times_jax(data)

    from f3d_jax.align import core, problem as problem_lib
    from f3d_jax.align.config import DenseConfig
    from f3d_jax.align.initialise import initialise_mst

    import gc

    edges = data["edges"]
    E, H, W = data["pred1_conf"].shape
    n = int(edges.max()) + 1
    args = (data["pred1_pts3d"], data["pred1_conf"], data["pred2_pts3d"], data["pred2_conf"])
    base = rss_now_mb()
    reset_peak()
    t0 = time.perf_counter()
    st = initialise_mst(edges, *args, 3.0)
    t_init = time.perf_counter() - t0
    init_mb = rss_peak_mb() - base
    config = DenseConfig(niter=niter, chunk_pixels=chunk_pixels, storage_dtype=storage)
    fn = jax.jit(core.align_dense, static_argnames="config")

    def build():
        problem = problem_lib.make_problem(edges, data["pred1_pts3d"], data["pred2_pts3d"], data["pred1_conf"],
                                           data["pred2_conf"])
        return problem, problem_lib.as_align_state(st, n, E, (H, W))

    problem, state = build()
    t0 = time.perf_counter()
    compiled = fn.lower(problem, state, config=config).compile()
    t_compile = time.perf_counter() - t0
    del problem, state
    gc.collect()
    # memory of the optimisation proper: device copies of the inputs + everything the loop allocates
    # (compilation excluded: it happened above and its memory is already counted in the baseline)
    base_loop = rss_now_mb()
    can_reset = reset_peak()
    problem, state = build()
    out = compiled(problem, state)
    jax.block_until_ready(out)
    peak_loop = rss_peak_mb() - base_loop
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = compiled(problem, state)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    loss = np.asarray(out.loss_curve)
    from f3d_jax.align.losses import plan_blocks

    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    plan = plan_blocks(int(E), H * W, chunk_pixels)
    return dict(impl="f3d-jax", n=n, E=int(E), H=int(H), W=int(W), niter=niter, init_s=t_init, compile_s=t_compile,
                loop_s=min(times), per_iter_s=min(times) / niter, init_peak_mb=init_mb,
                loop_peak_above_base_mb=peak_loop if can_reset else None,
                loss0=float(loss[0]), loss_last=float(loss[-1]), devices=str(dev.platform),
                device_kind=str(getattr(dev, "device_kind", dev.platform)),
                device_peak_mb=(stats["peak_bytes_in_use"] / 2**20) if stats and "peak_bytes_in_use" in stats else None,
                plan=dict(C=plan.C, nE=plan.nE, T=plan.T, nT=plan.nT, chunk_pixels=plan.chunk_pixels),
                storage=storage)


def init_times_jax(data: dict) -> dict:
    """MST initialisation only: the first call (jit compilation of the batched reductions included) and the
    best of two more."""
    import jax

    from f3d_jax.align.initialise import initialise_mst

    args = (data["edges"], data["pred1_pts3d"], data["pred1_conf"], data["pred2_pts3d"], data["pred2_conf"], 3.0)
    t0 = time.perf_counter()
    initialise_mst(*args)
    first = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        initialise_mst(*args)
        times.append(time.perf_counter() - t0)
    E, H, W = data["pred1_conf"].shape
    dev = jax.devices()[0]
    return dict(impl="f3d-jax", n=int(data["edges"].max()) + 1, E=int(E), H=int(H), W=int(W), init_first_s=first,
                init_s=min(times), device_kind=str(getattr(dev, "device_kind", dev.platform)))


def worker_official(inputs: str, niter: int, threads: int, device: str = "cpu", init_only: bool = False) -> dict:
    """The official PointCloudOptimizer on the same inputs (runs in the reference venv: numpy + torch only), on
    `device` ('cpu' or 'gpu' = torch 'cuda')."""
    pin_threads(threads)
    root = os.environ["F3D_REFERENCE_ROOT"]
    sys.path[:0] = [os.path.join(root, "dust3r"), os.path.join(root, "croco")]
    import numpy as np
    import torch

    torch.set_num_threads(max(threads, 1))
    from dust3r.cloud_opt import GlobalAlignerMode, global_aligner
    from dust3r.cloud_opt import init_im_poses as init_fun
    from dust3r.cloud_opt.base_opt import global_alignment_loop

    data = dict(np.load(inputs))
    edges = data["edges"]
    E, H, W = data["pred1_conf"].shape
    tdev = "cuda" if device == "gpu" else "cpu"
    t = lambda k: torch.from_numpy(np.ascontiguousarray(data[k], np.float32)).to(tdev)  # noqa: E731
    sync = torch.cuda.synchronize if tdev == "cuda" else (lambda: None)
    view1 = dict(idx=edges[:, 0].tolist(), instance=[str(i) for i in edges[:, 0]],
                 true_shape=torch.tensor([[H, W]] * E))
    view2 = dict(idx=edges[:, 1].tolist(), instance=[str(i) for i in edges[:, 1]],
                 true_shape=torch.tensor([[H, W]] * E))
    output = dict(view1=view1, view2=view2, pred1=dict(pts3d=t("pred1_pts3d"), conf=t("pred1_conf")),
                  pred2=dict(pts3d_in_other_view=t("pred2_pts3d"), conf=t("pred2_conf")))
    base = rss_now_mb()
    can_reset = reset_peak()
    # the optimizer object holds the stacked copies of the inputs: counted, as our device copies are
    scene = global_aligner(output, device=tdev, mode=GlobalAlignerMode.PointCloudOptimizer, min_conf_thr=3)
    sync()
    t0 = time.perf_counter()
    init_fun.init_minimum_spanning_tree(scene, niter_PnP=10)
    sync()
    t_init = time.perf_counter() - t0
    if init_only:
        return dict(impl="official", n=int(edges.max()) + 1, E=int(E), H=int(H), W=int(W), init_s=t_init)
    t0 = time.perf_counter()
    loss = global_alignment_loop(scene, lr=0.01, niter=niter, schedule="cosine")
    sync()
    t_loop = time.perf_counter() - t0
    peak = rss_peak_mb()
    return dict(impl="official", n=int(edges.max()) + 1, E=int(E), H=int(H), W=int(W), niter=niter, init_s=t_init,
                compile_s=0.0, loop_s=t_loop, per_iter_s=t_loop / niter, init_peak_mb=None,
                loop_peak_above_base_mb=(peak - base) if can_reset else None, loss_last=float(loss),
                device_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if tdev == "cuda" else None)


def run_worker(kind: str, inputs: str, niter: int, threads: int, python: str, device: str = "cpu",
               extra: list[str] | None = None) -> dict | None:
    cmd = [python, str(Path(__file__).resolve()), f"--worker-{kind}", inputs, "--niter", str(niter),
           "--threads", str(threads), "--device", device, *(extra or [])]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if kind == "jax":
        env["JAX_PLATFORMS"] = JAX_PLATFORM[device]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(f"  [{kind} worker failed]\n{r.stderr[-2000:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------
# XLA memory analysis of the whole loop on abstract inputs


def memory_analysis(n: int, H: int, W: int, niter: int, storage: str) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from f3d_jax.align import core
    from f3d_jax.align.config import DenseConfig
    from f3d_jax.align.types import AlignState, DenseProblem

    E = n * (n - 1)
    sds = jax.ShapeDtypeStruct
    pdt = jnp.bfloat16 if storage == "bfloat16" else jnp.float32
    shapes = dict(pred_i=((E, 3, H, W), pdt), pred_j=((E, 3, H, W), pdt), conf_i=((E, H, W), jnp.float32),
                  conf_j=((E, H, W), jnp.float32), ei=((E,), jnp.int32), ej=((E,), jnp.int32),
                  ignore=((n, H, W), jnp.bool_), edge_weights=((E,), jnp.float32),
                  preset_cam2world=((n, 4, 4), jnp.float32), pose_known=((n,), jnp.bool_),
                  preset_focals=((n,), jnp.float32), focal_known=((n,), jnp.bool_),
                  preset_pp=((n, 2), jnp.float32), pp_known=((n,), jnp.bool_))
    fields = [f.name for f in dataclasses.fields(DenseProblem)]
    missing = [f for f in fields if f not in shapes]
    if missing:
        raise RuntimeError(f"DenseProblem has fields this bench does not know: {missing}")
    problem = DenseProblem(**{f: sds(*shapes[f]) for f in fields})
    st_shapes = dict(cam2world=(n, 4, 4), focals=(n,), principal_points=(n, 2), depthmaps=(n, H, W),
                     pw_poses=(E, 4, 4), pw_scales=(E,))
    state = AlignState(**{f.name: sds(st_shapes[f.name], jnp.float32) for f in dataclasses.fields(AlignState)})
    config = DenseConfig(niter=niter, storage_dtype=storage)
    t0 = time.perf_counter()
    compiled = jax.jit(core.align_dense, static_argnames="config").lower(problem, state, config=config).compile()
    ma = compiled.memory_analysis()
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
    res = {k: int(getattr(ma, k, 0) or 0) for k in keys}
    res["total_bytes"] = res["argument_size_in_bytes"] + res["output_size_in_bytes"] + res["temp_size_in_bytes"] - \
        res["alias_size_in_bytes"]
    res.update(n=n, E=E, H=H, W=W, storage=storage, compile_s=time.perf_counter() - t0)
    return res


# ---------------------------------------------------------------------------------------------------------


def bench_init(args, ref_python: str | None) -> None:
    """`--init-only`: MST initialisation time, ours (first call with compilation, then best of 2) and the
    official `init_minimum_spanning_tree` on the same inputs and device, each in a fresh process."""
    configs = [tuple(int(v) if k != 1 else v for k, v in enumerate(c.split(","))) for c in args.config] or \
        [(16, "complete", 160, 112)]
    print(f"{'N':>3} {'graph':>8} {'WxH':>8} {'E':>4} {'ours first s':>12} {'ours s':>7} {'official s':>10} {'ratio':>6}")
    for n, graph, W, H in configs:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "inputs.npz")
            write_inputs(path, n, graph, H, W, seed=n)
            res = run_worker("jax", path, 1, args.threads, sys.executable, args.device, ["--init-only"])
            ref = (run_worker("official", path, 1, args.threads, ref_python, args.device, ["--init-only"])
                   if ref_python else None)
        if res is None:
            continue
        off = ref["init_s"] if ref else float("nan")
        print(f"{n:>3} {graph:>8} {f'{W}x{H}':>8} {res['E']:>4} {res['init_first_s']:>12.2f} {res['init_s']:>7.2f} "
              f"{off:>10.2f} {off / res['init_s']:>6.2f}   ({res['device_kind']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=4,8 at 160x112 complete only, short loop")
    ap.add_argument("--niter", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=tuple(JAX_PLATFORM), default="cpu",
                    help="JAX platform of our side; the official side runs on the same device (not on a TPU)")
    ap.add_argument("--config", action="append", default=[], metavar="N,GRAPH,W,H",
                    help="a configuration (repeatable), e.g. 16,complete,512,384; replaces the default list")
    ap.add_argument("--chunk-pixels", type=int, default=None, help="loss blocking (default: the backend's)")
    ap.add_argument("--storage", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--init-only", action="store_true",
                    help="time the MST initialisation only, ours against the official (default config N=16 "
                         "complete at 160x112)")
    ap.add_argument("--only-memory-analysis", action="store_true")
    ap.add_argument("--no-memory-analysis", action="store_true")
    ap.add_argument("--worker-jax", metavar="NPZ")
    ap.add_argument("--worker-official", metavar="NPZ")
    args = ap.parse_args()
    if args.worker_jax:
        print(json.dumps(worker_jax(args.worker_jax, args.niter, args.threads, args.chunk_pixels, args.storage,
                                    args.init_only)))
        return
    if args.worker_official:
        print(json.dumps(worker_official(args.worker_official, args.niter, args.threads, args.device,
                                         args.init_only)))
        return

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}, python {platform.python_version()}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"workers pinned to {args.threads} core(s); loop length timed: {args.niter} iterations (compile excluded); "
          f"device: {args.device}; storage {args.storage}; chunk_pixels {args.chunk_pixels or 'backend default'}")
    ref_root = os.environ.get("F3D_REFERENCE_ROOT")
    ref_python = None
    if ref_root:
        cand = Path(ref_root) / "venv" / "bin" / "python"
        ref_python = str(cand) if cand.exists() else sys.executable
        chk = subprocess.run([ref_python, "-c", "import torch"], capture_output=True)
        if chk.returncode != 0:
            print(f"note: F3D_REFERENCE_ROOT={ref_root} but torch is not importable by {ref_python}: official side skipped")
            ref_python = None
        elif args.device == "tpu":
            print("note: the official code has no TPU path: official side skipped")
            ref_python = None
    else:
        print("note: F3D_REFERENCE_ROOT not set (or no torch): official side not measured; issue baseline: "
              f"~{ISSUE_BASELINE_US} µs/edge-pixel-iteration on one CPU thread, "
              f"{ISSUE_BASELINE_BYTES[0]}-{ISSUE_BASELINE_BYTES[1]} B/edge-pixel peak memory")

    if args.init_only:
        bench_init(args, ref_python)
        return
    if not args.only_memory_analysis:
        if args.quick:
            configs = [(4, "complete", 160, 112), (8, "complete", 160, 112)]
            niter = min(args.niter, 20)
        else:
            configs = [(n, g, 160, 112) for g in ("complete", "swin-3") for n in (4, 8, 12, 16)]
            configs.append((4, "complete", 512, 384))
            niter = args.niter
        if args.device != "cpu":
            configs.append((16, "complete", 512, 384))  # the issue-12 figure of record
        if args.config:
            configs = []
            for c in args.config:
                n_, g_, w_, h_ = c.split(",")
                configs.append((int(n_), g_, int(w_), int(h_)))
        extra = ["--storage", args.storage] + ([] if args.chunk_pixels is None else
                                                ["--chunk-pixels", str(args.chunk_pixels)])
        sbytes = 2 if args.storage == "bfloat16" else 4
        hdr = (f"{'N':>3} {'graph':>8} {'WxH':>8} {'E':>4} {'edge-px':>9} {'init s':>7} {'init MB':>7} "
               f"{'compile s':>9} {'ms/iter':>8} {'µs/epx-it':>9} {'peak MB':>8} {'B/epx':>6}")
        rows = []
        print(hdr)
        for n, graph, W, H in configs:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "inputs.npz")
                write_inputs(path, n, graph, H, W, seed=n)
                res = run_worker("jax", path, niter, args.threads, sys.executable, args.device, extra)
                ref = (run_worker("official", path, niter, args.threads, ref_python, args.device)
                       if ref_python else None)
            if res is None:
                continue
            epx = res["E"] * res["H"] * res["W"]
            us = res["per_iter_s"] / epx * 1e6
            lb = res["loop_peak_above_base_mb"]
            lb = float("nan") if lb is None else lb
            print(f"{n:>3} {graph:>8} {f'{W}x{H}':>8} {res['E']:>4} {epx:>9} {res['init_s']:>7.2f} "
                  f"{res['init_peak_mb']:>7.1f} {res['compile_s']:>9.2f} {res['per_iter_s'] * 1e3:>8.2f} {us:>9.4f} "
                  f"{lb:>8.1f} {lb * 2**20 / epx:>6.0f}")
            cost = ga_cost(res["E"], res["n"], res["H"] * res["W"], sbytes)
            bw = peak_bandwidth(res.get("device_kind", ""))
            it = res["per_iter_s"]
            frac = f", {cost['bytes'] / bw / it:.1%} of the {bw / 1e12:.2f} TB/s bandwidth bound " \
                   f"({cost['bytes'] / bw * 1e3:.3f} ms/iter)" if bw else ""
            dpk = res.get("device_peak_mb")
            print(f"    {res.get('device_kind', '?')}: plan {res.get('plan')}; per iteration {cost['flops'] / 1e9:.2f} "
                  f"GFLOP, {cost['bytes'] / 1e9:.3f} GB -> {cost['flops'] / it / 1e9:.1f} GFLOP/s, "
                  f"{cost['bytes'] / it / 1e9:.1f} GB/s{frac}"
                  + (f"; peak device memory {dpk:.0f} MB" if dpk is not None else "; peak device memory: not reported"))
            line = dict(res, us_per_edge_pixel_iter=us, cost=cost, peak_bandwidth=bw)
            if ref is not None:
                rus = ref["per_iter_s"] / epx * 1e6
                rb = ref["loop_peak_above_base_mb"] or float("nan")
                print(f"    official: init {ref['init_s']:.2f} s, {ref['per_iter_s'] * 1e3:.2f} ms/iter = {rus:.4f} µs/epx-it, "
                      f"peak {rb:.1f} MB ({rb * 2**20 / epx:.0f} B/epx); speed-up x{ref['per_iter_s'] / res['per_iter_s']:.2f}, "
                      f"memory ratio {lb / rb:.2f}"
                      + (f"; official peak device memory {ref['device_peak_mb']:.0f} MB"
                         if ref.get("device_peak_mb") is not None else ""))
                line["official"] = ref
            else:
                print(f"    vs issue baseline ({ISSUE_BASELINE_US} µs/epx-it, {ISSUE_BASELINE_BYTES[0]}-"
                      f"{ISSUE_BASELINE_BYTES[1]} B/epx): x{ISSUE_BASELINE_US / us:.2f} faster, memory "
                      f"{lb * 2**20 / epx / ISSUE_BASELINE_BYTES[1]:.2f}-{lb * 2**20 / epx / ISSUE_BASELINE_BYTES[0]:.2f} of it")
            rows.append(line)
        print("json:", json.dumps(rows))

    if not args.no_memory_analysis:
        print("\nXLA memory_analysis of the whole jitted loop (abstract inputs, complete graph, 512x384, niter 300):")
        for n in (50, 100):
            for storage in ("float32", "bfloat16"):
                try:
                    r = memory_analysis(n, 384, 512, 300, storage)
                except Exception as exc:  # report and go on: the analysis is informative, not a gate
                    print(f"  N={n} {storage}: failed: {type(exc).__name__}: {exc}")
                    continue
                gb = lambda b: b / 2**30  # noqa: E731
                print(f"  N={n:>3} E={r['E']:>5} storage={storage:>8}: arguments {gb(r['argument_size_in_bytes']):7.2f} GiB, "
                      f"outputs {gb(r['output_size_in_bytes']):6.2f} GiB, temporaries {gb(r['temp_size_in_bytes']):7.2f} GiB, "
                      f"aliased {gb(r['alias_size_in_bytes']):5.2f} GiB -> total {gb(r['total_bytes']):7.2f} GiB "
                      f"({r['total_bytes'] / (r['E'] * 384 * 512):.1f} B/edge-pixel; compile {r['compile_s']:.1f} s)")


if __name__ == "__main__":
    main()
