"""f3d-jax: CroCo, DUSt3R and MASt3R in JAX.

The public API is imported lazily so that `import f3d_jax` stays cheap. Importing the package turns on JAX's
persistent compilation cache in a user cache folder (opt out: `F3D_NO_COMPILE_CACHE=1` or
`f3d_jax.disable_compile_cache()`; see `f3d_jax.compile_cache`).
"""

from __future__ import annotations

import importlib
from typing import Any

# public: f3d_jax.enable_compile_cache / f3d_jax.disable_compile_cache
from f3d_jax.compile_cache import disable_compile_cache, enable_by_default, enable_compile_cache  # noqa: F401

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_model": "f3d_jax.weights.loading",
    "save_model": "f3d_jax.weights.loading",
    "Model": "f3d_jax.models.model",
    "load_images": "f3d_jax.io.images",
    "ImageLoadError": "f3d_jax.io.images",
    "make_pairs": "f3d_jax.infer.pairs",
    "pairs_to_edges": "f3d_jax.infer.pairs",
    "inference": "f3d_jax.infer.engine",
    "symmetric_inference": "f3d_jax.infer.engine",
    "InferenceEngine": "f3d_jax.infer.engine",
    "infer_scene": "f3d_jax.infer.scene",
    "CheckpointError": "f3d_jax.weights.errors",
    "global_align": "f3d_jax.align.dense",
    "AlignResult": "f3d_jax.align.types",
    "Scene": "f3d_jax.align.types",  # deprecated alias of AlignResult
    "sparse_global_alignment": "f3d_jax.sparse.api",
    "SparseScene": "f3d_jax.sparse.scene",
    "run_sfm": "f3d_jax.sfm.pipeline",
    "SfMResult": "f3d_jax.sfm.pipeline",
    "list_checkpoints": "f3d_jax.weights.registry",
    "get_checkpoint_info": "f3d_jax.weights.registry",
}


enable_by_default()


# subpackages reachable as attributes without their own import (`f3d_jax.stereoflow.tiled_pred(...)`)
_LAZY_SUBPACKAGES = ("stereoflow",)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'f3d_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY) + list(_LAZY_SUBPACKAGES))
