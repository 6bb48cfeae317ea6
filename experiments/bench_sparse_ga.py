"""Benchmark of the sparse global alignment (MASt3R-SfM's optimiser): ours vs the official code, same inputs,
same machine, same run.

A synthetic room scene (f3d_jax/eval/synthetic.py, 'moderate' prediction noise) gives stand-in network
outputs per ordered pair; descriptors are a fixed random Fourier field of the true world point
(normalize(P sin(B X + phi)) + noise), so matching is meaningful. Our `sparse_global_alignment` and, when
F3D_REFERENCE_ROOT points at the official checkouts + venv, the official one (its own subprocess, torch
stand-in model behind `symmetric_inference`, demo settings, matching_conf_thr=0) run on the same arrays.

Printed per case: time of the network pass + matching, of each stage, total (ours: first call with
compilation and a second, warm call), the official total and the ratio, peak RSS, and accuracy vs ground truth.

    python experiments/bench_sparse_ga.py                       # N = 4 and 16
    F3D_REFERENCE_ROOT=ref python experiments/bench_sparse_ga.py --n 4 16 --niter 300
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments._bench_common import machine, peak_rss_mb, reference_python  # noqa: E402

OFFICIAL_WORKER = r'''
import json, os, resource, sys, tempfile, time
import numpy as np
root = sys.argv[1]
sys.path[:0] = [os.path.join(root, "mast3r"), os.path.join(root, "dust3r"), os.path.join(root, "croco")]
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from mast3r.cloud_opt.sparse_ga import sparse_global_alignment
z = np.load(sys.argv[2])
cfg = json.loads(sys.argv[3])
n, H, W = cfg["n"], cfg["H"], cfg["W"]
edge_index = {tuple(e): k for k, e in enumerate(z["edges"].tolist())}

class StandIn(torch.nn.Module):
    """symmetric_inference's three calls; the image index rides in the image tensor."""
    def _encode_image_pairs(self, img1, img2, shape1, shape2):
        return img1, img2, None, None
    def _decoder(self, f1, p1, f2, p2):
        a, b = int(f1.flatten()[0]), int(f2.flatten()[0])
        t = torch.tensor([a, b])
        return [t], [t]
    def _downstream_head(self, head, toks, shape):
        a, b = (int(x) for x in toks[0])
        e = edge_index[(a, b)]
        k = "pred1" if head == 1 else "pred2"
        img = a if head == 1 else b
        other = b if head == 1 else a
        return dict(pts3d=torch.from_numpy(z[k + "_pts3d"][e][None].astype(np.float32)),
                    conf=torch.from_numpy(z[k + "_conf"][e][None].astype(np.float32)),
                    desc=torch.from_numpy(z["desc"][img][None].astype(np.float32)),
                    desc_conf=torch.from_numpy(z["qconf"][img][None].astype(np.float32)))

views = [dict(img=torch.full((1, 3, H, W), float(k)), true_shape=np.array([[H, W]], np.int32), idx=k,
              instance=str(k)) for k in range(n)]
pairs = [(views[i], views[j]) for i, j in cfg["pairs"]]
names = [f"img_{k:03d}.png" for k in range(n)]
with tempfile.TemporaryDirectory() as cache:
    t = time.perf_counter()
    scene = sparse_global_alignment(names, pairs, cache, StandIn(), subsample=8, desc_conf="desc_conf",
                                    kinematic_mode="hclust-ward", device="cpu", shared_intrinsics=False,
                                    lr1=0.07, niter1=cfg["niter"], lr2=0.01, niter2=cfg["niter"], opt_depth=True,
                                    matching_conf_thr=0.0)
    total = time.perf_counter() - t
print(json.dumps(dict(total_s=total, cam2world=scene.get_im_poses().numpy().tolist(),
                      focals=scene.get_focals().numpy().tolist(),
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
'''


def make_case(n: int, H: int, W: int, seed: int, graph: str):
    from f3d_jax.eval.synthetic import make_predictions, make_scene, world_points
    from f3d_jax.infer.pairs import make_pair_indices

    scene = make_scene(n, H, W, seed=seed)
    pairs = make_pair_indices(n, graph, symmetrize=True)
    # every ordered pair of the graph (both orders are needed by the two passes)
    edges = sorted({(i, j) for i, j in pairs} | {(j, i) for i, j in pairs})
    pred = make_predictions(scene, np.asarray(edges), noise="moderate", seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    B = rng.normal(0, 2 * np.pi / rng.uniform(0.05, 1.0, size=(64, 1)), size=(64, 3))
    phi = rng.uniform(0, 2 * np.pi, size=64)
    P = rng.normal(size=(24, 64))
    X = world_points(scene)
    d = np.sin(X @ B.T + phi) @ P.T + 0.15 * rng.normal(size=X.shape[:3] + (24,))
    desc = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float16)
    qconf = (1 + 9 * np.exp(-np.abs(rng.normal(size=X.shape[:3])))).astype(np.float16)
    arrays = dict(edges=np.asarray(edges, np.int32), desc=desc, qconf=qconf,
                  **{k: pred[k].astype(np.float16) for k in ("pred1_pts3d", "pred1_conf", "pred2_pts3d", "pred2_conf")})
    return scene, [tuple(map(int, p)) for p in pairs], arrays


def run_ours(n, H, W, pairs, arrays, niter):
    import jax

    from f3d_jax.sparse import sparse_global_alignment

    index = {tuple(e): k for k, e in enumerate(arrays["edges"].tolist())}

    def model(v1, v2):
        a, b = v1["idx"], v2["idx"]
        e = index[(a, b)]
        f = lambda k: np.asarray(arrays[k][e][None], np.float32)  # noqa: E731
        p1 = dict(pts3d=f("pred1_pts3d"), conf=f("pred1_conf"), desc=arrays["desc"][a][None].astype(np.float32),
                  desc_conf=arrays["qconf"][a][None].astype(np.float32))
        p2 = dict(pts3d=f("pred2_pts3d"), conf=f("pred2_conf"), desc=arrays["desc"][b][None].astype(np.float32),
                  desc_conf=arrays["qconf"][b][None].astype(np.float32))
        return p1, p2

    views = [dict(idx=k, instance=str(k)) for k in range(n)]
    names = [f"img_{k:03d}.png" for k in range(n)]
    vp = [(views[i], views[j]) for i, j in pairs]
    out = {}
    for label in ("cold", "warm"):
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            from f3d_jax.sparse.api import prepare
            prepare(names, vp, model, subsample=8, matching_conf_thr=0.0, cache_dir=cache)  # fills the cache
            t_prep = time.perf_counter() - t
            t = time.perf_counter()
            scene = sparse_global_alignment(names, vp, None, niter1=niter, niter2=niter, matching_conf_thr=0.0,
                                            cache_dir=cache)
            jax.block_until_ready(scene.cam2world)
            out[label] = dict(pass_and_matching_s=t_prep, optimise_s=time.perf_counter() - t)
    out["scene"] = scene
    return out


def accuracy(cam2world, focals, scene):
    from f3d_jax.eval.metrics import focal_metrics, pose_metrics

    p = pose_metrics(np.asarray(cam2world), scene.cam2world)
    f = focal_metrics(np.asarray(focals), scene.focals)
    return dict(RRA5=p["RRA@5"], RTA5=p["RTA@5"], rot_deg=p["rel_rot_err_deg_mean"], ATE=p["ATE_rmse"],
                focal_err=f["focal_rel_err_mean"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--W", type=int, default=192)
    ap.add_argument("--niter", type=int, default=300)
    ap.add_argument("--graph", default=None, help="pair graph (default: complete for N <= 8, else swin-4)")
    ap.add_argument("--seed", type=int, default=51)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    ref = reference_python()
    if ref is None:
        print("note: F3D_REFERENCE_ROOT not set (or no torch there): the official side is not measured")
    for n in args.n:
        graph = args.graph or ("complete" if n <= 8 else "swin-4")
        scene, pairs, arrays = make_case(n, args.H, args.W, args.seed, graph)
        ours = run_ours(n, args.H, args.W, pairs, arrays, args.niter)
        s = ours["scene"]
        print(f"\nN={n} {args.H}x{args.W} graph={graph} ({len(pairs)} ordered pairs) niter={args.niter}+{args.niter}")
        for label in ("cold", "warm"):
            o = ours[label]
            print(f"  ours {label}: network pass + matching {o['pass_and_matching_s']:.2f} s, optimisation "
                  f"(incl. {'compile' if label == 'cold' else 'no compile'}) {o['optimise_s']:.2f} s, "
                  f"total {o['pass_and_matching_s'] + o['optimise_s']:.2f} s")
        print(f"  ours accuracy: {accuracy(s.cam2world, s.focals, scene)}; peak RSS {peak_rss_mb():.0f} MB")
        if ref is not None:
            exe, root = ref
            with tempfile.TemporaryDirectory() as tmp:
                f = os.path.join(tmp, "case.npz")
                np.savez(f, **arrays)
                cfg = json.dumps(dict(n=n, H=args.H, W=args.W, niter=args.niter, pairs=pairs))
                r = subprocess.run([exe, "-c", OFFICIAL_WORKER, str(root), f, cfg], capture_output=True, text=True)
            if r.returncode != 0:
                print("  official failed:", r.stderr[-2000:])
                continue
            off = json.loads(r.stdout.strip().splitlines()[-1])
            warm = ours["warm"]["pass_and_matching_s"] + ours["warm"]["optimise_s"]
            print(f"  official total {off['total_s']:.2f} s (peak RSS {off['peak_rss_mb']:.0f} MB); "
                  f"ratio official / ours (warm) = {off['total_s'] / warm:.2f}x")
            print(f"  official accuracy: {accuracy(off['cam2world'], off['focals'], scene)}")


if __name__ == "__main__":
    main()
