"""Dense GA loss (equivalent of dust3r/cloud_opt/optimizer.py `PointCloudOptimizer.forward` and commons.py
`get_conf_trf`, `l1_dist`, `l2_dist`), plus optional robust kernels.

The official loss, with w = conf_trf(conf) and P1/P2 the pairwise predictions of edge e = (i, j):

    L = sum_e sum_p w1 ||X_i(p) - s_e (R_e P1_e(p) + T_e)|| / (E HW)
      + sum_e sum_p w2 ||X_j(p) - s_e (R_e P2_e(p) + T_e)|| / (E HW)

Layout choice (why it is fast and lean): the residual is evaluated in camera i's frame,
``R_i^T (X_i - s_e (R_e P + T_e)) = d_i ray_i + R_i^T (T_i - s_e T_e) - (s_e R_i^T R_e) P``, so each edge only
needs one 3x3 matrix and one 3-vector computed once per iteration, the camera-frame points ``d * ray`` of each
image are shared by all its edges, and no world-frame (E, HW, 3) copies are built. The norm is invariant to the
rotation, so the value is the official one. The predictions are read in their stored NHWC layout (and dtype)
component by component; the value and the parameter gradients come from one fused pass (`_fused_term`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CONF_MODES = ("log", "sqrt", "m1", "id", "none")
DISTS = ("l1", "l2")
ROBUST = (None, "huber", "cauchy", "geman_mcclure")


def conf_transform(conf: jax.Array, mode: str) -> jax.Array:
    """Pixel weights from confidences: 'log' (official default; conf = 1 gives weight 0), 'sqrt', 'm1' (conf - 1),
    'id'/'none'."""
    if mode == "log":
        return jnp.log(conf)
    if mode == "sqrt":
        return jnp.sqrt(conf)
    if mode == "m1":
        return conf - 1
    if mode in ("id", "none"):
        return conf
    raise ValueError(f"conf must be one of {CONF_MODES}, got {mode!r}")


def _safe_norm(sq: jax.Array) -> jax.Array:
    # sqrt with a zero (sub)gradient at 0 like torch.norm, instead of NaN
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def robust_kernel_and_slope(d: jax.Array, kind: str | None, scale: float) -> tuple[jax.Array, jax.Array]:
    """(rho(d), rho'(d)) for a non-negative distance d (the 'l1' norm or the 'l2' squared norm).

    - None: d (official), slope 1.
    - 'huber': d^2 / (2c) for d < c, else d - c/2 (quadratic near 0, the official L1 tail).
    - 'cauchy': (c/2) log(1 + (d/c)^2) (grows like log d: far outliers barely pull).
    - 'geman_mcclure': (c/2) (d/c)^2 / (1 + (d/c)^2) (bounded: far outliers do not pull at all).
    c = `scale`, in world units of the normalised scene (pairwise scales have geometric mean 0.5).
    """
    if kind is None or kind == "none":
        return d, jnp.ones_like(d)
    c = jnp.asarray(scale, d.dtype)
    if kind == "huber":
        small = d < c
        return jnp.where(small, 0.5 * d * d / c, d - 0.5 * c), jnp.where(small, d / c, 1.0)
    r2 = jnp.square(d / c)
    if kind == "cauchy":
        return 0.5 * c * jnp.log1p(r2), (d / c) / (1.0 + r2)
    if kind == "geman_mcclure":
        return 0.5 * c * r2 / (1.0 + r2), (d / c) / jnp.square(1.0 + r2)
    raise ValueError(f"robust must be one of {ROBUST}, got {kind!r}")


def robust_kernel(d: jax.Array, kind: str | None, scale: float) -> jax.Array:
    """rho(d) of `robust_kernel_and_slope`."""
    return robust_kernel_and_slope(d, kind, scale)[0]


def apply_3x3(M: jax.Array, pts: jax.Array) -> jax.Array:
    """(..., 3, 3) matrices applied to (..., 3, P) points -> (..., 3, P), as explicit multiply-adds.

    Deliberately not an einsum: XLA:CPU (jax 0.10.2) miscompiles a batched dot whose operand is a fused
    (E, P, 3) -> (E, 3, P) transpose (errors ~1e-3 relative on this loss, whatever the matmul precision), and a
    3x3 'dot' gains nothing over fused multiply-adds anyway.
    """
    return (
        M[..., :, 0, None] * pts[..., None, 0, :]
        + M[..., :, 1, None] * pts[..., None, 1, :]
        + M[..., :, 2, None] * pts[..., None, 2, :]
    )


def _residuals(cam: jax.Array, t: jax.Array, M: jax.Array, pred: jax.Array, idx: jax.Array) -> list[jax.Array]:
    """Residual components [rx, ry, rz], each (E, HW) float32, in camera idx[e]'s frame.

    cam: (N, 3, HW); t: (E, 3); M: (E, 3, 3); pred: (E, HW, 3) as stored (the official NHWC layout, any float
    dtype: read per component, so no transposed copy is ever made).
    """
    p = [pred[..., b].astype(jnp.float32) for b in range(3)]
    c = cam[idx]
    return [c[:, a] + t[:, a, None] - (M[:, a, 0, None] * p[0] + M[:, a, 1, None] * p[1] + M[:, a, 2, None] * p[2])
            for a in range(3)]


def pixel_weights(conf: jax.Array, keep: jax.Array, edge_w: jax.Array, idx: jax.Array, mode: str) -> jax.Array:
    """(E, HW) loss weights: conf_transform(conf) x keep[idx] (user masks) x edge_w (per-edge weights)."""
    return conf_transform(conf.astype(jnp.float32), mode) * keep[idx] * edge_w[:, None]


DEFAULT_CHUNK_PIXELS = 1 << 17  # ~18 B/edge-pixel of loop temporaries at no measurable speed cost (bench_dense_ga)


@functools.lru_cache(maxsize=None)
def _fused_term(dist: str, robust: str | None, robust_scale: float, conf_mode: str, chunk: int):
    """sum_{e,p} w rho(dist(r)) with a hand-written gradient computed in the same pass as the value.

    Why: autodiff of the loss keeps (E, 3, HW) residuals alive for the backward pass and walks the data twice;
    here the forward pass already produces the (small) gradients w.r.t. the camera points (N, 3, HW), the
    per-edge t (E, 3) and M (E, 3, 3), so the loop touches each edge-pixel once per iteration and keeps no
    per-edge-pixel residuals. Edges are processed `chunk` at a time (a `lax.scan` when E > chunk, the last
    chunk overlapping the previous one with its repeated edges masked out), so the temporaries are bounded by
    the chunk, not by E. Weights are recomputed from the confidences inside each chunk (no (E, HW) copy).
    Gradients w.r.t. the predictions and confidences (only needed to differentiate through the whole
    optimisation) are recomputed in the backward pass; everything stays differentiable to any order because
    both passes are plain jnp code.
    """

    def pieces(cam, t, M, pred, conf, keep, ew, idx):
        w = pixel_weights(conf, keep, ew, idx, conf_mode)
        r = _residuals(cam, t, M, pred, idx)
        sq = r[0] * r[0] + r[1] * r[1] + r[2] * r[2]
        if dist == "l1":
            pos = sq > 0
            d = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
            rho, slope = robust_kernel_and_slope(d, robust, robust_scale)
            coef = jnp.where(pos, w * slope / jnp.where(pos, d, 1.0), 0.0)  # torch.norm's 0 subgradient at 0
        else:
            rho, slope = robust_kernel_and_slope(sq, robust, robust_scale)
            coef = 2.0 * w * slope
        g = [coef * ra for ra in r]  # dL/dr, (E, HW) each
        return w, rho, g

    def chunk_grads(cam, t, M, pred, conf, keep, ew, idx):
        w, rho, g = pieces(cam, t, M, pred, conf, keep, ew, idx)
        n = cam.shape[0]
        g_cam = jnp.stack([jax.ops.segment_sum(ga, idx, num_segments=n) for ga in g], axis=1)
        g_t = jnp.stack([jnp.sum(ga, axis=-1) for ga in g], axis=-1)
        p = [pred[..., b].astype(jnp.float32) for b in range(3)]
        g_M = -jnp.stack([jnp.stack([jnp.sum(ga * pb, axis=-1) for pb in p], -1) for ga in g], -2)
        return jnp.sum(w * rho), g_cam, g_t, g_M

    def value_and_grads(cam, t, M, pred, conf, keep, ew, idx):
        E = idx.shape[0]
        C = min(chunk, E)
        n_chunks = -(-E // C)
        low = pred.dtype != jnp.float32 or conf.dtype != jnp.float32
        if n_chunks == 1:
            if low:  # see below
                pred, conf, M = jax.lax.optimization_barrier((pred, conf, M))
            return chunk_grads(cam, t, M, pred, conf, keep, ew, idx)

        def body(carry, k):
            loss, g_cam = carry
            if low:
                # tie the low-precision storage to the loop counter so that XLA cannot hoist a float32 copy of
                # the whole (loop-invariant) prediction arrays out of the loops
                pred_k, conf_k, k = jax.lax.optimization_barrier((pred, conf, k))
            else:
                pred_k, conf_k = pred, conf
            start = jnp.minimum(k * C, E - C)
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, C, axis=0)  # noqa: E731
            fresh = (start + jnp.arange(C)) >= k * C  # edges of the overlapping last chunk already done
            l, gc, gt, gm = chunk_grads(cam, sl(t), sl(M), sl(pred_k), sl(conf_k), keep, sl(ew) * fresh, sl(idx))
            return (loss + l, g_cam + gc), (start, gt, gm)

        (loss, g_cam), (starts, gts, gms) = jax.lax.scan(body, (jnp.float32(0), jnp.zeros_like(cam)),
                                                          jnp.arange(n_chunks))
        # scatter the per-chunk edge gradients back (fresh-masked rows are exactly zero, so add is exact)
        rows = (starts[:, None] + jnp.arange(C)[None]).reshape(-1)
        g_t = jnp.zeros((E, 3), jnp.float32).at[rows].add(gts.reshape(-1, 3))
        g_M = jnp.zeros((E, 3, 3), jnp.float32).at[rows].add(gms.reshape(-1, 3, 3))
        return loss, g_cam, g_t, g_M

    @jax.custom_vjp
    def term(cam, t, M, pred, conf, keep, ew, idx):
        return value_and_grads(cam, t, M, pred, conf, keep, ew, idx)[0]

    def fwd(cam, t, M, pred, conf, keep, ew, idx):
        loss, g_cam, g_t, g_M = value_and_grads(cam, t, M, pred, conf, keep, ew, idx)
        return loss, (g_cam, g_t, g_M, cam, t, M, pred, conf, keep, ew, idx)

    def bwd(res, ct):
        g_cam, g_t, g_M, cam, t, M, pred, conf, keep, ew, idx = res
        _, rho, g = pieces(cam, t, M, pred, conf, keep, ew, idx)
        g_pred = -jnp.stack([M[:, 0, b, None] * g[0] + M[:, 1, b, None] * g[1] + M[:, 2, b, None] * g[2]
                             for b in range(3)], axis=-1)
        _, w_vjp = jax.vjp(lambda c_, k_, e_: pixel_weights(c_, k_, e_, idx, conf_mode), conf, keep, ew)
        g_conf, g_keep, g_ew = w_vjp(ct * rho)
        return (ct * g_cam, ct * g_t, ct * g_M, (ct * g_pred).astype(pred.dtype), g_conf.astype(conf.dtype),
                g_keep, g_ew, np.zeros(idx.shape, dtype=jax.dtypes.float0))

    term.defvjp(fwd, bwd)
    return term


def alignment_loss(
    *,
    R_im: jax.Array,
    T_im: jax.Array,
    cam_pts: jax.Array,
    R_pw: jax.Array,
    T_pw: jax.Array,
    s_pw: jax.Array,
    pred_i: jax.Array,
    pred_j: jax.Array,
    conf_i: jax.Array,
    conf_j: jax.Array,
    keep: jax.Array,
    edge_weights: jax.Array,
    ei: jax.Array,
    ej: jax.Array,
    conf_mode: str = "log",
    dist: str = "l1",
    robust: str | None = None,
    robust_scale: float = 1.0,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> jax.Array:
    """The dense GA loss (scalar float32).

    Args:
      R_im, T_im: (N, 3, 3), (N, 3) cam-to-world rotations and translations.
      cam_pts: (N, 3, HW) float32, each image's points in its own camera frame (depth * ray).
      R_pw, T_pw, s_pw: (E, 3, 3), (E, 3), (E,): pairwise transforms x -> s (R x + T).
      pred_i, pred_j: (E, HW, 3) (float32 or bfloat16 storage): pred1 pts3d and pred2 pts3d_in_other_view,
        both in camera i's frame.
      conf_i, conf_j: (E, HW) confidences; weights are conf_transform(conf) x keep[image] x edge_weights.
      keep: (N, HW) float32, 0 on user-ignored pixels. edge_weights: (E,) float32.
      ei, ej: (E,) int32 image indices of each edge.
      conf_mode: confidence transform ('log' official). dist: 'l1' (Euclidean norm, official) or 'l2'.
      robust / robust_scale: optional kernel on the distances (see `robust_kernel_and_slope`).
      chunk_pixels: edge-pixels processed at once (bounds the temporaries; whole edges, at least one).
    """
    if dist not in DISTS:
        raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
    E, HW = conf_i.shape
    chunk = max(1, int(chunk_pixels) // HW)
    term = _fused_term(dist, robust, float(robust_scale), conf_mode, chunk)
    total = 0.0
    for idx, pred, conf in ((ei, pred_i, conf_i), (ej, pred_j, conf_j)):
        Rc = R_im[idx]  # (E, 3, 3)
        M = s_pw[:, None, None] * jnp.sum(Rc[:, :, :, None] * R_pw[:, :, None, :], axis=1)  # s_e R_c^T R_e
        t = jnp.sum(Rc * (T_im[idx] - s_pw[:, None] * T_pw)[:, :, None], axis=1)  # R_c^T (T_c - s_e T_e)
        total = total + term(cam_pts, t, M, pred, conf, keep, edge_weights, idx)
    return total / jnp.float32(E * HW)
