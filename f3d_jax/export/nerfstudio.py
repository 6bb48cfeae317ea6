"""nerfstudio `transforms.json`: one frame per image, OpenGL camera axes, per-frame intrinsics of the source image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from f3d_jax.export.colmap import colmap_intrinsics
from f3d_jax.export.reconstruction import Reconstruction
from f3d_jax.io.atomic import atomic_write_text

OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # camera axes: (x right, y down, z fwd) -> (x right, y up, z back)


def nerfstudio_transform(cam2world: np.ndarray) -> np.ndarray:
    """(..., 4, 4) OpenCV cam-to-world -> nerfstudio `transform_matrix` (columns y and z negated)."""
    return np.asarray(cam2world, np.float64) @ OPENGL_FROM_OPENCV


def write_nerfstudio(recon: Reconstruction, path: str | os.PathLike, image_dir: str = "images",
                     ply_file: str | None = None) -> Path:
    """Writes `transforms.json` at `path`.

    Frames: `file_path` = `<image_dir>/<name>` (relative to the json's folder), `transform_matrix` (4x4,
    cam-to-world, OpenGL camera axes), `fl_x, fl_y, cx, cy, w, h` of the SOURCE image with nerfstudio's pixel
    convention (top-left pixel centre at (0.5, 0.5), the same numbers as COLMAP's PINHOLE), zero distortion
    (`camera_model` OPENCV, k1 = k2 = p1 = p2 = 0). `ply_file_path` (relative) when `ply_file` is given.
    World coordinates are the reconstruction's own (no re-orientation).
    """
    path = Path(path)
    params = colmap_intrinsics(recon)
    frames = []
    for k in range(recon.n):
        fx, fy, cx, cy = (float(x) for x in params[k])
        frames.append({
            "file_path": f"{image_dir}/{recon.names[k]}",
            "transform_matrix": nerfstudio_transform(recon.cam2world[k]).tolist(),
            "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy,
            "w": int(recon.orig_sizes[k, 0]), "h": int(recon.orig_sizes[k, 1]),
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
            "colmap_im_id": k + 1,
        })
    meta: dict = {"camera_model": "OPENCV", "frames": frames}
    if ply_file is not None:
        meta["ply_file_path"] = ply_file
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    return path
