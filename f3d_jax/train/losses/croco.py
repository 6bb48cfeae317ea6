"""CroCo pretraining loss (`croco/models/criterion.py: MaskedMSE`)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from f3d_jax.train.losses._common import at_least_f32


def masked_mse(pred: Array, target: Array, mask: Array, norm_pix_loss: bool = True,
               masked: bool = True) -> Array:
    """CroCo's `MaskedMSE(norm_pix_loss, masked)(pred, mask, target)` (note the argument order here).

    pred, target: (B, N, p*p*3) patch predictions and patchified image 1 (`CroCoNet` layout);
    mask: (B, N) bool, True = masked token. With `norm_pix_loss`, each target patch is standardised with
    its mean and **unbiased** variance (torch.var), eps 1e-6 inside the square root. The per-patch mean
    squared error is averaged over the masked patches (`masked=True`) or over all patches. Returns a 0-d
    float32 loss.
    """
    pred, target = at_least_f32(pred), at_least_f32(target)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"masked_mse: pred {pred.shape} and target {target.shape} must be equal (B, N, D)")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"masked_mse: mask {mask.shape} must be (B, N) = {pred.shape[:2]}")
    if norm_pix_loss:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1.0e-6)
    loss = jnp.mean((pred - target) ** 2, axis=-1)  # (B, N), mean loss per patch
    if masked:
        m = mask.astype(loss.dtype)
        return jnp.sum(loss * m) / jnp.sum(m)
    return jnp.mean(loss)
