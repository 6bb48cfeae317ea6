"""Rigid/similarity transform helpers (SE(3), Sim(3), quaternions); equivalent of the pose helpers used by
dust3r/cloud_opt (roma quaternions, `dust3r.utils.geometry.geotrf`/`inv`, `signed_log1p`/`signed_expm1`).

Conventions (they bite):
- Poses are 4x4 homogeneous matrices, **cam-to-world**, OpenCV camera axes (x right, y down, z forward).
- Quaternions are in roma's **XYZW** order (scalar last), as stored by the official optimiser.
  jaxlie uses WXYZ; convert with `xyzw_to_wxyz` / `wxyz_to_xyzw`.
- Every function takes an `xnp` module (numpy by default, or `jax.numpy`) so the same code runs on host
  (initialisation) and inside `jit` (optimisation), as multinerf's camera utilities do.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np


def signed_log1p(x, xnp: ModuleType = np):
    """sign(x) * log(1 + |x|): the official encoding of translations (inverse of `signed_expm1`)."""
    return xnp.sign(x) * xnp.log1p(xnp.abs(x))


def signed_expm1(x, xnp: ModuleType = np):
    """sign(x) * (exp(|x|) - 1): the official decoding of translations.

    Its derivative at exactly 0 is 0 (sign'(0) = 0): a raw translation stored as 0 never moves under
    gradient descent, which is what pins the MST root camera in the official dense GA.
    """
    return xnp.sign(x) * xnp.expm1(xnp.abs(x))


def xyzw_to_wxyz(q, xnp: ModuleType = np):
    """(..., 4) XYZW (roma) -> (..., 4) WXYZ (jaxlie)."""
    return xnp.concatenate([q[..., 3:4], q[..., 0:3]], axis=-1)


def wxyz_to_xyzw(q, xnp: ModuleType = np):
    """(..., 4) WXYZ (jaxlie) -> (..., 4) XYZW (roma)."""
    return xnp.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def quat_xyzw_to_rotmat(q, xnp: ModuleType = np):
    """Rotation matrices from (not necessarily normalised) XYZW quaternions.

    Args:
        q: (..., 4) quaternion, XYZW order; it is normalised first (the official optimiser stores raw,
            unnormalised quaternions and normalises on read).

    Returns:
        (..., 3, 3) rotation matrices.
    """
    q = q / xnp.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = [
        [1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)],
        [2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)],
        [2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)],
    ]
    return xnp.stack([xnp.stack(r, axis=-1) for r in rows], axis=-2)


def rotmat_to_quat_xyzw(R, xnp: ModuleType = np):
    """Unit XYZW quaternions from rotation matrices, choosing the sign as roma's `rotmat_to_unitquat`.

    The branch is chosen by the largest of (R00, R11, R22, trace) (numerically stable); the component
    associated with that branch comes out positive, so near-identity rotations get w > 0.

    Args:
        R: (..., 3, 3) rotation matrices.

    Returns:
        (..., 4) unit quaternions, XYZW.
    """
    r00, r11, r22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = r00 + r11 + r22
    decision = xnp.stack([r00, r11, r22, tr], axis=-1)
    choice = xnp.argmax(decision, axis=-1)
    # candidate quaternions (unnormalised), one per branch
    q0 = xnp.stack([1 - tr + 2 * r00, R[..., 1, 0] + R[..., 0, 1], R[..., 2, 0] + R[..., 0, 2],
                    R[..., 2, 1] - R[..., 1, 2]], axis=-1)
    q1 = xnp.stack([R[..., 0, 1] + R[..., 1, 0], 1 - tr + 2 * r11, R[..., 2, 1] + R[..., 1, 2],
                    R[..., 0, 2] - R[..., 2, 0]], axis=-1)
    q2 = xnp.stack([R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1], 1 - tr + 2 * r22,
                    R[..., 1, 0] - R[..., 0, 1]], axis=-1)
    q3 = xnp.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1],
                    1 + tr], axis=-1)
    c = choice[..., None]
    q = xnp.where(c == 0, q0, xnp.where(c == 1, q1, xnp.where(c == 2, q2, q3)))
    return q / xnp.linalg.norm(q, axis=-1, keepdims=True)


def make_pose(R, t, xnp: ModuleType = np):
    """(..., 3, 3) rotation (or scaled rotation) and (..., 3) translation -> (..., 4, 4) homogeneous matrix."""
    top = xnp.concatenate([R, t[..., :, None]], axis=-1)
    bottom = xnp.broadcast_to(xnp.asarray([0.0, 0.0, 0.0, 1.0], dtype=top.dtype), top.shape[:-2] + (1, 4))
    return xnp.concatenate([top, bottom], axis=-2)


def inverse_pose(T, xnp: ModuleType = np):
    """Inverse of (..., 4, 4) rigid transforms, using R^T (exact for rotations, no general 4x4 inverse)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = xnp.swapaxes(R, -1, -2)
    return make_pose(Rt, -xnp.einsum("...ij,...j->...i", Rt, t), xnp=xnp)


def apply_transform(T, pts, xnp: ModuleType = np):
    """Apply (4, 4) (or (..., 4, 4) broadcastable) transforms to points.

    Args:
        T: (4, 4) or (B, 4, 4) homogeneous transform (rotation block may carry a scale).
        pts: (..., 3) points; with a batched T the leading axis of pts must be B.

    Returns:
        (..., 3) transformed points, same shape as `pts`.
    """
    if T.ndim == 2:
        return pts @ xnp.swapaxes(T[:3, :3], 0, 1) + T[:3, 3]
    B = T.shape[0]
    flat = pts.reshape(B, -1, 3)
    out = xnp.einsum("bij,bnj->bni", T[:, :3, :3], flat) + T[:, None, :3, 3]
    return out.reshape(pts.shape)


def rotation_angle_deg(R, xnp: ModuleType = np):
    """Rotation angle in degrees of (..., 3, 3) rotation matrices, arccos((trace - 1) / 2) clipped to [-1, 1]."""
    c = (xnp.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return xnp.degrees(xnp.arccos(xnp.clip(c, -1.0, 1.0)))
