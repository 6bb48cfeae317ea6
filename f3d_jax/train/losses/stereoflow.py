"""CroCo-Stereo / CroCo-Flow criteria (`croco/stereoflow/criterion.py`), NHWC.

Call: `criterion(predictions, gt, conf)` in the official argument order (`L1Loss` takes no conf), with
predictions and gt `(B, H, W, C)` (C = 1 disparity, 2 flow: channel 0 = x) and conf `(B, H, W)` or
`(B, H, W, 1)`, the **raw** confidence channel of the network. Invalid ground truth is +inf (flow: both
channels). Returns the 0-d loss, as the official modules do. `with_conf` says whether the model needs the
extra confidence channel.

Masks: finite gt channel 0 [and gt norm < max_gtnorm]; the per-pixel loss sums |gt - pred| over channels
and is averaged over the valid pixels of the whole batch (0 when there are none; the official mean of an
empty tensor is NaN).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import Array

from f3d_jax.train.losses._common import at_least_f32, masked_mean


def _check(predictions: Array, gt: Array, conf: Array | None, who: str) -> tuple[Array, Array, Array | None]:
    predictions, gt = at_least_f32(predictions), at_least_f32(gt)
    if predictions.shape != gt.shape or predictions.ndim != 4:
        raise ValueError(f"{who}: predictions {predictions.shape} and gt {gt.shape} must both be (B, H, W, C)")
    if conf is not None:
        conf = at_least_f32(conf)
        if conf.ndim == 4:
            conf = conf[..., 0]
        if conf.shape != gt.shape[:3]:
            raise ValueError(f"{who}: conf {conf.shape} must be (B, H, W) = {gt.shape[:3]}")
    return predictions, gt, conf


def _gtnorm(gt: Array) -> Array:
    """(B, H, W, 1): the disparity itself (stereo) or the flow magnitude."""
    if gt.shape[-1] == 1:
        return gt
    return jnp.sqrt(jnp.sum(gt ** 2, axis=-1, keepdims=True))


def _pixel_mask(gt: Array, max_gtnorm: float | None) -> Array:
    mask = jnp.isfinite(gt[..., 0])
    if max_gtnorm is not None:
        mask = mask & (_gtnorm(gt)[..., 0] < max_gtnorm)
    return mask


def _abs_error(predictions: Array, gt: Array, mask: Array) -> Array:
    """sum_c |gt - pred| per pixel, (B, H, W); gt outside the mask replaced first (no inf in gradients)."""
    gt = jnp.where(mask[..., None], gt, jax.lax.stop_gradient(predictions))
    return jnp.sum(jnp.abs(gt - predictions), axis=-1)


@dataclasses.dataclass(frozen=True)
class L1Loss:
    """Mean |gt - pred| over the valid *elements* (channels not summed): the baseline without confidence."""

    max_gtnorm: float | None = None
    with_conf: ClassVar[bool] = False

    def __call__(self, predictions: Array, gt: Array, conf: Array | None = None) -> Array:
        predictions, gt, _ = _check(predictions, gt, None, "L1Loss")
        mask = jnp.isfinite(gt)
        if self.max_gtnorm is not None:
            mask = mask & (_gtnorm(gt) < self.max_gtnorm)
        gt = jnp.where(mask, gt, jax.lax.stop_gradient(predictions))
        return masked_mean(jnp.abs(gt - predictions), mask)


@dataclasses.dataclass(frozen=True)
class LaplacianLoss:
    """`mean(sum_c |gt - pred| / exp(c) + c)` on the raw confidence c (CroCo-Stereo for ETH3D)."""

    max_gtnorm: float | None = None
    with_conf: ClassVar[bool] = True

    def __call__(self, predictions: Array, gt: Array, conf: Array) -> Array:
        predictions, gt, conf = _check(predictions, gt, conf, "LaplacianLoss")
        mask = _pixel_mask(gt, self.max_gtnorm)
        c = jnp.where(mask, conf, 0.0)
        return masked_mean(_abs_error(predictions, gt, mask) / jnp.exp(c) + c, mask)


@dataclasses.dataclass(frozen=True)
class LaplacianLossBounded:
    """conf = (b - a) sigmoid(c) + a; `mean(sum_c |gt - pred| / conf + log conf)` (CroCo-Flow)."""

    max_gtnorm: float | None = 10000.0
    a: float = 0.25
    b: float = 4.0
    with_conf: ClassVar[bool] = True

    def __call__(self, predictions: Array, gt: Array, conf: Array) -> Array:
        predictions, gt, conf = _check(predictions, gt, conf, "LaplacianLossBounded")
        mask = _pixel_mask(gt, self.max_gtnorm)
        c = (self.b - self.a) * jax.nn.sigmoid(jnp.where(mask, conf, 0.0)) + self.a
        return masked_mean(_abs_error(predictions, gt, mask) / c + jnp.log(c), mask)


@dataclasses.dataclass(frozen=True)
class LaplacianLossBounded2:
    """c' = 2a (sigmoid(c / b) - 0.5); `mean(sum_c |gt - pred| / exp(c') + c')` (CroCo-Stereo)."""

    max_gtnorm: float | None = None
    a: float = 3.0
    b: float = 3.0
    with_conf: ClassVar[bool] = True

    def __call__(self, predictions: Array, gt: Array, conf: Array) -> Array:
        predictions, gt, conf = _check(predictions, gt, conf, "LaplacianLossBounded2")
        mask = _pixel_mask(gt, self.max_gtnorm)
        c = 2 * self.a * (jax.nn.sigmoid(jnp.where(mask, conf, 0.0) / self.b) - 0.5)
        return masked_mean(_abs_error(predictions, gt, mask) / jnp.exp(c) + c, mask)
