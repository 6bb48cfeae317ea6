"""`export`: every format into one folder (layout in the package docstring), with the options of `ExportOptions`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from f3d_jax.export.colmap import write_colmap
from f3d_jax.export.nerfstudio import write_nerfstudio
from f3d_jax.export.pointcloud import write_glb, write_ply
from f3d_jax.export.reconstruction import Reconstruction, clean_confidence
from f3d_jax.export.tracks import build_tracks
from f3d_jax.export.views import write_images, write_npz_views

FORMATS = ("reconstruction", "colmap", "nerfstudio", "ply", "glb", "npz")
RECONSTRUCTION_FILE = "reconstruction.npz"
COLMAP_DIR = Path("colmap") / "sparse" / "0"
IMAGES_DIR = "images"
PLY_FILE = "points.ply"
GLB_FILE = "scene.glb"
TRANSFORMS_FILE = "transforms.json"
VIEWS_DIR = "views"


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Options of `export`.

    Attributes:
      min_conf_thr: if set, export the pixels with confidence > min_conf_thr (finite, positive depth) instead of
        the reconstruction's own `mask`.
      clean_depth: drop the points hidden behind a more confident view (DUSt3R's `clean_pointcloud`).
      max_points: at most this many 3D points in the COLMAP model.
      min_track_length: each COLMAP point is observed by at least this many images (>= 2 for bundle adjustment).
      depth_tol: relative depth agreement for a view to observe a COLMAP point.
      track_observations: 'measured' (default) or 'projection': how a COLMAP point's pixels are found
        (`build_tracks`): each view's own measurement (real residuals) or the point's projection (zero residuals).
      cloud_max_points: at most this many points in the PLY and GLB (None: every exported pixel).
      ply_confidence: add a `confidence` property to the PLY.
      frustum_depth: depth of the GLB camera frusta (world units; default a tenth of the median depth).
      seed: seed of the random subsets (max_points, cloud_max_points).
    """

    min_conf_thr: float | None = None
    clean_depth: bool = False
    max_points: int = 100_000
    min_track_length: int = 2
    depth_tol: float = 0.02
    track_observations: str = "measured"
    cloud_max_points: int | None = None
    ply_confidence: bool = True
    frustum_depth: float | None = None
    seed: int = 0


def export_mask(recon: Reconstruction, opts: ExportOptions) -> np.ndarray:
    """(N, H, W) bool: the pixels `export` writes under `opts`."""
    if opts.min_conf_thr is None:
        mask = recon.mask.copy()
    else:
        mask = (recon.conf > opts.min_conf_thr) & np.isfinite(recon.pts3d).all(-1) & (recon.depth > 0)
    if opts.clean_depth:
        cleaned = clean_confidence(recon.conf, recon.intrinsics, recon.cam2world, recon.depth, recon.pts3d)
        mask &= ~(cleaned < recon.conf)
    return mask


def export(recon: Reconstruction, out_dir: str | os.PathLike, formats: Sequence[str] = FORMATS,
           **options) -> dict[str, Path]:
    """Writes the chosen formats into `out_dir` (created; existing files of the same names are replaced).

    Args:
      recon: the reconstruction.
      out_dir: output folder.
      formats: any of 'reconstruction' (`reconstruction.npz`, `Reconstruction.save` of `recon` as given, the file
        `f3d view` opens), 'colmap', 'nerfstudio', 'ply', 'glb', 'npz' ('nerfstudio' also writes the PLY it
        names; 'colmap' and 'nerfstudio' write the source-resolution images under `images/`).
      options: fields of `ExportOptions`.
    Returns:
      {format: path}: reconstruction -> reconstruction.npz, colmap -> the model folder (`colmap/sparse/0`),
      nerfstudio -> transforms.json,
      ply -> points.ply, glb -> scene.glb, npz -> the views folder.
    Every file is written to a temporary name and renamed.
    """
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"export: unknown format(s) {unknown}; choose from {list(FORMATS)}")
    names = {f.name for f in dataclasses.fields(ExportOptions)}
    bad = sorted(set(options) - names)
    if bad:
        raise TypeError(f"export: unknown option(s) {bad}; options are {sorted(names)}")
    opts = ExportOptions(**options)
    out = Path(os.path.abspath(os.fspath(out_dir)))
    out.mkdir(parents=True, exist_ok=True)
    mask = export_mask(recon, opts)
    written: dict[str, Path] = {}
    if "reconstruction" in formats:
        written["reconstruction"] = recon.save(out / RECONSTRUCTION_FILE)
    if "colmap" in formats or "nerfstudio" in formats:
        write_images(recon, out / IMAGES_DIR)
    if "colmap" in formats:
        tracks = recon.tracks
        if tracks is None:
            tracks = build_tracks(recon, mask, max_points=opts.max_points, depth_tol=opts.depth_tol,
                                  min_views=opts.min_track_length, seed=opts.seed,
                                  observations=opts.track_observations)
        write_colmap(recon, out / COLMAP_DIR, binary=True, tracks=tracks)
        written["colmap"] = write_colmap(recon, out / COLMAP_DIR, binary=False, tracks=tracks)
    if "ply" in formats or "nerfstudio" in formats:
        p = write_ply(recon, out / PLY_FILE, mask, opts.cloud_max_points, opts.ply_confidence, opts.seed)
        if "ply" in formats:
            written["ply"] = p
    if "nerfstudio" in formats:
        written["nerfstudio"] = write_nerfstudio(recon, out / TRANSFORMS_FILE, IMAGES_DIR, PLY_FILE)
    if "glb" in formats:
        written["glb"] = write_glb(recon, out / GLB_FILE, mask, opts.cloud_max_points, opts.frustum_depth, opts.seed)
    if "npz" in formats:
        written["npz"] = write_npz_views(recon, out / VIEWS_DIR, mask)
    return written
