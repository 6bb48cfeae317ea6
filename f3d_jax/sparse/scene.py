"""`SparseScene`: the result of the sparse global alignment, and its dense point cloud (official
`SparseGA.get_dense_pts3d` and dust3r's `clean_pointcloud`; spec `alignment.md` section 4.5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from f3d_jax.sparse.canonical import anchor_offsets


def clean_pointcloud(confs: Sequence[np.ndarray], K: np.ndarray, w2cam: np.ndarray, depthmaps: Sequence[np.ndarray],
                     pts3d: Sequence[np.ndarray], tol: float = 0.001, bad_conf: float = 0.0) -> list[np.ndarray]:
    """Lower the confidence of points seen in front of another view's surface (dust3r `clean_pointcloud`).

    For every image i and every other image j, in order: project i's points into j, round to the nearest
    pixel, keep those in front of j and inside it, and clip to `bad_conf` the confidence of those closer
    than (1 - tol) x j's depth there *and* less confident than j's pixel. Updates are sequential and in
    place (later comparisons read confidences already lowered), which the official numbers depend on.

    Args:
        confs: N (H, W) confidences. K: (N, 3, 3). w2cam: (N, 4, 4). depthmaps: N (H, W) camera-frame depths.
        pts3d: N (H, W, 3) world points.

    Returns:
        N (H, W) float32 cleaned confidences.
    """
    if not 0 <= tol < 1:
        raise ValueError(f"clean_pointcloud: tol must be in [0, 1), got {tol}")
    res = [np.array(c, np.float32) for c in confs]
    K = np.asarray(K, np.float32)
    w2cam = np.asarray(w2cam, np.float32)
    for i, pts in enumerate(pts3d):
        pts = np.asarray(pts, np.float32).reshape(res[i].shape + (3,))
        for j in range(len(pts3d)):
            if i == j:
                continue
            proj = pts @ w2cam[j, :3, :3].T + w2cam[j, :3, 3]
            pz = proj[..., 2]
            h = proj @ K[j].T
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = np.round(h[..., :2] / h[..., 2:3])
            H, W = res[j].shape
            u, v = uv[..., 0], uv[..., 1]
            inside = (pz > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            ui = np.where(inside, u, 0).astype(np.int64)
            vi = np.where(inside, v, 0).astype(np.int64)
            dj = np.asarray(depthmaps[j], np.float32).reshape(H, W)[vi, ui]
            bad = inside & (pz < (1 - tol) * dj) & (res[i] < res[j][vi, ui])
            res[i][bad] = np.minimum(res[i][bad], bad_conf)
    return res


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseScene:
    """Result of `sparse_global_alignment` (N images).

    Arrays: `intrinsics` (N, 3, 3), `cam2world` (N, 4, 4) (OpenCV, cam-to-world), `sparse_depthmaps` N
    (Hs, Ws) anchor depths (Hs = H / subsample), `anchor_pts3d` N (M_n, 3) world points of each image's
    matched pixels (the official per-image anchors), `loss_curve` (niter1 + niter2,) (the loss at each
    iteration, coarse then fine, before that iteration's step), `canon2` / `canon_conf` N (H, W) relative
    depth offsets and canonical confidences, `base_focals` (N,). Static: `names`, `subsample`, the
    kinematic chain `root` and `chain_edges`, `pair_scores` ((i, j, n_matches) per unordered pair).

    `matches`: one (i, j, xy_i (M, 2) int32, xy_j (M, 2) int32, conf (M,) float32) per unordered pair whose
    matches enter the loss (pairs passing `matching_conf_thr`; the others use the DUSt3R fallback and are
    left out), each pair once as first met (i, j), at working resolution: x = column, y = row, pixel centres
    at integers. Pixel `xy_i[m]` of image i corresponds to `xy_j[m]` of image j (the tracks of an SfM export).
    """

    intrinsics: np.ndarray
    cam2world: np.ndarray
    sparse_depthmaps: tuple
    anchor_pts3d: tuple
    loss_curve: np.ndarray
    canon2: tuple
    canon_conf: tuple
    base_focals: np.ndarray
    names: tuple = dataclasses.field(metadata=dict(static=True), default=())
    subsample: int = dataclasses.field(metadata=dict(static=True), default=8)
    root: int = dataclasses.field(metadata=dict(static=True), default=0)
    chain_edges: tuple = dataclasses.field(metadata=dict(static=True), default=())
    pair_scores: tuple = dataclasses.field(metadata=dict(static=True), default=())
    matches: tuple = ()

    @property
    def focals(self) -> np.ndarray:
        return np.asarray(self.intrinsics)[:, 0, 0]

    @property
    def principal_points(self) -> np.ndarray:
        return np.asarray(self.intrinsics)[:, :2, 2]

    def dense_pts3d(self, clean_depth: bool = True) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Per-pixel cloud: every pixel takes its block's anchor depth times its focal-compensated canon2 offset.

        Returns:
            pts3d: N (H, W, 3) world points; depths: N (H, W) camera-frame depths; confs: N (H, W) canonical
            confidences, cleaned by `clean_pointcloud` when `clean_depth` (float32 numpy).
        """
        K = np.asarray(self.intrinsics, np.float32)
        c2w = np.asarray(self.cam2world, np.float32)
        pts_all, depth_all = [], []
        for n, canon2 in enumerate(self.canon2):
            canon2 = np.asarray(canon2, np.float32)
            H, W = canon2.shape
            xy = np.mgrid[:W, :H].T.reshape(-1, 2)
            idx, off = anchor_offsets(canon2, xy, self.subsample)
            f = K[n, 0, 0]
            off = 1 + (off - 1) * (np.float32(self.base_focals[n]) / f)
            z = np.asarray(self.sparse_depthmaps[n], np.float32).reshape(-1)[idx] * off
            invf = np.float32(1) / f
            cam = np.stack([z * (xy[:, 0] * invf - K[n, 0, 2] * invf), z * (xy[:, 1] * invf - K[n, 1, 2] * invf), z], -1)
            world = cam @ c2w[n, :3, :3].T + c2w[n, :3, 3]
            pts_all.append(world.reshape(H, W, 3).astype(np.float32))
            depth_all.append(z.reshape(H, W).astype(np.float32))
        confs = [np.asarray(c, np.float32) for c in self.canon_conf]
        if clean_depth:
            confs = clean_pointcloud(confs, K, np.linalg.inv(c2w), depth_all, pts_all)
        return pts_all, depth_all, confs
