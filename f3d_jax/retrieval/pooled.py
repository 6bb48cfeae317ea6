"""The fallback image descriptor: mean-pooled, L2-normalised encoder features (no retrieval weights needed)."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from f3d_jax.models.config import DUSt3RConfig
from f3d_jax.models.model import encode_images


@functools.partial(jax.jit, static_argnames=("config", "precision"))
def pooled_step(config: DUSt3RConfig, params: Mapping, img: jax.Array, true_shape: jax.Array,
                precision: str | None = None) -> jax.Array:
    """(B, H, W, 3), (B, 2) -> (B, Ce) float32: the encoder's tokens (after `enc_norm`) averaged over the image,
    then scaled to unit L2 norm (a zero mean stays zero)."""
    feat, _ = encode_images(config, params, img, true_shape, None, precision)
    g = jnp.mean(feat.astype(jnp.float32), axis=1)
    norm = jnp.linalg.norm(g, axis=-1, keepdims=True)
    return g / jnp.maximum(norm, 1e-12)
