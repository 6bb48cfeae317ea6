"""Parametrisation, losses and the two optimisation stages of the sparse global alignment (official
`sparse_scene_optimizer`; spec `alignment.md` sections 4.4-4.5).

Parameters (a dict pytree): `quats` (N, 4) XYZW relative rotations along the kinematic chain, `trans`
(N, 3), `log_sizes` (N,), `pps` (N|1, 2) principal points normalised by (W, H), `log_focals` (N|1,)
(shape 1 with shared intrinsics), `core_depth` (N, A) anchor depths relative to the image's median.

Each stage is one `lax.scan` of optax Adam(b1 = b2 = 0.9) steps under `jit`, the learning rate following a
cosine from `lr` to 0; frozen parameters get zero gradients (Adam then moves them by exactly 0), the
quaternions are renormalised after each step, and once the loss is non-finite the remaining steps are
masked (the official loop stops). The state returned is the one at the start of the last iteration run
(official pitfall: one step stale). Everything is vectorised over images and matches with the padded
static shapes of `SparseProblem` (one fused loss, no per-pair Python loop).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from f3d_jax.geometry.transforms import quat_xyzw_to_rotmat
from f3d_jax.sparse.data import SparseProblem

HIGHEST = jax.lax.Precision.HIGHEST


def gamma_offset(gamma: float) -> float:
    """delta = (1/g)^(1/(g-1)), making (d + delta)^g - delta^g of slope 1 at 0 (official `gamma_loss`)."""
    return (1 / gamma) ** (1 / (gamma - 1))


def gamma_loss(d: jax.Array, gamma: float) -> jax.Array:
    """Robust loss rho(d) = (d + delta)^g - delta^g (plain d for g = 1)."""
    if gamma == 1:
        return d
    off = gamma_offset(gamma)
    return (d + off) ** gamma - off**gamma


def safe_norm(x: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis with a zero (not NaN) gradient at 0 (padding compares a point with itself)."""
    # written out per component: a reduction over a last axis of 2 or 3 (and its transpose, a broadcast) runs
    # slowly on XLA:CPU over the P entries of a stage
    sq = x[..., 0] * x[..., 0]
    for i in range(1, x.shape[-1]):
        sq = sq + x[..., i] * x[..., i]
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0 * sq)  # 0 * sq: NaN stays NaN (early stop)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=HIGHEST)


def _affine_rows(t: jax.Array, v: tuple[jax.Array, jax.Array, jax.Array]) -> list[jax.Array]:
    """Rows of `t[:, :, :3] @ v + t[:, :, 3]` per entry: t (E, 3, 4) affine maps, v three (E,) coordinates ->
    three (E,) arrays, products and sums in the order of the `dot` (j = 0, 1, 2), float32.

    Written per component, with the point as separate coordinates, because of how XLA:CPU runs the
    alternatives over the P pixel entries and 2M match terms of a stage: a batched `dot` of 3x3 matrices is one
    tiny matmul per entry, a reduction over an axis of 3 is slow, and every slice of a stacked (E, 3) point
    would transpose into a pad of the whole (E, 3) cotangent in the backward pass."""
    return [t[:, i, 0] * v[0] + t[:, i, 1] * v[1] + t[:, i, 2] * v[2] + t[:, i, 3] for i in range(3)]


def initial_params(problem: SparseProblem, shared_intrinsics: bool, weights: np.ndarray | None = None) -> dict:
    """Official initial values: identity rotations, zero translations and log sizes, pp (0.5, 0.5), base focals.

    With `shared_intrinsics`, one pp and log focal initialised with the average weighted by `weights`
    (the images' mean canonical confidence)."""
    n = problem.imsizes.shape[0]
    # constants built on the host (exact values; no small eager programs to compile on a first call)
    quats = jax.device_put(np.tile(np.asarray([0.0, 0.0, 0.0, 1.0], np.float32), (n, 1)))
    pps = jax.device_put(np.full((n, 2), 0.5, np.float32))
    log_focals = jnp.log(jnp.asarray(problem.base_focals, jnp.float32))
    if shared_intrinsics:
        w = jnp.asarray(weights, jnp.float32)
        w = w / w.sum()
        pps = (w @ pps)[None]
        log_focals = jnp.log(w @ jnp.asarray(problem.base_focals, jnp.float32))[None]
    return dict(quats=quats, trans=jax.device_put(np.zeros((n, 3), np.float32)),
                log_sizes=jax.device_put(np.zeros((n,), np.float32)),
                pps=pps, log_focals=log_focals, core_depth=jnp.asarray(problem.core_depth, jnp.float32))


def _chain_known(rel, problem: SparseProblem, depth_levels: int, g, z_cam, focals, pps):
    """cam2w (N, 4, 4) and chained frames P with known poses (`problem.known_pose`): a known camera enters the
    chain as the frame that decodes to its pose exactly, [R_k | t_k / g + R_k offset_k], its children chain from
    it, and its cam2w is the known matrix itself (bit-exact)."""
    n = rel.shape[0]
    imsizes = problem.imsizes
    one = jnp.ones(n, jnp.float32)
    offset = z_cam[:, None] * jnp.concatenate([imsizes / focals[:, None] * (0.5 - pps), one[:, None]], -1)
    known = (problem.known_pose > 0)[:, None, None]
    Rk = problem.known_cam2w[:, :3, :3]
    tk = problem.known_cam2w[:, :3, 3] / g + jnp.einsum("nij,nj->ni", Rk, offset, precision=HIGHEST)
    fixed = jnp.where(known, jnp.concatenate([jnp.concatenate([Rk, tk[:, :, None]], -1), rel[:, 3:4]], -2), rel)
    is_fixed = known | (problem.parents == jnp.arange(n))[:, None, None]
    P = fixed
    for _ in range(depth_levels):
        P = jnp.where(is_fixed, fixed, _matmul(P[problem.parents], rel))
    Rc = P[:, :3, :3]
    t = g * (P[:, :3, 3] - jnp.einsum("nij,nj->ni", Rc, offset, precision=HIGHEST))
    cam2w = jnp.concatenate([jnp.concatenate([Rc, t[:, :, None]], -1), P[:, 3:4, :]], -2)
    return jnp.where(known, problem.known_cam2w, cam2w), P


def decode(params: dict, problem: SparseProblem, depth_levels: int, known_poses: bool = False) -> dict:
    """Cameras and anchor depths from parameters (official `make_K_cam_depth`, depth_mode 'add').

    `known_poses` (static): honour `problem.known_pose` / `known_cam2w` / `free_scale` (else they are ignored and
    the computation is the official one, op for op).

    Returns dict: `K` (N, 3, 3), `cam2w` (N, 4, 4), `w2cam` (N, 4, 4), `depth` (N, A) anchor depths,
    `focals` (N,).
    """
    n = problem.imsizes.shape[0]
    imsizes = problem.imsizes
    diag = jnp.sqrt(jnp.sum(imsizes * imsizes, axis=-1))
    focals = jnp.clip(jnp.broadcast_to(jnp.exp(params["log_focals"]), (n,)), 0.25 * diag, 10 * diag)
    pps = jnp.broadcast_to(params["pps"], (n, 2))
    zero, one = jnp.zeros(n, jnp.float32), jnp.ones(n, jnp.float32)
    c = pps * imsizes
    K = jnp.stack([jnp.stack([focals, zero, c[:, 0]], -1), jnp.stack([zero, focals, c[:, 1]], -1),
                   jnp.stack([zero, zero, one], -1)], -2)
    sizes = jnp.exp(params["log_sizes"])
    if known_poses:
        # anti-collapse global scale; 1 where known poses fix the scale
        g = jnp.where(problem.free_scale > 0, 1 / jnp.min(sizes), 1.0)
    else:
        g = 1 / jnp.min(sizes)  # anti-collapse global scale (gradient shared evenly by ties, as torch)
    z_cam = sizes * problem.median_depths * focals / problem.base_focals
    q = params["quats"]
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    R = quat_xyzw_to_rotmat(q, xnp=jnp)
    rel = jnp.concatenate([jnp.concatenate([R, params["trans"][:, :, None]], -1),
                           jnp.broadcast_to(jnp.asarray([[[0.0, 0.0, 0.0, 1.0]]], jnp.float32), (n, 1, 4))], -2)
    if known_poses:
        cam2w, P = _chain_known(rel, problem, depth_levels, g, z_cam, focals, pps)
        Rc, t = cam2w[:, :3, :3], cam2w[:, :3, 3]
    else:  # the official chain, kept op for op (the parity runs are chaotic: any reordering changes them)
        # kinematic chain: after k rounds every camera at depth <= k holds parent @ rel (official product order)
        is_root = (problem.parents == jnp.arange(n))[:, None, None]
        P = rel
        for _ in range(depth_levels):
            P = jnp.where(is_root, rel, _matmul(P[problem.parents], rel))
        offset = z_cam[:, None] * jnp.concatenate([imsizes / focals[:, None] * (0.5 - pps), one[:, None]], -1)
        Rc = P[:, :3, :3]
        t = g * (P[:, :3, 3] - jnp.einsum("nij,nj->ni", Rc, offset, precision=HIGHEST))
        cam2w = jnp.concatenate([jnp.concatenate([Rc, t[:, :, None]], -1), P[:, 3:4, :]], -2)
    Rt = jnp.swapaxes(Rc, -1, -2)  # rigid inverse (the official inverts the 4x4 with linalg.inv: same to round-off)
    w2cam = jnp.concatenate([jnp.concatenate([Rt, -jnp.einsum("nij,nj->ni", Rt, t, precision=HIGHEST)[:, :, None]], -1),
                             P[:, 3:4, :]], -2)
    depth = g * (z_cam[:, None] + (params["core_depth"] - 1) * (problem.median_depths * sizes)[:, None])
    return dict(K=K, cam2w=cam2w, w2cam=w2cam, depth=depth, focals=focals)


def points_world(cams: dict, problem: SparseProblem, pt_img, pt_uv, pt_anchor, pt_offset, ret_depth: bool = False):
    """World points of pixel entries (official `make_pts3d`): depth of the block's anchor times the
    focal-compensated offset 1 + (o - 1) f0 / f, back-projected and moved by cam2w."""
    f = cams["focals"][pt_img]
    off = 1 + (pt_offset - 1) * (problem.base_focals[pt_img] / f)
    z = cams["depth"][pt_img, pt_anchor] * off
    c = cams["K"][:, :2, 2][pt_img]  # only what is read: per entry gathers (and backward scatters) are the cost
    invf = 1 / f
    x = z * (pt_uv[:, 0] * invf - c[:, 0] * invf)
    y = z * (pt_uv[:, 1] * invf - c[:, 1] * invf)
    world = jnp.stack(_affine_rows(cams["cam2w"][:, :3][pt_img], (x, y, z)), -1)
    return (world, z) if ret_depth else world


def _weighted(loss: jax.Array, w: jax.Array) -> jax.Array:
    s = jnp.sum(w)
    return jnp.where(s != 0, jnp.sum(w * loss) / jnp.where(s != 0, s, 1.0), 0.0)


def stage_loss(params: dict, problem: SparseProblem, *, stage: str, depth_levels: int, gamma: float,
               gamma_fallback: float, fallback_w: float, known_poses: bool = False) -> jax.Array:
    """The coarse (3D matching, `stage='3d'`) or fine (2D reprojection, `'2d'`) loss plus the weighted
    DUSt3R fallback for pairs that fail the matching threshold."""
    cams = decode(params, problem, depth_levels, known_poses)
    X = points_world(cams, problem, problem.pt_img, problem.pt_uv, problem.pt_anchor, problem.pt_offset)
    if stage == "3d":
        d = safe_norm(X[problem.m_p] - X[problem.m_q])
        main = _weighted(gamma_loss(d, gamma), problem.m_conf)
    else:
        # every match twice: the partner's 3D point reprojected into each image
        p = jnp.concatenate([problem.m_p, problem.m_q])
        q = jnp.concatenate([problem.m_q, problem.m_p])
        w = jnp.concatenate([problem.m_conf, problem.m_conf])
        img = problem.pt_img[p]
        Xq = X[q]
        Pm = _matmul(cams["K"], cams["w2cam"][:, :3])[img]
        res = jnp.stack(_affine_rows(Pm, (Xq[:, 0], Xq[:, 1], Xq[:, 2])), -1)
        uv = jnp.clip(res[:, :2] / jnp.maximum(res[:, 2:3], 1e-3), -1000, 2000)
        main = _weighted(gamma_loss(safe_norm(problem.pt_uv[p] - uv), gamma), w)
    T = cams["cam2w"][problem.fb_cam]
    tgt = jnp.einsum("pij,pj->pi", T[:, :3, :3], problem.fb_tgt, precision=HIGHEST) + T[:, :3, 3]
    fb = _weighted(gamma_loss(safe_norm(X[problem.fb_pt] - tgt), gamma_fallback), problem.fb_conf)
    return main + fallback_w * fb


def cosine_lrs(lr: float, niter: int) -> np.ndarray:
    """lr at iteration k: cosine from lr to 0 over alpha = k / niter (official schedule, float64 then float32)."""
    alpha = np.arange(niter) / max(niter, 1)
    return (lr * (1 + np.cos(alpha * np.pi)) / 2).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("stage", "depth_levels", "gamma", "gamma_fallback", "fallback_w",
                                             "eps_root", "known_poses"))
def run_stage(params: dict, problem: SparseProblem, lrs: jax.Array, trainable: dict, *, stage: str,
              depth_levels: int, gamma: float, gamma_fallback: float = 1.1, fallback_w: float = 0.01,
              eps_root: float = 0.0, known_poses: bool = False):
    """One optimisation stage: `len(lrs)` optax Adam(b1 = b2 = 0.9, no weight decay) steps as one `lax.scan`.

    Args:
        params: initial parameters. lrs: (niter,) learning rates (`cosine_lrs`). trainable: params-shaped
            float 0/1 masks (a zero gradient leaves Adam's state at 0 and the parameter exactly unchanged, as
            torch's frozen parameters).
        eps_root: Adam's epsilon inside the square root (0 = torch; > 0 where the stage is differentiated,
            as sqrt has an infinite derivative at 0).
        known_poses: honour the problem's known poses (`decode`).

    Returns:
        (result, final, losses (niter,), n_run): the parameters at the start of the last iteration run (what
        the official stage returns), after its step (where the next stage starts), the loss of each iteration
        (NaN after an early stop) and the number of iterations run.
    """
    opt = optax.scale_by_adam(b1=0.9, b2=0.9, eps=1e-8, eps_root=eps_root)
    loss_fn = functools.partial(stage_loss, problem=problem, stage=stage, depth_levels=depth_levels,
                                gamma=gamma, gamma_fallback=gamma_fallback, fallback_w=fallback_w,
                                known_poses=known_poses)
    grad_fn = jax.value_and_grad(loss_fn)

    def step(carry, lr):
        p, s, stopped, result, n_run = carry
        loss, g = grad_fn(p)
        g = jax.tree.map(lambda a, k: a * k, g, trainable)
        upd, s_new = opt.update(g, s, p)
        p_new = jax.tree.map(lambda a, u: a - lr * u, p, upd)
        q = p_new["quats"]
        p_new = {**p_new, "quats": q / jnp.linalg.norm(q, axis=-1, keepdims=True)}
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(stopped, b, a), new, old)  # noqa: E731
        result = keep(p, result)
        n_run = n_run + jnp.where(stopped, 0, 1)
        out = jnp.where(stopped, jnp.nan, loss)
        carry = (keep(p_new, p), keep(s_new, s), stopped | ~jnp.isfinite(loss), result, n_run)
        return carry, out

    init = (params, opt.init(params), jnp.asarray(False), params, jnp.int32(0))
    (final, _, _, result, n_run), losses = jax.lax.scan(step, init, lrs)
    return result, final, losses, n_run


@functools.partial(jax.jit, static_argnames=("depth_levels", "known_poses"))
def final_state(params: dict, problem: SparseProblem, depth_levels: int, known_poses: bool = False) -> dict:
    """`decode` plus the world points of every matched-pixel entry (`pts3d` (P, 3)), in one compiled call."""
    cams = decode(params, problem, depth_levels, known_poses)
    pts = points_world(cams, problem, problem.pt_img, problem.pt_uv, problem.pt_anchor, problem.pt_offset)
    return {**cams, "pts3d": pts}


def align_arrays(params: dict, problem: SparseProblem, trainable: tuple[dict, dict], *, depth_levels: int,
                 lr1: float = 0.07, niter1: int = 300, lr2: float = 0.01, niter2: int = 300,
                 loss_dust3r_w: float = 0.01, eps_root: float = 1e-12, known_poses: bool = False) -> dict:
    """The whole optimisation as one pure function of arrays: initial parameters and problem -> cameras.

    Differentiable (`jax.grad`, `jax.jvp`) with respect to every float array of `params` and `problem`, in
    particular the pointmap-derived ones: `core_depth` and `median_depths` (canonical anchor depths),
    `pt_offset` (canonical depth offsets), `base_focals`, `fb_tgt` (pairwise cross pointmaps); use
    `problem_from_canonical` to differentiate with respect to the canonical pointmaps themselves. The
    gradient runs backwards through every Adam step (memory grows with the iterations; use few). No early stop
    on a non-finite loss here (the stage masks its remaining steps, the caller sees NaN).

    Args:
        params: `initial_params(...)` (a dict pytree). problem: a `SparseProblem` (jax arrays).
        trainable: (coarse, fine) masks as `f3d_jax.sparse.api.stage_masks`.
        depth_levels: chain rounds (`Condensed.depth_levels`). lr1, niter1, lr2, niter2, loss_dust3r_w: as
            `sparse_global_alignment` (0 iterations skip a stage).
        eps_root: Adam's epsilon under the square root (> 0 keeps the gradients of frozen parameters finite;
            `sparse_global_alignment` uses 0 as torch).
        known_poses: honour the problem's known poses (as `prepare` sets them from `init`; static).

    Returns:
        dict `K` (N, 3, 3), `cam2w` (N, 4, 4), `w2cam`, `depth` (N, A) anchor depths, `focals` (N,), `pts3d`
        (P, 3) world points of the matched-pixel entries, `loss` (niter1 + niter2,) the loss curve: the state at
        the start of the last iteration of the last stage run (as the official).
    """
    common = dict(depth_levels=depth_levels, gamma_fallback=1.1, fallback_w=float(loss_dust3r_w),
                  eps_root=float(eps_root), known_poses=bool(known_poses))
    result, losses = params, []
    for lr, niter, stage, gamma, mask in ((lr1, niter1, "3d", 1.5, trainable[0]), (lr2, niter2, "2d", 0.5, trainable[1])):
        if niter == 0:
            continue
        result, params, curve, _ = run_stage(params, problem, jnp.asarray(cosine_lrs(lr, niter)), mask, stage=stage,
                                             gamma=gamma, **common)
        losses.append(curve)
    out = final_state(result, problem, depth_levels, bool(known_poses))
    return {**out, "loss": jnp.concatenate(losses) if losses else jnp.zeros(0, jnp.float32)}


def problem_from_canonical(problem: SparseProblem, canon: jax.Array, canon2: jax.Array, subsample: int,
                           base_focals: bool = True, n_entries: int | None = None) -> SparseProblem:
    """Recompute the canonical-pointmap leaves of `problem` in jnp (differentiable), for images of one size.

    Args:
        problem: the problem of `prepare` (its pixel entries, matches and padding are kept).
        canon: (N, H, W, 3) canonical pointmaps. canon2: (N, H, W) canonical relative depth offsets.
        subsample: the anchor stride of the problem.
        base_focals: also recompute the Weiszfeld base focals from `canon` (else keep the problem's).
        n_entries: number of real pixel entries (`sum(Condensed.n_points)`); the padding after them keeps its
            offset (without it, padding gets an arbitrary offset, harmless: it carries no weight).

    Returns:
        `problem` with `core_depth`, `median_depths`, `pt_offset` (and `base_focals`) from the arrays; equal to
        the host computation of `prepare` up to float32 round-off. The initial parameters hold copies of the
        anchor depths and focals: set `params['core_depth'] = problem.core_depth` and `params['log_focals'] =
        log(problem.base_focals)` so that they follow the pointmaps too.
    """
    from f3d_jax.geometry.focal import estimate_focal_weiszfeld

    n, H, W = canon.shape[:3]
    s = subsample
    cd = canon[:, s // 2 :: s, s // 2 :: s, 2].reshape(n, -1)
    med = jnp.sort(cd, axis=1)[:, (cd.shape[1] - 1) // 2]  # torch's lower median
    core = problem.core_depth.at[:, : cd.shape[1]].set(cd / med[:, None])
    anchors2 = canon2[:, s // 2 :: s, s // 2 :: s].reshape(n, -1)
    uv = problem.pt_uv.astype(jnp.int32)
    off = canon2[problem.pt_img, uv[:, 1], uv[:, 0]] / anchors2[problem.pt_img, problem.pt_anchor]
    if n_entries is not None:  # padding keeps its neutral offset 1 (it carries no weight either way)
        off = jnp.where(jnp.arange(off.shape[0]) < n_entries, off, problem.pt_offset)
    upd = dict(core_depth=core, median_depths=med, pt_offset=off)
    if base_focals:
        upd["base_focals"] = estimate_focal_weiszfeld(canon, min_focal=0.5, max_focal=3.5, xnp=jnp)
    return dataclasses.replace(problem, **upd)
