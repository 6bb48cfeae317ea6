"""MASt3R sparse global alignment in JAX (spec `alignment.md` section 4).

    from f3d_jax.sparse import sparse_global_alignment
    scene = sparse_global_alignment(names, pairs, model, matching_conf_thr=0.0)
    pts3d, depths, confs = scene.dense_pts3d(clean_depth=True)

The network is reached only through the `model` callable (`pred1, pred2 = model(view1, view2)`).

Beyond the official code: known poses and intrinsics (`init=`), per-image masks (`masks=`), and the
optimisation as a pure, differentiable function of arrays (`align_arrays`, with `problem_from_canonical` to
differentiate with respect to the canonical pointmaps; `prepare` and `stage_masks` build its inputs).
"""

from f3d_jax.sparse.api import prepare, sparse_global_alignment, stage_masks
from f3d_jax.sparse.chain import KinematicChain, kinematic_chain
from f3d_jax.sparse.optimize import align_arrays, problem_from_canonical
from f3d_jax.sparse.scene import SparseScene, clean_pointcloud

__all__ = ["KinematicChain", "SparseScene", "align_arrays", "clean_pointcloud", "kinematic_chain", "prepare",
           "problem_from_canonical", "sparse_global_alignment", "stage_masks"]
