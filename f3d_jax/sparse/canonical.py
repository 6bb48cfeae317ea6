"""Canonical pointmaps of the sparse global alignment (official `prepare_canonical_data` / `canonical_view`,
mode 'avg-angle'; spec `alignment.md` section 4.2).

Every "self" pointmap X_k of image n (n in its own frame, one per network pass with n first) and its
confidence C_k are folded into running sums, so memory stays O(H W) per image however many pairs there
are (the official code stacks them all). With w_k = C_k - 0.999:

    canon      = sum w_k X_k / sum w_k                              (H, W, 3)
    theta_k(p) = arctan((z_k(p) - z_k(a)) / r_k(p)),  r_k(p) = max(||xy_k(p) - xy_k(a)||, 1e-8)
    canon2(p)  = 1 + mean_k(r_k(p)) tan(sum w_k theta_k / sum w_k) / canon_z(a)
    conf       = sum w_k^2 / sum w_k

with a the anchor of p's block: pixel (s bx + s/2, s by + s/2) of the s x s block (bx, by) containing p
(floor division; s = subsample). canon2 is exactly 1 at the anchors. Host-side numpy float32 (the official
arithmetic, summed over k in the order the maps are added).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from f3d_jax.geometry.focal import estimate_focal_weiszfeld

F32_EPS = float(np.finfo(np.float32).eps)


def anchor_grid_shape(H: int, W: int, subsample: int) -> tuple[int, int]:
    """(Hs, Ws): anchor rows/columns, the pixels s//2, s//2 + s, ... of each axis."""
    return len(range(subsample // 2, H, subsample)), len(range(subsample // 2, W, subsample))


def _block_anchor(a: np.ndarray, subsample: int) -> np.ndarray:
    """Value of each pixel's block anchor, broadcast to (..., H, W) from a (..., H, W) map (blocks by floor division)."""
    H, W = a.shape[-2:]
    s = subsample
    anchors = a[..., s // 2 :: s, s // 2 :: s]
    rows = np.minimum(np.arange(H) // s, anchors.shape[-2] - 1)
    cols = np.minimum(np.arange(W) // s, anchors.shape[-1] - 1)
    return anchors[..., rows[:, None], cols[None, :]]


@dataclasses.dataclass
class CanonAccumulator:
    """Running sums of one image's self pointmaps (mutable, host-side; not a pytree)."""

    H: int
    W: int
    subsample: int
    sum_wx: np.ndarray = None  # (H, W, 3)
    sum_w: np.ndarray = None  # (H, W)
    sum_w2: np.ndarray = None
    sum_wtheta: np.ndarray = None
    sum_r: np.ndarray = None
    count: int = 0

    def __post_init__(self) -> None:
        z = np.zeros((self.H, self.W), np.float32)
        self.sum_wx = np.zeros((self.H, self.W, 3), np.float32)
        self.sum_w, self.sum_w2, self.sum_wtheta, self.sum_r = z.copy(), z.copy(), z.copy(), z.copy()

    def add(self, X: np.ndarray, C: np.ndarray, times: int = 1) -> None:
        """Fold one self pointmap X (H, W, 3) with confidence C (H, W) in, `times` times (duplicate pairs)."""
        X = np.asarray(X, np.float32)
        C = np.asarray(C, np.float32)
        w = C - np.float32(0.999)
        anchor_xy = np.stack([_block_anchor(X[..., c], self.subsample) for c in range(2)], -1)
        anchor_z = np.maximum(_block_anchor(X[..., 2], self.subsample), np.float32(F32_EPS))
        d = X[..., :2] - anchor_xy
        r = np.maximum(np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]), np.float32(1e-8))
        theta = np.arctan((X[..., 2] - anchor_z) / r)
        wx, w2, wt = w[..., None] * X, w * w, w * theta
        for _ in range(times):
            self.sum_wx += wx
            self.sum_w += w
            self.sum_w2 += w2
            self.sum_wtheta += wt
            self.sum_r += r
            self.count += 1

    def finalize(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(canon (H, W, 3), canon2 (H, W), conf (H, W)) float32."""
        if self.count == 0:
            raise ValueError("canonical view: no self pointmap was added for this image")
        canon = self.sum_wx / self.sum_w[..., None]
        avg_angle = self.sum_wtheta / self.sum_w
        dz = (self.sum_r / np.float32(self.count)) * np.tan(avg_angle)
        canon2 = 1 + dz / _block_anchor(canon[..., 2], self.subsample)
        conf = self.sum_w2 / self.sum_w
        return canon.astype(np.float32), canon2.astype(np.float32), conf.astype(np.float32)


def base_focal(canon: np.ndarray) -> np.float32:
    """Weiszfeld focal of the canonical pointmap, pp (W/2, H/2), clipped to [0.5, 3.5] x the 60-degree focal."""
    return np.float32(estimate_focal_weiszfeld(np.asarray(canon, np.float32), min_focal=0.5, max_focal=3.5))


def anchor_offsets(canon2: np.ndarray, xy: np.ndarray, subsample: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor index and depth offset of pixels (official `anchor_depth_offsets`).

    Args:
        canon2: (H, W) relative depth offsets. xy: (M, 2) int (x, y) pixels.

    Returns:
        idx (M,) int32 = (y // s) * Ws + x // s (the block containing the pixel), offset (M,) float32 =
        canon2(y, x) / canon2(anchor).
    """
    H, W = canon2.shape
    _, Ws = anchor_grid_shape(H, W, subsample)
    core = canon2[subsample // 2 :: subsample, subsample // 2 :: subsample].reshape(-1)
    if not np.all(core > 0):
        raise ValueError("canonical view: non-positive anchor depth offsets (degenerate pointmaps)")
    x = np.asarray(xy[:, 0], np.int64)
    y = np.asarray(xy[:, 1], np.int64)
    idx = (y // subsample) * Ws + x // subsample
    return idx.astype(np.int32), (canon2[y, x] / core[idx]).astype(np.float32)
