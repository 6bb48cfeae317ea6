"""Parameterisations of the alignment unknowns (equivalent of the parameter handling in dust3r/cloud_opt/base_opt.py
and optimizer.py: `_get_poses`, `_set_pose`, `get_pw_scale`, `get_focals`, `get_depthmaps`).

Two parameterisations of camera poses, behind one interface (`Parameterisation`), looked up by name with
`parameterisation(name)`:

- `OfficialParam` (``'official'``): exactly the official raw parameters, for parity with the PyTorch runs.
  A group of K poses is ``{'q': (K, 4), 'tau': (K, 3)}``: a quaternion in **XYZW** order (roma's order; not
  kept unit, normalised every time it is read) and a translation code ``tau`` decoded as
  ``sign(tau) * expm1(|tau|)`` (inverse: signed log1p). This decoding has a zero derivative at ``tau = 0``; the
  MST root camera is set to the identity, so its translation never moves: that is what pins the translation
  gauge in the official code (spec §2.3). Keep it. Updates are Euclidean (``p + delta``).
- `ManifoldParam` (``'manifold'``): a group of K poses is one `jaxlie.SE3` (wxyz_xyz, batch K), updated by right
  retraction ``T <- T @ exp(delta)`` with Adam moments living in the tangent space (tangent order (v, omega),
  translation first). The translation gauge is pinned explicitly by zeroing the tangent translation of the
  pinned cameras (a right-perturbation with zero ``v`` leaves the camera centre unchanged).

The interface only knows pose groups and whole parameter pytrees (any mix of pose groups and plain arrays):
dense GA has two groups (image poses, pairwise poses); another solver may have one. The other unknowns have one
encoding whatever the pose parameterisation (the official choices), given here as plain functions: per-pixel
log depth, focal parameter ``phi = focal_break * log f`` (``focal_break = 20``: Adam steps are 20x smaller in
log-focal), principal point ``(W/2, H/2) + PP_BREAK * pp_param``, log scale.

Poses are cam-to-world, OpenCV axes (x right, y down, z forward).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import jaxlie

from f3d_jax.geometry import transforms

Params = Any  # a pytree of parameters (dict of arrays and pose groups)

PP_BREAK = 10.0  # principal point = (W/2, H/2) + PP_BREAK * pp_param (official constant)


@runtime_checkable
class Parameterisation(Protocol):
    """How a group of K rigid poses is stored, differentiated and updated by the optimiser."""

    name: str

    def encode_poses(self, R: jax.Array, T: jax.Array) -> Params:
        """Pose group from (K, 3, 3) rotations and (K, 3) translations (cam-to-world)."""
        ...

    def decode_poses(self, group: Params) -> tuple[jax.Array, jax.Array]:
        """((K, 3, 3) rotations, (K, 3) translations) of a pose group."""
        ...

    def pose_mask(self, free: jax.Array, pin_translation: jax.Array) -> Params:
        """Gradient multipliers (0 = frozen) with the structure of a pose group's gradient.

        free: (K,) float32 in {0, 1}, 0 = the whole pose is frozen. pin_translation: (K,) float32, 1 where the
        camera centre must not move (the translation gauge; ignored where the encoding pins it by itself).
        """
        ...

    def value_and_grad(self, fn: Callable[[Params], jax.Array]) -> Callable[[Params], tuple[jax.Array, Params]]:
        """Loss and gradient of a scalar function of a parameter pytree (gradients in the update space)."""
        ...

    def apply_updates(self, params: Params, updates: Params) -> Params:
        """params moved by updates (the gradient-space step): addition or retraction."""
        ...


def _rotmat_to_quat_xyzw(R: jax.Array) -> jax.Array:
    """Unit XYZW quaternions of rotation matrices (..., 3, 3) -> (..., 4)."""
    return transforms.wxyz_to_xyzw(jaxlie.SO3.from_matrix(R).wxyz, xnp=jnp)


@dataclasses.dataclass(frozen=True)
class OfficialParam:
    """The official raw pose parameters (XYZW quaternion, signed-log1p translation code); Euclidean updates."""

    name: str = "official"

    def encode_poses(self, R: jax.Array, T: jax.Array) -> Params:
        return {"q": _rotmat_to_quat_xyzw(R), "tau": transforms.signed_log1p(T, xnp=jnp)}

    def decode_poses(self, group: Params) -> tuple[jax.Array, jax.Array]:
        # signed_expm1 has a zero derivative at exactly 0: this pins the root translation
        return transforms.quat_xyzw_to_rotmat(group["q"], xnp=jnp), transforms.signed_expm1(group["tau"], xnp=jnp)

    def pose_mask(self, free: jax.Array, pin_translation: jax.Array) -> Params:
        del pin_translation  # the encoding pins a zero translation code by itself
        k = free.shape[0]
        return {"q": jnp.broadcast_to(free[:, None], (k, 4)), "tau": jnp.broadcast_to(free[:, None], (k, 3))}

    def value_and_grad(self, fn: Callable[[Params], jax.Array]) -> Callable[[Params], tuple[jax.Array, Params]]:
        return jax.value_and_grad(fn)

    def apply_updates(self, params: Params, updates: Params) -> Params:
        return jax.tree.map(jnp.add, params, updates)


def _is_group(x: Any) -> bool:
    return isinstance(x, jaxlie.MatrixLieGroup)


@dataclasses.dataclass(frozen=True)
class ManifoldParam:
    """Poses as `jaxlie.SE3`, tangent-space gradients and right retraction ``T @ exp(delta)``."""

    name: str = "manifold"

    def encode_poses(self, R: jax.Array, T: jax.Array) -> Params:
        return jaxlie.SE3.from_rotation_and_translation(jaxlie.SO3.from_matrix(R), T)

    def decode_poses(self, group: Params) -> tuple[jax.Array, jax.Array]:
        return group.rotation().as_matrix(), group.translation()

    def pose_mask(self, free: jax.Array, pin_translation: jax.Array) -> Params:
        k = free.shape[0]
        trans = free * (1.0 - pin_translation)
        # tangent order (v, omega): translation first
        return jnp.concatenate(
            [jnp.broadcast_to(trans[:, None], (k, 3)), jnp.broadcast_to(free[:, None], (k, 3))], axis=-1
        )

    def value_and_grad(self, fn: Callable[[Params], jax.Array]) -> Callable[[Params], tuple[jax.Array, Params]]:
        return jaxlie.manifold.value_and_grad(fn)

    def apply_updates(self, params: Params, updates: Params) -> Params:
        out = jaxlie.manifold.rplus(params, updates)
        # keep the quaternions unit: rplus composes unit quaternions, the drift is only rounding
        return jax.tree.map(lambda x: x.normalize() if _is_group(x) else x, out, is_leaf=_is_group)


PARAMETERISATIONS: dict[str, Parameterisation] = {"official": OfficialParam(), "manifold": ManifoldParam()}


def parameterisation(name: str) -> Parameterisation:
    """The `Parameterisation` called `name` ('official' or 'manifold')."""
    try:
        return PARAMETERISATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"param must be one of {tuple(PARAMETERISATIONS)}, got {name!r}") from None


# ----------------------------------------------------------------------------------------------------------------
# encodings shared by every parameterisation (the official ones)


def encode_log_depth(depth: jax.Array) -> jax.Array:
    """log depth; a zero depth gives 0 (as the official `log().nan_to_num(neginf=0)`)."""
    log_depth = jnp.log(depth)
    return jnp.where(jnp.isneginf(log_depth), 0.0, log_depth)


def encode_focal(focals: jax.Array, focal_break: float) -> jax.Array:
    """phi = focal_break * log f (official focal_break 20)."""
    return focal_break * jnp.log(focals)


def decode_focal(phi: jax.Array, focal_break: float) -> jax.Array:
    """f = exp(phi / focal_break)."""
    return jnp.exp(phi / focal_break)


def encode_pp(pp: jax.Array, pp_base: jax.Array) -> jax.Array:
    """Principal point (..., 2) -> (pp - pp_base) / PP_BREAK (pp_base: the image centre (W/2, H/2))."""
    return (pp - pp_base) / PP_BREAK


def decode_pp(code: jax.Array, pp_base: jax.Array) -> jax.Array:
    """pp_base + PP_BREAK * code."""
    return pp_base + PP_BREAK * code
