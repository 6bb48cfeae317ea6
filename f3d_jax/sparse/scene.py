"""`SparseScene`: the result of the sparse global alignment, and its dense point cloud (official
`SparseGA.get_dense_pts3d` and dust3r's `clean_pointcloud`; spec `alignment.md` section 4.5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.sparse.canonical import anchor_offsets

_HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def _occluded_by_any(pts: jax.Array, conf_i: jax.Array, w2cam: jax.Array, K: jax.Array, depth: jax.Array,
                     conf: jax.Array, tol: jax.Array) -> jax.Array:
    """(P,) bool: which of image i's points (P, 3) (confidences (P,)) any of J partner views (w2cam (J, 4, 4),
    K (J, 3, 3), depth and confidence maps (J, H, W)) sees behind its surface by more than `tol` (relative),
    where the partner is more confident (one fused pass over all partners)."""
    J, H, W = depth.shape
    proj = jnp.einsum("pc,jdc->jpd", pts, w2cam[:, :3, :3], precision=_HIGHEST) + w2cam[:, None, :3, 3]
    h = jnp.einsum("jpc,jdc->jpd", proj, K, precision=_HIGHEST)
    pz = proj[..., 2]
    uv = jnp.round(h[..., :2] / h[..., 2:3])
    u, v = uv[..., 0], uv[..., 1]
    inside = (pz > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    pix = jnp.where(inside, v, 0).astype(jnp.int32) * W + jnp.where(inside, u, 0).astype(jnp.int32)
    dj = jnp.take_along_axis(depth.reshape(J, -1), pix, axis=1)
    cj = jnp.take_along_axis(conf.reshape(J, -1), pix, axis=1)
    return jnp.any(inside & (pz < (1 - tol) * dj) & (conf_i[None] < cj), axis=0)


def clean_pointcloud(confs: Sequence[np.ndarray], K: np.ndarray, w2cam: np.ndarray, depthmaps: Sequence[np.ndarray],
                     pts3d: Sequence[np.ndarray], tol: float = 0.001, bad_conf: float = 0.0) -> list[np.ndarray]:
    """Lower the confidence of points seen in front of another view's surface (dust3r `clean_pointcloud`).

    For every image i and every other image j, in order: project i's points into j, round to the nearest
    pixel, keep those in front of j and inside it, and clip to `bad_conf` the confidence of those closer
    than (1 - tol) x j's depth there *and* less confident than j's pixel. The official updates are sequential
    and in place (later comparisons read confidences already lowered), which the official numbers depend on.

    Vectorised over j (the official loops over all N (N - 1) ordered pairs in Python, each pass a few numpy
    sweeps over H x W): for a fixed i, a pixel's confidence once clipped stays min(c, bad_conf) whatever later
    j say, and before it is clipped it is the original c, so the official in-place loop over j equals "clip
    where any j flags the pixel with the original c" -- one jitted pass per image i over all its partners of
    one image size (about 4x faster than the loop on a CPU at 16 views). Image i still reads the confidences
    of images j < i as already cleaned (the official order), so the loop over i stays sequential. Every
    ordered pair is still checked, as upstream (restricting to the pair graph would change the result).
    float32 throughout as upstream; the tests check bit-identical results against the pairwise loop.

    Args:
        confs: N (H, W) confidences. K: (N, 3, 3). w2cam: (N, 4, 4). depthmaps: N (H, W) camera-frame depths.
        pts3d: N (H, W, 3) world points.

    Returns:
        N (H, W) float32 cleaned confidences.
    """
    if not 0 <= tol < 1:
        raise ValueError(f"clean_pointcloud: tol must be in [0, 1), got {tol}")
    res = [np.array(c, np.float32) for c in confs]
    n = len(res)
    K = np.asarray(K, np.float32)
    w2cam = np.asarray(w2cam, np.float32)
    depth = [np.asarray(d, np.float32).reshape(r.shape) for d, r in zip(depthmaps, res)]
    for i, pts in enumerate(pts3d):
        ci = res[i].reshape(-1)  # a view: updated in place
        pts = jnp.asarray(np.asarray(pts, np.float32).reshape(-1, 3))
        flagged = np.zeros(ci.shape, bool)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for j in range(n):
            if j != i:
                by_shape.setdefault(res[j].shape, []).append(j)
        for js in by_shape.values():
            dj, cj = np.stack([depth[j] for j in js]), np.stack([res[j] for j in js])
            flagged |= np.asarray(_occluded_by_any(pts, jnp.asarray(ci), w2cam[js], K[js], dj, cj, np.float32(tol)))
        ci[flagged] = np.minimum(ci[flagged], bad_conf)
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
