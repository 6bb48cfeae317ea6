"""Tiny synthetic sparse-GA cases with ground truth: a rendered room (`f3d_jax.eval.synthetic`), noisy pairwise
pointmaps per ordered pair, and descriptors that are a fixed random Fourier field of the true world point
(plus noise), served through the model contract (`pred1, pred2 = model(view1, view2)`)."""

from __future__ import annotations

import numpy as np

from f3d_jax.eval.synthetic import _seen_by, descriptor_field, make_predictions, make_scene, world_points
from f3d_jax.infer.pairs import make_pairs


class SynthModel:
    """Stand-in network of a synthetic case; `calls` records the (i, j) passes. `qconf[(a, b)]`: descriptor
    confidence of image a in the pass with b."""

    def __init__(self, pred: dict, desc: np.ndarray, qconf: np.ndarray):
        self.index = {tuple(e): k for k, e in enumerate(pred["edges"].tolist())}
        self.pred, self.desc, self.qconf = pred, desc, qconf
        self.calls: list[tuple[int, int]] = []

    def __call__(self, view1: dict, view2: dict) -> tuple[dict, dict]:
        a, b = int(view1["idx"]), int(view2["idx"])
        self.calls.append((a, b))
        e = self.index[(a, b)]
        p = self.pred
        p1 = dict(pts3d=p["pred1_pts3d"][e][None], conf=p["pred1_conf"][e][None], desc=self.desc[a][None],
                  desc_conf=self.qconf[(a, b)][None])
        p2 = dict(pts3d=p["pred2_pts3d"][e][None], conf=p["pred2_conf"][e][None], desc=self.desc[b][None],
                  desc_conf=self.qconf[(b, a)][None])
        return p1, p2


def synth_case(n: int = 4, H: int = 48, W: int = 64, seed: int = 8, rig: str = "ring", noise: str = "clean",
               graph: str = "complete"):
    """(scene, names, pairs, model): a synthetic scene with ground truth and its stand-in model."""
    scene = make_scene(n, H, W, seed=seed, rig=rig)
    views = [dict(idx=k, instance=str(k), true_shape=np.array([[H, W]], np.int32)) for k in range(n)]
    pairs = make_pairs(views, graph, symmetrize=True)
    edges = sorted({(int(a["idx"]), int(b["idx"])) for a, b in pairs})
    pred = make_predictions(scene, np.asarray(edges), noise=noise, seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    X = world_points(scene)
    desc = descriptor_field(X, rng)
    # descriptor confidence: high where the pixel is seen by the partner (as a trained network), ~1 elsewhere
    base = 1 + 9 * np.exp(-np.abs(rng.normal(size=X.shape[:3])))
    qconf = {(a, b): np.where(_seen_by(scene, b, a), base[a], 1 + 0.05 * base[a]).astype(np.float32)
             for a in range(n) for b in range(n) if a != b}
    names = [f"synth_{k:03d}.png" for k in range(n)]
    return scene, names, pairs, SynthModel(pred, desc, qconf)
