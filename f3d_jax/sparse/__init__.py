"""MASt3R sparse global alignment in JAX (spec `alignment.md` section 4).

    from f3d_jax.sparse import sparse_global_alignment
    scene = sparse_global_alignment(names, pairs, model, matching_conf_thr=0.0)
    pts3d, depths, confs = scene.dense_pts3d(clean_depth=True)

The network is reached only through the `model` callable (`pred1, pred2 = model(view1, view2)`).
"""

from f3d_jax.sparse.api import sparse_global_alignment
from f3d_jax.sparse.chain import KinematicChain, kinematic_chain
from f3d_jax.sparse.scene import SparseScene, clean_pointcloud

__all__ = ["KinematicChain", "SparseScene", "clean_pointcloud", "kinematic_chain", "sparse_global_alignment"]
