"""CroCo-Stereo and CroCo-Flow: tiled inference, the benchmark file formats and pictures.

    model = f3d_jax.load_model("crocostereo.pth")        # or crocoflow.pth, the finetuned and ViT-B variants
    out = model(img1, img2)                               # (B, H, W, C+1): C = 1 stereo / 2 flow, last = conf logit
    pred, conf = f3d_jax.stereoflow.tiled_pred(model, img1, img2, overlap=0.7)

The network itself is `f3d_jax.models.binocular` (the weights layer builds it from a checkpoint). Names are
imported on first use, so `import f3d_jax.stereoflow` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "tiled_pred": "f3d_jax.stereoflow.tiling",
    "predict_tiles": "f3d_jax.stereoflow.tiling",
    "stitch_tiles": "f3d_jax.stereoflow.tiling",
    "plan_tiles": "f3d_jax.stereoflow.tiling",
    "tile_offsets": "f3d_jax.stereoflow.tiling",
    "upscaled_size": "f3d_jax.stereoflow.tiling",
    "TilePlan": "f3d_jax.stereoflow.tiling",
    "resize_bicubic": "f3d_jax.stereoflow.resize",
    "img_to_tensor": "f3d_jax.stereoflow.formats",
    "write_pfm": "f3d_jax.stereoflow.formats",
    "read_pfm": "f3d_jax.stereoflow.formats",
    "write_flo": "f3d_jax.stereoflow.formats",
    "read_flo": "f3d_jax.stereoflow.formats",
    "disparity_to_rgb": "f3d_jax.stereoflow.pictures",
    "flow_to_rgb": "f3d_jax.stereoflow.pictures",
    "BinocularModel": "f3d_jax.models.binocular",
    "CroCoDownstreamBinocular": "f3d_jax.models.binocular",
    "CroCoDownstreamConfig": "f3d_jax.models.binocular",
    "PixelwiseTaskWithDPT": "f3d_jax.models.binocular",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'f3d_jax.stereoflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
