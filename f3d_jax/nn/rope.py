"""RoPE-2D and token position grids. Equivalent of croco/models/pos_embed.py (RoPE2D, PositionGetter)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def position_grid(h: int, w: int) -> np.ndarray:
    """Token positions of an `h x w` grid in row-major token order.

    Returns:
      pos: (h*w, 2) int32, `(y, x)` per token (row first), `pos[n] = (n // w, n % w)`.
    """
    y, x = np.meshgrid(np.arange(h, dtype=np.int32), np.arange(w, dtype=np.int32), indexing="ij")
    return np.stack([y.reshape(-1), x.reshape(-1)], axis=-1)


def _rope1d(t: jax.Array, pos: jax.Array, base: float) -> jax.Array:
    """Rotate-half RoPE along the last axis of `t` (..., T, nh, d) with integer positions (..., T)."""
    d = t.shape[-1]
    # float32 angles as the official fallback computes them, whatever the token dtype
    inv_freq = 1.0 / (jnp.float32(base) ** (jnp.arange(0, d, 2, dtype=jnp.float32) / jnp.float32(d)))
    ang = pos.astype(jnp.float32)[..., None] * inv_freq  # (..., T, d/2)
    ang = jnp.concatenate([ang, ang], axis=-1)[..., None, :]  # (..., T, 1, d) broadcast over heads
    cos, sin = jnp.cos(ang).astype(t.dtype), jnp.sin(ang).astype(t.dtype)
    a, b = jnp.split(t, 2, axis=-1)
    rot = jnp.concatenate([-b, a], axis=-1)
    return t * cos + rot * sin


def rope2d(t: jax.Array, pos: jax.Array, base: float = 100.0) -> jax.Array:
    """Apply RoPE-2D to per-head tokens.

    The first half of each head is rotated with the row (y) position, the second half with the
    column (x) position; inside each half, element j pairs with element j + d/2 (GPT-NeoX
    rotate-half, not interleaved pairs).

    Args:
      t: (B, T, nh, hd) tokens (jax attention layout: tokens before heads); hd % 4 == 0.
      pos: (B, T, 2) int, `(y, x)` positions (never normalised; gaps are fine).
      base: frequency base (100 in every released model).

    Returns:
      (B, T, nh, hd), same dtype as `t`.
    """
    if t.shape[-1] % 4:
        raise ValueError(f"RoPE-2D needs a head width divisible by 4, got {t.shape[-1]}")
    y, x = jnp.split(t, 2, axis=-1)
    return jnp.concatenate([_rope1d(y, pos[..., 0], base), _rope1d(x, pos[..., 1], base)], axis=-1)
