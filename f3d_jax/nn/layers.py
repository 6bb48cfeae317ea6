"""Transformer and convolution layers shared by every model. Equivalent of croco/models/blocks.py.

All modules are flax NNX; parameters are named as the official torch modules so the converter
stays mechanical (`attn/qkv/kernel` <- `attn.qkv.weight`). Token sequences are (B, T, C), images and
feature maps NHWC.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.nn.compat import nnx
from f3d_jax.nn.rope import rope2d

LN_EPS = 1e-6  # the official backbone's LayerNorm eps (torch's default would be 1e-5)


def layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=LN_EPS, rngs=rngs)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(hd)) v over (B, T, nh, hd) tensors, no mask, no bias.

    `implementation` ('xla', 'cudnn') selects `jax.nn.dot_product_attention`. The default (None) is written out
    here: heads-major operands for plain batched matmuls, logits and softmax in float32, and the softmax
    normalisation applied to the (T, hd) output instead of the (T, S) probabilities. On CPU that is 1.3x (T=768)
    to 2.3x (T=196) faster than `jax.nn.dot_product_attention`, whose layouts make XLA copy the logits.
    """
    if implementation is not None:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    f32 = jnp.float32
    qh = jnp.swapaxes(q, 1, 2)  # (B, nh, T, hd)
    kh = jnp.transpose(k, (0, 2, 3, 1))  # (B, nh, hd, S)
    vh = jnp.swapaxes(v, 1, 2)  # (B, nh, S, hd)
    logits = jnp.matmul(qh, kh, preferred_element_type=f32) * (q.shape[-1] ** -0.5)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    out = jnp.matmul(e.astype(v.dtype), vh, preferred_element_type=f32) / jnp.sum(e, axis=-1, keepdims=True)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


class Mlp(nnx.Module):
    """Linear -> exact (erf) GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, out or dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Attention(nnx.Module):
    """Self-attention with a fused `qkv` projection (features ordered [q | k | v], head-major)."""

    def __init__(self, dim: int, num_heads: int, rope_base: float | None, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.rope_base = rope_base
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, pos: jax.Array | None, impl: str | None = None) -> jax.Array:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.rope_base is not None:
            q, k = rope2d(q, pos, self.rope_base), rope2d(k, pos, self.rope_base)
        return self.proj(attention(q, k, v, impl).reshape(b, t, c))


class CrossAttention(nnx.Module):
    """Cross-attention: queries from x (rotated with xpos), keys/values from y (keys rotated with ypos)."""

    def __init__(self, dim: int, num_heads: int, rope_base: float | None, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.rope_base = rope_base
        self.projq = nnx.Linear(dim, dim, rngs=rngs)
        self.projk = nnx.Linear(dim, dim, rngs=rngs)
        self.projv = nnx.Linear(dim, dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, y: jax.Array, xpos: jax.Array | None, ypos: jax.Array | None,
                 impl: str | None = None) -> jax.Array:
        b, tq, c = x.shape
        tk = y.shape[1]
        nh = self.num_heads
        q = self.projq(x).reshape(b, tq, nh, c // nh)
        k = self.projk(y).reshape(b, tk, nh, c // nh)
        v = self.projv(y).reshape(b, tk, nh, c // nh)
        if self.rope_base is not None:
            q, k = rope2d(q, xpos, self.rope_base), rope2d(k, ypos, self.rope_base)
        return self.proj(attention(q, k, v, impl).reshape(b, tq, c))


class Block(nnx.Module):
    """Pre-norm encoder block: x + Attn(LN1 x); x + MLP(LN2 x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope_base: float | None, *, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, rngs)
        self.attn = Attention(dim, num_heads, rope_base, rngs=rngs)
        self.norm2 = layer_norm(dim, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs)

    def __call__(self, x: jax.Array, pos: jax.Array | None, impl: str | None = None) -> jax.Array:
        x = x + self.attn(self.norm1(x), pos, impl)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nnx.Module):
    """Pre-norm decoder block: self-attention, cross-attention into `y` (optionally LayerNorm-ed), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope_base: float | None, norm_mem: bool,
                 *, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, rngs)
        self.attn = Attention(dim, num_heads, rope_base, rngs=rngs)
        self.cross_attn = CrossAttention(dim, num_heads, rope_base, rngs=rngs)
        self.norm2 = layer_norm(dim, rngs)
        self.norm3 = layer_norm(dim, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs)
        self.norm_y = layer_norm(dim, rngs) if norm_mem else None

    def __call__(self, x: jax.Array, y: jax.Array, xpos: jax.Array | None, ypos: jax.Array | None,
                 impl: str | None = None) -> jax.Array:
        x = x + self.attn(self.norm1(x), xpos, impl)
        y_ = self.norm_y(y) if self.norm_y is not None else y
        x = x + self.cross_attn(self.norm2(x), y_, xpos, ypos, impl)
        return x + self.mlp(self.norm3(x))


def _conv2d_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC, HWIO, symmetric zero `padding`) whose gradients are plain matmuls.

    The forward is XLA's convolution itself (inference values unchanged). The backward is written per kernel
    tap: `dk[i, j] = sum_pixels x_pad[s*h + i, s*w + j]^T g[h, w]` and `dx_pad = sum_taps place_{i,j}(g k[i, j]^T)`.
    XLA's own transpose expresses `dk` as a convolution whose "window" is the whole feature map, and inside a
    training step XLA:CPU's layout assignment gives it dimension labels (`f01b_i01o->01bf`) that its Eigen
    kernels do not take, so it runs as a naive loop nest: 2-6 s for one 3x3 256->256 conv on a 48x64 map in a
    DUSt3R step, two thirds of the step's time (69.7 of 106 s at 256x192). The tap form is a few matmuls
    whatever the layouts.
    (A `custom_vjp`: reverse mode, `vmap` and `jit` compose with it; forward mode (`jax.jvp`) does not.)

    Args:
      x: (B, H, W, C); kernel: (kh, kw, C, O); stride, padding: ints (the same on both axes).
    Returns:
      (B, Ho, Wo, O) with Ho = (H + 2 padding - kh) // stride + 1 (likewise Wo).
    """
    return _conv2d_xla(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
    return _conv2d_xla(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    ho, wo = g.shape[1:3]
    hp, wp = h + 2 * padding, w + 2 * padding
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1  # input rows/cols one tap reads
    dk = jnp.stack([jnp.stack([
        jnp.einsum("bhwc,bhwo->co", xp[:, i:i + span_h:stride, j:j + span_w:stride], g).astype(kernel.dtype)
        for j in range(kw)]) for i in range(kh)])
    zero = jnp.zeros((), g.dtype)
    dxp = None
    for i in range(kh):
        for j in range(kw):
            t = jnp.einsum("bhwo,co->bhwc", g, kernel[i, j].astype(g.dtype))
            # scatter tap (i, j) back onto the padded input grid: rows i, i + s, ..., as a zero padding
            # (interior padding s - 1 between the rows), so the sum stays dense adds
            t = jax.lax.pad(t, zero, ((0, 0, 0), (i, hp - i - span_h, stride - 1), (j, wp - j - span_w, stride - 1),
                                      (0, 0, 0)))
            dxp = t if dxp is None else dxp + t
    dx = dxp[:, padding:padding + h, padding:padding + w].astype(x.dtype)
    return dx, dk


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nnx.Module):
    """2-D convolution, NHWC, torch semantics (symmetric zero padding). kernel: (kh, kw, in, out)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True,
                 *, rngs: nnx.Rngs):
        self.stride = stride
        self.padding = padding
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (k, k, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,))) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        kh = kernel.shape[0]
        if kh == 1 and self.stride == 1:  # 1x1 conv: a plain matmul is faster on CPU
            y = jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0])
        else:
            y = conv2d(x, kernel, self.stride, self.padding)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class ConvTranspose(nnx.Module):
    """ConvTranspose2d with kernel == stride and no padding (non-overlapping up-sampling by `k`).

    kernel: (kh, kw, in, out) (torch stores (in, out, kh, kw)). Each input pixel writes one k x k
    output block, so the layer is a matmul followed by a pixel shuffle.
    """

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (k, k, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        k = kernel.shape[0]
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel)
        return y.reshape(b, h * k, w * k, kernel.shape[-1]) + self.bias[...]


def pixel_shuffle(feat: jax.Array, p: int) -> jax.Array:
    """Token features to pixels, torch `pixel_shuffle` channel order.

    Args:
      feat: (B, h, w, C*p*p) with channel index `c*p*p + i*p + j`.
    Returns:
      (B, h*p, w*p, C): pixel `(y*p + i, x*p + j)` holds channel c.
    """
    b, h, w, cpp = feat.shape
    c = cpp // (p * p)
    return feat.reshape(b, h, w, c, p, p).transpose(0, 1, 4, 2, 5, 3).reshape(b, h * p, w * p, c)


def _lerp_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """align_corners=True linear-interpolation taps from n_in to n_out samples: out[i] = x[i0]*(1-lam) + x[i1]*lam."""
    src = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1) if n_out > 1 and n_in > 1 else 0.0)
    src = src.astype(np.float32)  # torch computes the source coordinate in float32
    i0 = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, lam


def _gather_lerp(x: jax.Array, axis: int, i0: np.ndarray, i1: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> jax.Array:
    """out[i] = x[i0[i]] * wa[i] + x[i1[i]] * wb[i] along `axis` (constant indices and weights)."""
    shape = [1] * x.ndim
    shape[axis] = len(i0)
    wa, wb = (jnp.asarray(np.asarray(v, np.float32).reshape(shape), x.dtype) for v in (wa, wb))
    return jnp.take(x, i0, axis=axis) * wa + jnp.take(x, i1, axis=axis) * wb


def _lerp_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    """Linear interpolation along one axis with align_corners=True sample positions."""
    i0, i1, lam = _lerp_taps(x.shape[axis], n_out)
    return _gather_lerp(x, axis, i0, i1, 1 - lam, lam)


def resize_bilinear_align_corners(x: jax.Array, out_h: int, out_w: int) -> jax.Array:
    """Bilinear resize with `align_corners=True` (torch `F.interpolate` semantics), NHWC.

    Separable: gathers and lerps along W, then along H (no dense interpolation matrices, whose
    matmuls cost more than the rest of the DPT head's final stage on CPU).
    """
    return _lerp_axis(_lerp_axis(x, 2, out_w), 1, out_h)


def _upsample_shift_sum(y: jax.Array, axis: int, n_out: int) -> jax.Array:
    """sum_d shift_{d-1}(lerp_{n_out}(y[..., d, :])) along `axis`, with the 3 taps d on axis -2.

    `lerp` is the align_corners=True linear interpolation of `_lerp_axis`; `shift_s(z)[i] = z[i + s]`, zero
    outside [0, n_out) (a 3-tap convolution's zero padding, applied after the interpolation).
    """
    i0, i1, lam = _lerp_taps(y.shape[axis], n_out)
    out = None
    for d in range(3):
        src = np.arange(n_out) + d - 1
        inside = (src >= 0) & (src < n_out)
        src = np.clip(src, 0, n_out - 1)
        term = _gather_lerp(y[..., d, :], axis, i0[src], i1[src], np.where(inside, 1 - lam[src], 0),
                            np.where(inside, lam[src], 0))
        out = term if out is None else out + term
    return out


def conv3x3_of_upsampled(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None,
                         pre_kernel: jax.Array | None = None, pre_bias: jax.Array | None = None) -> jax.Array:
    """`conv3x3(resize_bilinear_align_corners(pre(x), 2h, 2w), kernel, padding=1) + bias` at low-resolution cost.

    The interpolation acts on each channel and the convolution's channel mixing on each pixel, so they
    commute: each of the 9 taps' channel maps runs on the (h, w) input, and the interpolation, the tap's
    shift and the sum over taps follow, gathers on the small outputs. The same linear map as the official
    resize -> conv (a DPT head's stage), in a quarter of the matmul FLOPs. An optional 1x1 `pre` conv
    (kernel (C, Cp), bias (Cp,)) before the resize is folded into the taps.

    Args:
      x: (B, h, w, C) NHWC.
      kernel: (3, 3, Cp, Co) HWIO; bias: (Co,) or None.
    Returns:
      (B, 2h, 2w, Co).
    """
    b, h, w, _ = x.shape
    co = kernel.shape[-1]
    taps = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(kernel.shape[2], 9 * co)  # (Cp, [dy, dx, o])
    tap_bias = None
    if pre_kernel is not None:
        if pre_bias is not None:
            tap_bias = pre_bias.astype(taps.dtype) @ taps
        taps = pre_kernel.astype(taps.dtype) @ taps
    y = jnp.einsum("bhwc,cn->bhwn", x, taps.astype(x.dtype))
    if tap_bias is not None:
        y = y + tap_bias.astype(y.dtype)
    y = y.reshape(b, h, w, 3, 3, co)
    y = _upsample_shift_sum(y, 2, 2 * w)  # over dx: (B, h, 2w, 3[dy], Co)
    y = _upsample_shift_sum(y, 1, 2 * h)  # over dy: (B, 2h, 2w, Co)
    return y if bias is None else y + bias.astype(y.dtype)
