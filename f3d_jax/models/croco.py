"""CroCo pretraining model (v1 cosine / v2 RoPE). Equivalent of croco/models/croco.py:CroCoNet and
croco/models/criterion.py:MaskedMSE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.models.config import CroCoConfig
from f3d_jax.nn.compat import nnx
from f3d_jax.nn.layers import Block, DecoderBlock, layer_norm
from f3d_jax.nn.patch_embed import PatchEmbed, patchify
from f3d_jax.nn.pos_embed import sincos_2d
from f3d_jax.nn.remat import scan_blocks

Inter = dict[str, jax.Array] | None


class Buffer(nnx.Variable):
    """A fixed (non-trained) array stored in official checkpoints, e.g. the cosine position tables."""


def _record(inter: Inter, key: str, value: jax.Array) -> None:
    if inter is not None:
        inter[key] = value


def random_mask(key: jax.Array, batch: int, num_patches: int, mask_ratio: float) -> jax.Array:
    """The official `RandomMask`: exactly `int(mask_ratio * N)` True (= hidden) tokens per row.

    Returns:
      (B, N) bool.
    """
    num_mask = int(mask_ratio * num_patches)
    noise = jax.random.uniform(key, (batch, num_patches))
    return jnp.argsort(noise, axis=1) < num_mask


def _sincos_table(dim: int, h: int, w: int) -> jax.Array:
    """The (h*w, dim) float32 cosine table, computed in float64 numpy as the official code.

    Through `pure_callback` the numpy code only runs when the value is needed: under `eval_shape`
    (`abstract_module`, used to check a checkpoint's shapes before loading it) the table is a
    shape, never built, however large the config makes it.
    """
    return jax.pure_callback(lambda: sincos_2d(dim, h, w).astype(np.float32),
                             jax.ShapeDtypeStruct((h * w, dim), jnp.float32))


class CroCoNet(nnx.Module):
    """Masked cross-view completion: encoder on the visible tokens of img1 and all of img2, decoder
    that cross-attends from img1's full grid into img2, linear prediction of img1's patches."""

    def __init__(self, cfg: CroCoConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        rope = cfg.rope_base
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim, rngs=rngs)
        if rope is None:
            h, w = cfg.img_size[0] // cfg.patch_size, cfg.img_size[1] // cfg.patch_size
            self.enc_pos_embed = Buffer(_sincos_table(cfg.enc_embed_dim, h, w))
            self.dec_pos_embed = Buffer(_sincos_table(cfg.dec_embed_dim, h, w))
        self.enc_blocks = nnx.List([Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope, rngs=rngs)
                                    for _ in range(cfg.enc_depth)])
        self.enc_norm = layer_norm(cfg.enc_embed_dim, rngs)
        self.decoder_embed = nnx.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim, rngs=rngs)
        self.mask_token = nnx.Param(jnp.zeros((1, 1, cfg.dec_embed_dim)))
        self.dec_blocks = nnx.List([
            DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope, cfg.norm_im2_in_dec, rngs=rngs)
            for _ in range(cfg.dec_depth)])
        self.dec_norm = layer_norm(cfg.dec_embed_dim, rngs)
        self.prediction_head = nnx.Linear(cfg.dec_embed_dim, cfg.patch_size**2 * 3, rngs=rngs)

    def _encode(self, img: jax.Array, mask: jax.Array | None, inter: Inter, name: str, remat: str | None = None):
        x, pos = self.patch_embed(img)
        _record(inter, f"{name}.patch_embed", x)
        _record(inter, f"{name}.pos", pos)
        if self.cfg.rope_base is None:
            x = x + self.enc_pos_embed[...]
        if mask is not None:
            # visible tokens in their original order: a stable argsort puts the False entries first
            n_vis = x.shape[1] - int(self.cfg.mask_ratio * x.shape[1])
            vis = jnp.argsort(mask, axis=1, stable=True)[:, :n_vis]
            x = jnp.take_along_axis(x, vis[..., None], axis=1)
            pos = jnp.take_along_axis(pos, vis[..., None], axis=1)
            _record(inter, f"{name}.enc_pos_vis", pos)
        if remat is None or remat == "none":
            for i, blk in enumerate(self.enc_blocks):
                x = blk(x, pos)
                _record(inter, f"{name}.enc_block{i}", x)
        else:  # training: checkpointed blocks under one scan (f3d_jax.nn.remat)
            x, _ = scan_blocks([(b,) for b in self.enc_blocks], lambda x, b: (b(x, pos), None), x, remat)
        x = self.enc_norm(x)
        _record(inter, f"{name}.enc_out", x)
        return x, pos

    def __call__(self, img1: jax.Array, img2: jax.Array, mask: jax.Array,
                 inter: Inter = None, remat: str | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Pretraining forward.

        Args:
          img1, img2: (B, S, S, 3) ImageNet-normalised images, S = img_size.
          mask: (B, N) bool, True = hidden token of img1, exactly `int(mask_ratio*N)` per row.
          inter: optional dict filled with named intermediates.
          remat: checkpoint each encoder / decoder block (`f3d_jax.nn.remat`; training only).

        Returns:
          out (B, N, p*p*3) predicted patches, mask (B, N), target (B, N, p*p*3) = patchify(img1).
        """
        cfg = self.cfg
        if img1.shape[1:3] != cfg.img_size or img2.shape[1:3] != cfg.img_size:
            raise ValueError(f"CroCoNet expects {cfg.img_size} images, got {img1.shape[1:3]} and {img2.shape[1:3]}")
        f1, _ = self._encode(img1, mask, inter, "img1", remat)
        f2, pos2 = self._encode(img2, None, inter, "img2", remat)
        y = self.decoder_embed(f2)
        v = self.decoder_embed(f1)
        _record(inter, "img1.dec_embed", v)
        _record(inter, "img2.dec_embed", y)
        b, n = mask.shape
        n_vis = v.shape[1]
        vis = jnp.argsort(mask, axis=1, stable=True)[:, :n_vis]
        x = jnp.broadcast_to(self.mask_token[...].astype(v.dtype), (b, n, v.shape[-1]))
        x = x.at[jnp.arange(b)[:, None], vis].set(v)
        if cfg.rope_base is None:
            x = x + self.dec_pos_embed[...]
            y = y + self.dec_pos_embed[...]
        xpos = pos2  # full grids: same positions for both streams
        _record(inter, "dec_in.x", x)
        _record(inter, "dec_in.y", y)
        _record(inter, "dec_in.xpos", xpos)
        _record(inter, "dec_in.ypos", pos2)
        if remat is None or remat == "none":
            for i, blk in enumerate(self.dec_blocks):
                x = blk(x, y, xpos, pos2)  # the img2 stream is not updated between blocks
                _record(inter, f"dec_block{i}", x)
        else:  # training: checkpointed blocks under one scan (f3d_jax.nn.remat)
            x, _ = scan_blocks([(b,) for b in self.dec_blocks], lambda x, b: (b(x, y, xpos, pos2), None), x, remat)
        x = self.dec_norm(x)
        _record(inter, "dec_out", x)
        out = self.prediction_head(x)
        _record(inter, "prediction_head", out)
        return out, mask, patchify(img1, cfg.patch_size)


def masked_mse(out: jax.Array, mask: jax.Array, target: jax.Array, norm_pix_loss: bool = True,
               masked: bool = True) -> jax.Array:
    """The official `MaskedMSE` criterion.

    With `norm_pix_loss`, each target patch is normalised by its mean and **unbiased** variance
    (torch.var, ddof=1). The per-patch MSE is averaged over the hidden patches (`masked`) or over all.

    Returns:
      () float32.
    """
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    loss = jnp.square(out - target).mean(axis=-1)
    if not masked:
        return loss.mean()
    m = mask.astype(loss.dtype)
    return (loss * m).sum() / m.sum()
