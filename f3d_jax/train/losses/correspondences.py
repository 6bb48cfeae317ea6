"""Ground-truth correspondences between two views, sampled from a `jax.random` key (jit-able).

The geometry is MASt3R's `extract_correspondences_from_pts3d` (spec: shared/reference/training.md §8.5):
every pixel of image 1 (invalid and sky included) is projected with its world point into image 2
(`K2 · inverse(pose2)`), rounded half to even and clamped to the border (non-finite or out-of-int32 positions
go to 0, as numpy's cast does), and likewise image 2 into image 1; a pixel is a positive when the two maps
are reciprocal. Sampling draws, per pair, `n_pos = min(#reciprocal, int(n (1 - nneg)))` positives (a random
subset in random order, or all in raster order when there are not more than needed) followed by
`n - n_pos` negatives (two independent random non-reciprocal pixels), as the official counts do. The
random stream differs from numpy's, so the draws are equal in distribution, not bit for bit, to the
official dataset's. When a pair has too few pixels of either kind (the official code asserts), the missing
slots are (0, 0) pairs marked invalid.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from f3d_jax.train.losses._common import HIGHEST, affine_inverse

_INT32_LIMIT = 2.0 ** 31


def reproject_indices(pts3d: Array, intrinsics2: Array, pose2: Array, hw2: tuple[int, int]) -> Array:
    """Raveled pixel index `x + W2·y` in image 2 of every point of `pts3d (H, W, 3)` (world frame), given
    image 2's `intrinsics2 (3, 3)`, cam2world `pose2 (4, 4)` and size `hw2`. -> (H·W,) int32."""
    H2, W2 = hw2
    P = jnp.matmul(intrinsics2, affine_inverse(pose2)[:3], precision=HIGHEST)  # (3, 4)
    p = jnp.einsum("ij,nj->ni", P[:, :3], pts3d.reshape(-1, 3), precision=HIGHEST) + P[:, 3]
    xy = p[:, :2] / p[:, 2:3]
    q = jnp.round(xy)  # half to even, as numpy
    ok = jnp.isfinite(q) & (jnp.abs(q) < _INT32_LIMIT)
    q = jnp.where(ok, q, 0.0).astype(jnp.int32)  # numpy casts non-finite to INT_MIN, then clamps it to 0
    x = jnp.clip(q[:, 0], 0, W2 - 1)
    y = jnp.clip(q[:, 1], 0, H2 - 1)
    return x + W2 * y


def reciprocal_maps(view1: dict[str, Any], view2: dict[str, Any]) -> tuple[Array, Array, Array, Array]:
    """For one pair (unbatched views: 'pts3d' (H, W, 3), 'camera_intrinsics', 'camera_pose'):
    (c12 (H1·W1,), c21 (H2·W2,), reciprocal1, reciprocal2) raveled maps and boolean reciprocity."""
    H1, W1 = view1["pts3d"].shape[:2]
    H2, W2 = view2["pts3d"].shape[:2]
    c12 = reproject_indices(view1["pts3d"], view2["camera_intrinsics"], view2["camera_pose"], (H2, W2))
    c21 = reproject_indices(view2["pts3d"], view1["camera_intrinsics"], view1["camera_pose"], (H1, W1))
    rec1 = c21[c12] == jnp.arange(H1 * W1)
    rec2 = c12[c21] == jnp.arange(H2 * W2)
    return c12, c21, rec1, rec2


def _sample_pair(key: Array, view1: dict[str, Any], view2: dict[str, Any], n: int,
                 nneg: float) -> tuple[Array, Array, Array]:
    W1 = view1["pts3d"].shape[1]
    W2 = view2["pts3d"].shape[1]
    c12, _, rec1, rec2 = reciprocal_maps(view1, view2)
    n1, n2 = rec1.shape[0], rec2.shape[0]
    k_pos, k_neg1, k_neg2 = jax.random.split(key, 3)

    n_rec = jnp.sum(rec1)
    available_neg = jnp.minimum(n1 - n_rec, n2 - jnp.sum(rec2))
    n_pos = jnp.minimum(n_rec, int(n * (1 - nneg)))
    n_neg = jnp.minimum(n - n_pos, available_neg)
    n_pos = jnp.minimum(n - n_neg, n_rec)  # the official code tops up with positives, then asserts

    # positives first: a random order when subsampling, raster order otherwise; `top_k` of random scores
    # draws without replacement (scores of the other kind are -1, below every candidate)
    k = min(n, n1)
    u = jax.random.uniform(k_pos, (n1,))
    score = jnp.where(n_pos < n_rec, u, 1.0 - jnp.arange(n1) / n1)
    pos1 = jax.lax.top_k(jnp.where(rec1, score, -1.0), k)[1]
    neg1 = jax.lax.top_k(jnp.where(rec1, -1.0, jax.random.uniform(k_neg1, (n1,))), k)[1]
    neg2 = jax.lax.top_k(jnp.where(rec2, -1.0, jax.random.uniform(k_neg2, (n2,))), min(n, n2))[1]
    pad = lambda a: jnp.pad(a, (0, n - a.shape[0])) if a.shape[0] < n else a  # images of fewer than n pixels
    pos1, neg1, neg2 = pad(pos1), pad(neg1), pad(neg2)

    slot = jnp.arange(n)
    is_pos = slot < n_pos
    is_neg = ~is_pos & (slot < n_pos + n_neg)
    j = jnp.clip(slot - n_pos, 0, n - 1)
    idx1 = jnp.where(is_pos, pos1, jnp.where(is_neg, neg1[j], 0))
    idx2 = jnp.where(is_pos, c12[pos1], jnp.where(is_neg, neg2[j], 0))
    corres1 = jnp.stack([idx1 % W1, idx1 // W1], axis=-1).astype(jnp.int32)
    corres2 = jnp.stack([idx2 % W2, idx2 // W2], axis=-1).astype(jnp.int32)
    return corres1, corres2, is_pos


def sample_correspondences(key: Array, view1: dict[str, Any], view2: dict[str, Any], n: int,
                           nneg: float = 0.5) -> tuple[Array, Array, Array]:
    """Sample `n` correspondences per pair of a batch.

    view1, view2: batched views with 'pts3d' (B, H, W, 3) world points, 'camera_intrinsics' (B, 3, 3),
    'camera_pose' (B, 4, 4) cam2world. n, nneg: static (official training: 8192 and 0.5).
    Returns corres1, corres2 (B, n, 2) int32 `(x, y)` and valid (B, n) bool (True = reciprocal GT match,
    listed first), the `corres` / `valid_corres` entries of the official views.
    """
    for v, name in ((view1, "view1"), (view2, "view2")):
        for k in ("pts3d", "camera_intrinsics", "camera_pose"):
            if k not in v:
                raise KeyError(f"sample_correspondences: {name} has no {k!r} (keys: {sorted(v)})")
    if not 0 <= nneg <= 1 or n <= 0:
        raise ValueError(f"sample_correspondences: need n > 0 and 0 <= nneg <= 1, got n={n}, nneg={nneg}")
    B = view1["pts3d"].shape[0]
    sub = lambda v: {k: jnp.asarray(v[k], jnp.float32) for k in ("pts3d", "camera_intrinsics", "camera_pose")}
    keys = jax.random.split(key, B)
    return jax.vmap(lambda k, a, b: _sample_pair(k, a, b, n, nneg))(keys, sub(view1), sub(view2))
