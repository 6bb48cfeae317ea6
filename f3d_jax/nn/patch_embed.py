"""Patch embedding with optional landscape storage of portrait images.
Equivalent of croco/models/blocks.py:PatchEmbed and dust3r/patch_embed.py (PatchEmbedDust3R, ManyAR_PatchEmbed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from f3d_jax.nn.compat import nnx
from f3d_jax.nn.layers import Conv
from f3d_jax.nn.rope import position_grid


class PatchEmbed(nnx.Module):
    """Conv(3 -> C, kernel p, stride p) then row-major flattening. No norm (the official slot is identity)."""

    def __init__(self, patch_size: int, dim: int, *, rngs: nnx.Rngs):
        self.patch_size = patch_size
        self.proj = Conv(3, dim, patch_size, stride=patch_size, rngs=rngs)

    def _embed(self, img: jax.Array) -> jax.Array:
        p = self.patch_size
        # kernel == stride: the conv is a matmul over non-overlapping patches (faster than a conv on CPU)
        kernel = self.proj.kernel[...].reshape(p * p * 3, -1)
        return patchify(img, p) @ kernel + self.proj.bias[...]

    def __call__(self, img: jax.Array, true_shape: jax.Array | None = None,
                 manyar: bool = False) -> tuple[jax.Array, jax.Array]:
        """Embed images.

        Args:
          img: (B, H, W, 3); H and W multiples of the patch size. With `manyar`, W >= H and portrait
            entries (true width < true height) are stored transposed.
          true_shape: (B, 2) int (height, width); only read when `manyar`.
          manyar: `ManyAR_PatchEmbed` behaviour (training): portrait entries are transposed back
            before the convolution and get portrait positions.

        Returns:
          x: (B, N, C) tokens; pos: (B, N, 2) int32 `(y, x)` positions.
        """
        b, h, w, _ = img.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        pos = jnp.broadcast_to(jnp.asarray(position_grid(h // p, w // p)), (b, (h // p) * (w // p), 2))
        x = self._embed(img)
        if not manyar:
            return x, pos
        if w < h:
            raise ValueError(f"ManyAR patch embedding expects landscape storage (W >= H), got {h}x{w}")
        if true_shape is None:
            return x, pos
        portrait = (true_shape[:, 1] < true_shape[:, 0])[:, None, None]
        x_p = self._embed(jnp.swapaxes(img, 1, 2))
        pos_p = jnp.asarray(position_grid(w // p, h // p))[None]
        return jnp.where(portrait, x_p, x), jnp.where(portrait, pos_p, pos).astype(jnp.int32)


def patchify(img: jax.Array, p: int) -> jax.Array:
    """(B, H, W, 3) -> (B, N, p*p*3); inside a patch the feature index is `(row*p + col)*3 + channel`."""
    b, h, w, c = img.shape
    return img.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)


def unpatchify(x: jax.Array, p: int, h: int, w: int) -> jax.Array:
    """Inverse of `patchify`: (B, N, p*p*3) -> (B, H, W, 3)."""
    b = x.shape[0]
    return x.reshape(b, h // p, w // p, p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, 3)


