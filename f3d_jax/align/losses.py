"""Dense GA loss (equivalent of dust3r/cloud_opt/optimizer.py `PointCloudOptimizer.forward` and commons.py
`get_conf_trf`, `l1_dist`, `l2_dist`), plus optional robust kernels.

The official loss, with w = conf_trf(conf) and P1/P2 the pairwise predictions of edge e = (i, j):

    L = sum_e sum_p w1 ||X_i(p) - s_e (R_e P1_e(p) + T_e)|| / (E HW)
      + sum_e sum_p w2 ||X_j(p) - s_e (R_e P2_e(p) + T_e)|| / (E HW)

Layout choice (why it is fast and lean): the residual is evaluated in camera i's frame,
``R_i^T (X_i - s_e (R_e P + T_e)) = d_i ray_i + R_i^T (T_i - s_e T_e) - (s_e R_i^T R_e) P``, so each edge only
needs one 3x3 matrix and one 3-vector computed once per iteration (einsum over the points), the camera-frame
points ``d * ray`` of each image are shared by all its edges, and no world-frame (E, HW, 3) copies are built.
The norm is invariant to the rotation, so the value is the official one. Points are stored (E, 3, HW)
(structure of arrays) so the per-point work vectorises along HW.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def robust_kernel(d: jax.Array, kind: str | None, scale: float) -> jax.Array:
    """rho(d) applied to a non-negative distance d (the output of the 'l1' norm or 'l2' squared norm).

    - None: d (official).
    - 'huber': d^2 / (2c) for d < c, else d - c/2 (quadratic near 0, same linear tail as the official L1).
    - 'cauchy': (c/2) log(1 + (d/c)^2) (grows like log d: far outliers barely pull).
    - 'geman_mcclure': (c/2) (d/c)^2 / (1 + (d/c)^2) (bounded: outliers do not pull at all far away).
    """
    if kind is None or kind == "none":
        return d
    c = jnp.asarray(scale, d.dtype)
    if kind == "huber":
        return jnp.where(d < c, 0.5 * d * d / c, d - 0.5 * c)
    r2 = jnp.square(d / c)
    if kind == "cauchy":
        return 0.5 * c * jnp.log1p(r2)
    if kind == "geman_mcclure":
        return 0.5 * c * r2 / (1.0 + r2)
    raise ValueError(f"robust must be one of {ROBUST}, got {kind!r}")


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


def _edge_distances(
    cam_pts: jax.Array,
    R_cam: jax.Array,
    T_cam: jax.Array,
    idx: jax.Array,
    R_pw: jax.Array,
    T_pw: jax.Array,
    s_pw: jax.Array,
    pred: jax.Array,
    dist: str,
) -> jax.Array:
    """Per edge-pixel distances between image idx[e]'s points and edge e's aligned prediction, (E, HW) float32."""
    Rc = R_cam[idx]  # (E, 3, 3)
    M = s_pw[:, None, None] * jnp.sum(Rc[:, :, :, None] * R_pw[:, :, None, :], axis=1)  # s_e R_c^T R_e
    t = jnp.sum(Rc * (T_cam[idx] - s_pw[:, None] * T_pw)[:, :, None], axis=1)  # R_c^T (T_c - s_e T_e)
    aligned = apply_3x3(M, pred.astype(jnp.float32))
    r = cam_pts[idx] + t[:, :, None] - aligned  # (E, 3, HW), camera idx[e]'s frame
    sq = jnp.sum(r * r, axis=1)
    return _safe_norm(sq) if dist == "l1" else sq


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
    w_i: jax.Array,
    w_j: jax.Array,
    ei: jax.Array,
    ej: jax.Array,
    dist: str = "l1",
    robust: str | None = None,
    robust_scale: float = 1.0,
) -> jax.Array:
    """The dense GA loss (scalar float32).

    Args:
      R_im, T_im: (N, 3, 3), (N, 3) cam-to-world rotations and translations.
      cam_pts: (N, 3, HW) float32, each image's points in its own camera frame (depth * ray).
      R_pw, T_pw, s_pw: (E, 3, 3), (E, 3), (E,): pairwise transforms x -> s (R x + T).
      pred_i, pred_j: (E, 3, HW) (float32 or bfloat16 storage): pred1 pts3d and pred2 pts3d_in_other_view,
        both in camera i's frame.
      w_i, w_j: (E, HW) pixel weights (conf transform x user masks x edge weights).
      ei, ej: (E,) int32 image indices of each edge.
      dist: 'l1' (Euclidean norm, official default) or 'l2' (squared norm).
      robust / robust_scale: optional kernel on the distances (see `robust_kernel`).
    """
    if dist not in DISTS:
        raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
    E, HW = w_i.shape
    di = robust_kernel(_edge_distances(cam_pts, R_im, T_im, ei, R_pw, T_pw, s_pw, pred_i, dist), robust, robust_scale)
    dj = robust_kernel(_edge_distances(cam_pts, R_im, T_im, ej, R_pw, T_pw, s_pw, pred_j, dist), robust, robust_scale)
    area = jnp.float32(E * HW)
    return jnp.sum(w_i * di) / area + jnp.sum(w_j * dj) / area
