"""`run_sfm`: MASt3R-SfM, images in, cameras and a COLMAP model out.

    images -> pair graph (complete for few images, else retrieval-Na-k on `f3d_jax.retrieval.similarity_matrix`)
           -> batched network pass (each image encoded once, pairs decoded in chunks, `PairPredictions`)
           -> `sparse_global_alignment` (matching, coarse and fine stages)
           -> `Reconstruction` (dense cloud of the aligned depth, tracks from the matches)
           -> `f3d_jax.export.export` (COLMAP with the match tracks, PLY, GLB, nerfstudio, npz)

`sfm_from_predictions` is the part after the network: it takes any callable with the model contract, so
precomputed or stand-in predictions run the same alignment, tracks and exports.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from f3d_jax.export import FORMATS, Reconstruction, Tracks, export, reconstruction_from_alignment
from f3d_jax.sfm.graph import sfm_pairs
from f3d_jax.sfm.predictions import CHUNK_BYTES, CachedEncoderEngine, PairPredictions, chunk_pairs_for
from f3d_jax.sfm.tracks import TrackStats, tracks_from_matches
from f3d_jax.sparse import SparseScene, sparse_global_alignment


@dataclasses.dataclass(frozen=True)
class SfMResult:
    """What `run_sfm` produced.

    Attributes:
      scene: the `SparseScene` (working-resolution cameras, sparse depth, matches).
      reconstruction: the `f3d_jax.export.Reconstruction` (dense cloud above `min_conf_thr`, `tracks` from the
        matches) that the exports were written from.
      track_stats: matches, tracks and reprojection errors (working pixels) of `reconstruction.tracks`.
      scene_graph: the graph string used; edges: (P, 2) int the ordered pairs run through the network;
        sim_mat: (N, N) the retrieval similarity, None for graphs without one.
      written: {format: path} of the exports (empty without `out_dir`).
      seconds: wall time per stage ('load', 'pairs', 'inference+align', 'tracks', 'export').
      inference: what the network pass did (`run_sfm`): 'encoder_passes' (1: each image encoded once for the
        whole graph), 'chunks', 'pairs_decoded' (ordered pairs), 'chunk_pairs' (unordered pairs per chunk).
    """

    scene: SparseScene
    reconstruction: Reconstruction
    track_stats: TrackStats
    scene_graph: str
    edges: np.ndarray
    sim_mat: np.ndarray | None = None
    written: dict = dataclasses.field(default_factory=dict)
    seconds: dict = dataclasses.field(default_factory=dict)
    inference: dict = dataclasses.field(default_factory=dict)

    @property
    def tracks(self) -> Tracks:
        return self.reconstruction.tracks

    @property
    def cam2world(self) -> np.ndarray:
        return self.reconstruction.cam2world


class _DenseView:
    """The attributes `reconstruction_from_alignment` reads, from a SparseScene's dense cloud."""

    def __init__(self, scene: SparseScene, clean_depth: bool):
        pts, depth, conf = scene.dense_pts3d(clean_depth=clean_depth)
        self.cam2world = np.asarray(scene.cam2world)
        self._K = np.asarray(scene.intrinsics)
        self.pts3d, self.depthmaps, self.conf = np.stack(pts), np.stack(depth), np.stack(conf)

    def intrinsics(self) -> np.ndarray:
        return self._K


def scene_matches(scene: SparseScene) -> tuple:
    """`scene.matches`: per unordered pair (i, j, xy_i, xy_j, conf) at working resolution."""
    matches = getattr(scene, "matches", None)
    if matches is None:
        raise RuntimeError("run_sfm: this SparseScene carries no `matches` (f3d_jax.sparse too old for run_sfm)")
    return tuple(matches)


def check_one_size(imgs: Sequence[dict]) -> None:
    """The exported `Reconstruction` holds one working size: refuse mixed sizes before any network pass."""
    shapes: dict[tuple, list[str]] = {}
    for k, d in enumerate(imgs):
        hw = tuple(int(x) for x in np.asarray(d["img"]).shape[1:3])
        shapes.setdefault(hw, []).append(os.path.basename(str(d.get("path") or f"image {k}")))
    if len(shapes) > 1:
        listing = "; ".join(f"{w}x{h}: {', '.join(n[:3])}{' ...' if len(n) > 3 else ''}" for (h, w), n in shapes.items())
        raise ValueError(f"run_sfm: the images load at different sizes ({listing}); the reconstruction needs one "
                         "size: use photos of one orientation and aspect ratio")


def reconstruction_from_sparse(scene: SparseScene, imgs: Sequence[dict], *, min_conf_thr: float = 1.5,
                               clean_depth: bool = True, min_track_length: int = 2, max_reproj_error: float = 4.0,
                               ) -> tuple[Reconstruction, TrackStats]:
    """The `Reconstruction` of a sparse alignment: cameras, the dense cloud (pixels whose canonical confidence
    exceeds `min_conf_thr`, after the official `clean_pointcloud` if `clean_depth`) and tracks from the matches
    (`tracks_from_matches`). `imgs` are the `load_images` dicts the scene was aligned from (same order)."""
    check_one_size(imgs)
    dense = _DenseView(scene, clean_depth)
    recon = reconstruction_from_alignment(dense, imgs, min_conf_thr=min_conf_thr, clean_depth=False)
    tracks, stats = tracks_from_matches(scene_matches(scene), dense.pts3d, dense.conf, recon.images,
                                        recon.intrinsics, recon.cam2world, min_track_length=min_track_length,
                                        max_reproj_error=max_reproj_error)
    return recon.replace(tracks=tracks), stats


def sfm_from_predictions(imgs: Sequence[dict], pairs: Sequence[tuple[dict, dict]], predictions: Callable,
                         *, out_dir: str | os.PathLike | None = None, formats: Sequence[str] = FORMATS,
                         subsample: int = 8, niter1: int = 300, niter2: int = 300, lr1: float = 0.07,
                         lr2: float = 0.01, matching_conf_thr: float = 0.0, shared_intrinsics: bool = False,
                         kinematic_mode: str = "hclust-ward", opt_depth: bool = True, min_conf_thr: float = 1.5,
                         clean_depth: bool = True, min_track_length: int = 2, max_reproj_error: float = 4.0,
                         cache_dir: str | None = None, export_options: dict | None = None,
                         scene_graph: str = "", sim_mat: np.ndarray | None = None,
                         seconds: dict | None = None) -> SfMResult:
    """Sparse alignment, reconstruction with match tracks and exports of `imgs` over `pairs`, the network
    reached through `predictions(view1, view2)` (the model contract). Arguments as `run_sfm`."""
    seconds = dict(seconds or {})
    t0 = time.perf_counter()
    names = [d.get("path") or f"image_{k:03d}.png" for k, d in enumerate(imgs)]
    scene = sparse_global_alignment(
        names, pairs, predictions, subsample=subsample, kinematic_mode=kinematic_mode,
        shared_intrinsics=shared_intrinsics, lr1=lr1, niter1=niter1, lr2=lr2, niter2=niter2, opt_depth=opt_depth,
        matching_conf_thr=matching_conf_thr, cache_dir=cache_dir)
    seconds["inference+align"] = seconds.get("inference+align", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    recon, stats = reconstruction_from_sparse(scene, imgs, min_conf_thr=min_conf_thr, clean_depth=clean_depth,
                                              min_track_length=min_track_length, max_reproj_error=max_reproj_error)
    seconds["tracks"] = time.perf_counter() - t0
    written: dict[str, Path] = {}
    if out_dir is not None:
        t0 = time.perf_counter()
        written = export(recon, out_dir, formats=formats, **(export_options or {}))
        seconds["export"] = time.perf_counter() - t0
    edges = np.array([(int(a["idx"]), int(b["idx"])) for a, b in pairs], np.int64).reshape(-1, 2)
    return SfMResult(scene=scene, reconstruction=recon, track_stats=stats, scene_graph=scene_graph, edges=edges,
                     sim_mat=sim_mat, written=written, seconds=seconds)


def load_sfm_images(image_folder: Any, size: int) -> list[dict]:
    """`load_images` of a folder, one path or a list of paths (at least two images)."""
    from f3d_jax.io.images import load_images

    src = os.fspath(image_folder) if isinstance(image_folder, (str, os.PathLike)) else list(image_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loader's shape warnings: the size check of the reconstruction speaks
        imgs = load_images(src, size, verbose=False)
    if len(imgs) < 2:
        raise ValueError(f"run_sfm: at least 2 images are needed, {image_folder} gives {len(imgs)}")
    return imgs


def run_sfm(image_folder: Any, model: Any, *, out_dir: str | os.PathLike | None = None, size: int = 512,
            scene_graph: str | None = None, retrieval: Any = None, subsample: int = 8, niter1: int = 300,
            niter2: int = 300, lr1: float = 0.07, lr2: float = 0.01, matching_conf_thr: float = 0.0,
            shared_intrinsics: bool = False, kinematic_mode: str = "hclust-ward", opt_depth: bool = True,
            min_conf_thr: float = 1.5, clean_depth: bool = True, min_track_length: int = 2,
            max_reproj_error: float = 4.0, formats: Sequence[str] = FORMATS, batch_size: int = 8,
            dtype: Any = None, chunk_bytes: int = CHUNK_BYTES, seed: int = 0, cache_dir: str | None = None,
            export_options: dict | None = None, progress: bool = True) -> SfMResult:
    """MASt3R-SfM: a folder of photos to cameras, a dense cloud and a COLMAP model (module docstring).

    Args:
      image_folder: a folder (sorted file names), an image path, or a list of paths / arrays (`load_images`).
      model: a MASt3R `f3d_jax.Model` (or anything `f3d_jax.load_model` reads: name, repo id, path).
      out_dir: where to write the exports (`f3d_jax.export.export`; files written atomically); None: none.
      size: `load_images` size (512: long side; 224 for 224 models).
      scene_graph: None (default): 'complete' up to 12 images, else 'retrieval-Na-k' with Na = min(20, N // 2),
        k = min(10, N - 1) (pairs linear in N); 'retrieval' / 'retrieval-k' take those defaults; or any
        `make_pairs` graph ('complete', 'swin-K', 'logwin-K', 'oneref-I', 'retrieval-Na-k').
      retrieval: a `f3d_jax.retrieval` RetrievalModel (`load_retrieval(...)`, or its checkpoint's path) for the
        retrieval graph; None: the documented fallback (cosine of pooled encoder features).
      subsample, niter1, niter2, lr1, lr2, matching_conf_thr, shared_intrinsics, kinematic_mode, opt_depth:
        `sparse_global_alignment`'s (defaults: the MASt3R demo's; matching_conf_thr 0).
      min_conf_thr: canonical confidence above which a pixel joins the dense cloud (demo: 1.5).
      clean_depth: the official `clean_pointcloud` on the dense cloud.
      min_track_length, max_reproj_error: COLMAP tracks (`tracks_from_matches`; working pixels).
      formats: `f3d_jax.export.FORMATS` subset written to `out_dir`.
      batch_size: pairs per decoder step (and images per encoder step). dtype: network compute dtype.
      chunk_bytes: host bytes of full-resolution predictions held at once (pairs are decoded in chunks this big,
        at least one batch).
      seed: first keyframe of the retrieval graph.
      cache_dir: the sparse alignment's on-disk cache of network outputs and matches per pair.
      export_options: more `f3d_jax.export.ExportOptions` fields.
      progress: progress bars (inference pairs, stages) on stderr.

    Returns:
      `SfMResult` (scene, reconstruction, track statistics, graph, written paths, seconds per stage).

    Raises:
      ValueError: fewer than 2 images, a bad graph, images of different working sizes, images whose matches do
        not connect them (the error names the components), a model without descriptors (not MASt3R).
    """
    from tqdm.auto import tqdm

    from f3d_jax.models.model import Model

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if not isinstance(model, Model):
        from f3d_jax.weights.loading import load_model

        model = load_model(model)
    if "desc" not in str(getattr(model.config, "output_mode", "")):
        raise ValueError(f"run_sfm: the model must be a MASt3R model (descriptors), got "
                         f"{getattr(model.config, 'official_class', type(model.config).__name__)} with output_mode "
                         f"{getattr(model.config, 'output_mode', None)!r}")
    imgs = load_sfm_images(image_folder, size)
    check_one_size(imgs)
    seconds["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs, graph, sim = sfm_pairs(imgs, model, scene_graph, retrieval, batch_size=batch_size, seed=seed)
    seconds["pairs"] = time.perf_counter() - t0
    engine = CachedEncoderEngine(model, batch_size, pairs=pairs, dtype=dtype)
    chunk = chunk_pairs_for(engine, imgs, chunk_bytes)
    n_unordered = len({frozenset((int(a["idx"]), int(b["idx"]))) for a, b in pairs})
    bar = tqdm(total=2 * n_unordered, desc="inference", unit="pair", disable=not progress, leave=False)
    try:
        preds = PairPredictions(engine, pairs, chunk, progress=bar.update)
        result = sfm_from_predictions(
            imgs, pairs, preds, out_dir=out_dir, formats=formats, subsample=subsample, niter1=niter1,
            niter2=niter2, lr1=lr1, lr2=lr2, matching_conf_thr=matching_conf_thr,
            shared_intrinsics=shared_intrinsics, kinematic_mode=kinematic_mode, opt_depth=opt_depth,
            min_conf_thr=min_conf_thr, clean_depth=clean_depth, min_track_length=min_track_length,
            max_reproj_error=max_reproj_error, cache_dir=cache_dir, export_options=export_options,
            scene_graph=graph, sim_mat=sim, seconds=seconds)
    finally:
        bar.close()
    return dataclasses.replace(result, inference=dict(
        encoder_passes=engine.encoder_passes, chunks=preds.chunks_decoded, pairs_decoded=preds.pairs_decoded,
        chunk_pairs=preds.chunk_pairs))
