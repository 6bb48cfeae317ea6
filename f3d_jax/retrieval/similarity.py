"""`similarity_matrix`: the (N, N) image similarity that drives `make_pairs(..., 'retrieval-Na-k', sim_mat=...)`.

Two scores:

* `retrieval=None` (the FALLBACK, no extra weights): cosine similarity of global image descriptors, each
  the mean over the image's encoder tokens (after the encoder's final norm) scaled to unit L2 norm. Works
  with any DUSt3R / MASt3R model. Values lie in [-1, 1], the diagonal is 1; unrelated images typically still
  score well above 0 (encoder tokens share a large common component), so read it as a ranking, not as an
  absolute measure of overlap (`make_pairs`' keyframe sampling and nearest neighbours only compare values).
  It ranks near-duplicates and strongly overlapping views well, but a global average of features is a coarse
  descriptor: under large viewpoint changes, repetitive structures or clutter it confuses images that the
  local-feature score below separates.
* `retrieval=RetrievalModel` (`load_retrieval(...)`: MASt3R's trainingfree retrieval checkpoint and its
  codebook): the official MASt3R-SfM score, ASMK over the encoder's local features (see
  `f3d_jax.retrieval.asmk`). Prefer it whenever the weights are at hand and the graph matters (SfM on
  tens to hundreds of images, unordered photo collections); the fallback is for when they are absent,
  for quick runs and for small, densely overlapping sets (a video's frames, a turntable).

Both run the model's jitted encoder (`f3d_jax.models.model.encode_images`) on padded batches of one static size
(`f3d_jax.retrieval.encode`), then a jitted reduction on the device; the encoder compiled for a size and batch
serves both scores. Cost: the fallback is one encoder pass per image. ASMK adds, per image, the brute-force
quantisation of its 300 local features against the 65536 visual words (an exact (300, 65536) distance product
of width 1024, 40 GFLOP, as faiss' IndexFlatL2 in the official code): seconds per image on a CPU (5.8 s measured
on a busy 2-core machine), milliseconds on a GPU; the inverted-file scoring is negligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from f3d_jax.models.model import Model, encode_images
from f3d_jax.nn.precision import check_precision
from f3d_jax.retrieval.encode import check_images, map_encoded
from f3d_jax.retrieval.pooled import pool


def pooled_descriptors(model: Model, imgs: Sequence[dict], *, batch_size: int = 8,
                       precision: str | None = None) -> np.ndarray:
    """The fallback's global descriptors.

    Args:
      model: a DUSt3R / MASt3R `Model`.
      imgs: `load_images` output (each `img (1, H, W, 3)` in [-1, 1]; sizes may differ).
      batch_size: images per encoder step (the last batch of each image size is padded to it).
      precision: float32 matmul precision of the encoder (as `Model`).

    Returns:
      (N, Ce) float32, unit L2 norm rows: mean over tokens of the encoder output, normalised.
    """
    images = check_images(model, imgs, "pooled_descriptors")
    precision = check_precision(precision)

    def step(img, ts):
        feat, _ = encode_images(model.config, model.params, img, ts, None, precision)
        return pool(feat)

    return np.stack(map_encoded(step, images, batch_size)).astype(np.float32)


def similarity_matrix(model: Model, imgs: Sequence[dict], retrieval: Any = None, *, batch_size: int = 8,
                      symmetrize: bool = True, precision: str | None = None) -> np.ndarray:
    """Pairwise image similarity for the retrieval scene graph (`make_pairs(imgs, 'retrieval-Na-k',
    sim_mat=...)`).

    Args:
      model: the loaded DUSt3R / MASt3R `Model` (its encoder gives the features; for the official retrieval
        score it must be the MASt3R model the retrieval checkpoint was built on).
      imgs: `load_images` output (list of image dicts, `img (1, H, W, 3)`; sizes may differ).
      retrieval: None for the fallback (cosine similarity of mean-pooled, L2-normalised encoder features), or a
        `RetrievalModel` from `load_retrieval` for the ASMK score of MASt3R-SfM. See the module docstring
        for when to prefer which.
      batch_size: images per encoder step; every step runs this static batch size (the last one padded), a
        group of fewer images runs at the next power of two (never batch 1).
      symmetrize: the ASMK score is asymmetric (query and database sides are quantised differently, as
        official); True returns (S + S^T) / 2, False the official matrix (row = query). The fallback is
        symmetric either way.
      precision: float32 matmul precision of the encoder (as `Model`).

    Returns:
      (N, N) float32. Fallback: cosine similarities in [-1, 1], diagonal 1. ASMK: scores >= 0, largest on the
      diagonal for any image with at least one local feature.

    Raises:
      TypeError: `model` is not a DUSt3R / MASt3R `Model`, `retrieval` not a `RetrievalModel`.
      ValueError: empty or malformed `imgs` (naming the entry), bad `batch_size`, a retrieval head whose
        width does not match the model's encoder.
    """
    if retrieval is None:
        g = pooled_descriptors(model, imgs, batch_size=batch_size, precision=precision)
        s = g @ g.T
        s = 0.5 * (s + s.T)  # exactly symmetric despite float rounding
        np.fill_diagonal(s, np.einsum("ij,ij->i", g, g))
        return np.clip(s, -1.0, 1.0).astype(np.float32)
    from f3d_jax.retrieval.asmk import asmk_similarity  # the retrieval path: only imported when used
    s = asmk_similarity(model, imgs, retrieval, batch_size=batch_size, precision=precision)
    if symmetrize:
        s = 0.5 * (s + s.T)
    return s.astype(np.float32)
