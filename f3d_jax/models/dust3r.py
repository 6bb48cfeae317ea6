"""DUSt3R and MASt3R networks. Equivalent of dust3r/model.py:AsymmetricCroCo3DStereo and
mast3r/model.py:AsymmetricMASt3R.

A siamese ViT encoder, two cross-attending decoders (`dec_blocks` for view 1, `dec_blocks2` for
view 2) and one pixel head per view. Images are NHWC in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from f3d_jax.models.config import DUSt3RConfig, MASt3RConfig
from f3d_jax.models.heads import (CatMlpDPTHead, DPTHead, LinearHead, postprocess, postprocess_mast3r,
                                  transpose_to_landscape)
from f3d_jax.nn.compat import nnx
from f3d_jax.nn.layers import Block, DecoderBlock, layer_norm
from f3d_jax.nn.patch_embed import PatchEmbed
from f3d_jax.nn.remat import checkpointed, scan_blocks

Inter = dict[str, jax.Array] | None


def _record(inter: Inter, key: str, value: jax.Array) -> None:
    if inter is not None:
        inter[key] = value


def _make_head(cfg: DUSt3RConfig, rngs: nnx.Rngs) -> nnx.Module:
    nch = 3 + int(cfg.has_conf)
    if isinstance(cfg, MASt3RConfig):
        return CatMlpDPTHead(cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dpt_hooks, nch, cfg.patch_size,
                             cfg.desc_dim + int(cfg.two_confs), rngs=rngs)
    if cfg.head_type == "dpt":
        return DPTHead(cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dpt_hooks, nch, rngs=rngs)
    return LinearHead(cfg.dec_embed_dim, cfg.patch_size, nch, rngs=rngs)


class AsymmetricCroCo3DStereo(nnx.Module):
    """DUSt3R (linear or DPT head) and, with a `MASt3RConfig`, MASt3R (catmlp+dpt head)."""

    def __init__(self, cfg: DUSt3RConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        rope = cfg.rope_base
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim, rngs=rngs)
        self.mask_token = nnx.Param(jnp.zeros((1, 1, cfg.dec_embed_dim)))  # in every checkpoint, unused
        self.enc_blocks = nnx.List([Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope, rngs=rngs)
                                    for _ in range(cfg.enc_depth)])
        self.enc_norm = layer_norm(cfg.enc_embed_dim, rngs)
        self.decoder_embed = nnx.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim, rngs=rngs)

        def dec():
            return nnx.List([
                DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope, cfg.norm_im2_in_dec,
                             rngs=rngs) for _ in range(cfg.dec_depth)])

        self.dec_blocks = dec()
        self.dec_blocks2 = dec()
        self.dec_norm = layer_norm(cfg.dec_embed_dim, rngs)
        self.downstream_head1 = _make_head(cfg, rngs)
        self.downstream_head2 = _make_head(cfg, rngs)

    # -- encoder ---------------------------------------------------------------------------------

    def encode(self, img: jax.Array, true_shape: jax.Array | None = None, inter: Inter = None,
               name: str = "view", impl: str | None = None,
               remat: str | None = None) -> tuple[jax.Array, jax.Array]:
        """Encode a batch of images.

        Args:
          img: (B, H, W, 3) in [-1, 1].
          true_shape: (B, 2) int (height, width); used by the ManyAR (training) patch embedding only.
          remat: checkpoint each block (`f3d_jax.nn.remat`; training only, None for inference).

        Returns:
          feat: (B, N, Ce) after `enc_norm`; pos: (B, N, 2) int32 (y, x).
        """
        x, pos = self.patch_embed(img, true_shape, manyar=self.cfg.manyar)
        _record(inter, f"{name}.patch_embed", x)
        _record(inter, f"{name}.pos", pos)
        if remat is None or remat == "none":
            for i, blk in enumerate(self.enc_blocks):
                x = blk(x, pos, impl)
                _record(inter, f"{name}.enc_block{i}", x)
        else:  # training: checkpointed blocks under one scan (f3d_jax.nn.remat)
            x, _ = scan_blocks([(b,) for b in self.enc_blocks], lambda x, b: (b(x, pos, impl), None), x, remat)
        x = self.enc_norm(x)
        _record(inter, f"{name}.enc_out", x)
        return x, pos

    # -- decoders --------------------------------------------------------------------------------

    def decode(self, f1: jax.Array, pos1: jax.Array, f2: jax.Array, pos2: jax.Array, inter: Inter = None,
               impl: str | None = None, remat: str | None = None) -> tuple[list[jax.Array], list[jax.Array]]:
        """Run both decoders; each block reads the previous layer of both streams (`remat`: checkpoint each
        pair of blocks, `f3d_jax.nn.remat`).

        Returns:
          decout1, decout2: lists `[enc_out, block_0, ..., block_{L-2}, dec_norm(block_{L-1})]`.
        """
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        _record(inter, "view1.dec_embed", x1)
        _record(inter, "view2.dec_embed", x2)
        if remat is None or remat == "none":
            for i, (b1, b2) in enumerate(zip(self.dec_blocks, self.dec_blocks2)):
                x1, x2 = b1(x1, x2, pos1, pos2, impl), b2(x2, x1, pos2, pos1, impl)
                _record(inter, f"view1.dec_block{i}", x1)
                _record(inter, f"view2.dec_block{i}", x2)
                out1.append(x1)
                out2.append(x2)
        else:  # training: checkpointed pairs of blocks under one scan (f3d_jax.nn.remat)
            def step(xs, b1, b2):
                x1, x2 = xs
                xs = b1(x1, x2, pos1, pos2, impl), b2(x2, x1, pos2, pos1, impl)
                return xs, xs

            (x1, x2), ys = scan_blocks(list(zip(self.dec_blocks, self.dec_blocks2)), step, (x1, x2), remat)
            out1 += [y[0] for y in ys]
            out2 += [y[1] for y in ys]
        out1[-1], out2[-1] = self.dec_norm(x1), self.dec_norm(x2)
        _record(inter, "view1.dec_out", out1[-1])
        _record(inter, "view2.dec_out", out2[-1])
        return out1, out2

    # -- heads -----------------------------------------------------------------------------------

    def _postprocess(self, raw: jax.Array) -> dict[str, jax.Array]:
        cfg = self.cfg
        if isinstance(cfg, MASt3RConfig):
            return postprocess_mast3r(raw, cfg.depth_mode, cfg.conf_mode, cfg.desc_dim, cfg.two_confs,
                                      cfg.effective_desc_conf_mode)
        return postprocess(raw, cfg.depth_mode, cfg.conf_mode)

    def head(self, which: int, decout: Sequence[jax.Array], hw: tuple[int, int],
             true_shape: jax.Array | None = None, inter: Inter = None, name: str = "view",
             remat: str | None = None) -> dict[str, jax.Array]:
        """Pixel head of view `which` (1 or 2) on its decoder outputs; images of size `hw` = (H, W).

        With `landscape_only` (training), (H, W) is the landscape storage size: portrait entries
        (by `true_shape`) go through the head with (W, H) and are transposed back into landscape
        storage, as the official `transpose_to_landscape` does.

        Returns:
          dict of (B, H, W, ...) float32 maps: pts3d, conf (+ desc, desc_conf for MASt3R).

        `remat` checkpoints the whole head (`f3d_jax.nn.remat`): its full-resolution activations are rebuilt in
        the backward pass instead of being kept for every head call of the step (four in a symmetric step), and
        a layout no entry needs is skipped (`_head_remat`).
        """
        head = self.downstream_head1 if which == 1 else self.downstream_head2
        decout = [t.astype(jnp.float32) for t in decout]  # the official heads run in float32

        if remat is not None and remat != "none":
            return self._head_remat(head, decout, hw, true_shape, remat)

        def head_fn(layout: tuple[int, int], orientation: str) -> dict[str, jax.Array]:
            tag = f"{orientation}." if orientation else ""
            return self._postprocess(head.raw(decout, layout, inter, f"{name}.head.{tag}"))

        return transpose_to_landscape(head_fn, hw, true_shape, self.cfg.landscape_only)

    def _head_remat(self, head: nnx.Module, decout: list[jax.Array], hw: tuple[int, int],
                    true_shape: jax.Array | None, remat: str) -> dict[str, jax.Array]:
        """`head` of the training step with remat: each layout's head is checkpointed inside a `lax.cond` that runs
        it only when an entry of the batch needs it (as the official `transpose_to_landscape`, which calls the
        head once for an all-landscape batch). The cond also keeps XLA:CPU from merging the backward's
        recomputation into the forward (`f3d_jax.nn.remat`). Same values as `transpose_to_landscape`."""
        def run(layout: tuple[int, int]) -> dict[str, jax.Array]:
            return checkpointed(lambda d: self._postprocess(head.raw(d, layout)), remat)(decout)

        def only_if(pred: jax.Array, layout: tuple[int, int]) -> dict[str, jax.Array]:
            shapes = jax.eval_shape(lambda: run(layout))
            return jax.lax.cond(pred, lambda: run(layout),
                                lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes))

        if not self.cfg.landscape_only or true_shape is None:
            return only_if(jnp.bool_(True), hw)
        h, w = min(hw), max(hw)
        is_portrait = true_shape[:, 1] < true_shape[:, 0]
        land = only_if(~jnp.all(is_portrait), (h, w))
        port = only_if(jnp.any(is_portrait), (w, h))
        return {k: jnp.where(is_portrait.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.swapaxes(port[k], 1, 2), v)
                for k, v in land.items()}

    # -- full forward ----------------------------------------------------------------------------

    def __call__(self, img1: jax.Array, img2: jax.Array, true_shape1: jax.Array | None = None,
                 true_shape2: jax.Array | None = None, inter: Inter = None, impl: str | None = None,
                 remat: str | None = None) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """`model(view1, view2)` on arrays. Returns (pred1, pred2); pred2 holds `pts3d_in_other_view`
        (`remat`: training only, `f3d_jax.nn.remat`)."""
        if img1.shape[1:3] == img2.shape[1:3] and inter is None:
            b = img1.shape[0]
            ts = None if true_shape1 is None else jnp.concatenate([true_shape1, true_shape2])
            f, pos = self.encode(jnp.concatenate([img1, img2]), ts, impl=impl, remat=remat)
            f1, f2, pos1, pos2 = f[:b], f[b:], pos[:b], pos[b:]
        else:  # different shapes, or per-view intermediates requested
            f1, pos1 = self.encode(img1, true_shape1, inter, "view1", impl, remat)
            f2, pos2 = self.encode(img2, true_shape2, inter, "view2", impl, remat)
        d1, d2 = self.decode(f1, pos1, f2, pos2, inter, impl, remat)
        res1 = self.head(1, d1, img1.shape[1:3], true_shape1, inter, "view1", remat)
        res2 = self.head(2, d2, img2.shape[1:3], true_shape2, inter, "view2", remat)
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2
