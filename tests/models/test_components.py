"""Building blocks against the official functions (`networks/components`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import fixture_path
from f3d_jax.models.heads import postprocess, postprocess_mast3r, transpose_to_landscape
from f3d_jax.nn.layers import LN_EPS, conv2d, conv3x3_of_upsampled, pixel_shuffle, resize_bilinear_align_corners
from f3d_jax.nn.pos_embed import sincos_2d
from f3d_jax.nn.rope import position_grid, rope2d

INF = math.inf


@pytest.fixture(scope="module")
def comp():
    d = fixture_path("networks", "components")
    return np.load(d / "inputs.npz"), np.load(d / "outputs.npz")


@pytest.mark.parametrize("i,base", [(0, 100.0), (1, 100.0), (2, 10.0)])
def test_rope2d(comp, i, base):
    inp, out = comp
    tokens = inp[f"rope{i}.tokens"]  # (B, heads, N, D) torch layout
    got = rope2d(jnp.asarray(tokens.transpose(0, 2, 1, 3)), jnp.asarray(inp[f"rope{i}.positions"]), base)
    # angles reach ~39 rad where one float32 step is ~4e-6 (fixtures README)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 1, 3), out[f"rope{i}.out"], rtol=1e-6, atol=1e-5)


def test_rope_rejects_bad_head_width():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope2d(jnp.zeros((1, 2, 1, 6)), jnp.zeros((1, 2, 2), jnp.int32))


@pytest.mark.parametrize("i,dim,h,w", [(0, 64, 8, 8), (1, 48, 3, 5), (2, 768, 14, 14)])
def test_sincos(comp, i, dim, h, w):
    np.testing.assert_allclose(sincos_2d(dim, h, w), comp[1][f"sincos{i}.table"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("i,h,w", [(0, 3, 5), (1, 4, 4)])
def test_positions(comp, i, h, w):
    ref = comp[1][f"positions{i}"]
    np.testing.assert_array_equal(np.broadcast_to(position_grid(h, w), ref.shape), ref)


_CONF = {"exp_1_inf": ("exp", 1, INF), "exp_0_inf": ("exp", 0, INF), "exp_1_3.0": ("exp", 1, 3.0),
         "sigmoid_0.5_8.0": ("sigmoid", 0.5, 8.0)}


@pytest.mark.parametrize("depth", ["exp", "square", "linear"])
@pytest.mark.parametrize("conf", list(_CONF))
def test_postprocess(comp, depth, conf):
    inp, out = comp
    res = postprocess(jnp.asarray(inp["post.fmap"].transpose(0, 2, 3, 1)), (depth, -INF, INF), _CONF[conf])
    for k in ("pts3d", "conf"):
        np.testing.assert_allclose(res[k], out[f"post.{depth}.{conf}.{k}"], rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(res["pts3d"])[0, 0, 0] == 0)  # the all-zero pixel stays zero


@pytest.mark.parametrize("d,two", [(24, 1), (16, 0)])
def test_postprocess_mast3r(comp, d, two):
    inp, out = comp
    key = f"mast3r_post.desc{d}.two_confs{two}"
    res = postprocess_mast3r(jnp.asarray(inp[f"{key}.fmap"].transpose(0, 2, 3, 1)), ("exp", -INF, INF),
                             ("exp", 1, INF), d, bool(two), ("exp", 0, INF) if two else ("exp", 1, INF))
    for k in ("pts3d", "conf", "desc", "desc_conf"):
        np.testing.assert_allclose(res[k], out[f"{key}.{k}"], rtol=1e-6, atol=1e-6)


def test_transpose_to_landscape(comp):
    inp, out = comp
    tokens = jnp.asarray(inp["landscape.tokens"])  # (B, N, C)
    true_shape = jnp.asarray(inp["landscape.true_shape"])

    def toy_head(layout, _orientation):
        h, w = layout
        mean = jnp.broadcast_to(tokens.mean(axis=(1, 2))[:, None, None], (tokens.shape[0], h, w))
        rows = jnp.broadcast_to(jnp.arange(h, dtype=jnp.float32)[None, :, None], (tokens.shape[0], h, w))
        cols = jnp.broadcast_to(jnp.arange(w, dtype=jnp.float32)[None, None, :], (tokens.shape[0], h, w))
        return {"map": jnp.stack([mean, rows, cols], axis=-1)}

    got = transpose_to_landscape(toy_head, (2, 3), true_shape, landscape_only=True)["map"]
    np.testing.assert_allclose(np.asarray(got), out["landscape.map"], rtol=1e-6, atol=1e-6)


def test_layernorm_eps_and_exact_gelu():
    d = np.load(fixture_path("networks", "components", "norm_act.npz"))
    ln = nnx.LayerNorm(64, epsilon=LN_EPS, rngs=nnx.Rngs(0))
    ln.scale[...] = jnp.asarray(d["ln.weight"])
    ln.bias[...] = jnp.asarray(d["ln.bias"])
    for k in ("small", "mixed"):
        np.testing.assert_allclose(ln(jnp.asarray(d[f"ln.x_{k}"])), d[f"ln.y_{k}"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.nn.gelu(jnp.asarray(d["gelu.x"]), approximate=False), d["gelu.y"],
                               rtol=1e-6, atol=1e-6)


def test_pixel_shuffle_channel_order():
    p, c, h, w = 2, 3, 2, 3
    feat = np.arange(h * w * c * p * p, dtype=np.float32).reshape(1, h, w, c * p * p)
    got = np.asarray(pixel_shuffle(jnp.asarray(feat), p))
    for y, x, i, j, ch in np.ndindex(h, w, p, p, c):
        assert got[0, y * p + i, x * p + j, ch] == feat[0, y, x, ch * p * p + i * p + j]


def test_bilinear_align_corners_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 5, 2)).astype(np.float32)
    got = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), 6, 10))
    ref = np.zeros((1, 6, 10, 2))
    for oy, ox in np.ndindex(6, 10):
        sy, sx = oy * (3 - 1) / (6 - 1), ox * (5 - 1) / (10 - 1)
        y0, x0 = int(np.floor(sy)), int(np.floor(sx))
        y1, x1 = min(y0 + 1, 2), min(x0 + 1, 4)
        ly, lx = sy - y0, sx - x0
        ref[0, oy, ox] = ((1 - ly) * ((1 - lx) * x[0, y0, x0] + lx * x[0, y0, x1])
                          + ly * ((1 - lx) * x[0, y1, x0] + lx * x[0, y1, x1]))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 4), (3, 5), (6, 6)])
@pytest.mark.parametrize("with_pre", [False, True])
def test_conv3x3_of_upsampled_is_resize_then_conv(h, w, with_pre):
    """The DPT head's fused stage equals the official order (1x1 conv ->) bilinear x2 -> 3x3 conv, padding 1,
    evaluated naively in float64 (borders, a single row / pixel included)."""
    rng = np.random.default_rng(h * 10 + w)
    x = rng.normal(size=(2, h, w, 5)).astype(np.float32)
    k = rng.normal(size=(3, 3, 4, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    pk, pb = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    z = x.astype(np.float64) @ pk + pb if with_pre else x[..., :4].astype(np.float64)
    up = np.asarray(resize_bilinear_align_corners(jnp.asarray(z, jnp.float32), 2 * h, 2 * w), np.float64)
    pad = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = b + sum(pad[:, dy:dy + 2 * h, dx:dx + 2 * w] @ k[dy, dx] for dy in range(3) for dx in range(3))
    if with_pre:
        got = conv3x3_of_upsampled(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), jnp.asarray(pk), jnp.asarray(pb))
    else:
        got = conv3x3_of_upsampled(jnp.asarray(x[..., :4]), jnp.asarray(k), jnp.asarray(b))
    assert got.shape == (2, 2 * h, 2 * w, 3)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


def test_conv3x3_of_upsampled_gradients_match_resize_then_conv():
    """Training differentiates through the fused stage: its gradients (input, kernel, bias, folded 1x1) equal
    those of the official resize -> conv order."""
    rng = np.random.default_rng(1)
    args = [jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in ((2, 5, 7, 6), (3, 3, 4, 3), (3,), (6, 4), (4,))]
    weight = jnp.asarray(rng.normal(size=(2, 10, 14, 3)).astype(np.float32))

    def fused(x, k, b, pk, pb):
        return jnp.sum(jnp.tanh(conv3x3_of_upsampled(x, k, b, pk, pb)) * weight)

    def official_order(x, k, b, pk, pb):
        up = resize_bilinear_align_corners(x @ pk + pb, 10, 14)
        y = jax.lax.conv_general_dilated(up, k, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.tanh(y + b) * weight)

    got = jax.grad(fused, argnums=tuple(range(5)))(*args)
    ref = jax.grad(official_order, argnums=tuple(range(5)))(*args)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5 * float(jnp.abs(r).max()))


def _conv_f64(x: np.ndarray, k: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Naive float64 convolution (NHWC, HWIO, symmetric zero padding): the definition."""
    kh, kw = k.shape[:2]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    return sum(xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] @ k[i, j]
               for i in range(kh) for j in range(kw))


@pytest.mark.parametrize("shape,k,stride,padding", [((2, 7, 9, 5), 3, 1, 1), ((1, 13, 17, 4), 3, 2, 1),
                                                    ((2, 8, 10, 3), 2, 3, 0), ((1, 1, 1, 2), 5, 1, 2)])
def test_conv2d_values_and_tap_gradients(shape, k, stride, padding):
    """`conv2d` (the DPT convs) is XLA's convolution in the forward, and its hand-written tap-wise backward
    gives the gradients of the float64 definition for the kernel sizes / strides / paddings the heads use and
    a few they don't (odd sizes, stride > kernel, padding wider than a 1x1 map)."""
    rng = np.random.default_rng(k * 100 + stride * 10 + padding)
    x = rng.normal(size=shape)
    kern = rng.normal(size=(k, k, shape[-1], 6))
    y64 = _conv_f64(x, kern, stride, padding)
    w = rng.normal(size=y64.shape)
    got = conv2d(jnp.asarray(x, jnp.float32), jnp.asarray(kern, jnp.float32), stride, padding)
    np.testing.assert_allclose(np.asarray(got), y64, rtol=1e-5, atol=1e-5 * np.abs(y64).max())
    gx, gk = jax.grad(lambda a, b: jnp.sum(conv2d(a, b, stride, padding) * jnp.asarray(w, jnp.float32)),
                      argnums=(0, 1))(jnp.asarray(x, jnp.float32), jnp.asarray(kern, jnp.float32))
    # the loss <w, conv(x, k)> is linear in x and in k, so its gradients are the adjoints of the float64
    # definition: <grad_x, v> = <w, conv(v, k)> and <grad_k, u> = <w, conv(x, u)> for any v, u
    for _ in range(3):
        v = rng.normal(size=x.shape)
        np.testing.assert_allclose(float(np.sum(np.asarray(gx, np.float64) * v)),
                                   float(np.sum(w * _conv_f64(v, kern, stride, padding))), rtol=1e-4)
        u = rng.normal(size=kern.shape)
        np.testing.assert_allclose(float(np.sum(np.asarray(gk, np.float64) * u)),
                                   float(np.sum(w * _conv_f64(x, u, stride, padding))), rtol=1e-4)
