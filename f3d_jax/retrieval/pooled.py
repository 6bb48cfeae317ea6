"""The fallback image descriptor: mean-pooled, L2-normalised encoder features (no retrieval weights needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def pool(feat: jax.Array) -> jax.Array:
    """(B, N, Ce) encoder tokens -> (B, Ce) float32: averaged over the image, then scaled to unit L2 norm (a zero
    mean stays zero)."""
    g = jnp.mean(feat.astype(jnp.float32), axis=1)
    norm = jnp.linalg.norm(g, axis=-1, keepdims=True)
    return g / jnp.maximum(norm, 1e-12)
