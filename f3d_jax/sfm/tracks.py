"""COLMAP tracks from MASt3R matches: union-find over (image, pixel) observations, world points from the aligned
dense points, refined by reprojection (`f3d_jax.export.Tracks`, which `f3d_jax.export.write_colmap` writes).

Method (vectorised numpy / scipy):
  1. Every match (i, xy_i) <-> (j, xy_j) of every pair links two observations (image, pixel at working
     resolution, centres at integers); the connected components of that graph are the candidate tracks.
  2. A component holding two different pixels of one image is inconsistent there: those observations are
     dropped (the other images' observations stay).
  3. Each track's point starts at the confidence-weighted mean of its observations' aligned dense points (the
     sparse alignment's depth at those pixels, `SparseScene.dense_pts3d`), then takes Gauss-Newton steps on the
     sum of squared reprojection errors (a two-view+ triangulation with the aligned cameras).
  4. While a track's worst observation is farther than `max_reproj_error` pixels from its point's projection (or
     behind its camera), that observation is dropped and the point refined again (up to `MAX_ROUNDS` rounds; then
     every remaining such observation goes); tracks shorter than `min_track_length` are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from f3d_jax.export.reconstruction import Tracks

MAX_ROUNDS = 4  # refine / drop-the-worst rounds


@dataclasses.dataclass(frozen=True)
class TrackStats:
    """Summary of `tracks_from_matches`: matches read, tracks kept and their reprojection errors (working pixels)."""

    n_matches: int
    n_candidates: int  # connected components of two or more observations
    n_points: int
    n_observations: int
    mean_track_length: float
    mean_reproj_error: float
    median_reproj_error: float
    max_reproj_error: float


def reprojection_errors(tracks: Tracks, intrinsics: np.ndarray, cam2world: np.ndarray) -> np.ndarray:
    """(M,) pixel distance between each observation and its point's projection (working resolution; inf behind
    the camera)."""
    uv, z = _project(tracks.xyz[tracks.obs_point], tracks.obs_view, intrinsics, cam2world)
    err = np.linalg.norm(uv - tracks.obs_uv, axis=1)
    return np.where(z > 0, err, np.inf)


def _project(X: np.ndarray, view: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w2c = np.linalg.inv(np.asarray(c2w, np.float64))
    Xc = np.einsum("mij,mj->mi", w2c[view, :3, :3], X) + w2c[view, :3, 3]
    z = Xc[:, 2]
    h = np.einsum("mij,mj->mi", np.asarray(K, np.float64)[view], Xc)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = h[:, :2] / np.where(np.abs(z) > 1e-12, z, 1e-12)[:, None]
    return uv, z


def _refine(X: np.ndarray, point: np.ndarray, view: np.ndarray, uv: np.ndarray, K: np.ndarray, c2w: np.ndarray,
            iters: int = 5) -> np.ndarray:
    """Gauss-Newton on each point's squared reprojection errors (all points at once: per-point 3x3 normal
    equations accumulated with bincount). Levenberg damping keeps two-view points well posed."""
    w2c = np.linalg.inv(np.asarray(c2w, np.float64))
    R, t = w2c[view, :3, :3], w2c[view, :3, 3]
    Kv = np.asarray(K, np.float64)[view]
    fx, fy, cx, cy = Kv[:, 0, 0], Kv[:, 1, 1], Kv[:, 0, 2], Kv[:, 1, 2]
    P = len(X)
    for _ in range(iters):
        Xc = np.einsum("mij,mj->mi", R, X[point]) + t
        z = Xc[:, 2]
        ok = z > 1e-9
        zs = np.where(ok, z, 1.0)
        r = np.stack([fx * Xc[:, 0] / zs + cx - uv[:, 0], fy * Xc[:, 1] / zs + cy - uv[:, 1]], 1)
        # d(pixel)/d(Xc), then through R: J (M, 2, 3)
        dc = np.zeros((len(z), 2, 3))
        dc[:, 0, 0], dc[:, 0, 2] = fx / zs, -fx * Xc[:, 0] / zs**2
        dc[:, 1, 1], dc[:, 1, 2] = fy / zs, -fy * Xc[:, 1] / zs**2
        J = np.einsum("mab,mbc->mac", dc, R) * ok[:, None, None]
        r = r * ok[:, None]
        JtJ = np.einsum("mai,maj->mij", J, J)
        Jtr = np.einsum("mai,ma->mi", J, r)
        A = np.stack([np.bincount(point, JtJ[:, a, b], P) for a in range(3) for b in range(3)], 1).reshape(P, 3, 3)
        g = np.stack([np.bincount(point, Jtr[:, a], P) for a in range(3)], 1)
        A += (1e-6 * np.trace(A, axis1=1, axis2=2) + 1e-12)[:, None, None] * np.eye(3)
        X = X - np.linalg.solve(A, g[..., None])[..., 0]
    return X


def tracks_from_matches(matches: Sequence[tuple], pts3d: Sequence[np.ndarray], conf: Sequence[np.ndarray],
                        images: np.ndarray, intrinsics: np.ndarray, cam2world: np.ndarray, *,
                        min_track_length: int = 2, max_reproj_error: float = 4.0,
                        ) -> tuple[Tracks, TrackStats]:
    """Tracks of the matches (module docstring), in the reconstruction's world frame.

    Args:
      matches: per pair (i, j, xy_i (M, 2) int, xy_j (M, 2) int, conf (M,)), pixels (x, y) at working resolution
        (`SparseScene.matches`).
      pts3d: N (H, W, 3) aligned world points per pixel; conf: N (H, W) their confidences (weights of the
        starting point). images: (N, H, W, 3) uint8 (the points' colours: the mean over observations).
      intrinsics: (N, 3, 3) working-resolution K. cam2world: (N, 4, 4).
      min_track_length: observations a point needs (>= 2).
      max_reproj_error: pixels (working resolution) beyond which an observation is dropped.

    Returns:
      (Tracks with working-resolution observations, TrackStats).
    """
    if min_track_length < 2:
        raise ValueError(f"tracks_from_matches: min_track_length must be >= 2, got {min_track_length}")
    if not max_reproj_error > 0:
        raise ValueError(f"tracks_from_matches: max_reproj_error must be > 0, got {max_reproj_error}")
    N = len(pts3d)
    H, W = np.asarray(pts3d[0]).shape[:2]
    hw = H * W
    a_nodes, b_nodes = [], []
    for m in matches:
        i, j, xy_i, xy_j = int(m[0]), int(m[1]), np.asarray(m[2]), np.asarray(m[3])
        if not (0 <= i < N and 0 <= j < N) or i == j:
            raise ValueError(f"tracks_from_matches: a match pair ({i}, {j}) names no pair of the {N} images")
        if len(xy_i) != len(xy_j):
            raise ValueError(f"tracks_from_matches: pair ({i}, {j}) has {len(xy_i)} and {len(xy_j)} pixels")
        if len(xy_i) == 0:
            continue
        for xy in (xy_i, xy_j):
            if xy.min() < 0 or (xy[:, 0] >= W).any() or (xy[:, 1] >= H).any():
                raise ValueError(f"tracks_from_matches: pair ({i}, {j}) has pixels outside the {W}x{H} images")
        a_nodes.append(i * hw + xy_i[:, 1].astype(np.int64) * W + xy_i[:, 0])
        b_nodes.append(j * hw + xy_j[:, 1].astype(np.int64) * W + xy_j[:, 0])
    n_matches = int(sum(len(a) for a in a_nodes))
    if not n_matches:
        return _empty(), TrackStats(0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
    a = np.concatenate(a_nodes)
    b = np.concatenate(b_nodes)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inv[: len(a)], inv[len(a):]
    graph = coo_matrix((np.ones(len(a), np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(graph, directed=False)
    view = nodes // hw
    pix = nodes % hw
    # step 2: an image seen at two different pixels of one component is dropped from that component
    key = comp.astype(np.int64) * N + view
    _, kinv, kcount = np.unique(key, return_inverse=True, return_counts=True)
    keep = kcount[kinv] == 1
    comp, view, pix = comp[keep], view[keep], pix[keep]
    sizes = np.bincount(comp)
    n_candidates = int((np.bincount(comp) >= 2).sum())
    keep = sizes[comp] >= min_track_length
    comp, view, pix = comp[keep], view[keep], pix[keep]
    point = np.unique(comp, return_inverse=True)[1]
    uv = np.stack([pix % W, pix // W], 1).astype(np.float64)

    # step 3: start at the confidence-weighted mean of the observations' dense points
    P3 = np.stack([np.asarray(p, np.float64).reshape(hw, 3) for p in pts3d])
    C = np.stack([np.asarray(c, np.float64).reshape(hw) for c in conf])
    X_obs = P3[view, pix]
    w = np.where(np.isfinite(X_obs).all(1), np.maximum(C[view, pix], 1e-6), 0.0)
    X_obs = np.where(w[:, None] > 0, X_obs, 0.0)
    n_pts = int(point.max()) + 1 if len(point) else 0
    wsum = np.bincount(point, w, n_pts)
    X = np.stack([np.bincount(point, w * X_obs[:, d], n_pts) for d in range(3)], 1) / np.maximum(wsum, 1e-12)[:, None]

    # step 4: refine, drop each track's worst observation while it is beyond max_reproj_error (one per track and
    # round: an outlier drags the least-squares point, so its inliers may also look bad until it is gone)
    ok_pts = (wsum > 0) & np.isfinite(X).all(1)
    keep = ok_pts[point]
    point, view, uv, w = point[keep], view[keep], uv[keep], w[keep]
    for _ in range(MAX_ROUNDS):
        X = _refine(X, point, view, uv, intrinsics, cam2world) if len(point) else X
        proj, z = _project(X[point], view, intrinsics, cam2world)
        err = np.where((z > 0) & np.isfinite(proj).all(1), np.linalg.norm(proj - uv, axis=1), np.inf)
        bad = err > max_reproj_error
        if not bad.any():
            break
        order = np.lexsort((-err, point))  # per point, the worst observation first
        first = np.ones(len(order), bool)
        first[1:] = point[order][1:] != point[order][:-1]
        drop = np.zeros(len(point), bool)
        drop[order[first]] = bad[order[first]]
        keep = ~drop
        count = np.bincount(point[keep], minlength=n_pts)
        keep &= count[point] >= min_track_length
        point, view, uv, w = point[keep], view[keep], uv[keep], w[keep]
    if len(point):  # the last round's removals were not followed by a check
        proj, z = _project(X[point], view, intrinsics, cam2world)
        err = np.where(z > 0, np.linalg.norm(proj - uv, axis=1), np.inf)
        count = np.bincount(point[err <= max_reproj_error], minlength=n_pts)
        keep = (err <= max_reproj_error) & (count[point] >= min_track_length)
        point, view, uv, w = point[keep], view[keep], uv[keep], w[keep]
    kept_pts, point = np.unique(point, return_inverse=True)
    X = X[kept_pts]
    n_pts = len(kept_pts)

    proj, _ = _project(X[point], view, intrinsics, cam2world)
    err = np.linalg.norm(proj - uv, axis=1)
    imgs = np.asarray(images).reshape(N, hw, 3).astype(np.float64)
    pix_i = uv[:, 1].astype(np.int64) * W + uv[:, 0].astype(np.int64)
    cnt = np.maximum(np.bincount(point, minlength=n_pts), 1)
    rgb = np.stack([np.bincount(point, imgs[view, pix_i, d], n_pts) for d in range(3)], 1) / cnt[:, None]
    order = np.lexsort((view, point))
    tracks = Tracks(xyz=X, rgb=np.clip(np.round(rgb), 0, 255).astype(np.uint8), obs_point=point[order].astype(np.int64),
                    obs_view=view[order].astype(np.int64), obs_uv=uv[order])
    stats = TrackStats(
        n_matches=n_matches, n_candidates=n_candidates, n_points=n_pts, n_observations=len(point),
        mean_track_length=float(len(point) / n_pts) if n_pts else 0.0,
        mean_reproj_error=float(err.mean()) if len(err) else 0.0,
        median_reproj_error=float(np.median(err)) if len(err) else 0.0,
        max_reproj_error=float(err.max()) if len(err) else 0.0)
    return tracks, stats


def _empty() -> Tracks:
    return Tracks(xyz=np.zeros((0, 3)), rgb=np.zeros((0, 3), np.uint8), obs_point=np.zeros(0, np.int64),
                  obs_view=np.zeros(0, np.int64), obs_uv=np.zeros((0, 2)))
