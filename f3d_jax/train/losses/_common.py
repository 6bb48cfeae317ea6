"""Small numerical helpers shared by the losses: masked reductions, torch-style medians, a safe norm.

Masks are boolean arrays of the values' shape. Every helper is jit-able (no Python branch on values) and
gives finite gradients where a masked-out entry holds garbage (inf, nan): entries outside the mask are
replaced with `jnp.where` *before* any arithmetic, so their cotangent is exactly zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

HIGHEST = jax.lax.Precision.HIGHEST


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
    """Euclidean norm over `axis` with a zero (sub)gradient at 0, as `torch.norm` (jnp.linalg.norm: NaN)."""
    s = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def masked_sum(x: Array, mask: Array) -> Array:
    return jnp.sum(jnp.where(mask, x, 0.0))


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of `x` over the True entries of `mask` (all axes pooled); 0 when the mask is empty (the official
    'nan protection' of ConfLoss)."""
    n = jnp.sum(mask)
    return jnp.where(n > 0, masked_sum(x, mask) / jnp.maximum(n, 1).astype(x.dtype), 0.0)


def nanmedian_lower(values: Array, valid: Array) -> Array:
    """`torch.nanmedian` over the last axis restricted to `valid`: the **lower** middle value for an even
    count (torch does not average). `values`, `valid`: (..., M) -> (...); NaN where nothing is valid."""
    x = jnp.where(valid, values, jnp.inf)
    s = jnp.sort(x, axis=-1)
    n = jnp.sum(valid, axis=-1)
    idx = jnp.maximum((n - 1) // 2, 0)
    med = jnp.take_along_axis(s, idx[..., None], axis=-1)[..., 0]
    return jnp.where(n > 0, med, jnp.nan)


def masked_quantile(values: Array, valid: Array, q: float) -> Array:
    """`torch.quantile(values[valid], q)` (linear interpolation) over all entries; NaN when none is valid."""
    x = jnp.where(valid, values, jnp.inf).reshape(-1)
    s = jnp.sort(x)
    n = jnp.sum(valid)
    pos = q * (n - 1).astype(jnp.float32)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, x.shape[0] - 1)
    hi = jnp.clip(jnp.ceil(pos).astype(jnp.int32), 0, x.shape[0] - 1)
    frac = (pos - jnp.floor(pos)).astype(values.dtype)
    out = s[lo] + frac * (jnp.where(hi == lo, s[lo], s[hi]) - s[lo])
    return jnp.where(n > 0, out, jnp.nan)


def unbiased_std(x: Array) -> Array:
    """`torch.std` (divisor n - 1) over all entries."""
    return jnp.std(x, ddof=1)


def affine_inverse(T: Array) -> Array:
    """Inverse of (..., 4, 4) affine matrices (last row 0 0 0 1, e.g. cam2world poses): `[A⁻¹ | -A⁻¹ t]` with
    the 3x3 inverse by cofactors. Equal to a general 4x4 inverse for such matrices (the official code calls
    `torch.linalg.inv`; both agree to float32 rounding), and much cheaper to compile than an LU solve."""
    A, t = T[..., :3, :3], T[..., :3, 3]
    c0 = jnp.cross(A[..., 1, :], A[..., 2, :])
    c1 = jnp.cross(A[..., 2, :], A[..., 0, :])
    c2 = jnp.cross(A[..., 0, :], A[..., 1, :])
    det = jnp.sum(A[..., 0, :] * c0, axis=-1)[..., None, None]
    A_inv = jnp.stack([c0, c1, c2], axis=-1) / det  # adjugate / det
    t_inv = -jnp.einsum("...ij,...j->...i", A_inv, t, precision=HIGHEST)
    top = jnp.concatenate([A_inv, t_inv[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], T.dtype), T.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def at_least_f32(x: Array) -> Array:
    """Floating inputs narrower than float32 (bf16 / fp16 network outputs) are promoted: the losses run in
    float32 at least, as the official heads cast their outputs to float32 under AMP."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize < 4:
        return x.astype(jnp.float32)
    return x
