"""Global alignment of pairwise pointmaps: dense GA (DUSt3R), its initialisation and the two-view PairViewer."""

from f3d_jax.align.dense import AlignState, DenseConfig, DenseProblem, Scene, align_dense, global_align

__all__ = ["AlignState", "DenseConfig", "DenseProblem", "Scene", "align_dense", "global_align"]
