"""Pixel heads and their post-processing. Equivalent of dust3r/heads/{linear_head,dpt_head,postprocess}.py,
croco/models/dpt_block.py and mast3r/catmlp_dpt_head.py.

Heads read the decoder output list `decout = [enc_out, dec_block_0, ..., dec_block_{L-2},
dec_norm(dec_block_{L-1})]` of one view, each (B, N, C) in row-major token order, and return NHWC
maps at the image resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from f3d_jax.nn.compat import nnx
from f3d_jax.nn.layers import (Conv, ConvTranspose, Mlp, conv3x3_of_upsampled, pixel_shuffle,
                               resize_bilinear_align_corners)

Inter = dict[str, jax.Array] | None

# Constants of the official DPT head, independent of the backbone.
DPT_FEATURE_DIM = 256
DPT_LAST_DIM = 128
DPT_LAYER_DIMS = (96, 192, 384, 768)
DPT_PATCH = 16  # the adapter's own patch size; it never reads the model's


# ----------------------------------------------------------------------------------------------
# post-processing


def reg_dense_depth(xyz: jax.Array, mode: tuple[str, float, float]) -> jax.Array:
    """(..., 3) raw -> points. `exp`: xyz/|xyz| * expm1(|xyz|); `square`: xyz*|xyz|; `linear`: identity."""
    kind = mode[0]
    if kind == "linear":
        return xyz
    d = jnp.linalg.norm(xyz, axis=-1, keepdims=True)
    unit = xyz / jnp.maximum(d, 1e-8)  # a zero vector stays zero
    if kind == "square":
        return unit * jnp.square(d)
    if kind == "exp":
        return unit * jnp.expm1(d)
    raise ValueError(f"bad depth mode {kind!r}")


def reg_dense_conf(x: jax.Array, mode: tuple[str, float, float]) -> jax.Array:
    """Raw confidence -> `vmin + min(exp(x), vmax - vmin)` (`exp`) or `(vmax-vmin)*sigmoid(x) + vmin`."""
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + jnp.minimum(jnp.exp(x), vmax - vmin)
    if kind == "sigmoid":
        return (vmax - vmin) * jax.nn.sigmoid(x) + vmin
    raise ValueError(f"bad conf mode {kind!r}")


def postprocess(fmap: jax.Array, depth_mode, conf_mode) -> dict[str, jax.Array]:
    """(B, H, W, 3 [+1]) raw head output -> {'pts3d' (B,H,W,3), 'conf' (B,H,W)}."""
    res = {"pts3d": reg_dense_depth(fmap[..., 0:3], depth_mode)}
    if conf_mode is not None:
        res["conf"] = reg_dense_conf(fmap[..., 3], conf_mode)
    return res


def postprocess_mast3r(fmap: jax.Array, depth_mode, conf_mode, desc_dim: int, two_confs: bool,
                       desc_conf_mode) -> dict[str, jax.Array]:
    """MASt3R post-processing of (B, H, W, 4 + D [+1]): adds 'desc' (unit norm, no epsilon) and 'desc_conf'."""
    res = postprocess(fmap, depth_mode, conf_mode)
    start = 3 + int(conf_mode is not None)
    desc = fmap[..., start:start + desc_dim]
    res["desc"] = desc / jnp.linalg.norm(desc, axis=-1, keepdims=True)
    if two_confs:
        res["desc_conf"] = reg_dense_conf(fmap[..., start + desc_dim], desc_conf_mode)
    else:
        res["desc_conf"] = res["conf"]
    return res


def transpose_to_landscape(head_fn, hw: tuple[int, int], true_shape: jax.Array | None,
                           landscape_only: bool) -> dict[str, jax.Array]:
    """Orientation handling around a pixel head, as the official `transpose_to_landscape`.

    Args:
      head_fn: `(layout, orientation) -> {name: (B, h, w, ...)}`: the head called for one image
        layout `(h, w)`; `orientation` is '', 'landscape' or 'portrait' (for naming intermediates).
      hw: (H, W) of the images as stored in the batch.
      true_shape: (B, 2) int (height, width) of each entry; needed when `landscape_only`.
      landscape_only: False (inference): one call with `hw`. True (training): the batch is in
        landscape storage; landscape entries use (min, max) and portrait entries (width < height)
        use (max, min), their outputs transposed back into landscape storage. Both layouts are
        evaluated for the whole batch and selected per entry, so shapes stay static under jit.

    Returns:
      {name: (B, H, W, ...)} in the storage layout.
    """
    if not landscape_only or true_shape is None:
        return head_fn(hw, "")
    h, w = min(hw), max(hw)
    land, port = head_fn((h, w), "landscape"), head_fn((w, h), "portrait")
    is_portrait = true_shape[:, 1] < true_shape[:, 0]
    return {k: jnp.where(is_portrait.reshape((-1,) + (1,) * (v.ndim - 1)), jnp.swapaxes(port[k], 1, 2), v)
            for k, v in land.items()}


def tokens_to_map(tokens: jax.Array, h: int, w: int) -> jax.Array:
    """(B, h*w, C) row-major tokens -> (B, h, w, C)."""
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])


# ----------------------------------------------------------------------------------------------
# linear head


class LinearHead(nnx.Module):
    """`LinearPts3d`: one Linear on the last decoder tokens, pixel-shuffled to full resolution."""

    def __init__(self, dec_dim: int, patch_size: int, out_channels: int, *, rngs: nnx.Rngs):
        self.patch_size = patch_size
        self.proj = nnx.Linear(dec_dim, out_channels * patch_size**2, rngs=rngs)

    def raw(self, decout: Sequence[jax.Array], hw: tuple[int, int], inter: Inter = None, prefix: str = "") -> jax.Array:
        p = self.patch_size
        feat = self.proj(decout[-1])
        if inter is not None:
            inter[prefix + "proj"] = feat
        return pixel_shuffle(tokens_to_map(feat, hw[0] // p, hw[1] // p), p)


# ----------------------------------------------------------------------------------------------
# DPT head


class ResidualConvUnit(nnx.Module):
    """z + conv2(relu(conv1(relu(z)))), 3x3 convs with bias."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(dim, dim, 3, padding=1, rngs=rngs)
        self.conv2 = Conv(dim, dim, 3, padding=1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x))))


class FusionBlock(nnx.Module):
    """`FeatureFusionBlock_custom` without batch norm: (a [+ RCU1(b)]) -> RCU2 -> bilinear x2 -> 1x1 conv
    (computed as 1x1 conv -> bilinear x2: the same linear map, 4x cheaper)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.out_conv = Conv(dim, dim, 1, rngs=rngs)
        self.resConfUnit1 = ResidualConvUnit(dim, rngs=rngs)  # unused in refinenet4, but in the checkpoint
        self.resConfUnit2 = ResidualConvUnit(dim, rngs=rngs)

    def fuse(self, a: jax.Array, b: jax.Array | None = None) -> jax.Array:
        """The block before its resize and 1x1 conv: RCU2(a [+ RCU1(b)]), at the input resolution."""
        out = a if b is None else a + self.resConfUnit1(b)
        return self.resConfUnit2(out)

    def upsample(self, out: jax.Array) -> jax.Array:
        # the official order is resize then 1x1 conv; both are linear and the bilinear weights sum to 1 (the
        # bias passes through), so convolving first is the same map at a quarter of the conv's cost
        out = self.out_conv(out)
        return resize_bilinear_align_corners(out, 2 * out.shape[1], 2 * out.shape[2])

    def __call__(self, a: jax.Array, b: jax.Array | None = None) -> jax.Array:
        return self.upsample(self.fuse(a, b))


class Scratch(nnx.Module):
    def __init__(self, layer_dims: Sequence[int], dim: int, *, rngs: nnx.Rngs):
        # The official module registers these convs twice (layer{k}_rn and layer_rn.{k-1}); we keep one copy.
        self.layer_rn = nnx.List([Conv(d, dim, 3, padding=1, bias=False, rngs=rngs) for d in layer_dims])
        self.refinenet1 = FusionBlock(dim, rngs=rngs)
        self.refinenet2 = FusionBlock(dim, rngs=rngs)
        self.refinenet3 = FusionBlock(dim, rngs=rngs)
        self.refinenet4 = FusionBlock(dim, rngs=rngs)


class DPTAdapter(nnx.Module):
    """`DPTOutputAdapter_fix`: four hooked token layers -> multi-scale maps -> fused full-resolution output."""

    def __init__(self, dim_tokens: Sequence[int], hooks: Sequence[int], num_channels: int, *,
                 last_dim: int = DPT_LAST_DIM, rngs: nnx.Rngs):
        # last_dim: width of the output head's hidden conv (128 in DUSt3R/MASt3R, 32 in CroCo's downstream DPT)
        self.hooks = tuple(hooks)
        ld = DPT_LAYER_DIMS
        self.act_postprocess = nnx.List([
            nnx.List([Conv(dim_tokens[0], ld[0], 1, rngs=rngs), ConvTranspose(ld[0], ld[0], 4, rngs=rngs)]),
            nnx.List([Conv(dim_tokens[1], ld[1], 1, rngs=rngs), ConvTranspose(ld[1], ld[1], 2, rngs=rngs)]),
            nnx.List([Conv(dim_tokens[2], ld[2], 1, rngs=rngs)]),
            nnx.List([Conv(dim_tokens[3], ld[3], 1, rngs=rngs),
                      Conv(ld[3], ld[3], 3, stride=2, padding=1, rngs=rngs)]),
        ])
        self.scratch = Scratch(ld, DPT_FEATURE_DIM, rngs=rngs)
        # torch nn.Sequential indices 0, 2, 4 (1 = bilinear x2, 3 = ReLU have no weights)
        self.head = nnx.Dict({
            "0": Conv(DPT_FEATURE_DIM, DPT_FEATURE_DIM // 2, 3, padding=1, rngs=rngs),
            "2": Conv(DPT_FEATURE_DIM // 2, last_dim, 3, padding=1, rngs=rngs),
            "4": Conv(last_dim, num_channels, 1, rngs=rngs),
        })

    def __call__(self, decout: Sequence[jax.Array], hw: tuple[int, int], inter: Inter = None,
                 prefix: str = "") -> jax.Array:
        nh, nw = hw[0] // DPT_PATCH, hw[1] // DPT_PATCH
        layers = []
        for k, hook in enumerate(self.hooks):
            x = tokens_to_map(decout[hook], nh, nw)
            for layer in self.act_postprocess[k]:
                x = layer(x)
            if inter is not None:
                inter[f"{prefix}act_postprocess{k}"] = x
            x = self.scratch.layer_rn[k](x)
            if inter is not None:
                inter[f"{prefix}layer_rn{k}"] = x
            layers.append(x)
        s = self.scratch
        path4 = s.refinenet4(layers[3])
        if inter is not None:
            inter[prefix + "refinenet4"] = path4
        # refinenet4 runs on a ceil(n/2) grid: crop to layer 2's size (odd token grids)
        path4 = path4[:, : layers[2].shape[1], : layers[2].shape[2]]
        path3 = s.refinenet3(path4, layers[2])
        path2 = s.refinenet2(path3, layers[1])
        fused1 = s.refinenet1.fuse(path2, layers[0])
        if inter is not None:
            inter.update({prefix + "refinenet3": path3, prefix + "refinenet2": path2,
                          prefix + "refinenet1": s.refinenet1.upsample(fused1)})
        # From refinenet1's RCU to the head's ReLU everything is linear: 1x1 conv -> bilinear x2 -> 3x3 conv
        # -> bilinear x2 -> 3x3 conv. Each 3x3 conv of an upsampled map runs its channel mixing before the
        # upsampling (`conv3x3_of_upsampled`), the 1x1 conv folded into the first: the official map at a
        # quarter of the matmul work of these two convs, which are a fifth of a 512x384 view's decode FLOPs.
        h = self.head
        rn1 = s.refinenet1.out_conv
        out = conv3x3_of_upsampled(fused1, h["0"].kernel[...], h["0"].bias[...], rn1.kernel[0, 0], rn1.bias[...])
        out = conv3x3_of_upsampled(out, h["2"].kernel[...], h["2"].bias[...])
        out = h["4"](jax.nn.relu(out))
        if inter is not None:
            inter[prefix + "dpt_out"] = out
        return out


class DPTHead(nnx.Module):
    """`PixelwiseTaskWithDPT`: the DPT adapter (param prefix `dpt`)."""

    def __init__(self, enc_dim: int, dec_dim: int, hooks: Sequence[int], num_channels: int, *, rngs: nnx.Rngs):
        self.dpt = DPTAdapter((enc_dim, dec_dim, dec_dim, dec_dim), hooks, num_channels, rngs=rngs)

    def raw(self, decout: Sequence[jax.Array], hw: tuple[int, int], inter: Inter = None, prefix: str = "") -> jax.Array:
        return self.dpt(decout, hw, inter, prefix)


class CatMlpDPTHead(DPTHead):
    """`Cat_MLP_LocalFeatures_DPT_Pts3d`: DPT for points + an MLP on [enc_out | dec_out] for descriptors."""

    def __init__(self, enc_dim: int, dec_dim: int, hooks: Sequence[int], num_channels: int, patch_size: int,
                 desc_channels: int, *, rngs: nnx.Rngs):
        super().__init__(enc_dim, dec_dim, hooks, num_channels, rngs=rngs)
        self.patch_size = patch_size
        idim = enc_dim + dec_dim
        self.head_local_features = Mlp(idim, 4 * idim, desc_channels * patch_size**2, rngs=rngs)

    def raw(self, decout: Sequence[jax.Array], hw: tuple[int, int], inter: Inter = None, prefix: str = "") -> jax.Array:
        pts = self.dpt(decout, hw, inter, prefix)
        p = self.patch_size
        feat = self.head_local_features(jnp.concatenate([decout[0], decout[-1]], axis=-1))
        if inter is not None:
            inter[prefix + "local_feat_mlp"] = feat
        local = pixel_shuffle(tokens_to_map(feat, hw[0] // p, hw[1] // p), p)
        return jnp.concatenate([pts, local], axis=-1)
