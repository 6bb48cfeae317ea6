"""Fixed 2-D sin-cos position table (CroCo v1). Equivalent of croco/models/pos_embed.py:get_2d_sincos_pos_embed."""

from __future__ import annotations

import numpy as np


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = pos.reshape(-1).astype(np.float64)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, h: int, w: int) -> np.ndarray:
    """MAE-style 2-D sin-cos table, no class token.

    The first `dim/2` channels encode the column (x), the last `dim/2` the row (y).

    Returns:
      (h*w, dim) float64, row-major token order.
    """
    if dim % 4:
        raise ValueError(f"sin-cos table width must be divisible by 4, got {dim}")
    y, x = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return np.concatenate([_sincos_1d(dim // 2, x), _sincos_1d(dim // 2, y)], axis=1)
