"""Initialisation of the dense global alignment from pairwise pointmaps; equivalent of
dust3r/cloud_opt/init_im_poses.py (`init_minimum_spanning_tree` + `init_from_pts3d`, `init_from_known_poses`).

It runs once and is not differentiated. The MST initialisation splits into a host part and a device part:
the spanning-tree walk is decided from the edge scores alone (`_walk_tree`), so every per-edge registration
(each edge's pairwise Sim(3), and the tree steps) and every focal estimate is known up front and computed at
once (`f3d_jax.align.registration`): batched jitted float32 blocked reductions on GPU / TPU, finished in float64
on the host; on CPU a host float64 BLAS loop over the same list (as fast there). The host then only composes
3x3 similarities along the tree (Umeyama is equivariant: registering onto sim(Q) is sim after registering onto
Q), runs OpenCV RANSAC-PnP for the leaves and reads depths. The known-poses initialisation stays host-side
numpy (float64 math on the float32 inputs).

Its output, `Initialisation`, holds the decoded starting state (an `AlignState`, what the optimiser starts
from), the raw parameters of the official optimiser (so that the jitted optimisation can be checked to start
from exactly the official state) and diagnostics.

Conventions: poses are cam-to-world 4x4, OpenCV axes; pixel (u, v) integer, principal point (W/2, H/2);
quaternions XYZW (roma); the pairwise transform of edge e = (i, j) maps the network's camera-i-frame
points to the world as x -> s_e (R_e x + T_e), `pw_poses[e] = [R_e | T_e]`, `pw_scales[e] = s_e`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from f3d_jax.align.registration import focals_many, register_many, register_sim3  # noqa: F401  (re-export)
from f3d_jax.align.types import AlignState
from f3d_jax.geometry.focal import focal_base
from f3d_jax.geometry.pnp import pnp_ransac
from f3d_jax.geometry.procrustes import align_multiple_poses
from f3d_jax.geometry.transforms import (apply_transform, inverse_pose, make_pose, quat_xyzw_to_rotmat,
                                         rotmat_to_quat_xyzw, signed_expm1, signed_log1p)

FOCAL_BREAK = 20.0  # official focal parameter = 20 * log(f)


@dataclasses.dataclass(frozen=True)
class Initialisation:
    """Result of an initialisation (all numpy, float32 unless noted).

    The starting state:
        state: `AlignState` (numpy arrays) decoded from the raw parameters below as the official `get_*`
            methods do: cam2world (N, 4, 4); focals (N,) = exp(raw_im_focals / 20) in float32; principal_points
            (N, 2) (W/2, H/2 unless preset); depthmaps (N, H, W) = exp(log_depthmaps); pw_poses (E, 4, 4) rigid
            [R_e | T_e]; pw_scales (E,) effective pairwise scales s_e (normalisation included), so that the
            official `get_pw_poses()` (scaled) equals pw_poses with its top 3 rows multiplied by s_e.
    Raw parameters of the official optimiser (to reproduce its Adam trajectory):
        raw_im_poses: (N, 7) unit quaternion XYZW + signed_log1p(translation).
        raw_im_focals: (N,) 20 * log(focal).
        log_depthmaps: (N, H, W) log depth (log of a non-positive depth stored as 0, as the official).
        raw_pw_poses: (E, 8) quaternion XYZW, signed_log1p(T_reg / s_reg), log s_reg, where (s_reg, R,
            T_reg) is the Procrustes fit before scale normalisation; s_e = exp(raw[:, 7]) * norm factor.
        norm_pw_scale: whether the optimiser pins the geometric mean of the pairwise scales to
            `base_scale` (False when >= 2 poses are preset, as the official code).
    Diagnostics:
        im_conf: (N, H, W) per-image max confidence over all edges.
        edge_scores: (E,) float64 mean(conf1) * mean(conf2) per edge.
        mst_edges: (K, 2) int tree edges in the order the initialisation consumed them (K = N - 1 for MST,
            0 for known poses).
        mst_focals: (N,) float64 focals estimated by the initialisation (before presets override them).
        root: index of the MST root camera (identity pose, raw translation exactly 0), -1 for known poses.
    """

    state: AlignState
    raw_im_poses: np.ndarray
    raw_im_focals: np.ndarray
    log_depthmaps: np.ndarray
    raw_pw_poses: np.ndarray
    im_conf: np.ndarray
    edge_scores: np.ndarray
    mst_edges: np.ndarray
    mst_focals: np.ndarray
    root: int = dataclasses.field(default=-1, metadata=dict(static=True))
    norm_pw_scale: bool = dataclasses.field(default=True, metadata=dict(static=True))
    base_scale: float = dataclasses.field(default=0.5, metadata=dict(static=True))


jax.tree_util.register_dataclass(Initialisation)


# ----------------------------------------------------------------------------------------------------
# input checks


def _check_inputs(edges, pred1_pts3d, pred1_conf, pred2_pts3d, pred2_conf):
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.shape[1] != 2 or edges.shape[0] == 0:
        raise ValueError(f"edges: expected a non-empty (E, 2) integer array, got shape {edges.shape}")
    edges = edges.astype(np.int64)
    E = edges.shape[0]
    arrays = dict(pred1_pts3d=pred1_pts3d, pred1_conf=pred1_conf, pred2_pts3d=pred2_pts3d, pred2_conf=pred2_conf)
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    p1 = arrays["pred1_pts3d"]
    if p1.ndim != 4 or p1.shape[0] != E or p1.shape[-1] != 3:
        raise ValueError(f"pred1_pts3d: expected (E={E}, H, W, 3), got {p1.shape}")
    H, W = p1.shape[1:3]
    for k, shape in (("pred2_pts3d", (E, H, W, 3)), ("pred1_conf", (E, H, W)), ("pred2_conf", (E, H, W))):
        if arrays[k].shape != shape:
            raise ValueError(f"{k}: expected shape {shape} (matching pred1_pts3d), got {arrays[k].shape}")
    for k, v in arrays.items():
        if not np.isfinite(v).all():
            raise ValueError(f"{k}: contains {int((~np.isfinite(v)).sum())} NaN/inf values")
    if (edges[:, 0] == edges[:, 1]).any():
        raise ValueError("edges: self-edges (i, i) are not allowed")
    n = int(edges.max()) + 1
    if edges.min() < 0 or set(np.unique(edges).tolist()) != set(range(n)):
        raise ValueError(f"edges: image indices must cover 0..N-1 without gaps, got {sorted(set(edges.ravel().tolist()))}")
    if n < 2:
        raise ValueError("edges: at least 2 images are needed")
    if len({(int(i), int(j)) for i, j in edges}) != E:
        raise ValueError("edges: duplicate directed edges")
    g = sp.coo_array((np.ones(E), (edges[:, 0], edges[:, 1])), shape=(n, n))
    ncomp, labels = connected_components(g, directed=False)
    if ncomp > 1:
        raise ValueError(f"edges: the pair graph is disconnected ({ncomp} components, labels {labels.tolist()}): "
                         "the images cannot be placed in one frame")
    return edges, n, arrays


def image_confidences(edges: np.ndarray, conf1: np.ndarray, conf2: np.ndarray, n_imgs: int) -> np.ndarray:
    """(N, H, W) pixel-wise max of every confidence predicted for each image (as first or second image)."""
    im_conf = np.zeros((n_imgs,) + conf1.shape[1:], np.float32)
    for e, (i, j) in enumerate(edges):
        np.maximum(im_conf[i], conf1[e], out=im_conf[i])
        np.maximum(im_conf[j], conf2[e], out=im_conf[j])
    return im_conf


def edge_scores(conf1: np.ndarray, conf2: np.ndarray) -> np.ndarray:
    """(E,) float64 score of each edge: mean(conf1) * mean(conf2) (raw confidences)."""
    return conf1.reshape(len(conf1), -1).mean(1, dtype=np.float64) * conf2.reshape(len(conf2), -1).mean(1, dtype=np.float64)


def _mask_array(mask, n: int, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(n, bool)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        idx = mask.astype(np.int64).ravel()
        mask = np.zeros(n, bool)
        mask[idx] = True
    if mask.shape != (n,):
        raise ValueError(f"{name}: expected {n} booleans (one per image), got shape {mask.shape}")
    return mask


def _presets(n, H, W, preset_focals, focal_mask, preset_poses, pose_mask, preset_pp, pp_mask):
    f_mask = np.zeros(n, bool) if preset_focals is None else _mask_array(focal_mask, n, "preset_focal_mask")
    p_mask = np.zeros(n, bool) if preset_poses is None else _mask_array(pose_mask, n, "preset_pose_mask")
    c_mask = np.zeros(n, bool) if preset_pp is None else _mask_array(pp_mask, n, "preset_pp_mask")
    focals = np.zeros(n)
    if preset_focals is not None:
        pf = np.asarray(preset_focals, np.float64).ravel()
        if pf.shape != (n,):
            raise ValueError(f"preset_focals: expected ({n},), got {pf.shape}")
        if not (np.isfinite(pf[f_mask]).all() and (pf[f_mask] > 0).all()):
            raise ValueError("preset_focals: known focals must be finite and > 0")
        focals = pf
    poses = np.tile(np.eye(4), (n, 1, 1))
    if preset_poses is not None:
        pp_ = np.asarray(preset_poses, np.float64)
        if pp_.shape != (n, 4, 4):
            raise ValueError(f"preset_poses: expected ({n}, 4, 4) cam-to-world, got {pp_.shape}")
        if not np.isfinite(pp_[p_mask]).all():
            raise ValueError("preset_poses: known poses must be finite")
        poses = pp_
    pps = np.tile(np.array([W / 2, H / 2]), (n, 1))
    if preset_pp is not None:
        c = np.asarray(preset_pp, np.float64)
        if c.shape != (n, 2):
            raise ValueError(f"preset_principal_points: expected ({n}, 2), got {c.shape}")
        pps = np.where(c_mask[:, None], c, pps)
    return f_mask, focals, p_mask, poses, c_mask, pps


def _raw_pose(R, T, scale=None) -> np.ndarray:
    """Official `_set_pose` encoding: (quat XYZW, signed_log1p(T / scale)[, log scale])."""
    q = rotmat_to_quat_xyzw(np.asarray(R, np.float64))
    t = signed_log1p(np.asarray(T, np.float64) / (1.0 if scale is None else scale))
    parts = [q, t] + ([np.array([np.log(scale)])] if scale is not None else [])
    return np.concatenate(parts).astype(np.float32)


def _raw_poses(R, T, scale=None) -> np.ndarray:
    """`_raw_pose` of (B, 3, 3) R, (B, 3) T[, (B,) scale] at once: (B, 7) or (B, 8) float32."""
    R, T = np.asarray(R, np.float64), np.asarray(T, np.float64)
    if scale is None:
        return np.concatenate([rotmat_to_quat_xyzw(R), signed_log1p(T)], axis=1).astype(np.float32)
    scale = np.asarray(scale, np.float64)
    return np.concatenate([rotmat_to_quat_xyzw(R), signed_log1p(T / scale[:, None]), np.log(scale)[:, None]],
                          axis=1).astype(np.float32)


def decode_raw_poses(raw: np.ndarray) -> np.ndarray:
    """(..., 7+) raw official poses -> (..., 4, 4) rigid matrices [R(q/|q|) | signed_expm1(tau)] (float32)."""
    raw = np.asarray(raw, np.float32)
    return make_pose(quat_xyzw_to_rotmat(raw[..., :4]), signed_expm1(raw[..., 4:7])).astype(np.float32)


def _finish(edges, n, H, W, P1, C1, raw_im_poses, raw_im_focals, log_depth, raw_pw, pps, im_conf, scores,
            mst_edges, mst_focals, root, norm_pw_scale, base_scale) -> Initialisation:
    raw_pw = np.asarray(raw_pw, np.float32)
    if norm_pw_scale:
        nf = np.exp(np.float32(np.log(base_scale)) - raw_pw[:, 7].mean(dtype=np.float32))
    else:
        nf = np.float32(1.0)
    raw_im_focals = np.asarray(raw_im_focals, np.float32)
    log_depth = np.asarray(log_depth, np.float32)
    state = AlignState(
        cam2world=decode_raw_poses(raw_im_poses),
        focals=np.exp(raw_im_focals / np.float32(FOCAL_BREAK)).astype(np.float32),
        principal_points=np.asarray(pps, np.float32),
        depthmaps=np.exp(log_depth),
        pw_poses=decode_raw_poses(raw_pw),
        pw_scales=(np.exp(raw_pw[:, 7]) * nf).astype(np.float32),
    )
    return Initialisation(
        state=state,
        raw_im_poses=np.asarray(raw_im_poses, np.float32),
        raw_im_focals=raw_im_focals,
        log_depthmaps=log_depth,
        raw_pw_poses=raw_pw,
        im_conf=im_conf,
        edge_scores=scores,
        mst_edges=np.asarray(mst_edges, np.int64).reshape(-1, 2),
        mst_focals=np.asarray(mst_focals, np.float64),
        root=int(root),
        norm_pw_scale=bool(norm_pw_scale),
        base_scale=float(base_scale),
    )


def _log_depth(depth: np.ndarray) -> np.ndarray:
    # official: depth.log().nan_to_num(neginf=0): log of 0 / negatives / NaN -> 0 (depth 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ld = np.log(depth)
    return np.where(np.isfinite(ld), ld, np.where(ld == np.inf, np.finfo(np.float32).max, 0.0))


# ----------------------------------------------------------------------------------------------------
# MST initialisation


def initialise_mst(edges, pred1_pts3d, pred1_conf, pred2_pts3d, pred2_conf, min_conf_thr: float = 3.0, *,
                   niter_pnp: int = 10, preset_focals=None, preset_focal_mask=None, preset_poses=None,
                   preset_pose_mask=None, preset_principal_points=None, preset_pp_mask=None,
                   norm_pw_scale: bool | None = None, base_scale: float = 0.5,
                   focal_clip: tuple[float | None, float | None] = (0.5, 3.5),
                   backend: str | None = None) -> Initialisation:
    """Minimum-spanning-tree initialisation of the dense GA (official `init='mst'`).

    Steps (spec §2.4): edge scores mean(conf1) * mean(conf2); scipy MST of -score over the directed
    entries; the best tree edge (i, j) defines the world (camera i, identity); the other tree edges are
    consumed best-first, each Sim(3)-registering (conf-weighted Umeyama) the new edge's pointmap onto the
    already placed one; focals by Weiszfeld, including the official stale-variable quirk (a newly reached
    image's focal is estimated from the *previously processed* edge's first pointmap); images left
    without a pose (tree leaves reached as second image) get RANSAC-PnP (OpenCV SQPNP, `niter_pnp`
    iterations, 5 px, pixels with im_conf > min_conf_thr); then every edge's pairwise transform is
    Procrustes-fitted, the pairwise-scale normalisation (geometric mean -> base_scale) is applied to
    world points and translations, and depth maps are read in each camera's frame.

    Args:
        edges: (E, 2) int, edge e = (i, j) is one network pass with image i first.
        pred1_pts3d: (E, H, W, 3) image i's pointmap in camera i's frame.
        pred1_conf: (E, H, W) its confidence (>= 1).
        pred2_pts3d: (E, H, W, 3) image j's pointmap in camera i's frame (`pts3d_in_other_view`).
        pred2_conf: (E, H, W) its confidence.
        min_conf_thr: confidence threshold of the PnP inlier pool (not used elsewhere).
        niter_pnp: RANSAC iterations of the leaf PnP.
        preset_focals: (N,) known focals (pixels) or None; `preset_focal_mask` (N,) bool / int indices
            selects the known ones (default: all). The tree walk still uses estimated focals (as the
            official code); known focals replace them in the returned state.
        preset_poses: (N, 4, 4) known cam-to-world poses (OpenCV axes) with `preset_pose_mask`. With >= 2
            known poses the whole tree is Sim(3)-aligned to them (camera centres + optical-axis points)
            as the official code does; with exactly 1 (the official code raises NotImplementedError) the
            tree is rigidly moved so that this camera lands on its known pose. Known poses are kept as
            given in the returned state.
        preset_principal_points: (N, 2) known principal points with `preset_pp_mask`.
        norm_pw_scale: pairwise-scale normalisation; default: on unless >= 2 poses are preset.
        base_scale: geometric mean of the normalised pairwise scales (official 0.5).
        focal_clip: focal clip range in units of `focal_base` (official `estimate_focal`: (0.5, 3.5)).
        backend: where the per-edge registrations and focal estimates run (`registration.on_device`): None
            (default) follows JAX's default backend: batched jitted float32 calls on GPU / TPU, the host float64
            loop on CPU; 'cpu' or e.g. 'gpu' forces one path.

    Returns:
        `Initialisation` (numpy).

    Raises:
        ValueError: mismatched shapes, NaN/inf inputs, bad/duplicate/self edges, disconnected graph, bad
            presets.
    """
    edges, n, arr = _check_inputs(edges, pred1_pts3d, pred1_conf, pred2_pts3d, pred2_conf)
    P1, C1, P2, C2 = arr["pred1_pts3d"], arr["pred1_conf"], arr["pred2_pts3d"], arr["pred2_conf"]
    E, H, W = C1.shape
    f_mask, known_f, p_mask, known_poses, _, pps = _presets(
        n, H, W, preset_focals, preset_focal_mask, preset_poses, preset_pose_mask, preset_principal_points,
        preset_pp_mask)
    n_known_poses = int(p_mask.sum())
    if norm_pw_scale is None:
        norm_pw_scale = n_known_poses < 2

    im_conf = image_confidences(edges, C1, C2, n)
    scores = edge_scores(C1, C2)
    walk = _walk_tree(edges, scores, n)
    points, confs = (P1, P2), (C1, C2)

    # every registration in one batched device pass: edge e's pred1 onto image i's source pointmap (the
    # final pairwise transform of e, and the tree step of e when i was placed first), then the tree steps
    # whose second image was placed first (pred2 onto image j's source pointmap)
    src = [(0, e) for e in range(E)] + [(1, e) for e, side in walk.steps if side == 2]
    dst = [walk.source[int(edges[e, 0])] for e in range(E)] + \
          [walk.source[int(edges[e, 1])] for e, side in walk.steps if side == 2]
    reg_s, reg_R, reg_t = register_many(points, confs, src, dst, src, backend)
    focal_rows = sorted({e for e in walk.focal_edge if e is not None})
    fb = focal_base(H, W)
    lo = -np.inf if focal_clip[0] is None else focal_clip[0] * fb
    hi = np.inf if focal_clip[1] is None else focal_clip[1] * fb
    est = np.clip(focals_many(P1, focal_rows, (W / 2, H / 2), backend=backend), lo, hi)
    est = dict(zip(focal_rows, est.tolist()))
    focals: list[float | None] = [None if e is None else est[e] for e in walk.focal_edge]

    # the tree walk on the host, on Sim(3)s only: image k's world points are sims[k] applied to its source
    # pointmap (registration is equivariant: registering onto sims[i](Q_i) is sims[i] after registering onto Q_i)
    sims: list[tuple[float, np.ndarray, np.ndarray] | None] = [None] * n
    poses: list[np.ndarray | None] = [None] * n
    ident = (1.0, np.eye(3), np.zeros(3))
    i0, j0 = walk.order[0]
    sims[i0] = sims[j0] = ident
    poses[i0] = np.eye(4)
    extra = E
    for e, side in walk.steps:
        i, j = int(edges[e, 0]), int(edges[e, 1])
        if side == 1:
            s, R, T = _compose(sims[i], (reg_s[e], reg_R[e], reg_t[e]))
            sims[j] = (s, R, T)
        else:
            s, R, T = _compose(sims[j], (reg_s[extra], reg_R[extra], reg_t[extra]))
            extra += 1
            sims[i] = (s, R, T)
        if poses[i] is None:
            poses[i] = make_pose(R, T)  # scale dropped: the camera centre is T

    def world_of(k):
        s, R, T = sims[k]
        a, e = walk.source[k]
        return apply_transform(make_pose(s * R, T), points[a][e].astype(np.float64))

    for i in range(n):
        if poses[i] is None:
            res = pnp_ransac(world_of(i).astype(np.float32), im_conf[i] > min_conf_thr, focals[i], n_iter=niter_pnp)
            if res is not None:
                focals[i], poses[i] = res
        if poses[i] is None:
            poses[i] = np.eye(4)
    cam2world = np.stack(poses).astype(np.float64)
    mst_focals = np.array([np.nan if f is None else f for f in focals], np.float64)

    # presets: move the tree onto known poses (world points follow: sims composed with the move)
    if n_known_poses >= 2:
        s, R, T = align_multiple_poses(cam2world[p_mask], known_poses[p_mask])
        cam2world = make_pose(s * R, T) @ cam2world
        cam2world[:, :3, :3] /= s
        sims = [_compose((s, R, T), sim) for sim in sims]
    elif n_known_poses == 1:
        k = int(np.flatnonzero(p_mask)[0])
        trf = known_poses[k] @ inverse_pose(cam2world[k])
        cam2world = trf @ cam2world
        sims = [_compose((1.0, trf[:3, :3], trf[:3, 3]), sim) for sim in sims]

    # every edge's pairwise transform: pred1 registered onto the world points of image i
    pw = [_compose(sims[int(edges[e, 0])], (reg_s[e], reg_R[e], reg_t[e])) for e in range(E)]
    raw_pw = _raw_poses(np.stack([p[1] for p in pw]), np.stack([p[2] for p in pw]), np.array([p[0] for p in pw]))
    nf = 1.0
    if norm_pw_scale:
        nf = float(np.exp(np.log(base_scale) - raw_pw[:, 7].astype(np.float64).mean()))
        cam2world[:, :3, 3] *= nf

    # depth of image k: z of its world points in camera k's frame, one affine map of its source pointmap
    depth = np.empty((n, H, W))
    for k in range(n):
        s, R, T = sims[k]
        to_cam = inverse_pose(cam2world[k]) @ make_pose(nf * s * R, nf * T)
        a, e = walk.source[k]
        depth[k] = points[a][e].astype(np.float64) @ to_cam[2, :3] + to_cam[2, 3]
    c2w_raw = np.where(p_mask[:, None, None], known_poses, cam2world)
    raw_im = _raw_poses(c2w_raw[:, :3, :3], c2w_raw[:, :3, 3])
    f_all = np.where(f_mask, known_f, mst_focals)
    raw_f = (FOCAL_BREAK * np.log(f_all)).astype(np.float32)
    return _finish(edges, n, H, W, P1, C1, raw_im, raw_f, _log_depth(depth), raw_pw, pps, im_conf, scores,
                   walk.order, mst_focals, walk.root, norm_pw_scale, base_scale)


@dataclasses.dataclass(frozen=True)
class _TreeWalk:
    """The MST walk of `initialise_mst`, decided from the edge scores alone (no geometry).

    root: the camera placed at the identity; order: (K, 2) tree edges in processing order; steps: (edge,
    side) per tree edge after the first, side 1 = image i was placed (register pred1 onto it, place j), 2 =
    image j was placed (register pred2 onto it, place i); source[k] = (0 | 1, edge): image k's world points
    are a Sim(3) of pred1 / pred2 of that edge; focal_edge[k]: the edge whose pred1 gives image k's focal.
    """

    root: int
    order: list[tuple[int, int]]
    steps: list[tuple[int, int]]
    source: list[tuple[int, int]]
    focal_edge: list[int]


def _walk_tree(edges: np.ndarray, scores: np.ndarray, n: int) -> _TreeWalk:
    """The official walk (spec §2.4): scipy MST of -score over the directed entries; the best tree edge
    first; then the others best-first, each one whose images are not yet placed going back to the end of
    the queue; an image's focal comes from the edge processed before it is first met as a first image
    (the official stale-variable quirk), or else from its best edge as first image."""
    eidx = {(int(i), int(j)): e for e, (i, j) in enumerate(edges)}
    graph = sp.csr_array((-scores, (edges[:, 0], edges[:, 1])), shape=(n, n))
    msp = minimum_spanning_tree(graph).tocoo()
    todo = sorted(zip((-msp.data).tolist(), msp.row.tolist(), msp.col.tolist()))
    source: list[tuple[int, int] | None] = [None] * n
    focal_edge: list[int | None] = [None] * n
    _, i, j = todo.pop()
    e = eidx[(i, j)]
    source[i], source[j] = (0, e), (1, e)
    focal_edge[i] = last_e = e
    root, order, steps, stall = i, [(i, j)], [], 0
    while todo:
        score, i, j = todo.pop()
        if focal_edge[i] is None:
            focal_edge[i] = last_e  # official quirk: the previously processed edge's first pointmap
        if source[i] is not None or source[j] is not None:
            e = eidx[(i, j)]
            if source[i] is not None:
                steps.append((e, 1))
                source[j] = (1, e)
            else:
                steps.append((e, 2))
                source[i] = (0, e)
            order.append((i, j))
            last_e = e
            stall = 0
        else:
            todo.insert(0, (score, i, j))
            stall += 1
            if stall > len(todo):  # cannot happen for a spanning tree; guard against an endless loop
                raise RuntimeError("initialise_mst: spanning tree walk made no progress")
    for e in np.argsort(-scores):
        i = int(edges[e, 0])
        if focal_edge[i] is None:
            focal_edge[i] = int(e)
    return _TreeWalk(root, order, steps, source, focal_edge)


def _compose(a, b):
    """Sim(3) composition a o b of (s, R, t) triples: x -> s_a R_a (s_b R_b x + t_b) + t_a."""
    sa, Ra, ta = a
    sb, Rb, tb = b
    return float(sa * sb), Ra @ Rb, sa * (Ra @ tb) + ta


# ----------------------------------------------------------------------------------------------------
# known poses


def initialise_known_poses(edges, pred1_pts3d, pred1_conf, pred2_pts3d, pred2_conf, preset_poses, preset_focals,
                           min_conf_thr: float = 3.0, *, preset_principal_points=None,
                           niter_pnp: int = 10) -> Initialisation:
    """Initialisation from known poses and focals of every image (official `init='known_poses'`).

    For each edge (i, j): RANSAC-PnP of pred2 (image j's points in camera i's frame) with image i's focal
    and principal point (the official code uses i's intrinsics and i's confidence mask here, on j's pixel
    grid, and we do the same), then the Sim(3) that moves (identity, PnP pose) onto the known (pose_i,
    pose_j) (centres + optical-axis points) becomes the pairwise transform. Image n's depth is the z of
    pred1 of its most confident edge (highest mean conf1 among edges where n comes first) times that
    edge's scale. No pairwise-scale normalisation (scale comes from the known poses).

    Args:
        edges, pred1_pts3d, pred1_conf, pred2_pts3d, pred2_conf: as `initialise_mst`.
        preset_poses: (N, 4, 4) cam-to-world poses of all images (OpenCV axes).
        preset_focals: (N,) focals of all images.
        min_conf_thr: PnP pixel pool: conf1 > min(min_conf_thr, min(conf1) - 0.1).
        preset_principal_points: (N, 2), default (W/2, H/2).

    Returns:
        `Initialisation` whose state's cam2world / focals equal the presets (through the float32 raw encoding).

    Raises:
        ValueError: bad inputs, or a PnP failure on some edge (its pairwise pose would be undefined).
    """
    edges, n, arr = _check_inputs(edges, pred1_pts3d, pred1_conf, pred2_pts3d, pred2_conf)
    P1, C1, P2, C2 = arr["pred1_pts3d"], arr["pred1_conf"], arr["pred2_pts3d"], arr["pred2_conf"]
    E, H, W = C1.shape
    if preset_poses is None or preset_focals is None:
        raise ValueError("initialise_known_poses: preset_poses (N, 4, 4) and preset_focals (N,) of all images are required")
    _, focals, _, poses, _, pps = _presets(n, H, W, preset_focals, None, preset_poses, None,
                                           preset_principal_points, None)
    im_conf = image_confidences(edges, C1, C2, n)
    scores = edge_scores(C1, C2)
    raw_pw = np.zeros((E, 8), np.float32)
    best: dict[int, tuple[float, int, float]] = {}
    for e, (i, j) in enumerate(edges):
        msk = C1[e] > min(min_conf_thr, float(C1[e].min()) - 0.1)
        res = pnp_ransac(P2[e], msk, focals[i], pp=pps[i], n_iter=niter_pnp)
        if res is None:
            raise ValueError(f"initialise_known_poses: PnP failed on edge {e} = ({i}, {j}); use init='mst'")
        s, R, T = align_multiple_poses(np.stack([np.eye(4), res[1]]), poses[[i, j]])
        raw_pw[e] = _raw_pose(R, T, scale=s)
        score = float(C1[e].mean(dtype=np.float64))
        if score > best.get(int(i), (0.0,))[0]:
            best[int(i)] = (score, e, float(s))
    depth = np.zeros((n, H, W))
    for k in range(n):
        if k in best:
            _, e, s = best[k]
            depth[k] = P1[e][..., 2] * s
        else:
            # image never first in an edge (the official code fails): its pred2 in the best edge, moved to
            # the world with that edge's transform, then read in camera k's known frame
            es = [e for e in range(E) if edges[e, 1] == k]
            e = max(es, key=lambda e: float(C2[e].mean(dtype=np.float64)))
            raw = raw_pw[e].astype(np.float64)
            s = np.exp(raw[7])
            T = make_pose(s * quat_xyzw_to_rotmat(raw[:4]), s * signed_expm1(raw[4:7]))
            wpts = apply_transform(T, P2[e].astype(np.float64))
            depth[k] = apply_transform(inverse_pose(poses[k]), wpts)[..., 2]
    raw_im = np.stack([_raw_pose(poses[k][:3, :3], poses[k][:3, 3]) for k in range(n)])
    raw_f = (FOCAL_BREAK * np.log(focals)).astype(np.float32)
    return _finish(edges, n, H, W, P1, C1, raw_im, raw_f, _log_depth(depth), raw_pw, pps, im_conf, scores,
                   np.zeros((0, 2)), focals, -1, False, 0.5)
