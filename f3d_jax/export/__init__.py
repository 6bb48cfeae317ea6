"""Exports of a reconstruction to files other tools read: COLMAP, nerfstudio, PLY, GLB, per-view npz.

Camera conventions (the one place they are written down)
--------------------------------------------------------
f3d-jax (every array of `Reconstruction`, the per-view npz files):
  * poses are cam-to-world 4x4 (`cam2world`), OpenCV camera axes: x right, y down, z forward;
  * pixel (u, v) = (column, row) with pixel CENTRES at integers (the top-left pixel's centre is (0, 0));
    the default principal point is (W/2, H/2); depth is the camera-frame z;
  * per-view arrays are at the WORKING resolution (the network's input, after the loader's resize and crop);
    `to_orig[k]` (2 x 3) maps a working pixel to the SOURCE image's pixel, both with centres at integers:
    [u1, v1] = to_orig[k] @ [u, v, 1]; so the source-resolution intrinsics are K_orig = [to_orig; 0 0 1] @ K.
COLMAP (`colmap/sparse/0`): one PINHOLE camera per image, at the SOURCE resolution: fx, fy = K_orig's focals,
  cx, cy = K_orig's principal point + 0.5 (COLMAP puts the top-left pixel's centre at (0.5, 0.5)); `images`
  holds world-to-camera poses, R = cam2world[:3, :3]^T, t = -R c, the rotation as a unit quaternion
  (qw, qx, qy, qz) with qw >= 0; observation pixels use the same source pixel convention (+0.5).
nerfstudio (`transforms.json`): `transform_matrix` = cam2world with its y and z columns negated (OpenGL camera
  axes: x right, y up, z backward); `fl_x, fl_y, cx, cy, w, h` are the COLMAP numbers (nerfstudio's pixel
  centres are also at +0.5); the world frame is the reconstruction's (no re-orientation, no `applied_transform`).
PLY (`points.ply`): world coordinates as they are.
GLB (`scene.glb`): glTF is y-up: world points and cameras are multiplied by diag(1, -1, -1), so a world that is
  an OpenCV camera's frame (DUSt3R's default, the first camera) is seen upright in a glTF viewer.
The world frame and its scale are the alignment's (DUSt3R: arbitrary scale, usually the first camera's frame).

Output layout of `export(recon, out_dir)`
-----------------------------------------
  out_dir/
    reconstruction.npz                `Reconstruction.save` (arrays above; `Reconstruction.load`, `f3d view`)
    images/<name>                     source-resolution images (a copy of each source file; for in-memory or
                                      missing sources the working image placed on the source canvas)
    colmap/sparse/0/cameras.{bin,txt}   COLMAP sparse model, binary and text (the same model;
    colmap/sparse/0/images.{bin,txt}    COLMAP and pycolmap read the .bin files when both are present)
    colmap/sparse/0/points3D.{bin,txt}
    transforms.json                   nerfstudio (file_path images/<name>, ply_file_path points.ply)
    points.ply                        dense point cloud: xyz float, rgb uchar, confidence float
    scene.glb                         points + one frustum mesh per camera (nodes `points`, `camera_XXX`)
    views/<stem>.npz                  per view: image, depth, conf, mask, K, cam2world, K_orig, to_orig, orig_size
  To refine with COLMAP: `colmap bundle_adjuster --input_path out/colmap/sparse/0 --output_path ...`;
  dense stereo: `colmap image_undistorter --image_path out/images --input_path out/colmap/sparse/0 ...`.

COLMAP points for dense results come from `build_tracks` (module `tracks`): see its docstring.
"""

from f3d_jax.export.colmap import colmap_intrinsics, colmap_pixels, world2cam_qt, write_colmap
from f3d_jax.export.exporter import FORMATS, RECONSTRUCTION_FILE, ExportOptions, export, export_mask
from f3d_jax.export.nerfstudio import nerfstudio_transform, write_nerfstudio
from f3d_jax.export.pointcloud import GLB_FROM_WORLD, dense_points, write_glb, write_ply
from f3d_jax.export.reconstruction import (Reconstruction, ReconstructionError, Tracks, clean_confidence,
                                           reconstruction_from_alignment)
from f3d_jax.export.tracks import build_tracks
from f3d_jax.export.views import write_images, write_npz_views

__all__ = [
    "FORMATS", "GLB_FROM_WORLD", "RECONSTRUCTION_FILE", "ExportOptions", "Reconstruction", "ReconstructionError",
    "Tracks", "build_tracks",
    "clean_confidence", "colmap_intrinsics", "colmap_pixels", "dense_points", "export", "export_mask",
    "nerfstudio_transform", "reconstruction_from_alignment", "world2cam_qt", "write_colmap", "write_glb",
    "write_images", "write_nerfstudio", "write_npz_views", "write_ply",
]
