"""Point clouds: PLY (binary little-endian, xyz float32, rgb uchar, optional float confidence) and a GLB scene
(points plus camera frusta, via trimesh) in glTF's y-up axes: GLB coordinates are world coordinates with y and z
negated (x, -y, -z), so a scene in an OpenCV camera's frame (DUSt3R's world = the first camera) stands upright."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from f3d_jax.export.reconstruction import Reconstruction
from f3d_jax.io.atomic import atomic_open

GLB_FROM_WORLD = np.diag([1.0, -1.0, -1.0])  # OpenCV-style world -> glTF (y up, looking down -z)
_CAMERA_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                            [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 128, 128]], np.uint8)


def dense_points(recon: Reconstruction, mask: np.ndarray | None = None, max_points: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The masked pixels' world points: (P, 3) float32 xyz, (P, 3) uint8 rgb, (P,) float32 confidence, in view then
    row-major pixel order (a seeded random subset of `max_points` of them, order kept, if there are more)."""
    mask = recon.mask if mask is None else mask
    mask = mask & np.isfinite(recon.pts3d).all(-1)
    idx = np.flatnonzero(mask)
    if max_points is not None and len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    xyz = recon.pts3d.reshape(-1, 3)[idx].astype(np.float32)
    rgb = recon.images.reshape(-1, 3)[idx]
    conf = recon.conf.reshape(-1)[idx].astype(np.float32)
    return xyz, rgb, conf


def write_ply(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY of P points: x, y, z (float), red, green, blue (uchar)[, confidence (float)]."""
    path = Path(path)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if conf is not None:
        fields.append(("confidence", "<f4"))
    data = np.zeros(len(xyz), np.dtype(fields))
    data["x"], data["y"], data["z"] = np.asarray(xyz, np.float32).T
    data["red"], data["green"], data["blue"] = np.asarray(rgb, np.uint8).T
    if conf is not None:
        data["confidence"] = conf
    types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by f3d_jax.export",
              f"element vertex {len(data)}"] + [f"property {types[t]} {n}" for n, t in fields] + ["end_header"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    return path


def frustum(cam2world: np.ndarray, K: np.ndarray, hw: tuple[int, int], depth: float) -> tuple[np.ndarray, np.ndarray]:
    """A camera pyramid in WORLD coordinates: (5, 3) vertices (apex = camera centre, then the image corners at
    camera depth `depth`: top-left, top-right, bottom-right, bottom-left) and (6, 3) faces (4 sides, the base)."""
    H, W = hw
    corners = np.array([[-0.5, -0.5, 1], [W - 0.5, -0.5, 1], [W - 0.5, H - 0.5, 1], [-0.5, H - 0.5, 1]])
    rays = corners @ np.linalg.inv(K).T * depth
    verts = np.concatenate([np.zeros((1, 3)), rays]) @ cam2world[:3, :3].T + cam2world[:3, 3]
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 3, 2], [1, 4, 3]])
    return verts, faces


def write_glb(path: str | os.PathLike, recon: Reconstruction, xyz: np.ndarray, rgb: np.ndarray,
              frustum_depth: float | None = None) -> Path:
    """A GLB scene: node `points` (the point cloud, vertex colours) and one mesh `camera_XXX` per view (its
    frustum, see `frustum`), all in glTF axes (`GLB_FROM_WORLD`). `frustum_depth` defaults to a tenth of the
    median masked depth."""
    import trimesh  # imported here: only this writer needs it

    path = Path(path)
    if frustum_depth is None:
        d = recon.depth[recon.mask] if recon.mask.any() else recon.depth.reshape(-1)
        d = d[np.isfinite(d) & (d > 0)]
        frustum_depth = 0.1 * float(np.median(d)) if len(d) else 0.1
    scene = trimesh.Scene()
    if len(xyz):
        colours = np.concatenate([np.asarray(rgb, np.uint8), np.full((len(rgb), 1), 255, np.uint8)], 1)
        scene.add_geometry(trimesh.PointCloud(np.asarray(xyz, np.float64) @ GLB_FROM_WORLD.T, colors=colours),
                           geom_name="points", node_name="points")
    for k in range(recon.n):
        v, f = frustum(recon.cam2world[k].astype(np.float64), recon.intrinsics[k].astype(np.float64), recon.hw,
                       frustum_depth)
        mesh = trimesh.Trimesh(vertices=v @ GLB_FROM_WORLD.T, faces=f, process=False)
        mesh.visual.face_colors = np.append(_CAMERA_COLOURS[k % len(_CAMERA_COLOURS)], 255)
        scene.add_geometry(mesh, geom_name=f"camera_{k:03d}", node_name=f"camera_{k:03d}")
    data = scene.export(file_type="glb")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return path
