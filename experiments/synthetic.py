"""Moved to `f3d_jax.eval.synthetic` (this alias keeps `from experiments.synthetic import ...` working)."""

from f3d_jax.eval.synthetic import (NOISE_LEVELS, SyntheticScene, camera_points, make_edges, make_predictions,
                                    make_scene, render, world_points)

Scene = SyntheticScene

__all__ = ["NOISE_LEVELS", "Scene", "SyntheticScene", "camera_points", "make_edges", "make_predictions",
           "make_scene", "render", "world_points"]
