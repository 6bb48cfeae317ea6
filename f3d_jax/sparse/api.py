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

from f3d_jax.sparse.chain import KinematicChain, kinematic_chain
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


def _apply_init(init: Mapping | None, names: list[str], params: dict, problem: SparseProblem) -> tuple[dict, Any]:
    """Known intrinsics / relative depth maps per image (official `init[name]['intrinsics'|'depthmap']`)."""
    if not init:
        return params, problem
    n = len(names)
    pps = np.array(params["pps"])
    base = np.array(problem.base_focals)
    core = np.array(problem.core_depth)
    med = np.array(problem.median_depths)
    for key, vals in init.items():
        k = names.index(key) if key in names else (int(key) if isinstance(key, (int, np.integer)) else -1)
        if not 0 <= k < n:
            raise ValueError(f"sparse_global_alignment: init key {key!r} names no image")
        if "cam2w" in vals:
            raise NotImplementedError("sparse_global_alignment: known poses (init[...]['cam2w']) are not supported yet")
        if vals.get("intrinsics") is not None:
            Kk = np.asarray(vals["intrinsics"], np.float32)
            base[k] = np.diag(Kk)[:2].mean()
            pps[k] = Kk[:2, 2] / np.asarray(problem.imsizes[k])
        if vals.get("depthmap") is not None:
            d = np.asarray(vals["depthmap"], np.float32).reshape(-1)
            med[k] = np.sort(d)[(len(d) - 1) // 2]
            core[k, : len(d)] = d / med[k]
    problem = type(problem)(**{**problem.__dict__, "base_focals": base, "core_depth": core, "median_depths": med})
    params = {**params, "pps": jnp.asarray(pps), "log_focals": jnp.log(jnp.asarray(base)),
              "core_depth": jnp.asarray(core)}
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
        init: {name: {'intrinsics': (3, 3), 'depthmap': (Hs, Ws)}} known values (official); 'cam2w' raises.

    Returns:
        `SparseScene` (the fine-stage state, or the coarse one when niter2 = 0).

    Raises:
        ValueError: fewer than 2 images, bad pairs or model outputs (non-finite values), an image in no pair,
            or images whose matches do not connect them (the error lists the components).
    """
    names = _check_args(imgs, subsample, niter1, niter2, kinematic_mode, desc_conf)
    prep = prepare(names, pairs, model, subsample=int(subsample), desc_conf=desc_conf, kinematic_mode=kinematic_mode,
                   shared_intrinsics=shared_intrinsics, matching_conf_thr=matching_conf_thr, cache_dir=cache_dir,
                   init=init)
    problem, params, cond = prep.problem, prep.params, prep.condensed
    masks = stage_masks(params, opt_pp, opt_depth)
    common = dict(depth_levels=cond.depth_levels, gamma_fallback=1.1, fallback_w=float(loss_dust3r_w))
    curves = []
    result = params
    for lr, niter, stage, gamma, mask in ((lr1, niter1, "3d", 1.5, masks[0]), (lr2, niter2, "2d", 0.5, masks[1])):
        if niter == 0:
            continue
        result, final, losses, n_run = run_stage(params, problem, jnp.asarray(cosine_lrs(lr, niter)), mask,
                                                 stage=stage, gamma=gamma, **common)
        n_run = int(n_run)
        curves.append(np.asarray(losses)[:n_run])
        if n_run < niter:  # non-finite loss: the official loop stops (and so does the next stage here)
            warnings.warn(f"sparse_global_alignment: non-finite loss at iteration {n_run - 1} of the "
                          f"{'coarse' if stage == '3d' else 'fine'} stage; stopped there", RuntimeWarning, stacklevel=2)
            break
        params = final
    cams = jax.device_get(final_state(result, problem, cond.depth_levels))
    pts = cams["pts3d"]
    depth = cams["depth"]
    anchor_pts = tuple(pts[s : s + m] for s, m in zip(cond.point_start, cond.n_points))
    sparse_depth = tuple(depth[k, : h * w].reshape(h, w) for k, (h, w) in enumerate(cond.anchors_shape))
    return SparseScene(
        intrinsics=np.asarray(cams["K"]), cam2world=np.asarray(cams["cam2w"]), sparse_depthmaps=sparse_depth,
        anchor_pts3d=anchor_pts, loss_curve=np.concatenate(curves) if curves else np.zeros(0, np.float32),
        canon2=tuple(c.canon2 for c in prep.canonical), canon_conf=tuple(c.conf for c in prep.canonical),
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


def prepare(names: list[str], pairs, model, *, subsample: int = 8, desc_conf: str = "desc_conf",
            kinematic_mode: str = "hclust-ward", shared_intrinsics: bool = False, matching_conf_thr: float = 5.0,
            cache_dir: str | None = None, init: Mapping | None = None) -> Prepared:
    """Network pass, matching, canonical data, kinematic chain and condensed problem (no optimisation)."""
    n = len(names)
    keys, pair_data, accs = collect_pairs(names, pairs, model, int(subsample), desc_conf, cache_dir)
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
    cond = condense(n, keys, pair_data, canon, chain.parents(n), chain.depth(), int(subsample), float(matching_conf_thr))
    problem = jax.tree.map(jnp.asarray, cond.problem)
    weights = np.asarray([c.conf.mean() for c in canon], np.float32)
    params = initial_params(problem, shared_intrinsics, weights)
    params, problem = _apply_init(init, names, params, problem)
    problem = jax.tree.map(jnp.asarray, problem)
    return Prepared(pair_data, canon, chain, cond, problem, params)


def stage_masks(params: dict, opt_pp: bool = True, opt_depth: bool = True) -> tuple[dict, dict]:
    """Trainable masks of the coarse stage (rotations, translations, sizes) and the fine stage (plus focals,
    principal points if `opt_pp`, anchor depths if `opt_depth`)."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    coarse = {**zeros, **{k: jnp.ones_like(params[k]) for k in ("quats", "trans", "log_sizes")}}
    fine = {**coarse, "log_focals": jnp.ones_like(params["log_focals"]),
            "pps": jnp.full_like(params["pps"], float(bool(opt_pp))),
            "core_depth": jnp.full_like(params["core_depth"], float(bool(opt_depth)))}
    return coarse, fine
