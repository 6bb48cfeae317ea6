"""COLMAP sparse model writer (text and binary), following COLMAP's documented formats
(https://colmap.github.io/format.html): `cameras`, `images`, `points3D`.

One PINHOLE camera per image (camera_id = image_id = view index + 1) with the intrinsics of the SOURCE image:
`K_orig = [to_orig; 0 0 1] @ K`, then +0.5 on the principal point (COLMAP puts the top-left pixel's centre at
(0.5, 0.5), f3d-jax at (0, 0)). `images` holds world-to-camera rotations as quaternions (qw, qx, qy, qz) with
qw >= 0 and translations. Observations (points2D) are the tracks' pixels mapped to the source image the same way.
COLMAP >= 3.12 reads these files as a trivial rig and frame per camera/image.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from f3d_jax.export.reconstruction import Reconstruction, Tracks
from f3d_jax.io.atomic import atomic_open

PINHOLE_MODEL_ID = 1


def world2cam_qt(cam2world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4, 4) cam-to-world -> (N, 4) qvec (w, x, y, z), w >= 0, and (N, 3) tvec of world-to-camera."""
    c2w = np.asarray(cam2world, np.float64)
    R = np.swapaxes(c2w[:, :3, :3], -1, -2)
    # the rotation part is projected onto SO(3) first (float32 poses are not exactly orthonormal)
    U, _, Vt = np.linalg.svd(R)
    R = U @ Vt
    t = -np.einsum("nij,nj->ni", R, c2w[:, :3, 3])
    xyzw = Rotation.from_matrix(R).as_quat()
    q = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q, t


def colmap_pixels(recon: Reconstruction, view: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Working pixels (u, v) of views `view` -> COLMAP pixel coordinates of the source images ((M, 2) float64)."""
    A = recon.to_orig[view]
    uv1 = np.einsum("mij,mj->mi", A[:, :, :2], uv) + A[:, :, 2]
    return uv1 + 0.5


def colmap_intrinsics(recon: Reconstruction) -> np.ndarray:
    """(N, 4) PINHOLE params (fx, fy, cx, cy) of the source images in COLMAP's pixel convention."""
    K = recon.orig_intrinsics()
    return np.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2] + 0.5, K[:, 1, 2] + 0.5], axis=1)


def _tables(recon: Reconstruction, tracks: Tracks):
    """Per-image points2D (sorted by view), their point3D ids, and each point's track (image_id, point2D_idx)."""
    order = np.lexsort((tracks.obs_point, tracks.obs_view))
    view = tracks.obs_view[order]
    point = tracks.obs_point[order]
    xy = colmap_pixels(recon, view, tracks.obs_uv[order])
    counts = np.bincount(view, minlength=recon.n)
    starts = np.cumsum(counts) - counts
    idx2d = np.arange(len(view)) - starts[view]
    # reprojection error of each point in source pixels (mean over its observations)
    q, t = world2cam_qt(recon.cam2world)
    R = Rotation.from_quat(np.concatenate([q[:, 1:], q[:, :1]], 1)).as_matrix()
    Xc = np.einsum("mij,mj->mi", R[view], tracks.xyz[point]) + t[view]
    p = colmap_intrinsics(recon)[view]
    proj = np.stack([p[:, 0] * Xc[:, 0] / Xc[:, 2] + p[:, 2], p[:, 1] * Xc[:, 1] / Xc[:, 2] + p[:, 3]], 1)
    err = np.linalg.norm(proj - xy, axis=1)
    n_obs = np.bincount(point, minlength=tracks.n_points)
    mean_err = np.bincount(point, weights=err, minlength=tracks.n_points) / np.maximum(n_obs, 1)
    by_point = np.argsort(point, kind="stable")  # track elements grouped by point, in image order
    return dict(view=view, point=point, xy=xy, starts=starts, counts=counts, idx2d=idx2d, q=q, t=t,
                err=mean_err, n_obs=n_obs, by_point=by_point)


def write_colmap(recon: Reconstruction, out_dir: str | os.PathLike, tracks: Tracks, binary: bool = True) -> Path:
    """Writes `cameras`, `images` and `points3D` (`.bin` if `binary`, else `.txt`) into `out_dir` (created).

    Args:
      recon: the reconstruction (cameras, image names, to_orig, orig_sizes).
      out_dir: the model folder, e.g. `<out>/colmap/sparse/0`.
      tracks: the 3D points with their observations (`build_tracks` or `recon.tracks`).
      binary: binary or text format.
    Returns:
      out_dir as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tb = _tables(recon, tracks)
    params = colmap_intrinsics(recon)
    sizes = recon.orig_sizes.astype(np.int64)
    if binary:
        _write_binary(out, recon, tracks, tb, params, sizes)
    else:
        _write_text(out, recon, tracks, tb, params, sizes)
    return out


def _write_binary(out, recon, tracks, tb, params, sizes) -> None:
    with atomic_open(out / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", recon.n))
        for k in range(recon.n):
            f.write(struct.pack("<iiQQ", k + 1, PINHOLE_MODEL_ID, int(sizes[k, 0]), int(sizes[k, 1])))
            f.write(params[k].astype("<f8").tobytes())
    pts2d = np.zeros(len(tb["view"]), np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")]))
    pts2d["x"], pts2d["y"], pts2d["id"] = tb["xy"][:, 0], tb["xy"][:, 1], tb["point"] + 1
    with atomic_open(out / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", recon.n))
        for k in range(recon.n):
            f.write(struct.pack("<i", k + 1))
            f.write(np.concatenate([tb["q"][k], tb["t"][k]]).astype("<f8").tobytes())
            f.write(struct.pack("<i", k + 1))
            f.write(recon.names[k].encode("utf-8") + b"\x00")
            s, c = tb["starts"][k], tb["counts"][k]
            f.write(struct.pack("<Q", int(c)))
            f.write(pts2d[s:s + c].tobytes())
    P = tracks.n_points
    head = np.zeros(P, np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("err", "<f8"), ("n", "<u8")]))
    head["id"], head["xyz"], head["rgb"] = np.arange(1, P + 1), tracks.xyz, tracks.rgb
    head["err"], head["n"] = tb["err"], tb["n_obs"]
    # variable-length records, assembled with index arithmetic: [head (51 bytes), n_obs x (image_id, idx)]
    bp = tb["by_point"]
    elems = np.zeros(len(tb["view"]), np.dtype([("img", "<i4"), ("idx", "<i4")]))
    elems["img"], elems["idx"] = tb["view"][bp] + 1, tb["idx2d"][bp]
    n_obs = tb["n_obs"].astype(np.int64)
    hsize = head.dtype.itemsize
    rec_len = hsize + 8 * n_obs
    rec_start = np.cumsum(rec_len) - rec_len
    buf = np.zeros(int(rec_len.sum()), np.uint8)
    buf[(rec_start[:, None] + np.arange(hsize)).reshape(-1)] = head.view(np.uint8).reshape(-1)
    point = tb["point"][bp]
    rank = np.arange(len(point)) - (np.cumsum(n_obs) - n_obs)[point]
    pos = rec_start[point] + hsize + 8 * rank
    buf[(pos[:, None] + np.arange(8)).reshape(-1)] = elems.view(np.uint8).reshape(-1)
    with atomic_open(out / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", P))
        f.write(buf.tobytes())


def _write_text(out, recon, tracks, tb, params, sizes) -> None:
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {recon.n}"]
    for k in range(recon.n):
        lines.append(f"{k + 1} PINHOLE {sizes[k, 0]} {sizes[k, 1]} " + " ".join(repr(float(x)) for x in params[k]))
    with atomic_open(out / "cameras.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    mean_obs = len(tb["view"]) / max(recon.n, 1)
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {recon.n}, mean observations per image: {mean_obs}"]
    for k in range(recon.n):
        qt = " ".join(repr(float(x)) for x in np.concatenate([tb["q"][k], tb["t"][k]]))
        lines.append(f"{k + 1} {qt} {k + 1} {recon.names[k]}")
        s, c = tb["starts"][k], tb["counts"][k]
        xy, pid = tb["xy"][s:s + c], tb["point"][s:s + c] + 1
        lines.append(" ".join(f"{x:.10g} {y:.10g} {i}" for (x, y), i in zip(xy.tolist(), pid.tolist())))
    with atomic_open(out / "images.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    mean_track = float(tb["n_obs"].mean()) if tracks.n_points else 0.0
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {tracks.n_points}, mean track length: {mean_track}"]
    bp = tb["by_point"]
    img, idx = (tb["view"][bp] + 1).tolist(), tb["idx2d"][bp].tolist()
    ends = np.cumsum(tb["n_obs"]).tolist()
    start = 0
    for p, (xyz, rgb, err, end) in enumerate(zip(tracks.xyz.tolist(), tracks.rgb.tolist(), tb["err"].tolist(), ends)):
        track = " ".join(f"{img[m]} {idx[m]}" for m in range(start, end))
        lines.append(f"{p + 1} {xyz[0]!r} {xyz[1]!r} {xyz[2]!r} {rgb[0]} {rgb[1]} {rgb[2]} {err:.6g} {track}")
        start = end
    with atomic_open(out / "points3D.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
