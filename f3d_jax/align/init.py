"""Deprecated module name: the initialisations live in `f3d_jax.align.initialise` (this alias keeps old imports
working). `InitState` is now `Initialisation`, whose decoded starting state is the `AlignState` in `.state`."""

from f3d_jax.align.initialise import Initialisation, initialise_known_poses, initialise_mst

InitState = Initialisation
init_mst = initialise_mst
init_known_poses = initialise_known_poses

__all__ = ["InitState", "init_known_poses", "init_mst"]
