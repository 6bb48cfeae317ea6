"""Focal estimation from a camera-frame pointmap; equivalent of `dust3r.post_process.estimate_focal_knowing_depth`
(mode 'weiszfeld', the one the MST initialisation and PairViewer use) and `init_im_poses.estimate_focal`.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from f3d_jax.geometry.cameras import pixel_grid


def focal_base(H: int, W: int) -> float:
    """max(H, W) / (2 tan(30 deg)): the focal of a 60-degree field of view, the unit of the clip range."""
    return max(H, W) / (2 * np.tan(np.deg2rad(60) / 2))


def estimate_focal_weiszfeld(pts3d, pp=None, n_iter: int = 10, min_focal: float | None = 0.5,
                             max_focal: float | None = 3.5, xnp: ModuleType = np):
    """Robust focal f minimising sum_p ||c_p - f r_p|| (IRLS / Weiszfeld).

    c_p = (u - cx, v - cy) are centred pixels, r_p = (x/z, y/z) the rays of the pointmap (non-finite
    ratios set to 0). Start from the least-squares f0 = mean(r.c) / mean(r.r), then `n_iter` re-weighted
    steps with w = 1 / max(||c - f r||, 1e-8). The result is clipped to [min_focal, max_focal] *
    `focal_base(H, W)` (the official `estimate_focal` uses 0.5 and 3.5; None disables a bound).

    Args:
        pts3d: (..., H, W, 3) pointmap(s) in the camera frame.
        pp: (..., 2) principal point; default (W/2, H/2).

    Returns:
        (...,) focals in pixels.
    """
    H, W = pts3d.shape[-3], pts3d.shape[-2]
    dtype = pts3d.dtype
    if pp is None:
        pp = xnp.asarray([W / 2.0, H / 2.0], dtype=dtype)
    batch = pts3d.shape[:-3]
    pts = pts3d.reshape(batch + (H * W, 3))
    pix = pixel_grid(H, W, dtype=dtype, xnp=xnp).reshape(H * W, 2) - xnp.asarray(pp, dtype=dtype)[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = pts[..., :2] / pts[..., 2:3]
    r = xnp.where(xnp.isfinite(r), r, 0.0)
    dot_rc = xnp.sum(r * pix, axis=-1)
    dot_rr = xnp.sum(r * r, axis=-1)
    f = xnp.mean(dot_rc, axis=-1) / xnp.mean(dot_rr, axis=-1)
    # x / y planes: the per-iteration distance without (..., K, 2) temporaries (same values as linalg.norm)
    px, py, rx, ry = pix[..., 0], pix[..., 1], r[..., 0], r[..., 1]
    for _ in range(n_iter):
        dx = px - f[..., None] * rx
        dy = py - f[..., None] * ry
        dis = xnp.sqrt(dx * dx + dy * dy)
        w = 1.0 / xnp.maximum(dis, 1e-8)
        f = xnp.mean(w * dot_rc, axis=-1) / xnp.mean(w * dot_rr, axis=-1)
    fb = focal_base(H, W)
    lo = -np.inf if min_focal is None else min_focal * fb
    hi = np.inf if max_focal is None else max_focal * fb
    return xnp.clip(f, lo, hi)
