"""Batched network predictions served through the model contract of the sparse alignment.

`sparse_global_alignment` reaches the network only through `pred1, pred2 = model(view1, view2)`, called for each
unordered pair (i, j) in the order the pair list first meets it, (i, j) then (j, i). `PairPredictions` is that
callable over the batched, encoder-caching `InferenceEngine`: every image of the graph is encoded ONCE (one
per-shape feature store on the devices, `CachedEncoderEngine`), and the pairs are decoded in chunks of
`chunk_pairs` unordered pairs (both orders, in padded batches of the engine's batch size: never batch 1) just
before the alignment asks for them. Each prediction is handed out once and dropped, so host memory holds one
chunk of full-resolution predictions (bounded by `chunk_bytes`), however many pairs the graph has: memory grows
with the chunk, time with the number of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from f3d_jax.infer.collate import rename_view2
from f3d_jax.infer.engine import InferenceEngine
from f3d_jax.infer.views import check_pairs, distinct_images

# host bytes of full-resolution predictions held at once (one chunk, both orders of each pair)
CHUNK_BYTES = 1 << 31


class CachedEncoderEngine(InferenceEngine):
    """An `InferenceEngine` that encodes every image of `pairs` once, on its first call, and reuses those feature
    stores for every later call: `engine.predict(chunk)` of any chunk of the graph then only decodes.

    Args:
      model, batch_size, kw: as `InferenceEngine`. pairs: the whole graph's (view1, view2) pairs.
    """

    def __init__(self, model: Any, batch_size: int = 8, *, pairs: Sequence[tuple[dict, dict]] = (), **kw: Any):
        super().__init__(model, batch_size, **kw)
        self._graph = list(pairs)
        self._encoded: tuple | None = None
        self.encoder_passes = 0  # encoder runs over the image set (1 for a whole graph)

    def encode(self, images, verbose: bool = False):
        """`InferenceEngine.encode`, run once over the graph's images (again only for an image outside it)."""
        if self._encoded is None or any(im.key not in self._encoded[0] for im in images):
            every = list(images)
            if self._graph:
                every += distinct_images(check_pairs(self._graph, "run_sfm"), "run_sfm")[1]
            self._encoded = super().encode(list({im.key: im for im in every}.values()), verbose)
            self.encoder_passes += 1
        return self._encoded


def prediction_bytes(imgs: Sequence[dict], desc_dim: int = 24) -> int:
    """Host bytes of one ordered pair's predictions at the largest image size (pts3d, conf, desc, desc_conf of
    both views, float32)."""
    hw = max(int(np.prod(np.asarray(d["img"]).shape[1:3])) for d in imgs)
    return 2 * hw * (3 + 1 + desc_dim + 1) * 4


def chunk_pairs_for(engine: InferenceEngine, imgs: Sequence[dict], chunk_bytes: int = CHUNK_BYTES,
                    desc_dim: int | None = None) -> int:
    """Unordered pairs per decoded chunk: as many as `chunk_bytes` of predictions hold (both orders of each),
    a multiple of half the engine's batch (whole decoder batches), at least one batch."""
    if desc_dim is None:
        desc_dim = int(getattr(engine.config, "desc_dim", 24))
    half = max(1, engine.batch_size // 2)
    per_pair = 2 * prediction_bytes(imgs, desc_dim)
    return max(half, (int(chunk_bytes) // per_pair) // half * half)


class PairPredictions:
    """`pred1, pred2 = predictions(view1, view2)`: the network's outputs for a pair of the graph, decoded in chunks.

    Args:
      engine: a `CachedEncoderEngine` (or any `InferenceEngine`) of a MASt3R model.
      pairs: the (view1, view2) pairs the alignment will ask for (views carry 'idx').
      chunk_pairs: unordered pairs decoded per chunk (a multiple of half the batch size is best: each pair
        is decoded in both orders).
      progress: a callable `progress(n)` told how many ordered pairs each chunk decoded (a tqdm's update).

    Outputs follow the model contract: (1, H, W, ...) float32 numpy arrays under 'pts3d' (view 2's in view 1's
    frame), 'conf', 'desc', 'desc_conf'.
    """

    def __init__(self, engine: InferenceEngine, pairs: Sequence[tuple[dict, dict]], chunk_pairs: int,
                 progress: Callable[[int], Any] | None = None):
        if chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be >= 1, got {chunk_pairs}")
        self.engine = engine
        self.chunk_pairs = int(chunk_pairs)
        self.progress = progress
        self._views: dict[tuple[int, int], tuple[dict, dict]] = {}
        order: list[tuple[int, int]] = []
        seen: set[frozenset] = set()
        for v1, v2 in pairs:
            i, j = _idx(v1), _idx(v2)
            self._views.setdefault((i, j), (v1, v2))
            if frozenset((i, j)) not in seen:
                seen.add(frozenset((i, j)))
                order.append((i, j))
        self.order = order  # unordered pairs in the order they are first met (the alignment's call order)
        self._chunk_of = {frozenset(p): k // self.chunk_pairs for k, p in enumerate(order)}
        self._ready: dict[tuple[int, int], tuple[dict, dict]] = {}
        self.chunks_decoded = 0
        self.pairs_decoded = 0

    @property
    def n_chunks(self) -> int:
        return -(-len(self.order) // self.chunk_pairs)

    def _decode_chunk(self, c: int) -> None:
        members = self.order[c * self.chunk_pairs:(c + 1) * self.chunk_pairs]
        ordered = []
        for i, j in members:
            v1, v2 = self._views.get((i, j)) or self._views[(j, i)][::-1]
            ordered += [(v1, v2), (v2, v1)]
        out = self.engine.predict(ordered)
        self._ready = {}  # the previous chunk's leftovers (pairs never asked for) are dropped
        for (v1, v2), (p1, p2) in zip(ordered, out):
            self._ready[(_idx(v1), _idx(v2))] = (
                # copies: a row is a view of the chunk's array, which must not outlive the chunk
                {k: np.array(v)[None] for k, v in p1.items()},
                {k: np.array(v)[None] for k, v in rename_view2(p2).items()})
        self.chunks_decoded += 1
        self.pairs_decoded += len(ordered)
        if self.progress is not None:
            self.progress(len(ordered))

    def __call__(self, view1: dict, view2: dict) -> tuple[dict, dict]:
        key = (_idx(view1), _idx(view2))
        if key not in self._ready:
            c = self._chunk_of.get(frozenset(key))
            if c is None:
                raise ValueError(f"run_sfm: the pair {key} is not in the pair graph given to PairPredictions")
            self._decode_chunk(c)
        return self._ready.pop(key)


def _idx(view: dict) -> int:
    return int(np.asarray(view["idx"]).reshape(-1)[0])
