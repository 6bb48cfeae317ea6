"""PyTorch's bicubic resize (`F.interpolate(mode='bicubic', align_corners=False)`, no antialias), exactly.

The kernel is Keys' cubic convolution with a = -0.75; source coordinates are `(dst + 0.5) * in / out - 0.5`,
**not clamped** at 0 for the cubic mode, and taps outside the image read the border pixel (replicated).
`jax.image.resize(..., 'cubic')` (a = -0.5, other edge handling) differs by up to 0.2 on normalised
images. The 2-D resize is separable: one (out, in) matrix per axis, built in float64 numpy from static
sizes, applied with exact float32 matmuls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient


def _cubic_weights(t: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
    """(n,) fractional offsets -> (n, 4) weights of the taps at floor - 1 .. floor + 2 (torch `get_cubic_upsample_coefficients`)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 matrix of PyTorch's 1-D bicubic resize (align_corners=False)."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5  # not clamped (cubic)
    base = np.floor(src)
    w = _cubic_weights(src - base)
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    for k in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + k, 0, n_in - 1)
        np.add.at(m, (rows, idx), w[:, k])
    return m.astype(np.float32)


def resize_bicubic(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """(B, H, W, C) -> (B, h, w, C), PyTorch's bicubic (align_corners=False, no antialias)."""
    h_in, w_in = x.shape[1:3]
    my = jnp.asarray(bicubic_matrix(int(h_in), int(out_hw[0])))
    mx = jnp.asarray(bicubic_matrix(int(w_in), int(out_hw[1])))
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,bhwc->bowc", my, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", mx, y, precision=hi)
