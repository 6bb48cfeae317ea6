"""The pure dense GA core (equivalent of dust3r/cloud_opt `PointCloudOptimizer.forward` + `global_alignment_loop`):
optax Adam over the official (or manifold) parameters in one jit-compiled `lax.scan`.

`align_dense(problem, start, config)` takes the pairwise predictions and a starting state as arrays and returns
an `AlignResult` pytree. It is jit/grad/vmap-able: differentiable end to end w.r.t. the predictions, the
confidences and the starting state. Conventions: see `f3d_jax.align.types`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from f3d_jax.align import parameterisation as param_lib
from f3d_jax.align.config import DenseConfig, with_matmul_precision
from f3d_jax.align.losses import EDGE_AXIS, alignment_loss, apply_3x3
from f3d_jax.align.schedules import lr_curve
from f3d_jax.align.types import AlignResult, AlignState, DenseProblem
from f3d_jax.geometry.transforms import make_pose


# Automatic edge sharding (`DenseConfig.shard_edges=None`) from this many edge-pixels on (N=27 at 512x384 on a
# complete graph): below it one device holds the problem easily and the cross-device sums cost more than they save.
SHARD_MIN_EDGE_PIXELS = 1 << 27


def edge_mesh(shard_edges: bool | None, n_edges: int, n_pixels: int, devices: list | None = None) -> Mesh | None:
    """The 1-D mesh (axis `losses.EDGE_AXIS`) over `devices` (default: `jax.local_devices()`) the edges are split
    over, or None (one device): `shard_edges` True/False forces it, None = automatic (>= 2 accelerator devices
    and >= SHARD_MIN_EDGE_PIXELS edge-pixels). Never automatic on CPU devices: there the whole sharded loop
    (a `lax.scan` with collectives in every step) intermittently deadlocks in XLA:CPU's collective rendezvous
    with 8 virtual devices on 2 cores (jax 0.10.2), and a CPU gains nothing from splitting its own cores."""
    devices = jax.local_devices() if devices is None else list(devices)
    if len(devices) < 2 or shard_edges is False:
        return None
    if shard_edges is None and (devices[0].platform == "cpu" or n_edges * n_pixels < SHARD_MIN_EDGE_PIXELS):
        return None
    return Mesh(np.array(devices), (EDGE_AXIS,))


def _pad_edges(x: jax.Array, n: int, value: float | int = 0) -> jax.Array:
    """x with n more entries along axis 0, all `value`."""
    if n == 0:
        return x
    return jnp.concatenate([x, jnp.full((n,) + x.shape[1:], value, x.dtype)], axis=0)


def _image_conf(conf_i: jax.Array, conf_j: jax.Array, ei: jax.Array, ej: jax.Array, n: int) -> jax.Array:
    """(N, H, W) float32 per-image max of every confidence predicted for the image (from 0, as officially).

    On a CPU a loop over edges rather than a segment_max: XLA:CPU would convert whole bfloat16 inputs to float32
    for the scatter (8 B per edge-pixel of temporaries at N=100). Elsewhere a segment_max in the storage dtype
    (an E-step sequential loop of tiny kernels would cost more than the whole alignment on a GPU).
    """
    dt = jnp.promote_types(conf_i.dtype, conf_j.dtype)
    if jax.default_backend() != "cpu":
        zero = jnp.zeros((n,) + conf_i.shape[1:], dt)
        mi = jax.ops.segment_max(conf_i.astype(dt), ei, num_segments=n)
        mj = jax.ops.segment_max(conf_j.astype(dt), ej, num_segments=n)
        return jnp.maximum(zero, jnp.maximum(mi, mj)).astype(jnp.float32)

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
    out = jax.lax.fori_loop(0, ei.shape[0], body, jnp.zeros((n,) + conf_i.shape[1:], dt))
    return out.astype(jnp.float32)


@with_matmul_precision
def align_dense(problem: DenseProblem, start: AlignState, config: DenseConfig) -> AlignResult:
    """Pure dense GA core: optax Adam over the official (or manifold) parameters in one `lax.scan`.

    Jit it with `config` static (`jax.jit(align_dense, static_argnames='config')`, or use `align_dense_jit`),
    vmap it over a batch of equal-shape problems/starts, or differentiate a scalar of the returned
    `AlignResult` w.r.t. `problem` arrays (predictions, confidences) or `start`.

    Device-aware (the result does not depend on it beyond float32 summation order): the loss blocking follows the
    backend (`losses.plan_blocks`; `config.chunk_pixels` overrides it) and, for large graphs or with
    `config.shard_edges=True`, the edges are split over all local devices (`edge_mesh`): the edge arrays are
    padded with zero-weight edges to a multiple of the device count and laid out along a 1-D mesh, each device
    walks its own edges and the loss and camera-point gradients are summed across devices.

    Args:
      problem: `DenseProblem` (E edges, N images of H x W).
      start: `AlignState` to start from; preset poses/focals/principal points of `problem` override it.
      config: `DenseConfig` (`norm_pw_scale=None` counts as True here: the core does not apply the preset rule).
    Returns:
      `AlignResult`.
    """
    c = config
    param = param_lib.parameterisation(c.param)
    norm_pw_scale = True if c.norm_pw_scale is None else bool(c.norm_pw_scale)
    N, H, W = problem.ignore.shape
    E = problem.ei.shape[0]
    HW = H * W
    f32 = jnp.float32
    sdt = jnp.bfloat16 if c.storage_dtype == "bfloat16" else f32

    # pixel grid: integer coordinates, column u and row v; principal point default (W/2, H/2)
    u = jnp.tile(jnp.arange(W, dtype=f32), H)
    v = jnp.repeat(jnp.arange(H, dtype=f32), W)
    pp_base = jnp.broadcast_to(jnp.array([W / 2, H / 2], f32), (N, 2))

    # starting state with the presets applied
    pk = problem.pose_known
    c2w0 = jnp.where(pk[:, None, None], problem.preset_cam2world.astype(f32), start.cam2world.astype(f32))
    focal0 = jnp.where(problem.focal_known, problem.preset_focals.astype(f32), start.focals.astype(f32))
    pp0 = jnp.where(problem.pp_known[:, None], problem.preset_pp.astype(f32), start.principal_points.astype(f32))
    pw0 = start.pw_poses.astype(f32)
    raw = {
        "im_pose": param.encode_poses(c2w0[:, :3, :3], c2w0[:, :3, 3]),
        "pw_pose": param.encode_poses(pw0[:, :3, :3], pw0[:, :3, 3]),
        "log_depth": param_lib.encode_log_depth(start.depthmaps.astype(f32).reshape(N, HW)),
        "focal": param_lib.encode_focal(focal0, c.focal_break),
        "pp": param_lib.encode_pp(pp0, pp_base),
        "pw_log_scale": jnp.log(start.pw_scales.astype(f32)),
    }

    # gauge: the official parameterisation pins the root translation by itself (zero derivative of the decoding
    # at exactly 0); the manifold one pins the camera closest to the origin (the MST root is the identity)
    # unless known poses already fix the gauge.
    no_pose_known = jnp.logical_not(jnp.any(pk))
    root = jnp.argmin(jnp.linalg.norm(c2w0[:, :3, 3], axis=-1))
    pin = jax.nn.one_hot(root, N, dtype=f32) * no_pose_known.astype(f32)
    pp_free = (1.0 - problem.pp_known.astype(f32)) * (1.0 if c.optimize_pp else 0.0)
    gmask = {
        "im_pose": param.pose_mask(1.0 - pk.astype(f32), pin),
        "pw_pose": param.pose_mask(jnp.ones((E,), f32), jnp.zeros((E,), f32)),
        "log_depth": jnp.ones((N, HW), f32),
        "focal": 1.0 - problem.focal_known.astype(f32),
        "pp": jnp.broadcast_to(pp_free[:, None], (N, 2)),
        "pw_log_scale": jnp.ones((E,), f32),
    }

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
    ei, ej = problem.ei, problem.ej

    # edges split over the local devices: padded to a multiple of the device count with zero-weight edges
    # (confidence 1, weight 0: they add exactly 0 to the loss and its gradients), laid out along the mesh
    mesh = edge_mesh(c.shard_edges, E, HW)
    n_pad = 0 if mesh is None else (-E) % mesh.size
    if mesh is not None:
        along = NamedSharding(mesh, PartitionSpec(EDGE_AXIS))
        pred_i, pred_j = (_pad_edges(x, n_pad) for x in (pred_i, pred_j))
        conf_i, conf_j = (_pad_edges(x, n_pad, 1) for x in (conf_i, conf_j))
        ew, ei, ej = _pad_edges(ew, n_pad), _pad_edges(ei, n_pad), _pad_edges(ej, n_pad)
        pred_i, pred_j, conf_i, conf_j, ew, ei, ej = jax.lax.with_sharding_constraint(
            (pred_i, pred_j, conf_i, conf_j, ew, ei, ej), along)

    def decode(p: param_lib.Params) -> dict[str, jax.Array]:
        R_im, T_im = param.decode_poses(p["im_pose"])
        R_pw, T_pw = param.decode_poses(p["pw_pose"])
        focals = param_lib.decode_focal(p["focal"], c.focal_break)
        pp = param_lib.decode_pp(p["pp"], pp_base)
        depth = jnp.exp(p["log_depth"])
        sig = p["pw_log_scale"]
        s_pw = jnp.exp(sig)
        if norm_pw_scale:
            s_pw = s_pw * jnp.exp(jnp.log(c.base_scale) - jnp.mean(sig))
        # (N, 3, HW) camera-frame points, plane by plane (the gradient then needs no reduction over the 3 axis)
        cam_pts = jnp.stack(
            [depth * (u[None] - pp[:, 0:1]) / focals[:, None], depth * (v[None] - pp[:, 1:2]) / focals[:, None], depth],
            axis=1,
        )
        return dict(R_im=R_im, T_im=T_im, R_pw=R_pw, T_pw=T_pw, s_pw=s_pw, focals=focals, pp=pp, depth=depth,
                    cam_pts=cam_pts)

    def loss_fn(p: param_lib.Params) -> jax.Array:
        d = decode(p)
        R_pw, T_pw, s_pw = (_pad_edges(d[k], n_pad) for k in ("R_pw", "T_pw", "s_pw"))
        return alignment_loss(
            R_im=d["R_im"], T_im=d["T_im"], cam_pts=d["cam_pts"], R_pw=R_pw, T_pw=T_pw, s_pw=s_pw,
            pred_i=pred_i, pred_j=pred_j, conf_i=conf_i, conf_j=conf_j, keep=keep, edge_weights=ew,
            ei=ei, ej=ej, conf_mode=c.conf, dist=c.dist, robust=c.robust,
            robust_scale=c.robust_scale, chunk_pixels=c.chunk_pixels, mesh=mesh, num_edges=E,
            precision=c.precision,
        )

    # eps_root: frozen/pinned entries have v = 0 forever and d sqrt(v)/dv = inf there; a tiny eps_root keeps
    # the derivative finite (end-to-end grads would be NaN otherwise) and changes no float32 value in practice
    adam = optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps, eps_root=1e-30)
    vg = param.value_and_grad(loss_fn)
    opt0 = adam.init(jax.tree.map(jnp.zeros_like, gmask))  # moments live in the gradient (tangent) space
    lrs = jnp.asarray(lr_curve(c.schedule, c.lr, c.niter, c.lr_min))

    def step(carry, lr):
        p, s = carry
        loss, g = vg(p)
        g = jax.tree.map(jnp.multiply, g, gmask)
        upd, s = adam.update(g, s)
        upd = jax.tree.map(lambda x: -lr * x, upd)
        return (param.apply_updates(p, upd), s), loss

    (final, _), losses = jax.lax.scan(step, (raw, opt0), lrs)

    def state_of(p: param_lib.Params) -> tuple[AlignState, dict[str, jax.Array]]:
        d = decode(p)
        st = AlignState(
            cam2world=make_pose(d["R_im"], d["T_im"], xnp=jnp),
            focals=d["focals"],
            principal_points=d["pp"],
            depthmaps=d["depth"].reshape(N, H, W),
            pw_poses=make_pose(d["R_pw"], d["T_pw"], xnp=jnp),
            pw_scales=d["s_pw"],
        )
        return st, d

    start_state, _ = state_of(raw)
    fin, d = state_of(final)
    pts3d = jnp.moveaxis(apply_3x3(d["R_im"], d["cam_pts"]) + d["T_im"][:, :, None], 1, -1)
    im_conf = _image_conf(problem.conf_i, problem.conf_j, problem.ei, problem.ej, N)
    return AlignResult(
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
        start=start_state,
    )


align_dense_jit = jax.jit(align_dense, static_argnames="config")
