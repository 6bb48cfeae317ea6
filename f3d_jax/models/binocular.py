"""CroCo-Stereo and CroCo-Flow: the CroCo v2 binocular downstream network with its DPT head.

Equivalent of croco/models/croco_downstream.py:CroCoDownstreamBinocular with
croco/models/head_downstream.py:PixelwiseTaskWithDPT (croco/models/dpt_block.py), as built by
croco/stereoflow/train.py and test.py:

* both images are encoded in one batch (`cat(img1, img2)`), every encoder block kept
  (the last one after `enc_norm`);
* the decoder updates the image-1 stream only; the image-2 memory is `decoder_embed(enc(img2))` and
  never changes; `dec_norm` is applied to the last decoder output alone;
* the DPT head reads four entries of `encoder blocks + decoder blocks` chosen from the decoder depth
  (`step = {8: 3, 12: 4, 24: 8}`, `hooks = [enc_depth + dec_depth - 1 - i * step for i = 3..0]`) and
  returns the raw disparity (stereo, 1 channel) or flow (2 channels, x then y), then the raw
  confidence logit in the last channel (when the training criterion has one). No activation.

Images are NHWC, ImageNet-normalised (the official `img_to_tensor`), of exactly the crop size the
model was trained at (`config.img_size`, a multiple of 32: the CroCo DPT head halves the 16-pixel
patch grid once and never crops). Larger images go through `f3d_jax.stereoflow.tiled_pred`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from f3d_jax.models.config import CroCoConfig, brief
from f3d_jax.models.croco import Buffer, _sincos_table
from f3d_jax.models.heads import DPTAdapter
from f3d_jax.nn.compat import nnx
from f3d_jax.nn.layers import Block, DecoderBlock, layer_norm
from f3d_jax.nn.patch_embed import PatchEmbed
from f3d_jax.nn.precision import check_precision, matmul_precision

Inter = dict[str, jax.Array] | None

TASKS = ("stereo", "flow")
TASK_CHANNELS = {"stereo": 1, "flow": 2}
HOOK_STEP = {8: 3, 12: 4, 24: 8}  # the official automatic DPT hook spacing per decoder depth
CROCO_DPT_LAST_DIM = 32  # dpt_block.DPTOutputAdapter's default last_dim (DUSt3R uses 128)
CROP_MULTIPLE = 32


def dpt_hooks(enc_depth: int, dec_depth: int) -> tuple[int, int, int, int]:
    """The automatic hooks of `PixelwiseTaskWithDPT.setup` into `encoder blocks + decoder blocks`.

    Raises:
      ValueError: a decoder depth other than 8, 12 or 24 (the official code raises KeyError), or an
        encoder too shallow for the first hook (it would index from the end of the list).
    """
    if dec_depth not in HOOK_STEP:
        raise ValueError(f"dec_depth={dec_depth}: the CroCo DPT head picks its hooks for decoder depths "
                         f"{sorted(HOOK_STEP)} only")
    step = HOOK_STEP[dec_depth]
    hooks = tuple(enc_depth + dec_depth - 1 - i * step for i in range(3, -1, -1))
    if hooks[0] < 0:
        raise ValueError(f"enc_depth={enc_depth} is too shallow for the DPT hooks of dec_depth={dec_depth} "
                         f"(first hook {hooks[0]})")
    return hooks  # type: ignore[return-value]


def crop_problem(crop: Any, patch_size: int = 16) -> str | None:
    """What is wrong with a tile / network input size (H, W), or None."""
    if not (isinstance(crop, tuple | list) and len(crop) == 2
            and all(isinstance(c, int) and not isinstance(c, bool) for c in crop)):
        return f"crop={brief(crop)} should be a (height, width) pair of ints"
    if any(c <= 0 for c in crop):
        return f"crop={brief(tuple(crop))} should be positive"
    mult = 2 * patch_size
    if any(c % mult for c in crop):
        return (f"crop={brief(tuple(crop))} is not a multiple of {mult} in both directions (the CroCo DPT head "
                f"halves the {patch_size}-pixel patch grid once and never crops)")
    return None


@dataclasses.dataclass(frozen=True)
class CroCoDownstreamConfig(CroCoConfig):
    """`CroCoDownstreamBinocular(head, **croco_args)` with `PixelwiseTaskWithDPT`, as test.py builds it.

    The CroCo fields are `args.croco_args` (with `img_size = args.crop`); `task` ('stereo' | 'flow')
    and `with_conf` (the training criterion has a confidence: every Laplacian loss) set the head's
    output channels `{'stereo': 1, 'flow': 2}[task] + with_conf`.

    Raises:
      ValueError: a bad CroCo argument, an unknown task, a decoder depth without automatic DPT hooks
        (8, 12, 24), a patch size other than 16 (the DPT adapter's), or an image size that is not a
        multiple of 32.
    """

    task: str = "stereo"
    with_conf: bool = True

    official_class = "CroCoDownstreamBinocular"

    def _check_support(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={brief(self.task)} should be 'stereo' or 'flow'")
        if not isinstance(self.with_conf, bool):
            raise ValueError(f"with_conf={brief(self.with_conf)} should be a bool")
        if self.patch_size != 16:
            raise ValueError(f"the CroCo DPT head is fixed to patch size 16, got {self.patch_size}")
        dpt_hooks(self.enc_depth, self.dec_depth)
        problem = crop_problem(self.img_size, self.patch_size)
        if problem:
            raise ValueError(problem.replace("crop=", "img_size (the crop) = ", 1))

    @property
    def num_channels(self) -> int:
        """Output channels: disparity (1) or flow (2), plus the confidence logit when `with_conf`."""
        return TASK_CHANNELS[self.task] + int(self.with_conf)

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        return dpt_hooks(self.enc_depth, self.dec_depth)

    @property
    def dim_tokens(self) -> tuple[int, ...]:
        return tuple(self.enc_embed_dim if h < self.enc_depth else self.dec_embed_dim for h in self.hooks)

    def reduced(self) -> "CroCoDownstreamConfig":
        """The fewest blocks with every parameter shape of this config (for cheap shape checks): the first
        hook stays an encoder block, the decoder depth (which picks the hooks) is kept."""
        return self.replace(enc_depth=min(self.enc_depth, 2))


def _record(inter: Inter, key: str, value: jax.Array) -> None:
    if inter is not None:
        inter[key] = value


class PixelwiseTaskWithDPT(nnx.Module):
    """The official head: a DPT adapter (param prefix `dpt`) with CroCo's head widths (last_dim 32)."""

    def __init__(self, cfg: CroCoDownstreamConfig, *, rngs: nnx.Rngs):
        self.dpt = DPTAdapter(cfg.dim_tokens, cfg.hooks, cfg.num_channels, last_dim=CROCO_DPT_LAST_DIM, rngs=rngs)

    def __call__(self, decout: list[jax.Array], hw: tuple[int, int], inter: Inter = None) -> jax.Array:
        return self.dpt(decout, hw, inter, "head.")


class CroCoDownstreamBinocular(nnx.Module):
    """CroCo v2 backbone (no mask token, no prediction head) + `PixelwiseTaskWithDPT` (param prefix `head`)."""

    def __init__(self, cfg: CroCoDownstreamConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        rope = cfg.rope_base
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim, rngs=rngs)
        if rope is None:  # CroCo v1 backbones: fixed cosine tables, stored in the state dict
            h, w = cfg.img_size[0] // cfg.patch_size, cfg.img_size[1] // cfg.patch_size
            self.enc_pos_embed = Buffer(_sincos_table(cfg.enc_embed_dim, h, w))
            self.dec_pos_embed = Buffer(_sincos_table(cfg.dec_embed_dim, h, w))
        self.enc_blocks = nnx.List([Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope, rngs=rngs)
                                    for _ in range(cfg.enc_depth)])
        self.enc_norm = layer_norm(cfg.enc_embed_dim, rngs)
        self.decoder_embed = nnx.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim, rngs=rngs)
        self.dec_blocks = nnx.List([
            DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope, cfg.norm_im2_in_dec, rngs=rngs)
            for _ in range(cfg.dec_depth)])
        self.dec_norm = layer_norm(cfg.dec_embed_dim, rngs)
        self.head = PixelwiseTaskWithDPT(cfg, rngs=rngs)

    def _encode_pair(self, img1: jax.Array, img2: jax.Array, inter: Inter, impl: str | None):
        """Both images in one batch. Returns (every block of image 1 (last after enc_norm), image 2's
        enc_norm output, pos1, pos2)."""
        b = img1.shape[0]
        x, pos = self.patch_embed(jnp.concatenate([img1, img2]))
        if inter is not None:
            for k, (v, p) in enumerate(((x[:b], pos[:b]), (x[b:], pos[b:])), start=1):
                inter[f"img{k}.patch_embed"], inter[f"img{k}.pos"] = v, p
        if self.cfg.rope_base is None:
            x = x + self.enc_pos_embed[...]
        out = []
        last = len(self.enc_blocks) - 1
        for i, blk in enumerate(self.enc_blocks):
            x = blk(x, pos, impl)
            if inter is not None:
                inter[f"img1.enc_block{i}"], inter[f"img2.enc_block{i}"] = x[:b], x[b:]
            # only image 1's blocks feed the head: keep image 2's last output alone
            out.append(x[:b] if i < last else x)
        x = self.enc_norm(x)
        _record(inter, "img1.enc_norm", x[:b])
        _record(inter, "img2.enc_norm", x[b:])
        out[-1] = x[:b]
        return out, x[b:], pos[:b], pos[b:]

    def __call__(self, img1: jax.Array, img2: jax.Array, inter: Inter = None, impl: str | None = None) -> jax.Array:
        """Raw head output.

        Args:
          img1, img2: (B, H, W, 3) ImageNet-normalised, (H, W) = `cfg.img_size` (any multiple of 32 with RoPE).
          inter: optional dict filled with the named intermediates (tokens (B, N, C), NHWC maps).

        Returns:
          (B, H, W, num_channels): disparity or flow (x, y), then the confidence logit when `with_conf`.
        """
        cfg = self.cfg
        hw = tuple(img1.shape[1:3])
        enc1, f2, pos1, pos2 = self._encode_pair(img1, img2, inter, impl)
        x, y = self.decoder_embed(enc1[-1]), self.decoder_embed(f2)
        _record(inter, "img1.decoder_embed", x)
        _record(inter, "img2.decoder_embed", y)
        if cfg.rope_base is None:
            x = x + self.dec_pos_embed[...]
            y = y + self.dec_pos_embed[...]
        dec = []
        for i, blk in enumerate(self.dec_blocks):
            x = blk(x, y, pos1, pos2, impl)  # the image-2 memory is not updated between blocks
            _record(inter, f"dec_block{i}", x)
            dec.append(x)
        dec[-1] = self.dec_norm(x)
        _record(inter, "dec_norm", dec[-1])
        decout = [t.astype(jnp.float32) for t in enc1 + dec]  # the head runs in float32
        return self.head(decout, hw, inter)


# ---------------------------------------------------------------------------------------------
# functional runtime


def build_binocular(config: CroCoDownstreamConfig, rngs: nnx.Rngs) -> CroCoDownstreamBinocular:
    return CroCoDownstreamBinocular(config, rngs=rngs)


def _module(config: CroCoDownstreamConfig, params: Mapping) -> CroCoDownstreamBinocular:
    from f3d_jax.models.model import graphdef_of

    return nnx.merge(graphdef_of(config), params)


def _dtype(params: Mapping) -> Any:
    return params["patch_embed"]["proj"]["kernel"].dtype


@functools.partial(jax.jit, static_argnames=("config", "with_inter", "impl", "precision", "per_step"))
def binocular_forward(config: CroCoDownstreamConfig, params: Mapping, img1: jax.Array, img2: jax.Array,
                      with_inter: bool = False, impl: str | None = None, precision: str | None = None,
                      per_step: int | None = None):
    """`model(img1, img2)` on arrays: (B, H, W, 3) x 2 -> (B, H, W, num_channels) float32 [, intermediates].

    `per_step` (without `with_inter`) runs the batch in sequential steps of that many pairs
    (`f3d_jax.models.model.in_steps`: same result, bounded memory; a sharded batch stays sharded when the
    device count divides `per_step`); None, or a value that does not divide B, is one step.
    `impl`, `precision` as `f3d_jax.models.model.stereo_forward`.
    """
    from f3d_jax.models.model import in_steps

    model = _module(config, params)
    dt = _dtype(params)
    inter: dict | None = {} if with_inter else None
    with matmul_precision(precision, dt):
        if with_inter:
            out = model(img1.astype(dt), img2.astype(dt), inter, impl)
        else:
            out = in_steps(lambda a, b: model(a.astype(dt), b.astype(dt), None, impl), (img1, img2), per_step)
    out = out.astype(jnp.float32)
    return (out, inter) if with_inter else out


def check_pair(config: CroCoDownstreamConfig, img1: Any, img2: Any, *, exact_size: bool = True) -> None:
    """Clear errors for a bad image pair (shapes only; nothing is computed).

    Raises:
      ValueError: not (B, H, W, 3) arrays, different shapes, or (with `exact_size`) a size the network cannot take.
    """
    for name, img in (("img1", img1), ("img2", img2)):
        shape = getattr(img, "shape", None)
        if shape is None or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{name} should be a (B, H, W, 3) NHWC array, got shape {brief(shape)}")
    if tuple(img1.shape) != tuple(img2.shape):
        raise ValueError(f"img1 and img2 have different shapes: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    if not exact_size:
        return
    hw = tuple(int(s) for s in img1.shape[1:3])
    if config.rope_base is None and hw != config.img_size:
        raise ValueError(f"this model (cosine position tables) takes {config.img_size} images, got {hw}; "
                         "use f3d_jax.stereoflow.tiled_pred for other sizes")
    problem = crop_problem(hw, config.patch_size)
    if problem:
        raise ValueError(problem.replace("crop=", "image size ", 1) + "; use f3d_jax.stereoflow.tiled_pred")


@struct.dataclass
class BinocularModel:
    """A CroCo-Stereo / CroCo-Flow model: frozen config, params and the checkpoint's inference settings.

    `out = model(img1, img2)`: (B, H, W, C + 1) float32 raw outputs (C = 1 disparity / 2 flow x, y; the
    last channel is the confidence logit). `crop` (= `config.img_size`), `tile_conf_mode` and `criterion`
    are the checkpoint's `args`, used by `f3d_jax.stereoflow.tiled_pred`.
    """

    config: CroCoDownstreamConfig = struct.field(pytree_node=False)
    params: dict
    tile_conf_mode: str = struct.field(pytree_node=False, default="conf_expsigmoid_15_3")
    criterion: str = struct.field(pytree_node=False, default="LaplacianLossBounded2()")

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def crop(self) -> tuple[int, int]:
        return self.config.img_size

    @property
    def with_conf(self) -> bool:
        return self.config.with_conf

    def __call__(self, img1: Any, img2: Any, *, return_intermediates: bool = False, impl: str | None = None,
                 precision: str | None = None):
        precision = check_precision(precision)
        check_pair(self.config, img1, img2)
        return binocular_forward(self.config, self.params, jnp.asarray(img1), jnp.asarray(img2),
                                 return_intermediates, impl, precision)
