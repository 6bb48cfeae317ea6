"""Pinhole camera helpers with DUSt3R's pixel convention; equivalent of `dust3r.utils.geometry.xy_grid`,
`depthmap_to_pts3d` and `cloud_opt.optimizer._fast_depthmap_to_pts3d`.

Convention: pixel (u, v) = (column, row) at **integer** coordinates 0..W-1 / 0..H-1 (no half-pixel
offset); the default principal point is exactly (W/2, H/2), not ((W-1)/2, (H-1)/2). Depth is the
camera-frame z. Cameras are OpenCV (x right, y down, z forward); poses are cam-to-world.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from f3d_jax.geometry.transforms import apply_transform, inverse_pose


def pixel_grid(H: int, W: int, dtype=np.float32, xnp: ModuleType = np):
    """(H, W, 2) grid with grid[v, u] = (u, v)."""
    u = xnp.arange(W, dtype=dtype)
    v = xnp.arange(H, dtype=dtype)
    uu, vv = xnp.meshgrid(u, v, indexing="xy")
    return xnp.stack([uu, vv], axis=-1)


def default_principal_point(H: int, W: int) -> np.ndarray:
    """(2,) float32 principal point (W/2, H/2), DUSt3R's convention."""
    return np.array([W / 2.0, H / 2.0], dtype=np.float32)


def intrinsics(focal, pp, xnp: ModuleType = np):
    """(..., 3, 3) K from (...,) focals and (..., 2) principal points."""
    focal = xnp.asarray(focal)
    pp = xnp.asarray(pp)
    z = xnp.zeros_like(focal)
    o = xnp.ones_like(focal)
    rows = [[focal, z, pp[..., 0]], [z, focal, pp[..., 1]], [z, z, o]]
    return xnp.stack([xnp.stack(r, axis=-1) for r in rows], axis=-2)


def depth_to_pts3d(depth, focal, pp=None, cam2world=None, xnp: ModuleType = np):
    """Back-project depth maps to pointmaps: X = R d ((u - cx)/f, (v - cy)/f, 1) + T.

    Args:
        depth: (N, H, W) camera-frame z.
        focal: (N,) focals in pixels.
        pp: (N, 2) principal points (cx, cy); default (W/2, H/2).
        cam2world: (N, 4, 4) cam-to-world poses; None keeps the points in the camera frames.

    Returns:
        (N, H, W, 3) points (world frame if `cam2world` is given).
    """
    N, H, W = depth.shape
    if pp is None:
        pp = xnp.broadcast_to(xnp.asarray(default_principal_point(H, W), dtype=depth.dtype), (N, 2))
    grid = pixel_grid(H, W, dtype=depth.dtype, xnp=xnp)
    xy = (grid[None] - pp[:, None, None, :]) / focal[:, None, None, None]
    pts = xnp.concatenate([xy * depth[..., None], depth[..., None]], axis=-1)
    if cam2world is not None:
        pts = apply_transform(cam2world, pts, xnp=xnp)
    return pts


def pts3d_to_depth(pts3d, cam2world, xnp: ModuleType = np):
    """Camera-frame z of world points: (N, H, W, 3) world points, (N, 4, 4) cam-to-world -> (N, H, W)."""
    return apply_transform(inverse_pose(cam2world, xnp=xnp), pts3d, xnp=xnp)[..., 2]
