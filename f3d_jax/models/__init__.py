"""CroCo, DUSt3R and MASt3R as flax NNX modules with a functional runtime (params dict in, arrays out).

The configs are plain dataclasses, imported here directly; the runtime (`Model` and the jitted
forwards of `f3d_jax.models.model`, which import jax and flax) is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from f3d_jax.models.config import CroCoConfig, DUSt3RConfig, MASt3RConfig

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Model": "f3d_jax.models.model",
    "stereo_forward": "f3d_jax.models.model",
    "symmetric_forward": "f3d_jax.models.model",
    "encode_images": "f3d_jax.models.model",
    "decode_pairs": "f3d_jax.models.model",
    "croco_forward": "f3d_jax.models.model",
}

__all__ = ["CroCoConfig", "DUSt3RConfig", "MASt3RConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'f3d_jax.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
