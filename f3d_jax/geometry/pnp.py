"""RANSAC-PnP of a dense pointmap against its own pixel grid with OpenCV; equivalent of
`dust3r.cloud_opt.init_im_poses.fast_pnp` (same `cv2.solvePnPRansac` call: SQPNP, no distortion).
"""

from __future__ import annotations

import cv2
import numpy as np

from f3d_jax.geometry.cameras import pixel_grid
from f3d_jax.geometry.transforms import inverse_pose, make_pose


def pnp_ransac(pts3d: np.ndarray, mask: np.ndarray, focal: float | None = None, pp=None, n_iter: int = 10,
               reproj_err_px: float = 5.0) -> tuple[float, np.ndarray] | None:
    """Camera pose (and focal if unknown) of the image whose pixel (u, v) sees the 3D point pts3d[v, u].

    Args:
        pts3d: (H, W, 3) world points of the image's pixels.
        mask: (H, W) bool, pixels allowed in the RANSAC pool (e.g. confidence > threshold).
        focal: focal in pixels; None tries 21 focals geomspace(S/2, 3S), S = max(H, W), and keeps the one
            with most inliers (as the official code).
        pp: (2,) principal point, default (W/2, H/2).
        n_iter: RANSAC iterations (official `niter_PnP`: 10 in the GA init, 100 in PairViewer).
        reproj_err_px: inlier threshold in pixels.

    Returns:
        (focal, cam2world (4, 4) float64), or None when fewer than 4 pixels are usable or OpenCV fails.
    """
    H, W, three = pts3d.shape
    if three != 3 or mask.shape != (H, W):
        raise ValueError(f"pnp_ransac: pts3d {pts3d.shape} / mask {mask.shape}, expected (H, W, 3) / (H, W)")
    mask = mask & np.isfinite(pts3d).all(-1)
    if mask.sum() < 4:
        return None
    obj = np.ascontiguousarray(pts3d[mask], dtype=np.float32)
    img = np.ascontiguousarray(pixel_grid(H, W, dtype=np.float32)[mask])
    focals = np.geomspace(max(H, W) / 2, max(H, W) * 3, 21) if focal is None else [float(focal)]
    cx, cy = (W / 2, H / 2) if pp is None else (float(pp[0]), float(pp[1]))
    best = None
    for f in focals:
        K = np.float32([(f, 0, cx), (0, f, cy), (0, 0, 1)])
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(obj, img, K, None, iterationsCount=n_iter,
                                                         reprojectionError=reproj_err_px,
                                                         flags=cv2.SOLVEPNP_SQPNP)
        except cv2.error:
            continue
        if not ok or inliers is None:
            continue
        if best is None or len(inliers) > best[0]:
            best = (len(inliers), rvec, tvec, f)
    if best is None:
        return None
    _, rvec, tvec, f = best
    R = cv2.Rodrigues(rvec)[0]  # world-to-camera
    w2c = make_pose(R.astype(np.float64), tvec.reshape(3).astype(np.float64))
    return float(f), inverse_pose(w2c)
