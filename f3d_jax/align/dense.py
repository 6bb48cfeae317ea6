"""Dense global alignment (equivalent of dust3r/cloud_opt: `global_aligner`, `PointCloudOptimizer`,
`ModularPointCloudOptimizer`, `global_alignment_loop`) as one jit-compiled `lax.scan` of optax Adam.

Two layers:
- `align_dense(problem, init, config)`: the pure, jit/grad/vmap-able core. It takes the pairwise predictions and
  an initial state as arrays and returns a `Scene` pytree. Differentiable end to end w.r.t. the predictions,
  the confidences and the initial state.
- `global_align(output, ...)`: the user entry point (the official `global_aligner(...)` +
  `compute_global_alignment(...)`): validates the `inference` output, runs the initialisation on the host
  (`init='mst'|'known_poses'|'none'` or an explicit `init_state=`), calls the jitted core, refuses to return
  non-finite poses.

Conventions: poses are **cam-to-world** 4x4 with OpenCV camera axes (x right, y down, z forward). Pixels (u, v) =
(column, row) with integer coordinates; the default principal point is exactly (W/2, H/2) (no half-pixel
offset). Pairwise transform of edge e = (i, j): x -> s_e (R_e x + T_e) maps edge e's predictions (camera i's
frame, arbitrary scale) to the world; `Scene.pw_poses` holds the rigid part [R_e | T_e] and `Scene.pw_scales`
the (normalised) scales s_e, `Scene.pw_poses_scaled()` the official `get_pw_poses()` matrices [s R | s T].
"""

from __future__ import annotations

import dataclasses

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from f3d_jax.align import params as P
from f3d_jax.align.losses import CONF_MODES, DEFAULT_CHUNK_PIXELS, DISTS, ROBUST, alignment_loss, apply_3x3
from f3d_jax.align.schedules import DEFAULT_LR_MIN, SCHEDULES, lr_curve

MODES = ("pco", "modular", "pairviewer")
INITS = ("mst", "known_poses", "none")


def _pytree_dataclass(cls: type) -> type:
    """Frozen dataclass registered as a pytree (all fields are data)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])


@_pytree_dataclass
class AlignState:
    """Decoded alignment state (what the optimiser starts from / ends with).

    Attributes:
      cam2world: (N, 4, 4) float32, cam-to-world, OpenCV axes.
      focals: (N,) float32, pixels.
      principal_points: (N, 2) float32, (cx, cy) pixels.
      depthmaps: (N, H, W) float32, camera-frame z.
      pw_poses: (E, 4, 4) float32, rigid part [R_e | T_e] of the pairwise transforms x -> s_e (R_e x + T_e).
      pw_scales: (E,) float32, s_e (after the pairwise-scale normalisation).
    """

    cam2world: jax.Array
    focals: jax.Array
    principal_points: jax.Array
    depthmaps: jax.Array
    pw_poses: jax.Array
    pw_scales: jax.Array


@_pytree_dataclass
class Scene:
    """Result of `global_align` / `align_dense` (a pytree: jit, vmap and grad go through it).

    Attributes:
      cam2world: (N, 4, 4) float32, cam-to-world, OpenCV axes (x right, y down, z forward).
      focals: (N,) float32. principal_points: (N, 2) float32 (cx, cy).
      depthmaps: (N, H, W) float32. pts3d: (N, H, W, 3) float32 world points of every pixel.
      conf: (N, H, W) float32, per-image max confidence over all edges (official `im_conf`).
      masks: (N, H, W) bool, conf > min_conf_thr and not user-ignored (official `get_masks()`).
      pw_poses: (E, 4, 4) rigid pairwise poses; pw_scales: (E,) their scales (see module docstring).
      edges: (E, 2) int32 (i, j) per edge.
      loss_curve: (niter,) loss at each iteration, before that iteration's step. lr_curve: (niter,).
      final_loss: () loss of the returned state (after the last step).
      init: `AlignState` right after initialisation (presets applied).
    """

    cam2world: jax.Array
    focals: jax.Array
    principal_points: jax.Array
    depthmaps: jax.Array
    pts3d: jax.Array
    conf: jax.Array
    masks: jax.Array
    pw_poses: jax.Array
    pw_scales: jax.Array
    edges: jax.Array
    loss_curve: jax.Array
    lr_curve: jax.Array
    final_loss: jax.Array
    init: AlignState

    def pw_poses_scaled(self) -> jax.Array:
        """(E, 4, 4) [s R | s T]: the official `get_pw_poses()`."""
        s = self.pw_scales[..., None, None]
        top = self.pw_poses[..., :3, :] * s
        return jnp.concatenate([top, self.pw_poses[..., 3:, :]], axis=-2)

    def intrinsics(self) -> jax.Array:
        """(N, 3, 3) K matrices."""
        K = jnp.zeros(self.focals.shape + (3, 3), jnp.float32)
        K = K.at[..., 0, 0].set(self.focals).at[..., 1, 1].set(self.focals)
        return K.at[..., :2, 2].set(self.principal_points).at[..., 2, 2].set(1.0)


@_pytree_dataclass
class DenseProblem:
    """Array inputs of the dense GA core (all images the same size H x W).

    Attributes:
      pred_i: (E, 3, H, W) pred1 'pts3d' (image i in camera i's frame), **planar** (the x, y, z planes of the
        official NHWC arrays: `to_planar`, or build the problem with `make_problem`); float32 or bfloat16.
      pred_j: (E, 3, H, W) pred2 'pts3d_in_other_view' (image j in camera i's frame), planar.
      conf_i, conf_j: (E, H, W) float32 confidences (> 0 for conf='log').
      ei, ej: (E,) int32 image indices (i, j) of each edge.
      ignore: (N, H, W) bool, user mask of pixels to ignore (dynamic objects, sky...): their weight is 0.
      edge_weights: (E,) float32 multipliers of each edge's two loss terms (1 = official).
      preset_cam2world: (N, 4, 4), pose_known: (N,) bool: known cam-to-world poses (frozen).
      preset_focals: (N,), focal_known: (N,) bool. preset_pp: (N, 2), pp_known: (N,) bool.
    """

    pred_i: jax.Array
    pred_j: jax.Array
    conf_i: jax.Array
    conf_j: jax.Array
    ei: jax.Array
    ej: jax.Array
    ignore: jax.Array
    edge_weights: jax.Array
    preset_cam2world: jax.Array
    pose_known: jax.Array
    preset_focals: jax.Array
    focal_known: jax.Array
    preset_pp: jax.Array
    pp_known: jax.Array


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """Static configuration of the dense GA loop (hashable: a jit static argument).

    Attributes:
      niter, schedule ('cosine'|'linear'), lr, lr_min: the official loop (lr_min 1e-6).
      param: 'official' (raw XYZW quaternions, signed-log1p translations) or 'manifold' (jaxlie SE3).
      conf: confidence transform ('log' official). dist: 'l1' (Euclidean norm) or 'l2' (squared norm).
      robust, robust_scale: optional robust kernel on the distances (None = official).
      base_scale: geometric mean of the pairwise scales when `norm_pw_scale` (official 0.5).
      norm_pw_scale: pin the pairwise scales' geometric mean (official: True unless >= 2 poses are known).
      focal_break: focal parameter = focal_break * log f (official 20).
      optimize_pp: optimise principal points (official default False).
      min_conf_thr: only defines `Scene.masks` (not used by the loss, as officially).
      storage_dtype: 'float32' or 'bfloat16' storage of the predictions/confidences (math stays float32).
      chunk_pixels: edge-pixels per block of the loss (C edges x T pixels, `losses.block_plan`): bounds the
        loop's temporaries and keeps each block in cache.
      b1, b2, eps: Adam hyper-parameters (official (0.9, 0.9), 1e-8).
    """

    niter: int = 300
    schedule: str = "cosine"
    lr: float = 0.01
    lr_min: float = DEFAULT_LR_MIN
    param: str = "official"
    conf: str = "log"
    dist: str = "l1"
    robust: str | None = None
    robust_scale: float = 0.05
    base_scale: float = 0.5
    norm_pw_scale: bool = True
    focal_break: float = 20.0
    optimize_pp: bool = False
    min_conf_thr: float = 3.0
    storage_dtype: str = "float32"
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS
    b1: float = 0.9
    b2: float = 0.9
    eps: float = 1e-8

    def __post_init__(self) -> None:
        checks = [
            ("schedule", self.schedule, SCHEDULES),
            ("param", self.param, P.PARAMETERISATIONS),
            ("conf", self.conf, CONF_MODES),
            ("dist", self.dist, DISTS),
            ("robust", self.robust, ROBUST),
            ("storage_dtype", self.storage_dtype, ("float32", "bfloat16")),
        ]
        for name, val, allowed in checks:
            if val not in allowed:
                raise ValueError(f"global_align: {name} must be one of {allowed}, got {val!r}")
        if int(self.niter) < 1:
            raise ValueError(f"global_align: niter must be >= 1, got {self.niter}")


def _pose_matrix(R: jax.Array, T: jax.Array) -> jax.Array:
    top = jnp.concatenate([R, T[..., :, None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], R.dtype), R.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def _image_conf(conf_i: jax.Array, conf_j: jax.Array, ei: jax.Array, ej: jax.Array, n: int) -> jax.Array:
    """(N, H, W) float32 per-image max of every confidence predicted for the image (from 0, as officially).

    A loop over edges rather than a segment_max: XLA:CPU would convert whole bfloat16 inputs to float32 for the
    scatter (8 B per edge-pixel of temporaries at N=100).
    """

    def body(e, acc):
        # the barrier ties the inputs to the loop counter: no whole-array float32 convert hoisted out of the loop
        ci, cj, e = jax.lax.optimization_barrier((conf_i, conf_j, e))
        for conf, idx in ((ci, ei), (cj, ej)):
            k = idx[e]
            cur = jax.lax.dynamic_index_in_dim(acc, k, keepdims=False)
            new = jnp.maximum(cur, jax.lax.dynamic_index_in_dim(conf, e, keepdims=False).astype(acc.dtype))
            acc = jax.lax.dynamic_update_index_in_dim(acc, new, k, axis=0)
        return acc

    # max in the storage dtype (exact), converted once at the end: a per-edge convert would be hoisted out of
    # the loop as a whole-array float32 copy
    dt = jnp.promote_types(conf_i.dtype, conf_j.dtype)
    out = jax.lax.fori_loop(0, ei.shape[0], body, jnp.zeros((n,) + conf_i.shape[1:], dt))
    return out.astype(jnp.float32)


def align_dense(problem: DenseProblem, init: AlignState, config: DenseConfig) -> Scene:
    """Pure dense GA core: optax Adam over the official (or manifold) parameters in one `lax.scan`.

    Jit it with `config` static (`jax.jit(align_dense, static_argnames='config')`), vmap it over a batch of
    equal-shape problems/inits, or differentiate a scalar of the returned `Scene` w.r.t. `problem` arrays
    (predictions, confidences) or `init`.

    Args:
      problem: `DenseProblem` (E edges, N images of H x W).
      init: `AlignState` to start from; preset poses/focals/principal points of `problem` override it.
      config: `DenseConfig`.
    Returns:
      `Scene`.
    """
    c = config
    N, H, W = problem.ignore.shape
    E = problem.ei.shape[0]
    HW = H * W
    f32 = jnp.float32
    sdt = jnp.bfloat16 if c.storage_dtype == "bfloat16" else f32

    # pixel grid: integer coordinates, column u and row v; principal point default (W/2, H/2)
    u = jnp.tile(jnp.arange(W, dtype=f32), H)
    v = jnp.repeat(jnp.arange(H, dtype=f32), W)
    pp_base = jnp.broadcast_to(jnp.array([W / 2, H / 2], f32), (N, 2))

    # initial state with the presets applied
    pk = problem.pose_known
    c2w0 = jnp.where(pk[:, None, None], problem.preset_cam2world.astype(f32), init.cam2world.astype(f32))
    focal0 = jnp.where(problem.focal_known, problem.preset_focals.astype(f32), init.focals.astype(f32))
    pp0 = jnp.where(problem.pp_known[:, None], problem.preset_pp.astype(f32), init.principal_points.astype(f32))
    pw0 = init.pw_poses.astype(f32)
    raw = P.encode(
        c.param,
        R_im=c2w0[:, :3, :3],
        T_im=c2w0[:, :3, 3],
        focals=focal0,
        pp=pp0,
        pp_base=pp_base,
        depthmaps=init.depthmaps.astype(f32).reshape(N, HW),
        R_pw=pw0[:, :3, :3],
        T_pw=pw0[:, :3, 3],
        s_pw=init.pw_scales.astype(f32),
        focal_break=c.focal_break,
    )

    # gauge: the official parameterisation pins the root translation by itself (zero derivative of the decoding
    # at exactly 0); the manifold one pins the camera closest to the origin (the MST root is the identity)
    # unless known poses already fix the gauge.
    no_pose_known = jnp.logical_not(jnp.any(pk))
    root = jnp.argmin(jnp.linalg.norm(c2w0[:, :3, 3], axis=-1))
    pin = jax.nn.one_hot(root, N, dtype=f32) * no_pose_known.astype(f32)
    ones = jnp.ones((N,), f32)
    gmask = P.grad_masks(
        c.param,
        raw,
        pose_free=1.0 - pk.astype(f32),
        focal_free=1.0 - problem.focal_known.astype(f32),
        pp_free=(1.0 - problem.pp_known.astype(f32)) * (1.0 if c.optimize_pp else 0.0),
        depth_free=ones,
        pin_translation=pin,
    )

    # (E, 3, HW) views of the stored planar predictions (a reshape: no copy unless a storage cast is asked for)
    pred_i = problem.pred_i.reshape(E, 3, HW)
    pred_j = problem.pred_j.reshape(E, 3, HW)
    if pred_i.dtype != sdt and c.storage_dtype == "bfloat16":
        pred_i, pred_j = pred_i.astype(sdt), pred_j.astype(sdt)
    keep = 1.0 - problem.ignore.reshape(N, HW).astype(f32)
    ew = problem.edge_weights.astype(f32)
    conf_i = problem.conf_i.reshape(E, HW)
    conf_j = problem.conf_j.reshape(E, HW)
    if c.storage_dtype == "bfloat16":
        conf_i, conf_j = conf_i.astype(sdt), conf_j.astype(sdt)

    def decode(p: P.Params) -> dict[str, jax.Array]:
        R_im, T_im, R_pw, T_pw = P.decode_poses(c.param, p)
        focals = jnp.exp(p["focal"] / c.focal_break)
        pp = pp_base + P.PP_BREAK * p["pp"]
        depth = jnp.exp(p["log_depth"])
        sig = p["pw_log_scale"]
        s_pw = jnp.exp(sig)
        if c.norm_pw_scale:
            s_pw = s_pw * jnp.exp(jnp.log(c.base_scale) - jnp.mean(sig))
        # (N, 3, HW) camera-frame points, plane by plane (the gradient then needs no reduction over the 3 axis)
        cam_pts = jnp.stack(
            [depth * (u[None] - pp[:, 0:1]) / focals[:, None], depth * (v[None] - pp[:, 1:2]) / focals[:, None], depth],
            axis=1,
        )
        return dict(R_im=R_im, T_im=T_im, R_pw=R_pw, T_pw=T_pw, s_pw=s_pw, focals=focals, pp=pp, depth=depth,
                    cam_pts=cam_pts)

    def loss_fn(p: P.Params) -> jax.Array:
        d = decode(p)
        return alignment_loss(
            R_im=d["R_im"], T_im=d["T_im"], cam_pts=d["cam_pts"], R_pw=d["R_pw"], T_pw=d["T_pw"], s_pw=d["s_pw"],
            pred_i=pred_i, pred_j=pred_j, conf_i=conf_i, conf_j=conf_j, keep=keep, edge_weights=ew,
            ei=problem.ei, ej=problem.ej, conf_mode=c.conf, dist=c.dist, robust=c.robust,
            robust_scale=c.robust_scale, chunk_pixels=c.chunk_pixels,
        )

    # eps_root: frozen/pinned entries have v = 0 forever and d sqrt(v)/dv = inf there; a tiny eps_root keeps
    # the derivative finite (end-to-end grads would be NaN otherwise) and changes no float32 value in practice
    adam = optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps, eps_root=1e-30)
    vg = P.value_and_grad(c.param, loss_fn)
    tangent0 = jax.tree.map(jnp.zeros_like, gmask)
    opt0 = adam.init(tangent0)
    lrs = jnp.asarray(lr_curve(c.schedule, c.lr, c.niter, c.lr_min))

    def step(carry, lr):
        p, s = carry
        loss, g = vg(p)
        g = jax.tree.map(jnp.multiply, g, gmask)
        upd, s = adam.update(g, s)
        upd = jax.tree.map(lambda x: -lr * x, upd)
        return (P.apply_updates(c.param, p, upd), s), loss

    (final, _), losses = jax.lax.scan(step, (raw, opt0), lrs)

    def state_of(p: P.Params) -> tuple[AlignState, dict[str, jax.Array]]:
        d = decode(p)
        st = AlignState(
            cam2world=_pose_matrix(d["R_im"], d["T_im"]),
            focals=d["focals"],
            principal_points=d["pp"],
            depthmaps=d["depth"].reshape(N, H, W),
            pw_poses=_pose_matrix(d["R_pw"], d["T_pw"]),
            pw_scales=d["s_pw"],
        )
        return st, d

    init_state, _ = state_of(raw)
    fin, d = state_of(final)
    pts3d = jnp.moveaxis(apply_3x3(d["R_im"], d["cam_pts"]) + d["T_im"][:, :, None], 1, -1)
    im_conf = _image_conf(problem.conf_i, problem.conf_j, problem.ei, problem.ej, N)
    return Scene(
        cam2world=fin.cam2world,
        focals=fin.focals,
        principal_points=fin.principal_points,
        depthmaps=fin.depthmaps,
        pts3d=pts3d.reshape(N, H, W, 3),
        conf=im_conf,
        masks=(im_conf > c.min_conf_thr) & jnp.logical_not(problem.ignore),
        pw_poses=fin.pw_poses,
        pw_scales=fin.pw_scales,
        edges=jnp.stack([problem.ei, problem.ej], axis=-1),
        loss_curve=losses,
        lr_curve=lrs,
        final_loss=loss_fn(final),
        init=init_state,
    )


align_dense_jit = jax.jit(align_dense, static_argnames="config")


# --------------------------------------------------------------------------------------------------------------
# host side: validation, initialisation, entry point


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
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges.tolist():
        parent[find(a)] = find(b)
    comps: dict[int, list[int]] = {}
    for a in range(n):
        comps.setdefault(find(a), []).append(a)
    if len(comps) > 1:
        groups = sorted(comps.values(), key=len, reverse=True)
        raise ValueError(
            f"global_align: the pair graph is disconnected ({len(groups)} components: {groups}); "
            "add pairs linking them or align each component separately"
        )
    return n


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


def state_from(init_state: Any, n: int, e: int, hw: tuple[int, int]) -> AlignState:
    """`AlignState` from any object/mapping with cam2world, focals, depthmaps, pw_poses (rigid), pw_scales
    (principal_points optional: default (W/2, H/2))."""
    def get(k: str) -> Any:
        if isinstance(init_state, Mapping):
            return init_state.get(k)
        return getattr(init_state, k, None)

    H, W = hw
    want = dict(cam2world=(n, 4, 4), focals=(n,), depthmaps=(n, H, W), pw_poses=(e, 4, 4), pw_scales=(e,))
    out: dict[str, np.ndarray] = {}
    for k, shp in want.items():
        val = get(k)
        if val is None:
            raise ValueError(f"global_align: init_state has no '{k}'")
        a = np.asarray(val, np.float32)
        if k in ("focals", "pw_scales"):
            a = a.reshape(-1)
        if a.shape != shp:
            raise ValueError(f"global_align: init_state.{k} has shape {a.shape}, expected {shp}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"global_align: init_state.{k} has NaN/inf values")
        out[k] = a
    pp = get("principal_points")
    out["principal_points"] = (
        np.broadcast_to(np.float32([W / 2, H / 2]), (n, 2)).copy() if pp is None else np.asarray(pp, np.float32)
    )
    return AlignState(**{k: jnp.asarray(v) for k, v in out.items()})


def _random_init(n: int, e: int, H: int, W: int, base_scale: float, seed: int) -> AlignState:
    """The official random initialisation (init=None): raw poses ~ N(0, 1), log depth ~ N(0,1)/10 - 3,
    focal max(H, W), decoded; deterministic through `seed`."""
    rng = np.random.default_rng(seed)
    im = rng.standard_normal((n, 7)).astype(np.float32)
    pw = rng.standard_normal((e, 8)).astype(np.float32)
    logd = (rng.standard_normal((n, H, W)) / 10 - 3).astype(np.float32)
    R_im = np.asarray(P.quat_xyzw_to_rotmat(jnp.asarray(im[:, :4])))
    R_pw = np.asarray(P.quat_xyzw_to_rotmat(jnp.asarray(pw[:, :4])))
    T_im = np.sign(im[:, 4:]) * np.expm1(np.abs(im[:, 4:]))
    T_pw = np.sign(pw[:, 4:7]) * np.expm1(np.abs(pw[:, 4:7]))
    s = np.exp(pw[:, 7]) * np.exp(np.log(base_scale) - pw[:, 7].mean())
    mat = lambda R, T: np.concatenate(  # noqa: E731
        [np.concatenate([R, T[:, :, None]], -1), np.broadcast_to(np.float32([0, 0, 0, 1]), (len(R), 1, 4))], 1)
    return AlignState(
        cam2world=jnp.asarray(mat(R_im, T_im)),
        focals=jnp.full((n,), float(max(H, W)), jnp.float32),
        principal_points=jnp.broadcast_to(jnp.float32([W / 2, H / 2]), (n, 2)),
        depthmaps=jnp.asarray(np.exp(logd)),
        pw_poses=jnp.asarray(mat(R_pw, T_pw)),
        pw_scales=jnp.asarray(s.astype(np.float32)),
    )


def global_align(
    output: Mapping[str, Any],
    mode: str = "pco",
    init: str | None = "mst",
    niter: int = 300,
    schedule: str = "cosine",
    lr: float = 0.01,
    min_conf_thr: float = 3.0,
    *,
    param: str = "official",
    conf: str = "log",
    dist: str = "l1",
    robust: str | None = None,
    robust_scale: float = 0.05,
    base_scale: float = 0.5,
    lr_min: float = DEFAULT_LR_MIN,
    masks: Any = None,
    edge_weights: Any = None,
    preset_poses: Any = None,
    preset_pose_mask: Any = None,
    preset_focals: Any = None,
    preset_focal_mask: Any = None,
    preset_principal_points: Any = None,
    preset_pp_mask: Any = None,
    optimize_pp: bool = False,
    init_state: Any = None,
    niter_pnp: int = 10,
    storage_dtype: str = "float32",
    seed: int = 0,
) -> Scene:
    """Dense global alignment of pairwise DUSt3R predictions (official `global_aligner` + `compute_global_alignment`).

    Args:
      output: what `inference` returns: `view1/view2['idx']` (E,), `pred1['pts3d']` (E,H,W,3) image i in camera
        i's frame, `pred1['conf']` (E,H,W), `pred2['pts3d_in_other_view']` (E,H,W,3) image j in camera i's frame,
        `pred2['conf']` (E,H,W); NHWC; all images the same size. numpy or jax arrays.
      mode: 'pco' (PointCloudOptimizer; presets must cover all images), 'modular' (ModularPointCloudOptimizer:
        presets for any subset of images), 'pairviewer' (2 images, symmetric edges, no optimisation).
      init: 'mst' (minimum spanning tree + Procrustes + PnP, `f3d_jax.align.init.init_mst`), 'known_poses'
        (all poses and focals preset), 'none' (official random init, seeded by `seed`). Ignored when
        `init_state` is given.
      niter, schedule, lr, lr_min: the loop (official: 300, 'cosine', 0.01, 1e-6; the demo UI uses 'linear').
      min_conf_thr: threshold of `Scene.masks` and of the PnP inlier pool of the initialisation.
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
      init_state: explicit starting state (an `AlignState`, an init result, or a mapping with cam2world, focals,
        depthmaps, pw_poses (rigid), pw_scales, optional principal_points): e.g. to restart or for parity tests.
      niter_pnp: RANSAC iterations of the PnP of the initialisation.
      storage_dtype: 'bfloat16' stores the predictions in bf16 (half the memory; math stays float32).
      seed: seed of init='none'.
    Returns:
      `Scene` (jax arrays).
    Raises:
      ValueError: bad shapes, NaN/inf inputs, disconnected pair graph, single image, bad presets, or a
        non-finite result (never returns NaN poses silently).
    """
    if mode not in MODES:
        raise ValueError(f"global_align: mode must be one of {MODES}, got {mode!r}")
    if init is None:
        init = "none"
    if init not in INITS:
        raise ValueError(f"global_align: init must be one of {INITS}, got {init!r}")
    data = parse_output(output)
    edges = data["edges"]
    n = check_graph(edges)
    E, H, W = data["conf_i"].shape

    if mode == "pairviewer":
        from f3d_jax.align.pairviewer import pair_viewer

        return pair_viewer(data, min_conf_thr=min_conf_thr)

    if conf == "log" and (data["conf_i"].min() <= 0 or data["conf_j"].min() <= 0):
        raise ValueError("global_align: confidences must be > 0 with conf='log' (network confidences are >= 1)")

    pose_mask = _mask_arg(preset_pose_mask, n, "preset_pose_mask", preset_poses is not None)
    focal_mask = _mask_arg(preset_focal_mask, n, "preset_focal_mask", preset_focals is not None)
    pp_mask = _mask_arg(preset_pp_mask, n, "preset_pp_mask", preset_principal_points is not None)
    poses_np = _preset_values(preset_poses, pose_mask, (4, 4), "preset_poses")
    focals_np = _preset_values(preset_focals, focal_mask, (), "preset_focals")
    pp_np = _preset_values(preset_principal_points, pp_mask, (2,), "preset_principal_points")
    if (pose_mask.any() and preset_poses is None) or (focal_mask.any() and preset_focals is None) or (
        pp_mask.any() and preset_principal_points is None
    ):
        raise ValueError("global_align: a preset mask was given without its values")
    if mode == "pco":
        for name, m in (("poses", pose_mask), ("focals", focal_mask), ("principal points", pp_mask)):
            if m.any() and not m.all():
                raise ValueError(
                    f"global_align: mode='pco' presets {name} for all images or none; use mode='modular' for a subset"
                )
    if np.any(focals_np[focal_mask] <= 0):
        raise ValueError("global_align: preset_focals must be > 0")
    n_known = int(pose_mask.sum())

    if masks is None:
        ignore = np.zeros((n, H, W), bool)
    else:
        ignore = np.asarray(masks).astype(bool)
        if ignore.shape != (n, H, W):
            raise ValueError(f"global_align: masks must have shape {(n, H, W)} (True = ignore), got {ignore.shape}")
    if edge_weights is None:
        ew = np.ones((E,), np.float32)
    else:
        ew = np.asarray(edge_weights, np.float32).reshape(-1)
        if ew.shape != (E,) or not np.all(np.isfinite(ew)) or np.any(ew < 0):
            raise ValueError(f"global_align: edge_weights must be ({E},) finite and >= 0")

    config = DenseConfig(
        niter=int(niter), schedule=schedule, lr=float(lr), lr_min=float(lr_min), param=param, conf=conf, dist=dist,
        robust=robust, robust_scale=float(robust_scale), base_scale=float(base_scale),
        norm_pw_scale=n_known <= 1, optimize_pp=bool(optimize_pp), min_conf_thr=float(min_conf_thr),
        storage_dtype=storage_dtype,
    )

    if init_state is not None:
        state = state_from(init_state, n, E, (H, W))
    elif init == "none":
        state = _random_init(n, E, H, W, base_scale, seed)
    else:
        from f3d_jax.align import init as init_mod  # host-side numpy/OpenCV initialisation

        arrays = dict(pred1_pts3d=data["pred_i"], pred1_conf=data["conf_i"], pred2_pts3d=data["pred_j"],
                      pred2_conf=data["conf_j"], min_conf_thr=min_conf_thr, niter_pnp=niter_pnp)
        pp_kw = dict(preset_principal_points=pp_np if pp_mask.any() else None)
        if init == "mst":
            res = init_mod.init_mst(
                edges, base_scale=base_scale,
                preset_poses=poses_np if n_known else None, preset_pose_mask=pose_mask if n_known else None,
                preset_focals=focals_np if focal_mask.any() else None,
                preset_focal_mask=focal_mask if focal_mask.any() else None,
                preset_pp_mask=pp_mask if pp_mask.any() else None, **pp_kw, **arrays,
            )
        else:
            if not (pose_mask.all() and focal_mask.all()):
                raise ValueError("global_align: init='known_poses' needs preset_poses and preset_focals for all images")
            res = init_mod.init_known_poses(edges, preset_poses=poses_np, preset_focals=focals_np, **pp_kw, **arrays)
        state = state_from(res, n, E, (H, W))

    problem = DenseProblem(
        pred_i=to_planar(data["pred_i"]), pred_j=to_planar(data["pred_j"]),
        conf_i=jnp.asarray(data["conf_i"]), conf_j=jnp.asarray(data["conf_j"]),
        ei=jnp.asarray(edges[:, 0]), ej=jnp.asarray(edges[:, 1]),
        ignore=jnp.asarray(ignore), edge_weights=jnp.asarray(ew),
        preset_cam2world=jnp.asarray(poses_np), pose_known=jnp.asarray(pose_mask),
        preset_focals=jnp.asarray(focals_np), focal_known=jnp.asarray(focal_mask),
        preset_pp=jnp.asarray(pp_np), pp_known=jnp.asarray(pp_mask),
    )
    scene = align_dense_jit(problem, state, config)
    _check_finite(scene)
    return scene


def _check_finite(scene: Scene) -> None:
    bad = [k for k in ("cam2world", "focals", "depthmaps", "pw_poses", "pw_scales")
           if not bool(jnp.all(jnp.isfinite(getattr(scene, k))))]
    if bad:
        raise FloatingPointError(
            f"global_align: the optimisation diverged (non-finite {', '.join(bad)}); "
            "check the inputs, lower lr, or start from a better init"
        )


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


__all__ = [
    "AlignState", "DenseConfig", "DenseProblem", "Scene", "align_dense", "align_dense_jit", "check_graph",
    "global_align", "make_problem", "parse_output", "state_from", "to_planar",
]

