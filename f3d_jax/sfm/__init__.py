"""MASt3R-SfM: photos to cameras, a dense cloud and a COLMAP model with tracks from the matches.

    import f3d_jax
    model = f3d_jax.load_model("naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric")
    result = f3d_jax.run_sfm("photos/", model, out_dir="out/")      # out/colmap/sparse/0, points.ply, ...
    result.scene.cam2world, result.reconstruction.tracks, result.track_stats

Pieces: `sfm_pairs` (the pair graph, retrieval for many images), `PairPredictions` (batched network outputs
served through the model contract), `sfm_from_predictions` (sparse alignment, tracks, exports from any model
callable), `tracks_from_matches` (COLMAP tracks), `match_images` / `draw_matches` (`f3d match`).
"""

from f3d_jax.sfm.graph import default_scene_graph, resolve_scene_graph, sfm_pairs
from f3d_jax.sfm.match import PairMatches, draw_matches, match_images, save_matches_png
from f3d_jax.sfm.pipeline import (SfMResult, load_sfm_images, reconstruction_from_sparse, run_sfm,
                                  sfm_from_predictions)
from f3d_jax.sfm.predictions import CachedEncoderEngine, PairPredictions
from f3d_jax.sfm.tracks import TrackStats, reprojection_errors, tracks_from_matches

__all__ = [
    "CachedEncoderEngine", "PairMatches", "PairPredictions", "SfMResult", "TrackStats", "default_scene_graph",
    "draw_matches", "load_sfm_images", "match_images", "reconstruction_from_sparse", "reprojection_errors",
    "resolve_scene_graph", "run_sfm", "save_matches_png", "sfm_from_predictions", "sfm_pairs",
    "tracks_from_matches",
]
