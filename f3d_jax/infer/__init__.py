"""Pair graphs and pairwise inference (the equivalent of `dust3r.image_pairs` / `dust3r.inference`)."""

from f3d_jax.infer.engine import (InferenceEngine, PairInputError, inference, symmetric_inference,
                                  symmetric_inference_pairs)
from f3d_jax.infer.scene import infer_scene

__all__ = ["InferenceEngine", "PairInputError", "inference", "infer_scene", "symmetric_inference",
           "symmetric_inference_pairs"]
