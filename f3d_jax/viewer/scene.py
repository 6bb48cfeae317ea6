"""What the viewer shows, as plain numpy: the pixels behind the point cloud, the confidence filter,
the camera frusta and the sizes that make a scene of any scale look right.

Nothing here knows the web viewer; `f3d_jax.viewer.server` hands these arrays to viser.

Conventions (those of `f3d_jax.export.Reconstruction`): poses cam-to-world 4x4 with OpenCV axes (x right,
y down, z forward); intrinsics at working resolution; per-view arrays (N, H, W, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["ViewerScene", "prepare_scene", "visible_points", "frustum_fov_aspect", "rotation_to_wxyz"]


@dataclasses.dataclass(frozen=True)
class ViewerScene:
    """The point cloud candidates and cameras of a reconstruction, ready to draw.

    Attributes:
        points: (P, 3) float32 world points: every finite pixel of every view (a seeded subset of them
            when there were more than `max_points`).
        colors: (P, 3) uint8 RGB of those pixels.
        conf: (P,) float32 their confidence.
        in_mask: (P,) bool whether the reconstruction's export mask keeps them.
        cam2world: (N, 4, 4) float64 poses.
        fov: (N,) float64 vertical field of view (radians); aspect: (N,) width / height.
        thumbnails: list of N (h, w, 3) uint8 images, long side at most `thumb_size`, shown in the frusta.
        names: N image names.
        frustum_scale: float, frustum depth in world units (a fraction of the scene's extent).
        point_size: float, default point size in world units (about one pixel's footprint at median depth).
        centre: (3,) float64 a robust centre of the point cloud (median).
    """

    points: np.ndarray
    colors: np.ndarray
    conf: np.ndarray
    in_mask: np.ndarray
    cam2world: np.ndarray
    fov: np.ndarray
    aspect: np.ndarray
    thumbnails: list[np.ndarray]
    names: tuple[str, ...]
    frustum_scale: float
    point_size: float
    centre: np.ndarray

    def conf_range(self) -> tuple[float, float]:
        """(low, high) bounds for a confidence slider: the smallest confidence and the 99.5th percentile
        (a few huge confidences would otherwise squash the useful range into the slider's first notch)."""
        if self.conf.size == 0:
            return 0.0, 1.0
        lo = float(self.conf.min())
        hi = float(np.percentile(self.conf, 99.5))
        return lo, max(hi, lo + 1e-3)

    def default_threshold(self) -> float:
        """The threshold that reproduces the export mask: the lowest confidence it keeps (the smallest
        confidence overall when the mask keeps nothing)."""
        kept = self.conf[self.in_mask]
        return float(kept.min()) if kept.size else self.conf_range()[0]


def visible_points(scene: ViewerScene, min_conf: float, export_mask_only: bool = False) -> np.ndarray:
    """(P,) bool: the points drawn for a confidence threshold (conf >= min_conf, and inside the export mask
    when `export_mask_only`)."""
    keep = scene.conf >= min_conf
    if export_mask_only:
        keep &= scene.in_mask
    return keep


def frustum_fov_aspect(intrinsics: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertical field of view (radians) and aspect (W / H) of (N, 3, 3) pinhole intrinsics for H x W images."""
    fy = np.asarray(intrinsics, np.float64)[:, 1, 1]
    return 2.0 * np.arctan2(height / 2.0, fy), np.full(fy.shape, width / height)


def rotation_to_wxyz(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z), w >= 0 (Shepperd's method:
    the largest of the four squared components sets the branch, so no division by a small number)."""
    R = np.asarray(R, np.float64)
    m = R.reshape(-1, 3, 3)
    tr = np.trace(m, axis1=1, axis2=2)
    sq = np.stack([1 + tr, 1 + 2 * m[:, 0, 0] - tr, 1 + 2 * m[:, 1, 1] - tr, 1 + 2 * m[:, 2, 2] - tr], axis=1)
    k = np.argmax(sq, axis=1)
    out = np.empty((m.shape[0], 4))
    for i, (branch, mi) in enumerate(zip(k, m)):
        s = 2.0 * np.sqrt(max(sq[i, branch], 1e-300))
        d21, d02, d10 = mi[2, 1] - mi[1, 2], mi[0, 2] - mi[2, 0], mi[1, 0] - mi[0, 1]
        a01, a02, a12 = mi[0, 1] + mi[1, 0], mi[0, 2] + mi[2, 0], mi[1, 2] + mi[2, 1]
        q = {0: (s / 4, d21 / s, d02 / s, d10 / s),
             1: (d21 / s, s / 4, a01 / s, a02 / s),
             2: (d02 / s, a01 / s, s / 4, a12 / s),
             3: (d10 / s, a02 / s, a12 / s, s / 4)}[int(branch)]
        out[i] = q
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out *= np.where(out[:, :1] < 0, -1.0, 1.0)
    return out.reshape(R.shape[:-2] + (4,))


def _thumbnail(img: np.ndarray, size: int) -> np.ndarray:
    """Every k-th pixel so that the long side is at most `size` (enough for a frustum's texture)."""
    k = max(1, -(-max(img.shape[:2]) // size))
    return np.ascontiguousarray(img[::k, ::k, :3])


def prepare_scene(recon: Any, max_points: int = 2_000_000, thumb_size: int = 256, seed: int = 0) -> ViewerScene:
    """The drawable content of a `Reconstruction` (or any object with its fields).

    Args:
        recon: has images (N,H,W,3) uint8, cam2world (N,4,4), intrinsics (N,3,3), pts3d (N,H,W,3),
            conf (N,H,W), mask (N,H,W) bool, names.
        max_points: more finite pixels than this are subsampled (seeded, uniform) so that a browser can
            draw them; the confidence filter then acts on the subset.
        thumb_size: long side of the images shown in the frusta.
    """
    images = np.asarray(recon.images)
    pts = np.asarray(recon.pts3d, np.float32)
    conf = np.asarray(recon.conf, np.float32)
    mask = np.asarray(recon.mask, bool)
    cam2world = np.asarray(recon.cam2world, np.float64)
    K = np.asarray(recon.intrinsics, np.float64)
    if images.ndim != 4 or pts.shape != images.shape[:3] + (3,) or conf.shape != images.shape[:3] \
            or mask.shape != images.shape[:3] or cam2world.shape != (images.shape[0], 4, 4) \
            or K.shape != (images.shape[0], 3, 3):
        raise ValueError(f"inconsistent reconstruction: images {images.shape}, pts3d {pts.shape}, conf {conf.shape}, "
                         f"mask {mask.shape}, cam2world {cam2world.shape}, intrinsics {K.shape}")
    N, H, W = images.shape[:3]
    finite = np.isfinite(pts).all(-1) & np.isfinite(conf)
    idx = np.flatnonzero(finite.reshape(-1))
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    points = pts.reshape(-1, 3)[idx]
    fov, aspect = frustum_fov_aspect(K, H, W)

    centres = cam2world[:, :3, 3]
    centre = np.median(points, axis=0) if len(points) else centres.mean(0)
    # scene extent: the median distance of points (and cameras) to the centre -- robust to far outliers
    dists = np.linalg.norm(np.concatenate([points, centres]) - centre, axis=1)
    extent = float(np.median(dists)) if dists.size and np.median(dists) > 0 else 1.0
    # one pixel's footprint at the median depth: depth / focal
    depth = np.einsum("nij,nhwj->nhwi", np.linalg.inv(cam2world)[:, :3, :3], pts - centres[:, None, None])[..., 2]
    med_depth = float(np.median(depth[finite])) if finite.any() else extent
    focal = float(np.median(K[:, 1, 1]))
    point_size = abs(med_depth) / focal * 1.5 if focal > 0 and med_depth != 0 else extent * 1e-3
    return ViewerScene(
        points=points,
        colors=images.reshape(-1, images.shape[-1])[idx, :3].astype(np.uint8),
        conf=conf.reshape(-1)[idx],
        in_mask=mask.reshape(-1)[idx],
        cam2world=cam2world,
        fov=fov,
        aspect=aspect,
        thumbnails=[_thumbnail(im, thumb_size) for im in images],
        names=tuple(str(n) for n in recon.names),
        frustum_scale=0.15 * extent,
        point_size=point_size,
        centre=np.asarray(centre, np.float64),
    )
