"""Pair graphs and pairwise inference (the equivalent of `dust3r.image_pairs` / `dust3r.inference`).

Modules: `pairs` (pair graphs), `views` (input validation, image identity), `steps` (jitted device
steps), `engine` (`InferenceEngine`, `inference`, `symmetric_inference*`), `collate` (the official output
layout), `scene` (images in, predictions out).
"""

from f3d_jax.infer.engine import (InferenceEngine, inference, symmetric_inference,
                                  symmetric_inference_pairs)
from f3d_jax.infer.scene import infer_scene
from f3d_jax.infer.views import PairInputError

__all__ = ["InferenceEngine", "PairInputError", "inference", "infer_scene", "symmetric_inference",
           "symmetric_inference_pairs"]
