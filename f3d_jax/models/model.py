"""The functional runtime of every model: `Model(config, params)` and the jitted pure forwards.

`Model` is a pytree (params are its leaves, the config is static), so it passes through `jax.jit`,
`jax.vmap` and sharding. Every entry point is `f(config, params, arrays) -> arrays` under
`jax.jit` with the config as a static argument; the NNX module is only rebuilt inside the trace
(`nnx.merge`), never called eagerly.

Views follow the official vocabulary: `{'img': (B, H, W, 3) float32 in [-1, 1] (NHWC),
'true_shape': (B, 2) int (height, width)}`.

Precision: every entry point takes `precision` (static): None (default) traces the module with exact float32
dots and convolutions (`Precision.HIGHEST`) when the params are float32 and at the backend's default when
they are bfloat16 / float16; 'highest', 'high' (TF32 on GPU) or 'default' force one. See
`f3d_jax.nn.precision`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from f3d_jax.models.config import CroCoConfig, DUSt3RConfig
from f3d_jax.nn.compat import nnx
from f3d_jax.nn.precision import check_precision, matmul_precision


def build_module(config: CroCoConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The NNX module of a config. Use `abstract_module` to load weights (never random-init)."""
    from f3d_jax.models.binocular import CroCoDownstreamConfig

    if isinstance(config, CroCoDownstreamConfig):  # CroCo-Stereo / CroCo-Flow
        from f3d_jax.models.binocular import build_binocular
        return build_binocular(config, rngs)
    if isinstance(config, DUSt3RConfig):
        from f3d_jax.models.dust3r import AsymmetricCroCo3DStereo
        return AsymmetricCroCo3DStereo(config, rngs=rngs)
    from f3d_jax.models.croco import CroCoNet
    return CroCoNet(config, rngs=rngs)


class _ShapeOnlyRngs:
    """Stands in for `nnx.Rngs` when only shapes are wanted: always the same key, no counter.

    Under `eval_shape`, every `nnx.Rngs` draw updates a traced counter, and flax's update queries
    the tracer's `.sharding`, whose error message walks the whole trace: quadratic in the number of
    parameters (about a minute for MASt3R). Shapes do not depend on the keys, so one fixed key does.
    """

    def __init__(self) -> None:
        self._key = jax.random.key(0)

    def __call__(self) -> jax.Array:
        return self._key

    def __getattr__(self, name: str):  # rngs.params(), rngs.default(), ...
        if name.startswith("__"):
            raise AttributeError(name)
        return self


@functools.lru_cache(maxsize=32)
def abstract_module(config: CroCoConfig) -> nnx.Module:
    """The module built with `nnx.eval_shape`: shapes only, no memory, no random numbers."""
    return nnx.eval_shape(lambda: build_module(config, _ShapeOnlyRngs()))


@functools.lru_cache(maxsize=32)
def graphdef_of(config: CroCoConfig) -> nnx.GraphDef:
    return nnx.split(abstract_module(config))[0]


def abstract_params(config: CroCoConfig) -> dict:
    """Nested dict of `jax.ShapeDtypeStruct`: the params layout of a config."""
    return nnx.to_pure_dict(nnx.split(abstract_module(config))[1])


def _module(config: CroCoConfig, params: Mapping) -> nnx.Module:
    return nnx.merge(graphdef_of(config), params)


def _dtype(params: Mapping) -> Any:
    return params["patch_embed"]["proj"]["kernel"].dtype


# ---------------------------------------------------------------------------------------------
# DUSt3R / MASt3R


@functools.partial(jax.jit, static_argnames=("config", "with_inter", "impl", "precision", "remat"))
def stereo_forward(config: DUSt3RConfig, params: Mapping, img1: jax.Array, img2: jax.Array,
                   true_shape1: jax.Array | None = None, true_shape2: jax.Array | None = None,
                   with_inter: bool = False, impl: str | None = None, precision: str | None = None,
                   remat: str | None = None):
    """`model(view1, view2)` on arrays.

    Args:
      img1, img2: (B, H1, W1, 3), (B, H2, W2, 3) in [-1, 1].
      true_shape1, true_shape2: (B, 2) int (height, width); only read by training-style models.
      with_inter: also return a dict of named intermediates (NHWC maps, (B, N, C) tokens).
      impl: attention implementation: None (portable XLA attention, the default), or the
        `implementation` of `jax.nn.dot_product_attention` ('xla', or 'cudnn': GPU only, bf16/fp16 params,
        not reached by `precision`).
      precision: float32 matmul/conv precision, None | 'highest' | 'high' | 'default' (module docstring).
      remat: training only: None | 'none' | 'blocks' | 'dots', checkpoint the blocks and heads
        (`f3d_jax.nn.remat`; same values, less memory kept for a backward pass).

    Returns:
      pred1 {'pts3d' (B,H,W,3), 'conf' (B,H,W) [, 'desc' (B,H,W,D), 'desc_conf']},
      pred2 {'pts3d_in_other_view', 'conf' [, ...]} (view 2's points in view 1's camera frame)
      [, intermediates].
    """
    model = _module(config, params)
    dt = _dtype(params)
    inter: dict | None = {} if with_inter else None
    with matmul_precision(precision, dt):
        res1, res2 = model(img1.astype(dt), img2.astype(dt), true_shape1, true_shape2, inter, impl, remat)
    return (res1, res2, inter) if with_inter else (res1, res2)


@functools.partial(jax.jit, static_argnames=("config", "impl", "precision"))
def encode_images(config: DUSt3RConfig, params: Mapping, img: jax.Array, true_shape: jax.Array | None = None,
                  impl: str | None = None, precision: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Siamese encoder alone: (B, H, W, 3) -> feat (B, N, Ce), pos (B, N, 2) int32 (`impl`, `precision` as
    `stereo_forward`)."""
    model = _module(config, params)
    dt = _dtype(params)
    with matmul_precision(precision, dt):
        return model.encode(img.astype(dt), true_shape, impl=impl)


def in_steps(fn: Callable, args: tuple, per_step: int | None) -> Any:
    """`fn(*args)` over the leading (batch) axis in sequential steps of `per_step` entries (`lax.map`).

    Step i takes entries {i, i + S, i + 2S, ...} (S = number of steps), so a batch axis sharded in blocks
    over D devices (D dividing `per_step`) stays sharded: each step holds per_step / D entries per device.
    Used on CPU, where a 512x384 pair's decoder and DPT activations fit the caches one pair at a time and
    a whole batch does not. `None`, or a `per_step` that does not divide the batch, is one step.
    """
    b = jax.tree.leaves(args)[0].shape[0]
    if per_step is None or per_step >= b or b % per_step:
        return fn(*args)
    steps = b // per_step

    def split(a):  # (B, ...) -> (S, per_step, ...): entry j*S + i -> [i, j]
        return jnp.swapaxes(a.reshape((per_step, steps) + a.shape[1:]), 0, 1)

    def merge(a):
        return jnp.swapaxes(a, 0, 1).reshape((b,) + a.shape[2:])

    out = jax.lax.map(lambda xs: fn(*xs), jax.tree.map(split, args))
    return jax.tree.map(merge, out)


@functools.partial(jax.jit, static_argnames=("config", "hw1", "hw2", "impl", "pairs_per_step", "precision"))
def decode_pairs(config: DUSt3RConfig, params: Mapping, feat1: jax.Array, pos1: jax.Array, feat2: jax.Array,
                 pos2: jax.Array, hw1: tuple[int, int], hw2: tuple[int, int],
                 true_shape1: jax.Array | None = None, true_shape2: jax.Array | None = None,
                 impl: str | None = None, pairs_per_step: int | None = None, precision: str | None = None):
    """Decoders + heads on pre-computed encodings (the encoder-cache path of pair inference).

    `pairs_per_step` runs the batch in sequential steps of that many pairs (see `in_steps`); the result
    is the same. `impl`, `precision` as `stereo_forward` (None resolves from the encoder/decoder params'
    dtype, so float32 heads of bfloat16 trunk params run at the backend's default).

    Returns:
      (pred1, pred2) exactly as `stereo_forward`.
    """
    model = _module(config, params)

    def run(f1, p1, f2, p2, ts1, ts2):
        d1, d2 = model.decode(f1, p1, f2, p2, impl=impl)
        res1 = model.head(1, d1, hw1, ts1)
        res2 = model.head(2, d2, hw2, ts2)
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2

    with matmul_precision(precision, _dtype(params)):
        return in_steps(run, (feat1, pos1, feat2, pos2, true_shape1, true_shape2), pairs_per_step)


@functools.partial(jax.jit, static_argnames=("config", "impl", "precision", "remat"))
def symmetric_forward(config: DUSt3RConfig, params: Mapping, img1: jax.Array, img2: jax.Array,
                      true_shape1: jax.Array | None = None, true_shape2: jax.Array | None = None,
                      impl: str | None = None, precision: str | None = None, remat: str | None = None):
    """Encode a pair once, run decoders + heads in both directions (MASt3R's `symmetric_inference`).

    The two images are encoded in one call when their sizes agree (as the official
    `_encode_image_pairs`), separately otherwise.

    Args:
      img1, img2: (B, H1, W1, 3), (B, H2, W2, 3) in [-1, 1].
      true_shape1, true_shape2: (B, 2) int (height, width); only read by training-style models.
      impl, precision, remat: as `stereo_forward`.

    Returns:
      (res11, res21, res22, res12): res11/res21 = view 1 as reference (`model(view1, view2)`),
      res22/res12 = view 2 as reference. Each is a dict of (B, H, W, ...) float32 maps whose
      points are under the key `pts3d` (no `pts3d_in_other_view` renaming, as the official code).
    """
    with matmul_precision(precision, _dtype(params)):
        return _symmetric(_module(config, params), _dtype(params), img1, img2, true_shape1, true_shape2, impl,
                          remat)


def _symmetric(model: nnx.Module, dt: Any, img1: jax.Array, img2: jax.Array, true_shape1: jax.Array | None,
               true_shape2: jax.Array | None, impl: str | None, remat: str | None = None):
    img1, img2 = img1.astype(dt), img2.astype(dt)
    hw1, hw2 = img1.shape[1:3], img2.shape[1:3]
    if hw1 == hw2:
        b = img1.shape[0]
        ts = None if true_shape1 is None else jnp.concatenate([true_shape1, true_shape2])
        f, pos = model.encode(jnp.concatenate([img1, img2]), ts, impl=impl, remat=remat)
        f1, f2, pos1, pos2 = f[:b], f[b:], pos[:b], pos[b:]
    else:
        f1, pos1 = model.encode(img1, true_shape1, impl=impl, remat=remat)
        f2, pos2 = model.encode(img2, true_shape2, impl=impl, remat=remat)
    d1, d2 = model.decode(f1, pos1, f2, pos2, impl=impl, remat=remat)
    res11, res21 = model.head(1, d1, hw1, true_shape1, remat=remat), model.head(2, d2, hw2, true_shape2, remat=remat)
    e2, e1 = model.decode(f2, pos2, f1, pos1, impl=impl, remat=remat)
    res22, res12 = model.head(1, e2, hw2, true_shape2, remat=remat), model.head(2, e1, hw1, true_shape1, remat=remat)
    return res11, res21, res22, res12


# ---------------------------------------------------------------------------------------------
# CroCo


@functools.partial(jax.jit, static_argnames=("config", "with_inter", "precision", "remat"))
def croco_forward(config: CroCoConfig, params: Mapping, img1: jax.Array, img2: jax.Array, mask: jax.Array,
                  with_inter: bool = False, precision: str | None = None, remat: str | None = None):
    """CroCoNet pretraining forward: (out (B,N,p*p*3), mask (B,N) bool, target (B,N,p*p*3)) [, inter].

    `precision`, `remat` as `stereo_forward`."""
    model = _module(config, params)
    dt = _dtype(params)
    inter: dict | None = {} if with_inter else None
    with matmul_precision(precision, dt):
        out, mask, target = model(img1.astype(dt), img2.astype(dt), mask, inter, remat)
    return (out, mask, target, inter) if with_inter else (out, mask, target)


# ---------------------------------------------------------------------------------------------


def _view_arrays(view: Mapping, name: str) -> tuple[jax.Array, jax.Array]:
    if "img" not in view:
        raise ValueError(f"{name} has no 'img' entry (expected (B, H, W, 3) float in [-1, 1])")
    img = jnp.asarray(view["img"])
    if img.ndim != 4 or img.shape[-1] != 3:
        raise ValueError(f"{name}['img'] must be (B, H, W, 3) NHWC, got shape {tuple(img.shape)}")
    ts = view.get("true_shape")
    if ts is None:
        ts = np.tile(np.array(img.shape[1:3], np.int32), (img.shape[0], 1))
    return img, jnp.asarray(ts, jnp.int32).reshape(img.shape[0], 2)


@struct.dataclass
class Model:
    """A model: frozen config + plain nested dict of params. Call it like the official module.

    DUSt3R / MASt3R: `pred1, pred2 = model(view1, view2)`.
    CroCoNet: `out, mask, target = model(img1, img2, mask=mask)` (or `key=` to sample the mask).

    Keywords: `return_intermediates`, `impl` (attention implementation, DUSt3R / MASt3R only) and `precision`
    (None: exact float32 dots/convs for float32 params, the backend default for bfloat16 params; or
    'highest' | 'high' | 'default'), as `stereo_forward`.
    """

    config: CroCoConfig = struct.field(pytree_node=False)
    params: dict

    @property
    def is_stereo(self) -> bool:
        return isinstance(self.config, DUSt3RConfig)

    def __call__(self, a: Any, b: Any, *, mask: Any = None, key: jax.Array | None = None,
                 return_intermediates: bool = False, impl: str | None = None, precision: str | None = None):
        precision = check_precision(precision)
        if self.is_stereo:
            img1, ts1 = _view_arrays(a, "view1")
            img2, ts2 = _view_arrays(b, "view2")
            if img1.shape[0] != img2.shape[0]:
                raise ValueError(f"view1 and view2 have different batch sizes ({img1.shape[0]} vs {img2.shape[0]})")
            return stereo_forward(self.config, self.params, img1, img2, ts1, ts2, return_intermediates, impl,
                                  precision)
        img1, img2 = jnp.asarray(a), jnp.asarray(b)
        if mask is None:
            if key is None:
                raise ValueError("CroCoNet needs a `mask` (B, N) bool or a PRNG `key` to sample one")
            from f3d_jax.models.croco import random_mask
            mask = random_mask(key, img1.shape[0], self.config.num_patches, self.config.mask_ratio)
        return croco_forward(self.config, self.params, img1, img2, jnp.asarray(mask, bool), return_intermediates,
                             precision)
