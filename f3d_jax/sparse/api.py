"""`sparse_global_alignment`: MASt3R's sparse global alignment (the optimisation inside MASt3R-SfM) in JAX.

Pipeline (spec `alignment.md` section 4): network pass per unordered pair through the `model` callable ->
reciprocal matches -> canonical pointmaps and anchors -> kinematic chain -> coarse stage (3D matching,
poses and sizes only) -> fine stage (2D reprojection, plus intrinsics and anchor depths) -> `SparseScene`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.geometry.procrustes import umeyama
from f3d_jax.sparse.chain import KinematicChain, kinematic_chain, reroot
from f3d_jax.sparse.data import (Canonical, Condensed, PairData, SparseProblem, collect_pairs, components, condense,
                                 finalize_canonical)
from f3d_jax.sparse.optimize import cosine_lrs, final_state, initial_params, run_stage
from f3d_jax.sparse.scene import SparseScene


def _check_args(imgs, subsample, niter1, niter2, kinematic_mode, desc_conf) -> list[str]:
    if isinstance(imgs, (str, bytes)) or not isinstance(imgs, Sequence):
        raise ValueError("sparse_global_alignment: imgs must be a list of image names/paths")
    names = [str(x) for x in imgs]
    if len(names) < 2:
        raise ValueError(f"sparse_global_alignment: at least 2 images are needed, got {len(names)}")
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample <= 0:
        raise ValueError(f"sparse_global_alignment: subsample must be a positive int, got {subsample!r}")
    for nm, v in (("niter1", niter1), ("niter2", niter2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"sparse_global_alignment: {nm} must be a non-negative int, got {v!r}")
    if kinematic_mode != "mst" and not (isinstance(kinematic_mode, str) and kinematic_mode.startswith("hclust-")):
        raise ValueError(f"sparse_global_alignment: kinematic_mode must be 'mst' or 'hclust-<linkage>', got {kinematic_mode!r}")
    if not isinstance(desc_conf, str):
        raise ValueError(f"sparse_global_alignment: desc_conf must be a key of the model outputs, got {desc_conf!r}")
    return names


@dataclasses.dataclass(frozen=True)
class Known:
    """Validated `init`: image index -> known cam2w (4, 4), intrinsics (3, 3), relative depth map (float32)."""

    cam2w: dict
    intrinsics: dict
    depthmap: dict


_INIT_KEYS = ("cam2w", "intrinsics", "depthmap")


def parse_init(init: Mapping | None, names: Sequence[str], shared_intrinsics: bool = False) -> Known:
    """Check `init` ({name or index: {'cam2w', 'intrinsics', 'depthmap'}}) and index it by image."""
    known = Known({}, {}, {})
    if not init:
        return known
    if not isinstance(init, Mapping):
        raise ValueError("sparse_global_alignment: init must be a dict {image name: {'cam2w'|'intrinsics'|'depthmap': array}}")
    n = len(names)
    for key, vals in init.items():
        k = names.index(key) if key in names else (int(key) if isinstance(key, (int, np.integer)) else -1)
        if not 0 <= k < n:
            raise ValueError(f"sparse_global_alignment: init key {key!r} names no image")
        if not isinstance(vals, Mapping) or set(vals) - set(_INIT_KEYS):
            raise ValueError(f"sparse_global_alignment: init[{key!r}] must be a dict with keys among {_INIT_KEYS}")
        if vals.get("cam2w") is not None:
            T = np.asarray(vals["cam2w"], np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise ValueError(f"sparse_global_alignment: init[{key!r}]['cam2w'] must be a finite (4, 4) matrix, "
                                 f"got shape {T.shape}")
            R = T[:3, :3]
            if (np.abs(R.T @ R - np.eye(3)).max() > 1e-4 or np.linalg.det(R) <= 0
                    or np.abs(T[3] - [0, 0, 0, 1]).max() > 0):
                raise ValueError(f"sparse_global_alignment: init[{key!r}]['cam2w'] is not a rigid cam-to-world pose "
                                 "(rotation block not orthonormal with det +1, or last row not (0, 0, 0, 1))")
            known.cam2w[k] = T.astype(np.float32)
        if vals.get("intrinsics") is not None:
            K = np.asarray(vals["intrinsics"], np.float64)
            if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
                raise ValueError(f"sparse_global_alignment: init[{key!r}]['intrinsics'] must be a finite (3, 3) "
                                 "matrix with positive focals")
            known.intrinsics[k] = K.astype(np.float32)
        if vals.get("depthmap") is not None:
            known.depthmap[k] = np.asarray(vals["depthmap"], np.float32)
    if shared_intrinsics and known.intrinsics and len(known.intrinsics) != n:
        raise ValueError("sparse_global_alignment: with shared_intrinsics=True, give init intrinsics for all images "
                         f"or none (got {len(known.intrinsics)} of {n})")
    return known


def known_scale(pair_data: Sequence[PairData], canon: Sequence[Canonical], cam2w: Mapping[int, np.ndarray],
                n: int) -> np.ndarray:
    """(n,) factor from each image's canonical units to the units of the known poses.

    For every pair of known images with matches, a weighted similarity fit of the matched canonical points (j's
    onto i's, `umeyama`, reweighted by the residuals) gives j's centre in i's frame in i's units, t; the known
    baseline over |t| is i's factor (times the fit's scale: j's). Median per image; images without an estimate
    take the median of all.
    """
    est: list[list[float]] = [[] for _ in range(n)]
    for p in pair_data:
        if p.i not in cam2w or p.j not in cam2w or len(p.conf) < 3:
            continue
        x = canon[p.j].canon[p.xy_j[:, 1], p.xy_j[:, 0]].astype(np.float64)
        y = canon[p.i].canon[p.xy_i[:, 1], p.xy_i[:, 0]].astype(np.float64)
        w = np.asarray(p.conf, np.float64)
        s, R, t = umeyama(x, y, weights=w)
        for _ in range(5):  # iteratively reweighted: wrong matches must not set the scale
            r = np.linalg.norm(s * x @ R.T + t - y, axis=1)
            s, R, t = umeyama(x, y, weights=w / (r + np.median(r) + 1e-12))
        base = np.linalg.norm(cam2w[p.j][:3, 3].astype(np.float64) - cam2w[p.i][:3, 3])
        if np.linalg.norm(t) > 0 and base > 0 and np.isfinite(s):
            est[p.i].append(base / np.linalg.norm(t))
            est[p.j].append(base / np.linalg.norm(t) * s)
    every = [v for e in est for v in e]
    fill = float(np.median(every)) if every else 1.0
    return np.asarray([np.median(e) if e else fill for e in est], np.float32)


def _apply_init(known: Known, params: dict, problem: SparseProblem, pair_data, canon) -> tuple[dict, Any]:
    """Known intrinsics / relative depth maps (official) and known poses (frozen; see `sparse_global_alignment`)."""
    if not (known.cam2w or known.intrinsics or known.depthmap):
        return params, problem
    n = problem.imsizes.shape[0]
    pps = np.array(params["pps"])
    log_f = np.array(params["log_focals"])
    base = np.array(problem.base_focals)
    core = np.array(problem.core_depth)
    med = np.array(problem.median_depths)
    imsizes = np.asarray(problem.imsizes)
    for k, Kk in known.intrinsics.items():
        base[k] = np.diag(Kk)[:2].mean()
        pp = Kk[:2, 2] / imsizes[k]
        if pps.shape[0] == n:
            pps[k], log_f[k] = pp, np.log(base[k])
    if known.intrinsics and pps.shape[0] == 1:  # shared intrinsics, all known: their mean
        pps[0] = np.mean([known.intrinsics[k][:2, 2] / imsizes[k] for k in range(n)], axis=0)
        log_f[0] = np.log(np.mean(base))
    for k, d in known.depthmap.items():
        d = d.reshape(-1)
        med[k] = np.sort(d)[(len(d) - 1) // 2]
        core[k, : len(d)] = d / med[k]
    upd = {"base_focals": base, "core_depth": core, "median_depths": med}
    log_sizes = np.array(params["log_sizes"])
    if known.cam2w:
        kp = np.zeros(n, np.float32)
        kc = np.array(problem.known_cam2w)
        for k, T in known.cam2w.items():
            kp[k], kc[k] = 1, T
        centres = np.stack([T[:3, 3] for T in known.cam2w.values()]).astype(np.float64)
        spread = np.linalg.norm(centres - centres.mean(0), axis=1).max()
        fixed_scale = len(centres) >= 2 and spread > 1e-6 * max(1.0, np.abs(centres).max())
        upd.update(known_pose=kp, known_cam2w=kc, free_scale=np.float32(0 if fixed_scale else 1))
        if fixed_scale:  # g = 1: the sizes carry the units of the known poses from the start
            log_sizes = np.log(known_scale(pair_data, canon, known.cam2w, n))
    problem = type(problem)(**{**problem.__dict__, **upd})
    params = {**params, "pps": jnp.asarray(pps), "log_focals": jnp.asarray(log_f), "core_depth": jnp.asarray(core),
              "log_sizes": jnp.asarray(log_sizes, jnp.float32)}
    return params, problem


def sparse_global_alignment(
    imgs: Sequence[str],
    pairs: Sequence[tuple[dict, dict]],
    model: Callable[[dict, dict], tuple[dict, dict]] | None,
    subsample: int = 8,
    desc_conf: str = "desc_conf",
    kinematic_mode: str = "hclust-ward",
    shared_intrinsics: bool = False,
    lr1: float = 0.07,
    niter1: int = 300,
    lr2: float = 0.01,
    niter2: int = 300,
    opt_depth: bool = True,
    opt_pp: bool = True,
    matching_conf_thr: float = 5.0,
    loss_dust3r_w: float = 0.01,
    cache_dir: str | None = None,
    init: Mapping[str, Mapping[str, Any]] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
) -> SparseScene:
    """Sparse global alignment of N images (official `mast3r.cloud_opt.sparse_ga.sparse_global_alignment`).

    Args:
        imgs: N image names/paths (`pairs` views are matched to them by their 'idx').
        pairs: (view1, view2) dicts as `make_pairs(load_images(...), ..., symmetrize=True)`.
        model: `pred1, pred2 = model(view1, view2)`, dicts with 'pts3d' (1, H, W, 3), 'conf' (1, H, W),
            'desc' (1, H, W, D) and `desc_conf` (1, H, W), numpy or jax. Called twice per unordered pair.
            May be None when `cache_dir` holds every pair.
        subsample: anchor/matching grid stride.
        kinematic_mode: 'hclust-ward' (official default) or 'mst'.
        shared_intrinsics: one focal and principal point for all images. Deliberate difference: the official
            code lists the shared parameter N times in its Adam (stepping it N times per iteration); here it
            is one parameter stepped once.
        lr1, niter1: coarse stage (3D matching); lr2, niter2: fine stage (2D reprojection, 0 = skip).
        opt_depth, opt_pp: also optimise anchor depths / principal points in the fine stage.
        matching_conf_thr: pairs whose best match confidence is not above it use the DUSt3R fallback
            (function default 5; the MASt3R demo uses 0).
        loss_dust3r_w: weight of that fallback.
        cache_dir: optional on-disk cache of the network outputs and matches per pair.
        init: {name (or index): {'cam2w': (4, 4), 'intrinsics': (3, 3), 'depthmap': (Hs, Ws)}} known values,
            each optional. 'intrinsics' (official): the focal (mean of fx, fy) and principal point, frozen in
            both stages. 'depthmap' (official): initial relative anchor depths. 'cam2w' (beyond the official,
            which refuses it): the cam-to-world pose (OpenCV), frozen: the result holds it bit-exactly. The
            kinematic chain is re-rooted at a known camera, so the others are optimised relative to the known
            ones (initialised at their chain parent, as the official identity start). With two or more known
            camera centres the global scale is theirs (the anti-collapse normalisation is off and the sizes
            start from a similarity fit of the matched canonical points of known pairs, `known_scale`); with
            one, it fixes the gauge and the scale stays the network's.
        masks: one (H, W) bool array (working resolution, the pointmaps' size) or None per image, or None:
            pixels where the mask is False give no matches (so no matched-pixel anchors and no 3D points) and
            get confidence 0 in `SparseScene.canon_conf` (so `dense_pts3d` drops them at any threshold). The
            canonical pointmaps (base focal, anchor depths) still use every pixel.

    Returns:
        `SparseScene` (the fine-stage state, or the coarse one when niter2 = 0).

    Documented behaviour: 2 images work (one pair, the chain is one edge). A pure-rotation scene (all cameras
    at one centre) runs and gives the relative rotations approximately, but it is a weak case of the official
    parametrisation: the chained translation is the point each camera pivots about (spec 4.4), nothing pulls the
    centres together, and they spread over a distance comparable to the scene depth; on the tiny synthetic
    panning rig of the tests (4 views of 48 x 64, 100 + 100 iterations) the relative rotation errors are 0.4-11
    degrees and the focals 2-30% off (a ring rig of the same size: 0.8 degrees, 1.5%). Give known poses
    (`init`) or intrinsics where a rig is known to rotate only.

    Raises:
        ValueError: fewer than 2 images, bad pairs, bad `init` or `masks`, model outputs with non-finite values
            (NaN descriptors...: the message names the model call and the pair of images), an image in no pair,
            or images whose matches do not connect them (the error lists the components).
    """
    names = _check_args(imgs, subsample, niter1, niter2, kinematic_mode, desc_conf)
    masks = check_masks(masks, names)
    prep = prepare(names, pairs, model, subsample=int(subsample), desc_conf=desc_conf, kinematic_mode=kinematic_mode,
                   shared_intrinsics=shared_intrinsics, matching_conf_thr=matching_conf_thr, cache_dir=cache_dir,
                   init=init, masks=masks)
    problem, params, cond = prep.problem, prep.params, prep.condensed
    trainable = stage_masks(params, opt_pp, opt_depth, fixed_pose=sorted(prep.known.cam2w),
                            fixed_intrinsics=sorted(prep.known.intrinsics))
    known_poses = bool(prep.known.cam2w)
    common = dict(depth_levels=cond.depth_levels, gamma_fallback=1.1, fallback_w=float(loss_dust3r_w),
                  known_poses=known_poses)
    curves = []
    result = params
    for lr, niter, stage, gamma, mask in ((lr1, niter1, "3d", 1.5, trainable[0]), (lr2, niter2, "2d", 0.5, trainable[1])):
        if niter == 0:
            continue
        result, final, losses, n_run = run_stage(params, problem, jax.device_put(cosine_lrs(lr, niter)), mask,
                                                 stage=stage, gamma=gamma, **common)
        n_run = int(n_run)
        curves.append(np.asarray(losses)[:n_run])
        if n_run < niter:  # non-finite loss: the official loop stops (and so does the next stage here)
            warnings.warn(f"sparse_global_alignment: non-finite loss at iteration {n_run - 1} of the "
                          f"{'coarse' if stage == '3d' else 'fine'} stage; stopped there", RuntimeWarning, stacklevel=2)
            break
        params = final
    cams = jax.device_get(final_state(result, problem, cond.depth_levels, known_poses))
    pts = cams["pts3d"]
    depth = cams["depth"]
    anchor_pts = tuple(pts[s : s + m] for s, m in zip(cond.point_start, cond.n_points))
    sparse_depth = tuple(depth[k, : h * w].reshape(h, w) for k, (h, w) in enumerate(cond.anchors_shape))
    return SparseScene(
        intrinsics=np.asarray(cams["K"]), cam2world=np.asarray(cams["cam2w"]), sparse_depthmaps=sparse_depth,
        anchor_pts3d=anchor_pts, loss_curve=np.concatenate(curves) if curves else np.zeros(0, np.float32),
        canon2=tuple(c.canon2 for c in prep.canonical),
        canon_conf=tuple(c.conf if masks is None or masks[k] is None else np.where(masks[k], c.conf, np.float32(0))
                         for k, c in enumerate(prep.canonical)),
        base_focals=np.asarray(problem.base_focals), names=tuple(names), subsample=int(subsample),
        root=prep.chain.root, chain_edges=prep.chain.edges,
        pair_scores=tuple((p.i, p.j, len(p.conf)) for p in prep.pair_data),
        matches=tuple((p.i, p.j, np.asarray(p.xy_i, np.int32), np.asarray(p.xy_j, np.int32),
                       np.asarray(p.conf, np.float32)) for p in (prep.pair_data[k] for k in cond.used_pairs)),
    )


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything before the optimisation: per-pair data, canonical views, chain, the padded problem and the
    initial parameters."""

    pair_data: list[PairData]
    canonical: list[Canonical]
    chain: KinematicChain
    condensed: Condensed
    problem: SparseProblem
    params: dict
    known: Known = Known({}, {}, {})


def check_masks(masks, names: Sequence[str]) -> list[np.ndarray | None] | None:
    """None, or one (H, W) bool array or None per image (shapes are checked against the pointmaps later)."""
    if masks is None:
        return None
    if isinstance(masks, np.ndarray) or not isinstance(masks, Sequence) or len(masks) != len(names):
        raise ValueError(f"sparse_global_alignment: masks must be a list of {len(names)} (H, W) bool arrays or None")
    out = []
    for k, m in enumerate(masks):
        if m is None:
            out.append(None)
            continue
        m = np.asarray(m)
        if m.ndim != 2 or m.dtype != bool:
            raise ValueError(f"sparse_global_alignment: masks[{k}] ({names[k]}) must be an (H, W) bool array, "
                             f"got {m.dtype} of shape {m.shape}")
        out.append(m)
    return out


def depth_bucket(depth: int) -> int:
    """Chain rounds compiled for a chain of `depth` levels: the next power of two, at least 2 (extra rounds
    change nothing, and nearby chains share compiled code)."""
    return 1 << max(1, (max(1, int(depth)) - 1).bit_length())


def prepare(names: list[str], pairs, model, *, subsample: int = 8, desc_conf: str = "desc_conf",
            kinematic_mode: str = "hclust-ward", shared_intrinsics: bool = False, matching_conf_thr: float = 5.0,
            cache_dir: str | None = None, init: Mapping | None = None,
            masks: Sequence[np.ndarray | None] | None = None) -> Prepared:
    """Network pass, matching, canonical data, kinematic chain and condensed problem (no optimisation)."""
    n = len(names)
    known = parse_init(init, names, shared_intrinsics)
    keys, pair_data, accs = collect_pairs(names, pairs, model, int(subsample), desc_conf, cache_dir,
                                          check_masks(masks, names))
    canon = finalize_canonical(accs, names)
    comps = components(n, pair_data)
    if len(comps) > 1:
        desc = "; ".join("[" + ", ".join(f"{k} ({names[k]})" for k in c) + "]" for c in comps)
        raise ValueError(f"sparse_global_alignment: the matches split the {n} images into {len(comps)} "
                         f"disconnected components: {desc}. Align each component separately or add pairs.")
    scores = np.zeros((n, n), np.float32)
    for p in pair_data:
        scores[p.i, p.j] = scores[p.j, p.i] = len(p.conf)
    n_patches = np.asarray([(c.canon.shape[1] // subsample) * (c.canon.shape[0] // subsample) for c in canon])
    chain = kinematic_chain(scores, n_patches, kinematic_mode)
    if len(chain.edges) != n - 1:
        raise ValueError(f"sparse_global_alignment: the kinematic chain spans {len(chain.edges) + 1} of {n} images")
    if known.cam2w and chain.root not in known.cam2w:  # chain every camera to a known one
        chain = reroot(chain, next(b for _, b in chain.edges if b in known.cam2w))
    cond = condense(n, keys, pair_data, canon, chain.parents(n), depth_bucket(chain.depth()), int(subsample),
                    float(matching_conf_thr))
    # device_put, not jnp.asarray: the same arrays, without compiling one small conversion program per field
    problem = jax.device_put(cond.problem)
    weights = np.asarray([c.conf.mean() for c in canon], np.float32)
    params = initial_params(problem, shared_intrinsics, weights)
    params, problem = _apply_init(known, params, problem, pair_data, canon)
    problem = jax.device_put(problem)
    return Prepared(pair_data, canon, chain, cond, problem, params, known)


def stage_masks(params: dict, opt_pp: bool = True, opt_depth: bool = True, fixed_pose: Sequence[int] = (),
                fixed_intrinsics: Sequence[int] = ()) -> tuple[dict, dict]:
    """Trainable masks of the coarse stage (rotations, translations, sizes) and the fine stage (plus focals,
    principal points if `opt_pp`, anchor depths if `opt_depth`). Images in `fixed_pose` keep their rotation and
    translation parameters, those in `fixed_intrinsics` their focal and principal point (with shared
    intrinsics, any fixed image freezes the shared ones)."""
    def rows(a, fixed, value=1.0):
        m = np.full(a.shape, value, np.float32)
        if len(fixed):
            m[np.asarray(fixed) if a.shape[0] > 1 else 0] = 0
        return m

    # host numpy, one device_put per mask: no small eager programs to compile on the first call
    zeros = {k: np.zeros(np.shape(v), np.float32) for k, v in params.items()}
    coarse = {**zeros, "quats": rows(params["quats"], fixed_pose), "trans": rows(params["trans"], fixed_pose),
              "log_sizes": rows(params["log_sizes"], ())}
    fine = {**coarse, "log_focals": rows(params["log_focals"], fixed_intrinsics),
            "pps": rows(params["pps"], fixed_intrinsics, float(bool(opt_pp))),
            "core_depth": rows(params["core_depth"], (), float(bool(opt_depth)))}
    return jax.device_put(coarse), jax.device_put(fine)
