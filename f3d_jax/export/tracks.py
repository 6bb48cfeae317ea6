"""Multi-view tracks from dense pointmaps (no feature matches): what COLMAP's `points3D` needs.

Method (vectorised numpy; loops over views only):
  1. Candidates: every masked pixel of every view, its world point and confidence.
  2. De-duplication on a voxel grid (as Depth-Anything-3's COLMAP export does): one candidate per voxel, the most
     confident. The voxel starts at the median pixel footprint (depth / focal) and grows until at most
     `max_points` candidates remain (then a seeded random subset if the growth did not get there).
  3. Verification in every view: a candidate X is observed by view j when it projects inside j's image in front
     of the camera, j's mask holds at the nearest pixel q, j's depth at q agrees with X's depth within
     `depth_tol` (relative), and j's own 3D point at q lies within `depth_tol * z + 1.5 * z / f_j` of X
     (depth tolerance plus about a pixel's footprint). The observation is, with `observations='measured'`
     (default), the sub-pixel position where j's OWN pointmap meets X (a Gauss-Newton step on the pointmap's
     local Jacobian from q); with 'projection', X's sub-pixel projection into j.
  4. Points observed by fewer than `min_views` views are dropped.

With 'measured' each view contributes its own measurement, so the reprojection residuals show where the views
disagree and COLMAP's bundle adjustment has something to refine (`f3d demo`: mean 0.5 px). With 'projection'
the observations are consistent with the exported cameras by construction (reprojection error zero up to float
rounding), like Depth-Anything-3's export: the tracks then only say which views see which point.
A point's colour is its source pixel's.
"""

from __future__ import annotations

import numpy as np

from f3d_jax.export.reconstruction import Reconstruction, Tracks


def _voxel_select(X: np.ndarray, order: np.ndarray, voxel: float) -> np.ndarray:
    """Indices (into X) of the first candidate in `order` in each occupied voxel, sorted by that order."""
    keys = np.floor(X[order] / voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    if float(span[0]) * float(span[1]) * float(span[2]) < 2.0**62:  # one int64 per voxel: a fast 1-D sort
        flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
        perm = np.argsort(flat, kind="stable")  # stable: within a voxel, the most confident comes first
    else:  # far outliers make the grid too large for one int64
        perm = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
        flat = None
    first = np.ones(len(perm), bool)
    if flat is not None:
        sf = flat[perm]
        first[1:] = sf[1:] != sf[:-1]
    else:
        sk = keys[perm]
        first[1:] = (sk[1:] != sk[:-1]).any(axis=1)
    return order[np.sort(perm[first])]


def build_tracks(recon: Reconstruction, mask: np.ndarray | None = None, max_points: int = 100_000,
                 depth_tol: float = 0.02, min_views: int = 2, seed: int = 0,
                 observations: str = "measured") -> Tracks:
    """Tracks of at most `max_points` points, each seen by at least `min_views` views (see the module docstring).

    Args:
      recon: the reconstruction (its pts3d, depth, intrinsics, cam2world at working resolution).
      mask: (N, H, W) bool pixels allowed as candidates and as observations (default `recon.mask`).
      max_points: upper bound on the number of points.
      depth_tol: relative depth agreement required for an observation.
      min_views: minimum track length.
      seed: seed of the random subset used when the voxel grid alone does not reach `max_points`.
      observations: 'measured' (default: where the view's OWN pointmap meets the point: one Gauss-Newton step
        from the nearest pixel on the pointmap's local Jacobian, falling back to the projection at depth
        edges or when the step exceeds 1.5 pixels), whose residuals measure how well the views agree, for COLMAP's
        bundle adjustment to reduce) or 'projection' (each observation is the point's projection: zero
        reprojection error with the exported cameras by construction, nothing left for a bundle adjustment).
    Returns:
      Tracks with working-resolution observation pixels.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if observations not in ("projection", "measured"):
        raise ValueError(f"observations must be 'projection' or 'measured', got {observations!r}")
    if min_views < 1:
        raise ValueError(f"min_views must be >= 1, got {min_views}")
    mask = recon.mask if mask is None else mask
    N, H, W = recon.depth.shape
    pts = recon.pts3d.astype(np.float64)
    mask = mask & np.isfinite(pts).all(-1) & (recon.depth > 0)
    view, row, col = np.nonzero(mask)
    if len(view) == 0:
        return _empty()
    X = pts[view, row, col]
    conf = recon.conf[view, row, col]
    f = np.sqrt(np.abs(recon.intrinsics[:, 0, 0] * recon.intrinsics[:, 1, 1]))
    footprint = recon.depth[view, row, col] / f[view]
    order = np.argsort(-conf, kind="stable")
    # a voxel of one pixel footprint holds about one candidate per view seeing it; start near the target count
    voxel = float(np.median(footprint)) * max(1.0, np.sqrt(len(X) / (2.0 * max_points)))
    if not voxel > 0:
        voxel = 1e-6
    sel = _voxel_select(X, order, voxel)
    for _ in range(12):
        if len(sel) <= max_points:
            break
        voxel *= 1.05 * np.sqrt(len(sel) / max_points)  # points on surfaces scale as 1 / voxel^2
        sel = _voxel_select(X, order, voxel)
    if len(sel) > max_points:
        sel = np.sort(np.random.default_rng(seed).choice(sel, max_points, replace=False))
    Xs = X[sel]
    rgb = recon.images[view[sel], row[sel], col[sel]]

    w2c = np.linalg.inv(recon.cam2world.astype(np.float64))
    Kd = recon.intrinsics.astype(np.float64)
    obs_p, obs_v, obs_uv = [], [], []
    for j in range(N):
        Xc = Xs @ w2c[j, :3, :3].T + w2c[j, :3, 3]
        z = Xc[:, 2]
        ok = z > 0
        zs = np.where(ok, z, 1.0)
        uv = (Xc @ Kd[j].T)[:, :2] / zs[:, None]
        ok &= np.isfinite(uv).all(1)
        uv = np.where(ok[:, None], uv, -1.0)
        q = np.round(uv).astype(np.int64)
        ok &= (q[:, 0] >= 0) & (q[:, 0] < W) & (q[:, 1] >= 0) & (q[:, 1] < H)
        idx = np.flatnonzero(ok)
        qu, qv = q[idx, 0], q[idx, 1]
        zi = z[idx]
        good = mask[j, qv, qu]
        good &= np.abs(recon.depth[j, qv, qu] - zi) <= depth_tol * zi
        dist = np.linalg.norm(pts[j, qv, qu] - Xs[idx], axis=-1)
        good &= dist <= depth_tol * zi + 1.5 * zi / f[j]
        idx = idx[good]
        obs = uv[idx]
        if observations == "measured":
            obs = _measured_pixels(pts[j], mask[j], recon.depth[j], q[idx, 0], q[idx, 1], Xs[idx], obs)
        obs_p.append(idx)
        obs_v.append(np.full(len(idx), j, np.int64))
        obs_uv.append(obs)
    obs_p_a = np.concatenate(obs_p)
    obs_v_a = np.concatenate(obs_v)
    obs_uv_a = np.concatenate(obs_uv)
    counts = np.bincount(obs_p_a, minlength=len(Xs))
    keep = counts >= min_views
    new_id = np.cumsum(keep) - 1
    o = keep[obs_p_a]
    return Tracks(xyz=Xs[keep], rgb=rgb[keep].astype(np.uint8), obs_point=new_id[obs_p_a[o]].astype(np.int64),
                  obs_view=obs_v_a[o], obs_uv=obs_uv_a[o])


def _measured_pixels(P: np.ndarray, mask: np.ndarray, depth: np.ndarray, qu: np.ndarray, qv: np.ndarray,
                     X: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(M, 2) sub-pixel (u, v) where the pointmap P (H, W, 3) of one view meets the points X (M, 3), starting from
    their nearest pixels (qu, qv): q + argmin_d |P(q) + J d - X| with J the pointmap's finite-difference Jacobian
    at q (central, or one-sided next to the mask's border or a depth jump of over 10 %). `fallback` where J is
    not usable or the step exceeds 1.5 pixels."""
    H, W = mask.shape
    P0, d0 = P[qv, qu], depth[qv, qu]

    def axis_derivative(du: int, dv: int) -> tuple[np.ndarray, np.ndarray]:
        cols = []
        for sgn in (1, -1):
            u, v = np.clip(qu + sgn * du, 0, W - 1), np.clip(qv + sgn * dv, 0, H - 1)
            ok = ((u != qu) | (v != qv)) & mask[v, u] & (np.abs(depth[v, u] - d0) <= 0.1 * d0)
            cols.append((np.where(ok[:, None], P[v, u], P0), ok))
        (a, oka), (b, okb) = cols
        span = oka.astype(np.float64) + okb
        return (a - b) / np.maximum(span, 1)[:, None], span > 0

    Ju, oku = axis_derivative(1, 0)
    Jv, okv = axis_derivative(0, 1)
    r = X - P0
    a, b, c = (Ju * Ju).sum(1), (Ju * Jv).sum(1), (Jv * Jv).sum(1)
    gu, gv = (Ju * r).sum(1), (Jv * r).sum(1)
    det = a * c - b * b
    ok = oku & okv & (det > 1e-12 * np.maximum(a * c, 1e-300))
    det = np.where(ok, det, 1.0)
    step = np.stack([(c * gu - b * gv) / det, (a * gv - b * gu) / det], axis=1)
    ok &= np.abs(step).max(axis=1) <= 1.5
    return np.where(ok[:, None], np.stack([qu, qv], axis=1) + step, fallback)


def _empty() -> Tracks:
    return Tracks(xyz=np.zeros((0, 3)), rgb=np.zeros((0, 3), np.uint8), obs_point=np.zeros(0, np.int64),
                  obs_view=np.zeros(0, np.int64), obs_uv=np.zeros((0, 2)))
