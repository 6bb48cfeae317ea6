"""Tiled inference of CroCo-Stereo / CroCo-Flow on images larger (or smaller) than the training crop.

Equivalent of croco/stereoflow/engine.py:tiled_pred (with `with_conf=True`, as test.py and the demo
call it), computed with the same numbers in the same order:

* tiles: `crop`-sized windows, `1 + ceil((total - window) / ((1 - overlap) * window))` per axis, spread
  by `np.linspace(0, total - window, n).round()` (numpy rounds half to even), row-major (y outer);
* each tile's weight from its raw confidence c: `exp(-2 beta (sigmoid(c / beta_s) - 0.5))`
  (`conf_expsigmoid_<beta>_<beta_s>`) or `exp(-beta c)` (`conf_expbeta<beta>`);
* stitching in generator order: `pred = sum(w pred) / (1e-16 + sum w)`, `conf = sum(w c) / (1e-16 + sum w)`
  (the **raw** confidence, weight-averaged);
* images smaller than the crop are first resized (PyTorch bicubic) by `max(crop_w / W, crop_h / W)`
  (both ratios over W, as the official code), the prediction resized back with its values rescaled
  (x by W / W', y by H / H'); the returned confidence stays at the resized size.

Unlike the official loop (one network call per tile), every tile of every image goes through the network
in one jitted, batched call (`tiles_per_step` tiles at a time inside it, bounding memory), the tile axis
sharded over the local devices when several images are given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.models.binocular import TASK_CHANNELS, BinocularModel, binocular_forward, check_pair, crop_problem
from f3d_jax.models.config import brief
from f3d_jax.nn.precision import check_precision
from f3d_jax.stereoflow.resize import resize_bicubic
from f3d_jax.weights.stereoflow_args import parse_conf_mode

ACCU_EPS = 1e-16  # the official accumulators of the weights start at 1e-16


def tile_offsets(total: int, window: int, overlap: float) -> np.ndarray:
    """Start offsets of the windows along one axis (`engine._overlapping`), int64.

    Raises:
      ValueError: a window larger than the image, or an overlap outside [0, 1).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap={overlap!r} should be in [0, 1)")
    if total < window:
        raise ValueError(f"a {window}-pixel tile does not fit in {total} pixels")
    n = 1 + int(np.ceil((total - window) / ((1 - overlap) * window)))
    return np.linspace(0, total - window, n).round().astype(np.int64)


def upscaled_size(hw: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int] | None:
    """The size `tiled_pred` resizes an image smaller than the crop to (None: no resize).

    The factor is the official `max(crop_w / W, crop_h / W)` (both over W); Python's `round` of each side.

    Raises:
      ValueError: the resized image is still smaller than the crop (a wide image with a tall crop: the
        official code fails its assertion there).
    """
    h, w = hw
    ch, cw = crop
    if h >= ch and w >= cw:
        return None
    f = max(cw / w, ch / w)
    new = (round(h * f), round(w * f))
    if new[0] < ch or new[1] < cw:
        raise ValueError(f"an image of {h}x{w} resized by the official factor max(crop_w/W, crop_h/W) = {f:.4g} "
                         f"is {new[0]}x{new[1]}, still smaller than the {ch}x{cw} crop (the official tiled_pred "
                         "fails here too); resize the image first")
    return new


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image size go (static: part of the jit keys)."""

    hw: tuple[int, int]  # size of the tiled image (after any up-resize)
    crop: tuple[int, int]
    y0: tuple[int, ...]
    x0: tuple[int, ...]
    resized_from: tuple[int, int] | None  # original size when the image was up-resized

    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """(y, x) of every tile in the official generator order (y outer, x inner)."""
        return tuple((y, x) for y in self.y0 for x in self.x0)

    @property
    def num_tiles(self) -> int:
        return len(self.y0) * len(self.x0)


def plan_tiles(hw: tuple[int, int], crop: tuple[int, int], overlap: float) -> TilePlan:
    """The tiling of an image of size `hw` (see `tile_offsets`, `upscaled_size`)."""
    new = upscaled_size(hw, crop)
    size = new if new is not None else tuple(hw)
    y0 = tile_offsets(size[0], crop[0], overlap)
    x0 = tile_offsets(size[1], crop[1], overlap)
    return TilePlan(tuple(size), tuple(crop), tuple(int(v) for v in y0), tuple(int(v) for v in x0),
                    tuple(hw) if new is not None else None)


def conf_weight_params(conf_mode: str) -> np.ndarray:
    """(3,) float32 [is_expbeta, beta, beta_sigmoid]: the weighting as data (one compilation for every mode)."""
    kind, beta, bs = parse_conf_mode(conf_mode)
    return np.array([kind == "expbeta", beta, bs if kind == "expsigmoid" else 1.0], np.float32)


def tile_weight(conf: jax.Array, wparams: jax.Array) -> jax.Array:
    """Raw confidence -> tile weight, with the official operation order."""
    is_beta, beta, bs = wparams[0], wparams[1], wparams[2]
    expsigmoid = jnp.exp((-beta * 2) * (jax.nn.sigmoid(conf / bs) - 0.5))
    expbeta = jnp.exp(-beta * conf)
    return jnp.where(is_beta > 0, expbeta, expsigmoid)


# ---------------------------------------------------------------------------------------------
# jitted pieces (the network part is `binocular_forward`, one call for every tile)


@functools.partial(jax.jit, static_argnames=("plan",))
def _prepare(img1: jax.Array, img2: jax.Array, plan: TilePlan) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, 3) pair -> the tiles of both images, (B * T, ch, cw, 3) each, image-major (b * T + t)."""
    ch, cw = plan.crop

    def tiles(img):
        img = img.astype(jnp.float32)
        if plan.resized_from is not None:
            img = resize_bicubic(img, plan.hw)
        t = jnp.stack([img[:, y:y + ch, x:x + cw] for y, x in plan.offsets], axis=1)
        return t.reshape((-1, ch, cw, img.shape[-1]))

    return tiles(img1), tiles(img2)


@functools.partial(jax.jit, static_argnames=("plan", "batch"))
def _stitch(tile_out: jax.Array, wparams: jax.Array, plan: TilePlan, batch: int) -> tuple[jax.Array, jax.Array]:
    """(B * T, ch, cw, C + 1) raw tile outputs -> (pred (B, H0, W0, C), conf (B, H, W)).

    Tiles are accumulated one after the other in generator order (a scan), as the official loop does.
    """
    ch, cw = plan.crop
    h, w = plan.hw
    t_all = tile_out.reshape((batch, plan.num_tiles) + tile_out.shape[1:])
    t_all = jnp.moveaxis(t_all, 1, 0)  # (T, B, ch, cw, C + 1)
    nc = tile_out.shape[-1] - 1
    offsets = jnp.asarray(np.array(plan.offsets, np.int32).reshape(-1, 2))

    def add(carry, xs):
        accu_pred, accu_conf, accu_c = carry
        out, (y, x) = xs[0], (xs[1][0], xs[1][1])
        pred, c = out[..., :nc], out[..., nc]
        wgt = tile_weight(c, wparams)

        def acc(a, v):
            start = (0, y, x) + (0,) * (a.ndim - 3)
            cur = jax.lax.dynamic_slice(a, start, (batch, ch, cw) + a.shape[3:])
            return jax.lax.dynamic_update_slice(a, cur + v, start)

        return (acc(accu_pred, pred * wgt[..., None]), acc(accu_conf, wgt), acc(accu_c, c * wgt)), None

    init = (jnp.zeros((batch, h, w, nc), jnp.float32), jnp.full((batch, h, w), ACCU_EPS, jnp.float32),
            jnp.zeros((batch, h, w), jnp.float32))
    (accu_pred, accu_conf, accu_c), _ = jax.lax.scan(add, init, (t_all, offsets))
    pred = accu_pred / accu_conf[..., None]
    conf = accu_c / accu_conf
    if plan.resized_from is not None:
        h0, w0 = plan.resized_from
        pred = resize_bicubic(pred, (h0, w0))
        scale = [w0 / w, h0 / h][:nc]  # x (channel 0) by W0 / W, y (flow channel 1) by H0 / H
        pred = pred * jnp.asarray(scale, jnp.float32)
    return pred, conf


# ---------------------------------------------------------------------------------------------


def default_tiles_per_step() -> int:
    """Tiles per network step: 1 on CPU (one tile's activations fit the caches), 8 on accelerators."""
    return 1 if jax.default_backend() == "cpu" else 8


def _devices_for(shard: bool) -> list:
    devs = jax.local_devices()
    return devs if shard and len(devs) > 1 else devs[:1]


def predict_tiles(model: BinocularModel, img1: Any, img2: Any, overlap: float = 0.7,
                  crop: tuple[int, int] | None = None, *, tiles_per_step: int | None = None,
                  shard: bool | None = None, precision: str | None = None) -> tuple[jax.Array, TilePlan]:
    """The raw network output of every tile, in one batched network call.

    Args:
      model: a CroCo-Stereo / -Flow model (`f3d_jax.load_model`).
      img1, img2: (B, H, W, 3) ImageNet-normalised (the official `img_to_tensor`), same shape.
      overlap: in [0, 1) (test.py's default 0.7; the README submissions use 0.9).
      crop: tile size (H, W), a multiple of 32; default the checkpoint's crop (`model.crop`). Other crops
        need a RoPE model.
      tiles_per_step: tiles per sequential network step inside the call (memory bound); default
        `default_tiles_per_step()` (times the device count when sharded).
      shard: spread the tiles over the local devices; default: when B > 1.
      precision: as `model(...)`.

    Returns:
      (tiles (T, B, ch, cw, C + 1) raw outputs, the official generator order; the `TilePlan`).
    """
    out, plan, batch = _tiles(model, img1, img2, overlap, crop, tiles_per_step, shard, precision)
    return jnp.moveaxis(out.reshape((batch, plan.num_tiles) + out.shape[1:]), 1, 0), plan


def _check_inputs(model: Any, img1: Any, img2: Any, crop: Any) -> tuple[int, int]:
    if not isinstance(model, BinocularModel):
        raise TypeError(f"tiled_pred needs a CroCo-Stereo / CroCo-Flow model (f3d_jax.load_model of a stereo or "
                        f"flow checkpoint), got {type(model).__name__}")
    check_pair(model.config, img1, img2, exact_size=False)
    crop = model.crop if crop is None else crop
    crop = tuple(crop) if isinstance(crop, list | tuple) else crop
    problem = crop_problem(crop, model.config.patch_size)
    if problem:
        raise ValueError(problem)
    if model.config.rope_base is None and crop != model.crop:
        raise ValueError(f"crop={crop}: this model (cosine position tables) only takes its training crop {model.crop}")
    return crop  # type: ignore[return-value]


def _tiles(model: BinocularModel, img1: Any, img2: Any, overlap: float, crop: Any, tiles_per_step: int | None,
           shard: bool | None, precision: str | None) -> tuple[jax.Array, TilePlan, int]:
    crop = _check_inputs(model, img1, img2, crop)
    precision = check_precision(precision)
    if not isinstance(overlap, int | float) or isinstance(overlap, bool) or not 0 <= overlap < 1:
        raise ValueError(f"overlap={brief(overlap)} should be a number in [0, 1)")
    batch = int(img1.shape[0])
    plan = plan_tiles(tuple(int(s) for s in img1.shape[1:3]), crop, float(overlap))
    t1, t2 = _prepare(jnp.asarray(img1), jnp.asarray(img2), plan)
    n = t1.shape[0]
    devices = _devices_for(batch > 1 if shard is None else bool(shard))
    d = len(devices)
    if tiles_per_step is None:
        tiles_per_step = default_tiles_per_step() * d
    if not isinstance(tiles_per_step, int) or isinstance(tiles_per_step, bool) or tiles_per_step < 1:
        raise ValueError(f"tiles_per_step={brief(tiles_per_step)} should be a positive int")
    step = max(d, tiles_per_step // d * d)  # a multiple of the device count: steps stay sharded
    n_pad = math.ceil(n / step) * step
    if n_pad > n:  # pad with copies of the first tile (dropped after the call)
        pad = [(0, n_pad - n)] + [(0, 0)] * 3
        t1, t2 = jnp.pad(t1, pad, mode="edge"), jnp.pad(t2, pad, mode="edge")
    if d > 1:
        sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("tiles",)),
                                              jax.sharding.PartitionSpec("tiles"))
        t1, t2 = jax.device_put(t1, sharding), jax.device_put(t2, sharding)
    per_step = None if step >= n_pad else step
    out = binocular_forward(model.config, model.params, t1, t2, False, None, precision, per_step)
    return out[:n], plan, batch


def stitch_tiles(tiles: Any, plan: TilePlan, conf_mode: str) -> tuple[jax.Array, jax.Array]:
    """Confidence-weighted stitching of raw tile outputs (the second half of `tiled_pred`).

    Args:
      tiles: (T, B, ch, cw, C + 1) raw outputs in the plan's order (`predict_tiles`), confidence last.
      plan: the `TilePlan` they came from.
      conf_mode: `conf_expsigmoid_<beta>_<beta_s>` or `conf_expbeta<beta>`.

    Returns:
      (pred, conf) as `tiled_pred`.
    """
    tiles = jnp.asarray(tiles)
    if tiles.ndim != 5 or tiles.shape[0] != plan.num_tiles or tuple(tiles.shape[2:4]) != plan.crop:
        raise ValueError(f"tiles should be ({plan.num_tiles}, B, {plan.crop[0]}, {plan.crop[1]}, C + 1), "
                         f"got {tuple(tiles.shape)}")
    batch = tiles.shape[1]
    flat = jnp.moveaxis(tiles, 0, 1).reshape((-1,) + tiles.shape[2:])
    return _stitch(flat, jnp.asarray(conf_weight_params(conf_mode)), plan, batch)


def tiled_pred(model: BinocularModel, img1: Any, img2: Any, overlap: float = 0.7, crop: tuple[int, int] | None = None,
               conf_mode: str | None = None, *, tiles_per_step: int | None = None, shard: bool | None = None,
               precision: str | None = None) -> tuple[jax.Array, jax.Array]:
    """CroCo-Stereo / -Flow prediction of images of any size (the official `tiled_pred`, module docstring).

    Args:
      model, img1, img2, overlap, crop, tiles_per_step, shard, precision: as `predict_tiles`.
      conf_mode: tile weighting, `conf_expsigmoid_<beta>_<beta_s>` or `conf_expbeta<beta>`; default the
        checkpoint's `args.tile_conf_mode`.

    Returns:
      pred (B, H, W, C) float32: disparity (C = 1) or flow (C = 2, x then y), in pixels of the input images;
      conf (B, H', W') float32: the weight-averaged raw confidence logit, at the tiled size (H', W') = (H, W),
      or the up-resized size for images smaller than the crop (as the official code).

    Raises:
      ValueError: images of different shapes, a crop that is not a multiple of 32, a bad overlap or conf mode,
        an image that cannot be tiled; a model without a confidence channel (trained with L1Loss: the official
        tiled_pred needs one).
    """
    if isinstance(model, BinocularModel) and not model.with_conf:
        raise ValueError(f"this {model.task} model has no confidence channel (trained with {model.criterion}): "
                         "tiled_pred weights the tiles by it")
    conf_mode = getattr(model, "tile_conf_mode", None) if conf_mode is None else conf_mode
    wparams = conf_weight_params(conf_mode)
    out, plan, batch = _tiles(model, img1, img2, overlap, crop, tiles_per_step, shard, precision)
    if out.shape[-1] != TASK_CHANNELS[model.task] + 1:
        raise AssertionError("unexpected number of output channels")
    return _stitch(out, jnp.asarray(wparams), plan, batch)
