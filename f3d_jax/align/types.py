"""Data types of the alignment: the decoded state (`AlignState`), the result (`AlignResult`) and the array inputs
of the dense core (`DenseProblem`). All are frozen dataclasses registered as pytrees (jit, vmap and grad go
through them); none holds behaviour beyond small derived views.

Conventions: poses are **cam-to-world** 4x4 with OpenCV camera axes (x right, y down, z forward). Pixels (u, v) =
(column, row) with integer coordinates; the default principal point is exactly (W/2, H/2). The pairwise
transform of edge e = (i, j), x -> s_e (R_e x + T_e), maps edge e's predictions (camera i's frame, arbitrary
scale) to the world: `pw_poses` holds the rigid part [R_e | T_e] and `pw_scales` the (normalised) scales s_e.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def pytree_dataclass(cls: type) -> type:
    """Frozen dataclass registered as a pytree (all fields are data)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])


@pytree_dataclass
class AlignState:
    """Decoded alignment state: what an initialisation produces, what the optimiser starts from and ends with.

    Attributes:
      cam2world: (N, 4, 4) float32, cam-to-world, OpenCV axes.
      focals: (N,) float32, pixels.
      principal_points: (N, 2) float32, (cx, cy) pixels.
      depthmaps: (N, H, W) float32, camera-frame z.
      pw_poses: (E, 4, 4) float32, rigid part [R_e | T_e] of the pairwise transforms x -> s_e (R_e x + T_e).
      pw_scales: (E,) float32, s_e (after the pairwise-scale normalisation).
    Arrays are jax arrays inside the optimiser; the host-side initialisations fill it with numpy arrays.
    """

    cam2world: jax.Array
    focals: jax.Array
    principal_points: jax.Array
    depthmaps: jax.Array
    pw_poses: jax.Array
    pw_scales: jax.Array


@pytree_dataclass
class AlignResult:
    """Result of `global_align` / `align_dense` (a pytree: jit, vmap and grad go through it).

    Attributes:
      cam2world: (N, 4, 4) float32, cam-to-world, OpenCV axes (x right, y down, z forward).
      focals: (N,) float32. principal_points: (N, 2) float32 (cx, cy).
      depthmaps: (N, H, W) float32. pts3d: (N, H, W, 3) float32 world points of every pixel.
      conf: (N, H, W) float32, per-image max confidence over all edges (official `im_conf`).
      masks: (N, H, W) bool, conf > min_conf_thr and not user-ignored (official `get_masks()`).
      pw_poses: (E, 4, 4) rigid pairwise poses; pw_scales: (E,) their scales (see the module docstring).
      edges: (E, 2) int32 (i, j) per edge.
      loss_curve: (niter,) loss at each iteration, before that iteration's step. lr_curve: (niter,).
      final_loss: () loss of the returned state (after the last step).
      start: `AlignState` the optimisation started from (the initialisation with the presets applied).
    """

    cam2world: jax.Array
    focals: jax.Array
    principal_points: jax.Array
    depthmaps: jax.Array
    pts3d: jax.Array
    conf: jax.Array
    masks: jax.Array
    pw_poses: jax.Array
    pw_scales: jax.Array
    edges: jax.Array
    loss_curve: jax.Array
    lr_curve: jax.Array
    final_loss: jax.Array
    start: AlignState

    @property
    def init(self) -> AlignState:
        """Deprecated name of `start`."""
        return self.start

    def pw_poses_scaled(self) -> jax.Array:
        """(E, 4, 4) [s R | s T]: the official `get_pw_poses()`."""
        s = self.pw_scales[..., None, None]
        top = self.pw_poses[..., :3, :] * s
        return jnp.concatenate([top, self.pw_poses[..., 3:, :]], axis=-2)

    def intrinsics(self) -> jax.Array:
        """(N, 3, 3) K matrices."""
        K = jnp.zeros(self.focals.shape + (3, 3), jnp.float32)
        K = K.at[..., 0, 0].set(self.focals).at[..., 1, 1].set(self.focals)
        return K.at[..., :2, 2].set(self.principal_points).at[..., 2, 2].set(1.0)


# Deprecated alias: the alignment result used to be called `Scene` (beside `infer_scene`, which returns a dict).
Scene = AlignResult


@pytree_dataclass
class DenseProblem:
    """Array inputs of the dense GA core (all images the same size H x W).

    Attributes:
      pred_i: (E, 3, H, W) pred1 'pts3d' (image i in camera i's frame), **planar** (the x, y, z planes of the
        official NHWC arrays: `problem.to_planar`, or build the problem with `problem.make_problem`); float32
        or bfloat16.
      pred_j: (E, 3, H, W) pred2 'pts3d_in_other_view' (image j in camera i's frame), planar.
      conf_i, conf_j: (E, H, W) float32 confidences (> 0 for conf='log').
      ei, ej: (E,) int32 image indices (i, j) of each edge.
      ignore: (N, H, W) bool, user mask of pixels to ignore (dynamic objects, sky...): their weight is 0.
      edge_weights: (E,) float32 multipliers of each edge's two loss terms (1 = official).
      preset_cam2world: (N, 4, 4), pose_known: (N,) bool: known cam-to-world poses (frozen).
      preset_focals: (N,), focal_known: (N,) bool. preset_pp: (N, 2), pp_known: (N,) bool.
    """

    pred_i: jax.Array
    pred_j: jax.Array
    conf_i: jax.Array
    conf_j: jax.Array
    ei: jax.Array
    ej: jax.Array
    ignore: jax.Array
    edge_weights: jax.Array
    preset_cam2world: jax.Array
    pose_known: jax.Array
    preset_focals: jax.Array
    focal_known: jax.Array
    preset_pp: jax.Array
    pp_known: jax.Array
