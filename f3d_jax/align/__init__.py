"""Global alignment of pairwise pointmaps: dense GA (DUSt3R), its initialisation and the two-view PairViewer.

`global_align` (module `dense`) is the entry point; `align_dense` (module `core`) the pure jitted loop on a
`DenseProblem` built by `make_problem` (module `problem`). `Scene` is the deprecated name of `AlignResult`.
"""

from f3d_jax.align.config import DenseConfig
from f3d_jax.align.core import align_dense
from f3d_jax.align.dense import global_align
from f3d_jax.align.parameterisation import ManifoldParam, OfficialParam, Parameterisation, parameterisation
from f3d_jax.align.problem import make_problem
from f3d_jax.align.types import AlignResult, AlignState, DenseProblem, Scene

__all__ = [
    "AlignResult", "AlignState", "DenseConfig", "DenseProblem", "ManifoldParam", "OfficialParam", "Parameterisation",
    "Scene", "align_dense", "global_align", "make_problem", "parameterisation",
]
