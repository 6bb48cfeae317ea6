"""Camera geometry in plain numpy / jax.numpy (no models): pixel grids, depth <-> pointmaps, SE(3)/Sim(3),
Procrustes, focal estimation and RANSAC-PnP, following DUSt3R's conventions (see each module)."""

from f3d_jax.geometry.cameras import (default_principal_point, depth_to_pts3d, intrinsics, pixel_grid,
                                      pts3d_to_depth)
from f3d_jax.geometry.focal import estimate_focal_weiszfeld, focal_base
from f3d_jax.geometry.pnp import pnp_ransac
from f3d_jax.geometry.procrustes import align_multiple_poses, centres_and_axis_points, sim3_matrix, umeyama
from f3d_jax.geometry.transforms import (apply_transform, inverse_pose, make_pose, quat_xyzw_to_rotmat,
                                         rotation_angle_deg, rotmat_to_quat_xyzw, signed_expm1, signed_log1p,
                                         wxyz_to_xyzw, xyzw_to_wxyz)

__all__ = [
    "align_multiple_poses", "apply_transform", "centres_and_axis_points", "default_principal_point",
    "depth_to_pts3d", "estimate_focal_weiszfeld", "focal_base", "intrinsics", "inverse_pose", "make_pose",
    "pixel_grid", "pnp_ransac", "pts3d_to_depth", "quat_xyzw_to_rotmat", "rotation_angle_deg",
    "rotmat_to_quat_xyzw", "signed_expm1", "signed_log1p", "sim3_matrix", "umeyama", "wxyz_to_xyzw",
    "xyzw_to_wxyz",
]
