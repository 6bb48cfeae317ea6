"""The SfM pair graph: the scene graph chosen for N images, and the pairs built over it (with the image
similarity matrix of `f3d_jax.retrieval` when the graph is a retrieval graph)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from f3d_jax.infer.pairs import make_pairs, parse_scene_graph

# up to this many images every pair is run ('complete': at most 66 pairs); above, the retrieval graph keeps the
# number of pairs linear in N
COMPLETE_UP_TO = 12
# the MASt3R-SfM demo's retrieval settings: Na = min(20, N) keyframes, each image paired with its k = min(10, N - 1)
# nearest neighbours; here Na is also capped at N // 2 (Na = N would be the complete graph)
DEFAULT_ANCHORS = 20
DEFAULT_TOPK = 10
_SHORT_RETRIEVAL = re.compile(r"^retrieval(?:-(\d+))?$")


def default_scene_graph(n: int) -> str:
    """'complete' for at most `COMPLETE_UP_TO` images, else 'retrieval-Na-k' with Na = min(20, N // 2) and
    k = min(10, N - 1): about Na^2 / 2 + N k pairs, linear in N (200 images: at most 2190 pairs)."""
    if n <= COMPLETE_UP_TO:
        return "complete"
    return f"retrieval-{min(DEFAULT_ANCHORS, n // 2)}-{min(DEFAULT_TOPK, n - 1)}"


def resolve_scene_graph(scene_graph: str | None, n: int) -> str:
    """The graph string for `n` images: None -> `default_scene_graph(n)`; 'retrieval' -> its default Na and k;
    'retrieval-k' -> the default Na with this k; anything else as `make_pairs` reads it (checked here)."""
    if scene_graph is None:
        return default_scene_graph(n)
    if not isinstance(scene_graph, str):
        raise ValueError(f"scene_graph must be a string or None, got {type(scene_graph).__name__}")
    m = _SHORT_RETRIEVAL.match(scene_graph)
    if m:
        k = int(m.group(1)) if m.group(1) else min(DEFAULT_TOPK, n - 1)
        return f"retrieval-{min(DEFAULT_ANCHORS, max(1, n // 2))}-{k}"
    parse_scene_graph(scene_graph)  # ValueError naming the accepted forms
    return scene_graph


def is_retrieval(scene_graph: str) -> bool:
    return parse_scene_graph(scene_graph).kind == "retrieval"


def sfm_pairs(imgs: Sequence[dict], model: Any, scene_graph: str | None = None, retrieval: Any = None, *,
              batch_size: int = 8, seed: int = 0, sim_mat: np.ndarray | None = None
              ) -> tuple[list[tuple[dict, dict]], str, np.ndarray | None]:
    """Symmetrized pairs of `imgs` over the (resolved) scene graph.

    Args:
      imgs: `load_images` dicts. model: the f3d_jax Model (its encoder gives the retrieval fallback's features).
      scene_graph: see `resolve_scene_graph`. retrieval: a `f3d_jax.retrieval` RetrievalModel (or the path of its
        checkpoint, codebook next to it), or None for the documented fallback (cosine of pooled encoder features). seed: first keyframe of the retrieval graph.
      sim_mat: a precomputed (N, N) similarity (skips `similarity_matrix`).

    Returns:
      (pairs, the graph string used, the similarity matrix or None when the graph needs none).
    """
    n = len(imgs)
    graph = resolve_scene_graph(scene_graph, n)
    if is_retrieval(graph):
        if sim_mat is None:
            from f3d_jax.retrieval import load_retrieval, similarity_matrix

            if isinstance(retrieval, (str, os.PathLike)):
                retrieval = load_retrieval(retrieval)

            sim_mat = np.asarray(similarity_matrix(model, imgs, retrieval, batch_size=batch_size))
        import warnings

        from f3d_jax.infer.pairs import SelfPairWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SelfPairWarning)  # dropped below
            pairs = make_pairs(imgs, graph, symmetrize=True, sim_mat=sim_mat, rng=seed)
        # repeated keyframes (duplicate images) pair an image with itself: nothing to align there
        return [(a, b) for a, b in pairs if a["idx"] != b["idx"]], graph, sim_mat
    return make_pairs(imgs, graph, symmetrize=True), graph, None
