"""CroCo-Stereo / CroCo-Flow per-batch metrics (`croco/stereoflow/criterion.py: StereoMetrics, FlowMetrics`), NHWC.

`metrics(predictions, gt) -> dict[str, 0-d array]` with predictions and gt `(B, H, W, C)` (C = 1 disparity,
2 flow), invalid gt = +inf. Every metric is computed **per image** over that image's valid pixels and then
averaged over the batch (rmse included: square root per image, then the mean); `bad@t` are percentages.
Invalid gt is replaced by 999999 before masking, as officially (so no NaN reaches a product). An image
without any valid pixel gives NaN, as the official division does.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array


def _check(predictions: Array, gt: Array, channels: int, who: str) -> tuple[Array, Array]:
    predictions, gt = jnp.asarray(predictions), jnp.asarray(gt)
    if predictions.shape != gt.shape or predictions.ndim != 4 or gt.shape[-1] != channels:
        raise ValueError(f"{who}: predictions {predictions.shape} and gt {gt.shape} must both be "
                         f"(B, H, W, {channels})")
    return predictions, gt


@dataclasses.dataclass(frozen=True)
class StereoMetrics:
    """avgerr (mean |error|), rmse, bad@0.5/1.0/2.0/3.0 (% of pixels with |error| > t)."""

    do_quantile: bool = False  # accepted, unused (as officially)
    bad_ths: tuple[float, ...] = (0.5, 1, 2, 3)

    def __call__(self, predictions: Array, gt: Array) -> dict[str, Array]:
        predictions, gt = _check(predictions, gt, 1, "StereoMetrics")
        B = predictions.shape[0]
        mask = jnp.isfinite(gt)
        gtc = jnp.where(mask, gt, 999999.0)
        m = mask.reshape(B, -1).astype(predictions.dtype)
        npx = jnp.sum(m, axis=1)
        l1 = (jnp.abs(gtc - predictions).reshape(B, -1)) * m
        l2 = (jnp.square(gtc - predictions).reshape(B, -1)) * m
        out = {"avgerr": jnp.mean(jnp.sum(l1, axis=1) / npx), "rmse": jnp.mean(jnp.sqrt(jnp.sum(l2, axis=1) / npx))}
        for t in self.bad_ths:
            out[f"bad@{t:.1f}"] = jnp.mean(jnp.sum((l1 > t) * m, axis=1) / npx) * 100
        return out


@dataclasses.dataclass(frozen=True)
class FlowMetrics:
    """L1err (mean |dx| + |dy|), EPE (mean end-point error), bad@1.0/3.0/5.0 (% of pixels with EPE > t)."""

    bad_ths: tuple[float, ...] = (1, 3, 5)

    def __call__(self, predictions: Array, gt: Array) -> dict[str, Array]:
        predictions, gt = _check(predictions, gt, 2, "FlowMetrics")
        B = predictions.shape[0]
        mask = jnp.isfinite(gt[..., 0])  # both x and y are infinite where invalid
        gtc = jnp.where(mask[..., None], gt, 999999.0)
        m = mask.reshape(B, -1).astype(predictions.dtype)
        npx = jnp.sum(m, axis=1)
        l1 = jnp.sum(jnp.abs(gtc - predictions), axis=-1).reshape(B, -1) * m
        l2 = jnp.sqrt(jnp.sum(jnp.square(gtc - predictions), axis=-1)).reshape(B, -1) * m
        out = {"L1err": jnp.mean(jnp.sum(l1, axis=1) / npx), "EPE": jnp.mean(jnp.sum(l2, axis=1) / npx)}
        for t in self.bad_ths:
            out[f"bad@{t:.1f}"] = jnp.mean(jnp.sum((l2 > t) * m, axis=1) / npx) * 100
        return out


def metrics_for_task(task: str) -> StereoMetrics | FlowMetrics:
    """The metrics `stereoflow/train.py` uses for `task` ('stereo' or 'flow')."""
    if task == "stereo":
        return StereoMetrics()
    if task == "flow":
        return FlowMetrics()
    raise ValueError(f"unknown stereo/flow task {task!r} (stereo or flow)")
