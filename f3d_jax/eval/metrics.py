"""Accuracy metrics of a reconstruction against ground truth (poses, focals, depths, point clouds), as the
alignment fixtures' `metrics.json` defines them (no official dust3r file: the fixtures' generator is the
reference). Host-side numpy, float64.

Conventions: poses are cam-to-world (N, 4, 4), OpenCV axes; the relative pose of a pair i < j is
inv(c2w_i) @ c2w_j; pixel (u, v) integer with principal point as given (DUSt3R: (W/2, H/2)).
"""

from __future__ import annotations

import numpy as np

from f3d_jax.geometry.cameras import depth_to_pts3d
from f3d_jax.geometry.procrustes import umeyama
from f3d_jax.geometry.transforms import apply_transform, make_pose

POSE_THRESHOLDS_DEG = (5, 15, 30)


def _check_poses(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[1:] != (4, 4):
        raise ValueError(f"poses: expected two (N, 4, 4) cam-to-world arrays, got {pred.shape} and {gt.shape}")
    if len(pred) < 2:
        raise ValueError("poses: at least 2 cameras are needed for relative pose metrics")
    return pred, gt


def _angle_deg(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def relative_pose_errors(pred_c2w, gt_c2w) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Per-pair relative rotation error and relative translation angle, pairs i < j in lexicographic order.

    Rotation error: arccos((trace(R_pred^T R_gt) - 1) / 2) with R = R_i^T R_j (float64). Translation angle:
    unsigned angle between the relative translations R_i^T (C_j - C_i) (no min(a, 180 - a) folding; NaN
    when a translation is zero, e.g. a pure-rotation rig).

    Returns:
        rot_err_deg (P,), trans_angle_deg (P,), pairs [(i, j)].
    """
    pred, gt = _check_poses(pred_c2w, gt_c2w)
    n = len(pred)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    rot, trans = [], []
    for i, j in pairs:
        Rp = pred[i, :3, :3].T @ pred[j, :3, :3]
        Rg = gt[i, :3, :3].T @ gt[j, :3, :3]
        rot.append(_angle_deg((np.trace(Rp.T @ Rg) - 1) / 2))
        tp = pred[i, :3, :3].T @ (pred[j, :3, 3] - pred[i, :3, 3])
        tg = gt[i, :3, :3].T @ (gt[j, :3, 3] - gt[i, :3, 3])
        den = np.linalg.norm(tp) * np.linalg.norm(tg)
        trans.append(_angle_deg(tp @ tg / den) if den > 0 else np.nan)
    return np.array(rot), np.array(trans), pairs


def sim3_centres(pred_c2w, gt_c2w) -> tuple[float, np.ndarray, np.ndarray]:
    """Sim(3) (s, R, t) fitted (unweighted Umeyama) from predicted to true camera centres."""
    pred, gt = _check_poses(pred_c2w, gt_c2w)
    s, R, t = umeyama(pred[:, :3, 3], gt[:, :3, 3], with_scale=True)
    return float(s), R, t


def pose_metrics(pred_c2w, gt_c2w, thresholds=POSE_THRESHOLDS_DEG, with_translation: bool = True) -> dict:
    """Relative pose accuracy (RRA/RTA@thresholds, mAA@30), ATE after a Sim(3) fit of the centres.

    Args:
        pred_c2w, gt_c2w: (N, 4, 4) cam-to-world.
        with_translation: False for pure-rotation rigs (RTA, mAA and ATE are undefined and omitted).

    Returns:
        dict with `metrics.json['accuracy']['pose']` keys.
    """
    pred, gt = _check_poses(pred_c2w, gt_c2w)
    rot, trans, _ = relative_pose_errors(pred, gt)
    out: dict = {"n_pairs": len(rot), "rel_rot_err_deg_mean": float(rot.mean()),
                 "rel_rot_err_deg_max": float(rot.max())}
    for t in thresholds:
        out[f"RRA@{t}"] = float((rot < t).mean())
    if with_translation:
        out["rel_trans_angle_deg_mean"] = float(trans.mean())
        out["rel_trans_angle_deg_max"] = float(trans.max())
        for t in thresholds:
            out[f"RTA@{t}"] = float((trans < t).mean())
        err = np.maximum(rot, trans)
        out["mAA@30"] = float(np.mean([(err < t).mean() for t in range(1, 31)]))
        s, R, t = sim3_centres(pred, gt)
        c_pred = s * pred[:, :3, 3] @ R.T + t
        c_gt = gt[:, :3, 3]
        out["ATE_rmse"] = float(np.sqrt(np.mean(np.sum((c_pred - c_gt) ** 2, axis=-1))))
        spread = float(np.mean(np.linalg.norm(c_gt - c_gt.mean(0), axis=-1)))
        out["ATE_rmse_over_cam_spread"] = out["ATE_rmse"] / spread
        abs_rot = [_angle_deg((np.trace((R @ pred[k, :3, :3]).T @ gt[k, :3, :3]) - 1) / 2) for k in range(len(gt))]
        out["abs_rot_err_deg_mean_after_sim3"] = float(np.mean(abs_rot))
    out["per_pair_rot_err_deg"] = [round(float(x), 5) for x in rot]
    if with_translation:
        out["per_pair_trans_angle_deg"] = [round(float(x), 5) for x in trans]
    return out


def focal_metrics(pred_focals, gt_focals) -> dict:
    """Relative focal errors |f - f_gt| / f_gt (mean, max, per view)."""
    p = np.asarray(pred_focals, np.float64).ravel()
    g = np.asarray(gt_focals, np.float64).ravel()
    if p.shape != g.shape:
        raise ValueError(f"focals: shapes {p.shape} vs {g.shape}")
    err = np.abs(p - g) / g
    return {"focal_rel_err_mean": float(err.mean()), "focal_rel_err_max": float(err.max()),
            "per_view_focal_rel_err": err.tolist()}


def depth_metrics(pred_depth, gt_depth, mask=None, global_scale: float | None = None) -> dict:
    """Depth errors per view after median scaling, and with one global scale (e.g. the centre Sim(3) scale).

    Args:
        pred_depth, gt_depth: (N, H, W) camera-frame z.
        mask: (N, H, W) bool pixels to evaluate (default, as the fixtures: all pixels with finite,
            positive depths).
        global_scale: scale applied to every predicted depth for the `absrel_global_sim3_scale_*` entries.

    Returns:
        dict: per view median |s d - d_gt| / d_gt with s = median(d_gt / d) over the view's pixels; the
        mean of those; and mean/median of |g d - d_gt| / d_gt over all pixels for the global scale g.
    """
    p = np.asarray(pred_depth, np.float64)
    g = np.asarray(gt_depth, np.float64)
    if p.shape != g.shape:
        raise ValueError(f"depth: shapes {p.shape} vs {g.shape}")
    valid = np.isfinite(p) & np.isfinite(g) & (g > 0) & (p > 0)
    if mask is not None:
        valid &= np.asarray(mask, bool)
    per_view = []
    for k in range(len(p)):
        pk, gk = p[k][valid[k]], g[k][valid[k]]
        s = np.median(gk / pk)
        per_view.append(float(np.median(np.abs(s * pk - gk) / gk)))
    # (named "median" in metrics.json, but it is the mean over views of the per-view medians)
    out = {"per_view_median_absrel_after_median_scaling": per_view,
           "median_absrel_after_median_scaling": float(np.mean(per_view))}
    if global_scale is not None:
        e = np.abs(global_scale * p[valid] - g[valid]) / g[valid]
        out["absrel_global_sim3_scale_mean"] = float(e.mean())
        out["absrel_global_sim3_scale_median"] = float(np.median(e))
    return out


def world_points(depth, focals, cam2world, principal_points=None) -> np.ndarray:
    """(N, H, W, 3) float64 world points of depth maps (pixel convention of `geometry.cameras`)."""
    depth = np.asarray(depth, np.float64)
    pp = None if principal_points is None else np.asarray(principal_points, np.float64)
    return depth_to_pts3d(depth, np.asarray(focals, np.float64).ravel(), pp, np.asarray(cam2world, np.float64))


def pointcloud_metrics(pred_pts, gt_pts, mask, sim3: tuple[float, np.ndarray, np.ndarray] | None = None,
                       n_samples: int = 20000, seed: int = 0) -> dict:
    """Point-cloud accuracy / completeness / chamfer and per-pixel error after a Sim(3).

    Definitions (those of the fixtures' `metrics.json`): the predicted cloud is the masked pixels' points
    (mapped by the Sim(3)), the GT cloud is every pixel's true point; accuracy = distance from
    `n_samples` random predicted points to their nearest neighbour in the whole GT cloud, completeness =
    from `n_samples` random GT points to the whole predicted cloud, chamfer = mean of the two means. The
    per-pixel error ||pred(p) - gt(p)|| is over all pixels (deterministic; the NN figures depend on the
    random subsample).

    Args:
        pred_pts, gt_pts: (N, H, W, 3) predicted and true world points of every pixel.
        mask: (N, H, W) bool pixels of the predicted cloud (e.g. im_conf > 3).
        sim3: (s, R, t) applied to the predicted points; None fits it (unweighted Umeyama) on all pixel
            correspondences (the "dense" Sim(3)).
        n_samples: query subsample size of each cloud.

    Returns:
        dict: accuracy_mean/median, completeness_mean/median, chamfer, per_pixel_err_mean/median,
        masked_fraction_kept.
    """
    from scipy.spatial import cKDTree

    mask = np.asarray(mask, bool).ravel()
    p = np.asarray(pred_pts, np.float64).reshape(-1, 3)
    g = np.asarray(gt_pts, np.float64).reshape(-1, 3)
    if p.shape != g.shape or mask.shape != (len(p),):
        raise ValueError(f"pointcloud_metrics: pred {np.shape(pred_pts)}, gt {np.shape(gt_pts)}, "
                         f"mask {np.shape(mask)} must describe the same pixels")
    if sim3 is None:
        ok = np.isfinite(p).all(-1) & np.isfinite(g).all(-1)
        sim3 = umeyama(p[ok], g[ok], with_scale=True)
    s, R, t = sim3
    p = apply_transform(make_pose(s * np.asarray(R), np.asarray(t)), p)
    ppe = np.linalg.norm(p - g, axis=-1)
    pm = p[mask]
    rng = np.random.default_rng(seed)
    ps = pm[rng.choice(len(pm), min(n_samples, len(pm)), replace=False)]
    gs = g[rng.choice(len(g), min(n_samples, len(g)), replace=False)]
    acc = cKDTree(g).query(ps)[0]
    comp = cKDTree(pm).query(gs)[0]
    return {"accuracy_mean": float(acc.mean()), "accuracy_median": float(np.median(acc)),
            "completeness_mean": float(comp.mean()), "completeness_median": float(np.median(comp)),
            "chamfer": float((acc.mean() + comp.mean()) / 2), "per_pixel_err_mean": float(ppe.mean()),
            "per_pixel_err_median": float(np.median(ppe)), "masked_fraction_kept": float(mask.mean())}


def scene_accuracy(cam2world, focals, depthmaps, gt_cam2world, gt_focals, gt_depth, *, principal_points=None,
                   gt_principal_points=None, mask=None, pred_pts3d=None, with_translation: bool = True,
                   pointclouds: bool = True, n_samples: int = 20000, seed: int = 0) -> dict:
    """All metrics of `metrics.json['accuracy']` for one reconstruction.

    Args:
        cam2world: (N, 4, 4) predicted cam-to-world; focals (N,); depthmaps (N, H, W).
        gt_*: ground truth (gt_depth: camera-frame z).
        principal_points, gt_principal_points: (N, 2), default (W/2, H/2).
        mask: (N, H, W) bool pixels of the predicted point cloud (fixtures: im_conf > 3); depth and
            per-pixel errors use all pixels, as the fixtures do.
        pred_pts3d: (N, H, W, 3) predicted world points (default: from depthmaps/focals/poses).
        pointclouds: also compute the (subsampled, seed-dependent) point-cloud metrics.

    Returns:
        dict with keys `pose`, `focal`, `depth` and (optionally) `pointcloud_after_centre_sim3`,
        `pointcloud_after_dense_sim3`.
    """
    out = {"pose": pose_metrics(cam2world, gt_cam2world, with_translation=with_translation),
           "focal": focal_metrics(focals, gt_focals)}
    sim3 = sim3_centres(cam2world, gt_cam2world) if with_translation else None
    out["depth"] = depth_metrics(depthmaps, gt_depth, None, None if sim3 is None else sim3[0])
    if pointclouds:
        pred = world_points(depthmaps, focals, cam2world, principal_points) if pred_pts3d is None else pred_pts3d
        gtp = world_points(gt_depth, gt_focals, gt_cam2world, gt_principal_points)
        m = np.ones(np.shape(gt_depth), bool) if mask is None else mask
        if sim3 is not None:
            out["pointcloud_after_centre_sim3"] = pointcloud_metrics(pred, gtp, m, sim3, n_samples, seed)
        out["pointcloud_after_dense_sim3"] = pointcloud_metrics(pred, gtp, m, None, n_samples, seed)
    return out
