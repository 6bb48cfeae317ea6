"""Parameterisations of the dense GA unknowns (equivalent of the parameter handling in dust3r/cloud_opt/base_opt.py
and optimizer.py: `_get_poses`, `_set_pose`, `get_pw_scale`, `get_focals`, `get_depthmaps`).

Two parameterisations of the same unknowns are offered:

- ``'official'``: exactly the official raw parameters, for parity with the PyTorch runs.
  Poses are 7 numbers: a quaternion in **XYZW** order (roma's order; not kept unit, normalised every time it
  is read) and a translation code ``tau`` decoded as ``sign(tau) * expm1(|tau|)`` (inverse: signed log1p).
  This decoding has a zero derivative at ``tau = 0``; the MST root camera is set to the identity, so its
  translation never moves: that is what pins the translation gauge in the official code (spec §2.3). Keep it.
- ``'manifold'``: poses are `jaxlie.SE3` (wxyz_xyz) updated by right retraction ``T <- T @ exp(delta)`` with
  Adam moments living in the tangent space (tangent order (v, omega), translation first). The translation gauge
  is pinned explicitly by zeroing the tangent translation of the root camera (a right-perturbation with zero
  ``v`` leaves the camera centre unchanged).

Shared by both (the official choices): per-pixel log depth, focal parameter ``phi = focal_break * log f``
(``focal_break = 20``: Adam steps are 20x smaller in log-focal), principal point
``(W/2, H/2) + 10 * pp_param``, pairwise log scale ``sigma_e``. Poses are cam-to-world, OpenCV axes
(x right, y down, z forward). A pairwise transform maps points of edge e (in camera i's frame, at the edge's
arbitrary scale) to the world as ``x -> s_e * (R_e x + T_e)``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import jaxlie

from f3d_jax.geometry import transforms

Params = dict[str, Any]

PARAMETERISATIONS = ("official", "manifold")
PP_BREAK = 10.0  # principal point = (W/2, H/2) + PP_BREAK * pp_param (official constant)


def signed_log1p(x: jax.Array) -> jax.Array:
    """sign(x) * log(1 + |x|): the official translation code (inverse of `signed_expm1`)."""
    return transforms.signed_log1p(x, xnp=jnp)


def signed_expm1(x: jax.Array) -> jax.Array:
    """sign(x) * (exp(|x|) - 1). Its derivative at exactly 0 is 0 (as in torch): this pins the root translation."""
    return transforms.signed_expm1(x, xnp=jnp)


def quat_xyzw_to_rotmat(q: jax.Array) -> jax.Array:
    """(..., 4) XYZW (roma order, not necessarily unit) -> (..., 3, 3) rotations, normalised first."""
    return transforms.quat_xyzw_to_rotmat(q, xnp=jnp)


def rotmat_to_quat_xyzw(R: jax.Array) -> jax.Array:
    """Unit XYZW quaternions of rotation matrices (..., 3, 3) -> (..., 4)."""
    wxyz = jaxlie.SO3.from_matrix(R).wxyz
    return transforms.wxyz_to_xyzw(wxyz, xnp=jnp)


def _se3(R: jax.Array, T: jax.Array) -> jaxlie.SE3:
    return jaxlie.SE3.from_rotation_and_translation(jaxlie.SO3.from_matrix(R), T)


def encode(
    param: str,
    *,
    R_im: jax.Array,
    T_im: jax.Array,
    focals: jax.Array,
    pp: jax.Array,
    pp_base: jax.Array,
    depthmaps: jax.Array,
    R_pw: jax.Array,
    T_pw: jax.Array,
    s_pw: jax.Array,
    focal_break: float,
) -> Params:
    """Raw parameters from decoded values (the official `_set_pose/_set_focal/_set_depthmap` writes).

    Args:
      param: 'official' or 'manifold'.
      R_im, T_im: (N, 3, 3), (N, 3) cam-to-world rotations / translations.
      focals: (N,) pixels. pp: (N, 2) principal points (cx, cy); pp_base: (N, 2) = (W/2, H/2).
      depthmaps: (N, HW) depths (0 -> log depth 0, as the official nan_to_num(neginf=0)).
      R_pw, T_pw: (E, 3, 3), (E, 3) rigid part of the pairwise transforms; s_pw: (E,) their scales.
    Returns:
      params dict (pytree).
    """
    log_depth = jnp.log(depthmaps)
    log_depth = jnp.where(jnp.isneginf(log_depth), 0.0, log_depth)
    p: Params = {
        "log_depth": log_depth,
        "focal": focal_break * jnp.log(focals),
        "pp": (pp - pp_base) / PP_BREAK,
        "pw_log_scale": jnp.log(s_pw),
    }
    if param == "official":
        p["im_q"] = rotmat_to_quat_xyzw(R_im)
        p["im_tau"] = signed_log1p(T_im)
        p["pw_q"] = rotmat_to_quat_xyzw(R_pw)
        p["pw_tau"] = signed_log1p(T_pw)
    elif param == "manifold":
        p["im_pose"] = _se3(R_im, T_im)
        p["pw_pose"] = _se3(R_pw, T_pw)
    else:
        raise ValueError(f"param must be one of {PARAMETERISATIONS}, got {param!r}")
    return p


def decode_poses(param: str, p: Params) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(R_im (N,3,3), T_im (N,3), R_pw (E,3,3), T_pw (E,3)): rigid cam-to-world image poses and pairwise poses."""
    if param == "official":
        return (
            quat_xyzw_to_rotmat(p["im_q"]),
            signed_expm1(p["im_tau"]),
            quat_xyzw_to_rotmat(p["pw_q"]),
            signed_expm1(p["pw_tau"]),
        )
    im, pw = p["im_pose"], p["pw_pose"]
    return im.rotation().as_matrix(), im.translation(), pw.rotation().as_matrix(), pw.translation()


def value_and_grad(param: str, fn: Callable[[Params], jax.Array]) -> Callable[[Params], tuple[jax.Array, Params]]:
    """Loss and gradient: Euclidean for 'official', tangent-space (right perturbation) for 'manifold'."""
    if param == "official":
        return jax.value_and_grad(fn)
    return jaxlie.manifold.value_and_grad(fn)


def apply_updates(param: str, p: Params, updates: Params) -> Params:
    """p + updates (official) or retraction p @ exp(updates) on the pose leaves (manifold)."""
    if param == "official":
        return jax.tree.map(jnp.add, p, updates)
    out = jaxlie.manifold.rplus(p, updates)
    # keep the quaternions unit: rplus composes unit quaternions, the drift is only rounding
    out["im_pose"] = out["im_pose"].normalize()
    out["pw_pose"] = out["pw_pose"].normalize()
    return out


def grad_masks(
    param: str,
    p: Params,
    *,
    pose_free: jax.Array,
    focal_free: jax.Array,
    pp_free: jax.Array,
    depth_free: jax.Array,
    pin_translation: jax.Array,
) -> Params:
    """Multipliers (0 = frozen) with the structure of the gradients of `p`.

    Args:
      pose_free, focal_free, pp_free, depth_free: (N,) float32 in {0, 1}.
      pin_translation: (N,) float32, 1 where the camera centre must not move (manifold gauge).
    """
    n_edges = p["pw_log_scale"].shape[0]
    m: Params = {
        "log_depth": jnp.broadcast_to(depth_free[:, None], p["log_depth"].shape),
        "focal": focal_free,
        "pp": jnp.broadcast_to(pp_free[:, None], p["pp"].shape),
        "pw_log_scale": jnp.ones((n_edges,), jnp.float32),
    }
    if param == "official":
        m["im_q"] = jnp.broadcast_to(pose_free[:, None], (pose_free.shape[0], 4))
        m["im_tau"] = jnp.broadcast_to(pose_free[:, None], (pose_free.shape[0], 3))
        m["pw_q"] = jnp.ones((n_edges, 4), jnp.float32)
        m["pw_tau"] = jnp.ones((n_edges, 3), jnp.float32)
    else:
        trans = pose_free * (1.0 - pin_translation)
        m["im_pose"] = jnp.concatenate(
            [jnp.broadcast_to(trans[:, None], (trans.shape[0], 3)), jnp.broadcast_to(pose_free[:, None], (trans.shape[0], 3))],
            axis=-1,
        )  # tangent order (v, omega)
        m["pw_pose"] = jnp.ones((n_edges, 6), jnp.float32)
    return m
