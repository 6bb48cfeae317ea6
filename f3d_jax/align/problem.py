"""Building the dense GA inputs on the host: validation of an `inference` output and of the pair graph, user
masks, edge weights and presets, the planar layout of the predictions (`DenseProblem`), and the starting state
(`AlignState`) from a user object or the official random initialisation.

Host-side numpy; every bad input raises a ValueError/KeyError naming the argument (prefix "global_align:").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.align.types import AlignState, DenseProblem
from f3d_jax.geometry import transforms
from f3d_jax.geometry.graph import connected_components


def _as_np(x: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"global_align: {name} is not an array ({type(x).__name__})") from e


def parse_output(output: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Arrays of an `inference` output: edges (E,2) int32, pred_i/pred_j (E,H,W,3), conf_i/conf_j (E,H,W) float32.

    Raises:
      ValueError/KeyError with the offending key on missing keys, shape mismatches, non-finite values.
    """
    try:
        v1, v2, p1, p2 = output["view1"], output["view2"], output["pred1"], output["pred2"]
        ei = _as_np(v1["idx"], "view1['idx']")
        ej = _as_np(v2["idx"], "view2['idx']")
        pred_i = _as_np(p1["pts3d"], "pred1['pts3d']")
        conf_i = _as_np(p1["conf"], "pred1['conf']")
        pred_j = _as_np(p2["pts3d_in_other_view"], "pred2['pts3d_in_other_view']")
        conf_j = _as_np(p2["conf"], "pred2['conf']")
    except KeyError as e:
        raise KeyError(
            f"global_align: output is missing {e}; expected view1/view2['idx'], pred1['pts3d'], pred1['conf'], "
            "pred2['pts3d_in_other_view'], pred2['conf'] (what inference returns)"
        ) from None
    ei = ei.astype(np.int64).reshape(-1)
    ej = ej.astype(np.int64).reshape(-1)
    E = ei.shape[0]
    if ej.shape[0] != E:
        raise ValueError(f"global_align: view1['idx'] has {E} edges but view2['idx'] has {ej.shape[0]}")
    if E == 0:
        raise ValueError("global_align: no edges (empty view1['idx'])")
    for name, a, nd in (("pred1['pts3d']", pred_i, 4), ("pred2['pts3d_in_other_view']", pred_j, 4),
                        ("pred1['conf']", conf_i, 3), ("pred2['conf']", conf_j, 3)):
        if a.ndim != nd or a.shape[0] != E or (nd == 4 and a.shape[-1] != 3):
            want = "(E, H, W, 3)" if nd == 4 else "(E, H, W)"
            raise ValueError(f"global_align: {name} has shape {a.shape}, expected {want} with E={E} (NHWC)")
    if pred_i.shape != pred_j.shape:
        raise ValueError(
            f"global_align: pred1['pts3d'] {pred_i.shape} and pred2['pts3d_in_other_view'] {pred_j.shape} differ: "
            "all images must have the same size H x W"
        )
    if conf_i.shape != pred_i.shape[:3] or conf_j.shape != pred_j.shape[:3]:
        raise ValueError(
            f"global_align: confidences {conf_i.shape} / {conf_j.shape} do not match the pointmaps {pred_i.shape[:3]}"
        )
    out = dict(
        edges=np.stack([ei, ej], -1).astype(np.int32),
        pred_i=pred_i.astype(np.float32),
        pred_j=pred_j.astype(np.float32),
        conf_i=conf_i.astype(np.float32),
        conf_j=conf_j.astype(np.float32),
    )
    for k, name in (("pred_i", "pred1['pts3d']"), ("pred_j", "pred2['pts3d_in_other_view']"),
                    ("conf_i", "pred1['conf']"), ("conf_j", "pred2['conf']")):
        bad = ~np.isfinite(out[k])
        if bad.any():
            e = int(np.argwhere(bad)[0][0])
            raise ValueError(f"global_align: {name} has {int(bad.sum())} NaN/inf values (first in edge {e})")
    return out


def check_graph(edges: np.ndarray) -> int:
    """Number of images N of a valid edge list; raises on self-loops, missing indices, <2 images, disconnection."""
    if edges.min() < 0:
        raise ValueError("global_align: negative image index in view1/view2['idx']")
    if np.any(edges[:, 0] == edges[:, 1]):
        e = int(np.argmax(edges[:, 0] == edges[:, 1]))
        raise ValueError(f"global_align: edge {e} links image {edges[e, 0]} with itself")
    idx = np.unique(edges)
    n = int(edges.max()) + 1
    if len(idx) != n:
        missing = sorted(set(range(n)) - set(idx.tolist()))
        raise ValueError(f"global_align: image indices must cover 0..{n - 1}; missing {missing}")
    if n < 2:
        raise ValueError("global_align: at least 2 images are needed")
    comps = connected_components(n, edges.tolist())
    if len(comps) > 1:
        groups = sorted(comps, key=len, reverse=True)
        raise ValueError(
            f"global_align: the pair graph is disconnected ({len(groups)} components: {groups}); "
            "add pairs linking them or align each component separately"
        )
    return n


# ----------------------------------------------------------------------------------------------------------------
# presets, masks, edge weights


@dataclasses.dataclass(frozen=True)
class Presets:
    """Known poses / focals / principal points (host numpy), full (N, ...) arrays with their (N,) bool masks.

    Attributes:
      poses: (N, 4, 4) float32 cam-to-world (zeros where unknown); pose_mask: (N,) bool.
      focals: (N,) float32; focal_mask: (N,) bool. pp: (N, 2) float32; pp_mask: (N,) bool.
    """

    poses: np.ndarray
    pose_mask: np.ndarray
    focals: np.ndarray
    focal_mask: np.ndarray
    pp: np.ndarray
    pp_mask: np.ndarray

    @property
    def n_known_poses(self) -> int:
        return int(self.pose_mask.sum())


def _mask_arg(mask: Any, n: int, name: str, values_given: bool) -> np.ndarray:
    """Boolean (N,) mask from None (= all, if values given), bool array, or index list."""
    if mask is None:
        return np.full((n,), values_given, bool)
    m = np.asarray(mask)
    if m.dtype == bool:
        if m.shape != (n,):
            raise ValueError(f"global_align: {name} must have shape ({n},), got {m.shape}")
        return m
    out = np.zeros((n,), bool)
    idx = m.reshape(-1).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"global_align: {name} has indices outside 0..{n - 1}")
    out[idx] = True
    return out


def _preset_values(values: Any, mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Full (N, ...) array from either all N values or one value per selected image."""
    n = mask.shape[0]
    full = np.zeros((n,) + shape, np.float32)
    if values is None:
        return full
    v = np.asarray(values, np.float32).reshape((-1,) + shape)
    if v.shape[0] == n:
        full[mask] = v[mask]
    elif v.shape[0] == int(mask.sum()):
        full[mask] = v
    else:
        raise ValueError(f"global_align: {name} has {v.shape[0]} entries; expected {n} or {int(mask.sum())} (mask)")
    if not np.all(np.isfinite(full)):
        raise ValueError(f"global_align: {name} has NaN/inf values")
    return full


def parse_presets(
    n: int,
    mode: str,
    *,
    poses: Any = None,
    pose_mask: Any = None,
    focals: Any = None,
    focal_mask: Any = None,
    principal_points: Any = None,
    pp_mask: Any = None,
) -> Presets:
    """`Presets` of N images from the `global_align` preset arguments (values for all N images or one per
    selected image; masks as (N,) bool or index lists, None = all images when values are given).

    mode: 'pco' accepts presets for all images or none; 'modular' for any subset.
    """
    pm = _mask_arg(pose_mask, n, "preset_pose_mask", poses is not None)
    fm = _mask_arg(focal_mask, n, "preset_focal_mask", focals is not None)
    cm = _mask_arg(pp_mask, n, "preset_pp_mask", principal_points is not None)
    out = Presets(
        poses=_preset_values(poses, pm, (4, 4), "preset_poses"), pose_mask=pm,
        focals=_preset_values(focals, fm, (), "preset_focals"), focal_mask=fm,
        pp=_preset_values(principal_points, cm, (2,), "preset_principal_points"), pp_mask=cm,
    )
    if (pm.any() and poses is None) or (fm.any() and focals is None) or (cm.any() and principal_points is None):
        raise ValueError("global_align: a preset mask was given without its values")
    if mode == "pco":
        for name, m in (("poses", pm), ("focals", fm), ("principal points", cm)):
            if m.any() and not m.all():
                raise ValueError(
                    f"global_align: mode='pco' presets {name} for all images or none; use mode='modular' for a subset"
                )
    if np.any(out.focals[fm] <= 0):
        raise ValueError("global_align: preset_focals must be > 0")
    return out


def parse_ignore_masks(masks: Any, n: int, H: int, W: int) -> np.ndarray:
    """(N, H, W) bool pixels to ignore (True = ignore); None = none."""
    if masks is None:
        return np.zeros((n, H, W), bool)
    ignore = np.asarray(masks).astype(bool)
    if ignore.shape != (n, H, W):
        raise ValueError(f"global_align: masks must have shape {(n, H, W)} (True = ignore), got {ignore.shape}")
    return ignore


def parse_edge_weights(edge_weights: Any, E: int) -> np.ndarray:
    """(E,) float32 finite non-negative edge weights; None = all 1."""
    if edge_weights is None:
        return np.ones((E,), np.float32)
    ew = np.asarray(edge_weights, np.float32).reshape(-1)
    if ew.shape != (E,) or not np.all(np.isfinite(ew)) or np.any(ew < 0):
        raise ValueError(f"global_align: edge_weights must be ({E},) finite and >= 0")
    return ew


# ----------------------------------------------------------------------------------------------------------------
# the planar layout and the problem


def to_planar(pts: Any) -> jax.Array:
    """(E, H, W, 3) pointmaps -> (E, 3, H, W) planar device array (the `DenseProblem` layout).

    A jax array is transposed with jnp (gradients flow back to the NHWC array). NumPy input is transposed on
    the host a few edges at a time into one 64-byte aligned buffer that the CPU device then uses in place
    (`may_alias`): the planar copy costs what the plain device copy of the NHWC array would, no more.
    """
    if isinstance(pts, jax.Array):
        return jnp.moveaxis(pts, -1, 1)
    pts = np.asarray(pts)
    E = pts.shape[0]
    shape = (E, pts.shape[-1]) + pts.shape[1:-1]
    nbytes = int(np.prod(shape)) * pts.dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off:off + nbytes].view(pts.dtype).reshape(shape)
    step = max(1, (1 << 24) // max(1, nbytes // max(E, 1)))  # ~16 MB of edges per copy
    for e in range(0, E, step):
        np.copyto(out[e:e + step], np.moveaxis(pts[e:e + step], -1, 1))
    return jax.device_put(out, may_alias=True)


def dense_problem(
    data: Mapping[str, np.ndarray], presets: Presets, ignore: np.ndarray, edge_weights: np.ndarray
) -> DenseProblem:
    """`DenseProblem` of parsed `inference` arrays (`parse_output`) with presets, ignore masks, edge weights."""
    edges = data["edges"]
    return DenseProblem(
        pred_i=to_planar(data["pred_i"]), pred_j=to_planar(data["pred_j"]),
        conf_i=jnp.asarray(data["conf_i"]), conf_j=jnp.asarray(data["conf_j"]),
        ei=jnp.asarray(edges[:, 0]), ej=jnp.asarray(edges[:, 1]),
        ignore=jnp.asarray(ignore), edge_weights=jnp.asarray(edge_weights),
        preset_cam2world=jnp.asarray(presets.poses), pose_known=jnp.asarray(presets.pose_mask),
        preset_focals=jnp.asarray(presets.focals), focal_known=jnp.asarray(presets.focal_mask),
        preset_pp=jnp.asarray(presets.pp), pp_known=jnp.asarray(presets.pp_mask),
    )


def make_problem(
    edges: np.ndarray,
    pred_i: Any,
    pred_j: Any,
    conf_i: Any,
    conf_j: Any,
    *,
    ignore: Any = None,
    edge_weights: Any = None,
) -> DenseProblem:
    """`DenseProblem` with no presets from raw arrays (a convenience for the pure core / vmap / grad use).

    pred_i, pred_j: (E, H, W, 3) as `inference` returns them (converted to the planar layout here).
    """
    edges = np.asarray(edges)
    n = int(edges.max()) + 1
    E, H, W = np.shape(conf_i)
    return DenseProblem(
        pred_i=to_planar(pred_i), pred_j=to_planar(pred_j), conf_i=jnp.asarray(conf_i), conf_j=jnp.asarray(conf_j),
        ei=jnp.asarray(edges[:, 0], jnp.int32), ej=jnp.asarray(edges[:, 1], jnp.int32),
        ignore=jnp.zeros((n, H, W), bool) if ignore is None else jnp.asarray(ignore, bool),
        edge_weights=jnp.ones((E,), jnp.float32) if edge_weights is None else jnp.asarray(edge_weights, jnp.float32),
        preset_cam2world=jnp.tile(jnp.eye(4, dtype=jnp.float32), (n, 1, 1)), pose_known=jnp.zeros((n,), bool),
        preset_focals=jnp.ones((n,), jnp.float32), focal_known=jnp.zeros((n,), bool),
        preset_pp=jnp.zeros((n, 2), jnp.float32), pp_known=jnp.zeros((n,), bool),
    )


# ----------------------------------------------------------------------------------------------------------------
# starting states


def as_align_state(start: Any, n: int, e: int, hw: tuple[int, int]) -> AlignState:
    """Checked float32 `AlignState` (jax arrays) from an `AlignState`, an `Initialisation` (its `.state`), or any
    object/mapping with cam2world, focals, depthmaps, pw_poses (rigid), pw_scales (principal_points optional:
    default (W/2, H/2)).

    Raises:
      ValueError naming the missing / misshapen / non-finite field.
    """
    inner = getattr(start, "state", None)
    if isinstance(inner, AlignState):
        start = inner

    def get(k: str) -> Any:
        if isinstance(start, Mapping):
            return start.get(k)
        return getattr(start, k, None)

    H, W = hw
    want = dict(cam2world=(n, 4, 4), focals=(n,), depthmaps=(n, H, W), pw_poses=(e, 4, 4), pw_scales=(e,))
    out: dict[str, np.ndarray] = {}
    for k, shp in want.items():
        val = get(k)
        if val is None:
            raise ValueError(f"global_align: start has no '{k}'")
        a = np.asarray(val, np.float32)
        if k in ("focals", "pw_scales"):
            a = a.reshape(-1)
        if a.shape != shp:
            raise ValueError(f"global_align: start.{k} has shape {a.shape}, expected {shp}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"global_align: start.{k} has NaN/inf values")
        out[k] = a
    pp = get("principal_points")
    out["principal_points"] = (
        np.broadcast_to(np.float32([W / 2, H / 2]), (n, 2)).copy() if pp is None else np.asarray(pp, np.float32)
    )
    return AlignState(**{k: jnp.asarray(v) for k, v in out.items()})


# Deprecated name of `as_align_state`.
state_from = as_align_state


def random_start(n: int, e: int, H: int, W: int, base_scale: float, seed: int) -> AlignState:
    """The official random initialisation (init=None): raw poses ~ N(0, 1), log depth ~ N(0,1)/10 - 3,
    focal max(H, W), decoded; deterministic through `seed`."""
    rng = np.random.default_rng(seed)
    im = rng.standard_normal((n, 7)).astype(np.float32)
    pw = rng.standard_normal((e, 8)).astype(np.float32)
    logd = (rng.standard_normal((n, H, W)) / 10 - 3).astype(np.float32)
    R_im = np.asarray(transforms.quat_xyzw_to_rotmat(jnp.asarray(im[:, :4]), xnp=jnp))
    R_pw = np.asarray(transforms.quat_xyzw_to_rotmat(jnp.asarray(pw[:, :4]), xnp=jnp))
    T_im = transforms.signed_expm1(im[:, 4:])
    T_pw = transforms.signed_expm1(pw[:, 4:7])
    s = np.exp(pw[:, 7]) * np.exp(np.log(base_scale) - pw[:, 7].mean())
    return AlignState(
        cam2world=jnp.asarray(transforms.make_pose(R_im, T_im).astype(np.float32)),
        focals=jnp.full((n,), float(max(H, W)), jnp.float32),
        principal_points=jnp.broadcast_to(jnp.float32([W / 2, H / 2]), (n, 2)),
        depthmaps=jnp.asarray(np.exp(logd)),
        pw_poses=jnp.asarray(transforms.make_pose(R_pw, T_pw).astype(np.float32)),
        pw_scales=jnp.asarray(s.astype(np.float32)),
    )
