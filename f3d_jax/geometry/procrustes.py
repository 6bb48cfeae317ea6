"""Weighted Procrustes / Umeyama registration (rigid and similarity); equivalent of
`roma.rigid_points_registration` as called by dust3r/cloud_opt/init_im_poses.py, and of
`align_multiple_poses` (Sim(3) fit of camera centres plus points along the optical axes).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np


def umeyama(x, y, weights=None, with_scale: bool = True, xnp: ModuleType = np):
    """Least-squares (s, R, t) minimising sum_k w_k ||s R x_k + t - y_k||^2 (Kabsch / Umeyama 1991).

    Weights are normalised to sum 1 (as roma does); the rotation is a proper rotation (det +1, the last
    singular direction flipped when needed) and the scale is trace(D S) / weighted variance of x.

    Args:
        x: (..., K, 3) source points.
        y: (..., K, 3) target points.
        weights: (..., K) non-negative weights, or None for uniform.
        with_scale: fit a similarity (True) or a rigid transform (False, s = 1).
        xnp: numpy or jax.numpy (differentiable through the SVD when jax).

    Returns:
        s: (...,) scale; R: (..., 3, 3); t: (..., 3), so that y ~ s R x + t.
    """
    if weights is None:
        w = xnp.ones(x.shape[:-1], dtype=x.dtype)
    else:
        w = weights.astype(x.dtype) if hasattr(weights, "astype") else xnp.asarray(weights, dtype=x.dtype)
    w = w / xnp.sum(w, axis=-1, keepdims=True)
    xmean = xnp.sum(w[..., None] * x, axis=-2)
    ymean = xnp.sum(w[..., None] * y, axis=-2)
    xc = x - xmean[..., None, :]
    yc = y - ymean[..., None, :]
    M = xnp.einsum("...k,...ki,...kj->...ij", w, yc, xc)  # cross-covariance, target x source
    U, S, Vt = xnp.linalg.svd(M)
    d = xnp.sign(xnp.linalg.det(U @ Vt))
    d = xnp.where(d == 0, 1.0, d)
    ones = xnp.ones_like(d)
    D = xnp.stack([ones, ones, d], axis=-1)
    R = (U * D[..., None, :]) @ Vt
    if with_scale:
        var_x = xnp.sum(w * xnp.sum(xc * xc, axis=-1), axis=-1)
        s = xnp.sum(S * D, axis=-1) / var_x
    else:
        s = xnp.ones(M.shape[:-2], dtype=x.dtype)
    t = ymean - s[..., None] * xnp.einsum("...ij,...j->...i", R, xmean)
    return s, R, t


def sim3_matrix(s, R, t, xnp: ModuleType = np):
    """(4, 4) matrix of x -> s R x + t."""
    from f3d_jax.geometry.transforms import make_pose

    return make_pose(s[..., None, None] * R, t, xnp=xnp)


def centres_and_axis_points(poses: np.ndarray) -> np.ndarray:
    """Camera centres followed by centre + eps * optical axis, eps = median pairwise centre distance / 100.

    Args:
        poses: (N, 4, 4) cam-to-world.

    Returns:
        (2N, 3) points, as the official `align_multiple_poses` builds them.
    """
    from scipy.spatial.distance import pdist

    c = poses[:, :3, 3]
    eps = np.median(pdist(c)) / 100 if len(c) > 1 else 0.0
    return np.concatenate([c, c + eps * poses[:, :3, 2]], axis=0)


def align_multiple_poses(src_poses: np.ndarray, target_poses: np.ndarray):
    """Sim(3) (s, R, t) taking `src_poses` onto `target_poses` (both (N, 4, 4) cam-to-world, N >= 2),
    fitted on camera centres plus one point per camera along its optical axis (unweighted Umeyama)."""
    if src_poses.shape != target_poses.shape or src_poses.shape[1:] != (4, 4):
        raise ValueError(f"align_multiple_poses: shapes {src_poses.shape} vs {target_poses.shape}, "
                         "expected two (N, 4, 4) arrays")
    return umeyama(centres_and_axis_points(np.asarray(src_poses, np.float64)),
                   centres_and_axis_points(np.asarray(target_poses, np.float64)), with_scale=True)
