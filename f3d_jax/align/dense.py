"""Dense global alignment, the user entry point (the official `global_aligner(...)` + `compute_global_alignment(...)`
of dust3r/cloud_opt): `global_align(output, ...)` validates the `inference` output, builds the problem, runs the
initialisation on the host (`init='mst'|'known_poses'|'none'`, or an explicit `start=` state), calls the jitted
core (`f3d_jax.align.core.align_dense`) and refuses to return non-finite poses.

The package's layout: `types` (AlignState, AlignResult, DenseProblem), `config` (DenseConfig), `problem`
(input parsing, presets, the planar layout), `parameterisation` (official / manifold poses), `losses`,
`schedules`, `core` (the jitted loop), `initialise` (MST / known poses), `pairviewer` (two views, no
optimisation) and this module. The names below that live elsewhere are re-exported for old imports.

Conventions: see `f3d_jax.align.types` (cam-to-world poses, OpenCV axes, principal point (W/2, H/2)).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from f3d_jax.align.config import DenseConfig
from f3d_jax.align.core import align_dense, align_dense_jit
from f3d_jax.align.problem import (as_align_state, check_graph, dense_problem, make_problem, parse_edge_weights,
                                   parse_ignore_masks, parse_output, parse_presets, random_start, state_from,
                                   to_planar)
from f3d_jax.align.types import AlignResult, AlignState, DenseProblem, Scene

MODES = ("pco", "modular", "pairviewer")
INITS = ("mst", "known_poses", "none")


class _Default:
    """A keyword's default value, told apart from the same value given explicitly (see `global_align(config=)`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_D = {f.name: _Default(f.default) for f in dataclasses.fields(DenseConfig)}
# keywords of global_align that are DenseConfig fields, with the type each is converted to
_CONFIG_KEYWORDS = dict(niter=int, schedule=str, lr=float, lr_min=float, min_conf_thr=float, param=str, conf=str,
                        dist=str, robust=lambda x: x, robust_scale=float, base_scale=float, optimize_pp=bool,
                        storage_dtype=str)


def _resolve_config(config: DenseConfig | None, keywords: dict[str, Any]) -> DenseConfig:
    """`config` (or a default `DenseConfig`) with the explicitly given keywords; a keyword that disagrees with an
    explicit `config` is an error."""
    given = {k: _CONFIG_KEYWORDS[k](v) for k, v in keywords.items() if not isinstance(v, _Default)}
    if config is None:
        return DenseConfig(**given)
    if not isinstance(config, DenseConfig):
        raise TypeError(f"global_align: config must be a DenseConfig, got {type(config).__name__}")
    clash = [f"{k}={v!r} (config.{k}={getattr(config, k)!r})" for k, v in given.items() if getattr(config, k) != v]
    if clash:
        raise ValueError(f"global_align: keywords disagree with config: {', '.join(clash)}; give each option once")
    return config


def global_align(
    output: Mapping[str, Any],
    mode: str = "pco",
    init: str | None = "mst",
    niter: int = _D["niter"],
    schedule: str = _D["schedule"],
    lr: float = _D["lr"],
    min_conf_thr: float = _D["min_conf_thr"],
    *,
    config: DenseConfig | None = None,
    param: str = _D["param"],
    conf: str = _D["conf"],
    dist: str = _D["dist"],
    robust: str | None = _D["robust"],
    robust_scale: float = _D["robust_scale"],
    base_scale: float = _D["base_scale"],
    lr_min: float = _D["lr_min"],
    masks: Any = None,
    edge_weights: Any = None,
    preset_poses: Any = None,
    preset_pose_mask: Any = None,
    preset_focals: Any = None,
    preset_focal_mask: Any = None,
    preset_principal_points: Any = None,
    preset_pp_mask: Any = None,
    optimize_pp: bool = _D["optimize_pp"],
    start: Any = None,
    init_state: Any = None,
    niter_pnp: int = 10,
    storage_dtype: str = _D["storage_dtype"],
    seed: int = 0,
) -> AlignResult:
    """Dense global alignment of pairwise DUSt3R predictions (official `global_aligner` + `compute_global_alignment`).

    Args:
      output: what `inference` returns: `view1/view2['idx']` (E,), `pred1['pts3d']` (E,H,W,3) image i in camera
        i's frame, `pred1['conf']` (E,H,W), `pred2['pts3d_in_other_view']` (E,H,W,3) image j in camera i's frame,
        `pred2['conf']` (E,H,W); NHWC; all images the same size. numpy or jax arrays.
      mode: 'pco' (PointCloudOptimizer; presets must cover all images), 'modular' (ModularPointCloudOptimizer:
        presets for any subset of images), 'pairviewer' (2 images, symmetric edges, no optimisation).
      init: how the starting state is made: 'mst' (minimum spanning tree + Procrustes + PnP,
        `f3d_jax.align.initialise.initialise_mst`), 'known_poses' (all poses and focals preset), 'none'
        (official random init, seeded by `seed`). Ignored when `start` is given.
      config: `DenseConfig` of the optimisation. The keywords niter, schedule, lr, lr_min, min_conf_thr, param,
        conf, dist, robust, robust_scale, base_scale, optimize_pp and storage_dtype are a convenience that
        builds it; with `config` given, a keyword that disagrees with it is an error. `config.norm_pw_scale`
        None (default) applies the official rule (normalise unless >= 2 poses are preset).
      niter, schedule, lr, lr_min: the loop (official: 300, 'cosine', 0.01, 1e-6; the demo UI uses 'linear').
      min_conf_thr: threshold of `AlignResult.masks` and of the PnP inlier pool of the initialisation.
      param: 'official' (raw XYZW quaternion, signed-log1p translation: fixture parity) or 'manifold'
        (jaxlie SE3 tangent-space Adam, root camera centre pinned explicitly).
      conf, dist, robust, robust_scale, base_scale: loss options (see `DenseConfig`).
      masks: (N, H, W) bool, True = pixel to IGNORE (e.g. dynamic objects); its loss weight is 0 everywhere.
      edge_weights: (E,) float multipliers of each edge's loss terms.
      preset_poses: known cam-to-world 4x4 poses (OpenCV axes: x right, y down, z forward), (N,4,4) or one per
        selected image; preset_pose_mask: (N,) bool or index list (None = all images). Known poses are frozen;
        with >= 2 known poses the pairwise scales are not normalised (scale comes from the poses).
      preset_focals / preset_focal_mask, preset_principal_points / preset_pp_mask: same for intrinsics.
      optimize_pp: also optimise the principal points that are not preset.
      start: explicit starting state (an `AlignState`, an `Initialisation`, a previous `AlignResult`, or a
        mapping with cam2world, focals, depthmaps, pw_poses (rigid), pw_scales, optional principal_points):
        e.g. to restart or for parity tests.
      init_state: deprecated name of `start`.
      niter_pnp: RANSAC iterations of the PnP of the initialisation.
      storage_dtype: 'bfloat16' stores the predictions in bf16 (half the memory; math stays float32).
      seed: seed of init='none'.
    Returns:
      `AlignResult` (jax arrays).
    Raises:
      ValueError: bad shapes, NaN/inf inputs, disconnected pair graph, single image, bad presets, conflicting
        options, or a non-finite result (never returns NaN poses silently).
    """
    if mode not in MODES:
        raise ValueError(f"global_align: mode must be one of {MODES}, got {mode!r}")
    if init is None:
        init = "none"
    if init not in INITS:
        raise ValueError(f"global_align: init must be one of {INITS}, got {init!r}")
    if start is not None and init_state is not None:
        raise ValueError("global_align: give the starting state once (start=; init_state= is its deprecated name)")
    start = init_state if start is None else start
    config = _resolve_config(config, dict(
        niter=niter, schedule=schedule, lr=lr, lr_min=lr_min, min_conf_thr=min_conf_thr, param=param, conf=conf,
        dist=dist, robust=robust, robust_scale=robust_scale, base_scale=base_scale, optimize_pp=optimize_pp,
        storage_dtype=storage_dtype,
    ))

    data = parse_output(output)
    edges = data["edges"]
    n = check_graph(edges)
    E, H, W = data["conf_i"].shape

    if mode == "pairviewer":
        from f3d_jax.align.pairviewer import pair_viewer  # host-side numpy/OpenCV

        return pair_viewer(data, min_conf_thr=config.min_conf_thr)

    if config.conf == "log" and (data["conf_i"].min() <= 0 or data["conf_j"].min() <= 0):
        raise ValueError("global_align: confidences must be > 0 with conf='log' (network confidences are >= 1)")

    presets = parse_presets(
        n, mode, poses=preset_poses, pose_mask=preset_pose_mask, focals=preset_focals, focal_mask=preset_focal_mask,
        principal_points=preset_principal_points, pp_mask=preset_pp_mask,
    )
    ignore = parse_ignore_masks(masks, n, H, W)
    ew = parse_edge_weights(edge_weights, E)
    if config.norm_pw_scale is None:  # official: the scale comes from the poses when >= 2 are known
        config = dataclasses.replace(config, norm_pw_scale=presets.n_known_poses <= 1)

    if start is not None:
        state = as_align_state(start, n, E, (H, W))
    elif init == "none":
        state = random_start(n, E, H, W, config.base_scale, seed)
    else:
        state = as_align_state(_initialise(init, data, presets, config, niter_pnp), n, E, (H, W))

    result = align_dense_jit(dense_problem(data, presets, ignore, ew), state, config)
    _check_finite(result)
    return result


def _initialise(init: str, data: Mapping[str, Any], presets: Any, config: DenseConfig, niter_pnp: int) -> Any:
    """The host-side initialisation `init` ('mst' or 'known_poses') of parsed `inference` arrays."""
    from f3d_jax.align import initialise  # numpy/scipy/OpenCV: imported when needed

    arrays = dict(pred1_pts3d=data["pred_i"], pred1_conf=data["conf_i"], pred2_pts3d=data["pred_j"],
                  pred2_conf=data["conf_j"], min_conf_thr=config.min_conf_thr, niter_pnp=niter_pnp)
    pp_kw = dict(preset_principal_points=presets.pp if presets.pp_mask.any() else None)
    if init == "mst":
        known, fknown = presets.n_known_poses > 0, bool(presets.focal_mask.any())
        return initialise.initialise_mst(
            data["edges"], base_scale=config.base_scale,
            preset_poses=presets.poses if known else None, preset_pose_mask=presets.pose_mask if known else None,
            preset_focals=presets.focals if fknown else None, preset_focal_mask=presets.focal_mask if fknown else None,
            preset_pp_mask=presets.pp_mask if presets.pp_mask.any() else None, **pp_kw, **arrays,
        )
    if not (presets.pose_mask.all() and presets.focal_mask.all()):
        raise ValueError("global_align: init='known_poses' needs preset_poses and preset_focals for all images")
    return initialise.initialise_known_poses(data["edges"], preset_poses=presets.poses,
                                             preset_focals=presets.focals, **pp_kw, **arrays)


def _check_finite(result: AlignResult) -> None:
    bad = [k for k in ("cam2world", "focals", "depthmaps", "pw_poses", "pw_scales")
           if not bool(jnp.all(jnp.isfinite(getattr(result, k))))]
    if bad:
        raise FloatingPointError(
            f"global_align: the optimisation diverged (non-finite {', '.join(bad)}); "
            "check the inputs, lower lr, or start from a better init"
        )


__all__ = [
    "AlignResult", "AlignState", "DenseConfig", "DenseProblem", "Scene", "align_dense", "align_dense_jit",
    "as_align_state", "check_graph", "global_align", "make_problem", "parse_output", "state_from", "to_planar",
]
