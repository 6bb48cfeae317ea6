"""MASt3R matching: exact blocked nearest neighbours and the official fast reciprocal matching, in JAX.

    from f3d_jax.matching import fast_reciprocal_nns, extract_correspondences
    xy1, xy2 = fast_reciprocal_nns(desc1, desc2, subsample=8, dist="dot")   # (M, 2) int32 (x, y) each
"""

from f3d_jax.matching.nearest import default_block_size, nearest_neighbours
from f3d_jax.matching.reciprocal import (
    default_query_chunk,
    extract_correspondences,
    fast_reciprocal_nns,
    grid_queries,
    merge_corres,
    reciprocal_iteration,
)

__all__ = [
    "default_block_size",
    "default_query_chunk",
    "extract_correspondences",
    "fast_reciprocal_nns",
    "grid_queries",
    "merge_corres",
    "nearest_neighbours",
    "reciprocal_iteration",
]
