"""Pair graphs over a list of images: the equivalent of `mast3r.image_pairs.make_pairs`.

`mast3r/image_pairs.py` is `dust3r/image_pairs.py` plus the `retrieval-Na-k` graph of
MASt3R-SfM (`mast3r/retrieval/graph.py: make_pairs_fps`). The order of the pairs is part of the
contract (it fixes the batch layout of `inference` and the edge order the aligners see), so every
graph is built exactly the way the official code builds it. In particular `swin`, `logwin` and
`retrieval` collect their edges in a Python `set` and list them in the set's iteration order; the
same sequence of insertions into a set of the same integer tuples is reproduced here (CPython's
hash of small int tuples is deterministic, not salted, so that order is reproducible).

Graph strings (N images, i, j image positions):

* `complete`: for i in 0..N-1, for j in 0..i-1: (i, j).
* `swin-K[-noncyclic]` (K defaults to 3): i linked with i+1..i+K (mod N unless noncyclic).
  Pitfall kept: cyclic with K >= N links an image with itself; a warning says so.
* `logwin-K[-noncyclic]` (K defaults to 3): i linked with i +/- 2^0..2^(K-1).
* `oneref[-I]` (I defaults to 0): (I, j) for every j != I.
* `retrieval-Na-k` (needs `sim_mat (N, N)`): farthest-point-sampled keyframes on `1 - sim_mat`
  (the first one drawn at random), all keyframe pairs, every other image to its nearest keyframe,
  then each image's k nearest by distance (itself included in the k, so k - 1 neighbours).

`symmetrize=True` appends the swapped pairs after all the originals (not interleaved).
`prefilter='seqN'` / `'cycN'` then drops pairs whose `idx` differ by more than N (cyclically).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

_WIN_RE = re.compile(r"^(swin|logwin)(?:-(\d+))?(?:-(noncyclic|cyclic))?$")
_ONEREF_RE = re.compile(r"^oneref(?:-(\d+))?$")
_RETRIEVAL_RE = re.compile(r"^retrieval-(\d+)-(\d+)$")
_PREFILTER_RE = re.compile(r"^(seq|cyc)(\d+)$")

GRAPH_HELP = (
    "expected 'complete', 'swin[-K][-noncyclic]', 'logwin[-K][-noncyclic]', 'oneref[-I]' or "
    "'retrieval-Na-k' (K, I, Na, k non-negative integers)"
)


class SelfPairWarning(UserWarning):
    """The requested graph links an image with itself (official behaviour of cyclic `swin-K`, K >= N)."""


@dataclasses.dataclass(frozen=True)
class SceneGraph:
    """A parsed scene-graph string.

    Attributes:
        kind: 'complete', 'swin', 'logwin', 'oneref' or 'retrieval'.
        winsize: window size K of swin/logwin (official default 3).
        cyclic: swin/logwin wrap around (explicit loop closure), official default True.
        refid: the reference image of oneref (default 0).
        num_anchors: Na of retrieval (number of farthest-point keyframes).
        topk: k of retrieval (the k nearest by distance, the image itself included).
    """

    kind: str
    winsize: int = 3
    cyclic: bool = True
    refid: int = 0
    num_anchors: int = 0
    topk: int = 0


def parse_scene_graph(scene_graph: str) -> SceneGraph:
    """Parse a scene-graph string; raise ValueError naming it if it is not one of the official forms."""
    if not isinstance(scene_graph, str):
        raise ValueError(f"scene_graph must be a string, got {type(scene_graph).__name__}: {GRAPH_HELP}")
    if scene_graph == "complete":
        return SceneGraph("complete")
    if m := _WIN_RE.match(scene_graph):
        winsize = 3 if m.group(2) is None else int(m.group(2))
        if winsize < 1:
            raise ValueError(f"scene_graph={scene_graph!r}: window size must be >= 1 (a window of 0 gives no pairs)")
        return SceneGraph(m.group(1), winsize=winsize, cyclic=m.group(3) != "noncyclic")
    if m := _ONEREF_RE.match(scene_graph):
        return SceneGraph("oneref", refid=0 if m.group(1) is None else int(m.group(1)))
    if m := _RETRIEVAL_RE.match(scene_graph):
        return SceneGraph("retrieval", num_anchors=int(m.group(1)), topk=int(m.group(2)))
    raise ValueError(f"unrecognized scene_graph={scene_graph!r}: {GRAPH_HELP}")


def _rng_choice(n: int, rng: None | int | np.random.Generator | np.random.RandomState) -> int:
    """One uniform draw in [0, n) from the requested source (None: numpy's global RNG, like upstream)."""
    if rng is None:
        return int(np.random.choice(n))
    if isinstance(rng, (int, np.integer)):
        # RandomState(seed).choice(n) == np.random.seed(seed); np.random.choice(n): same keyframes
        # as the official code run after seeding numpy's global RNG with that seed.
        return int(np.random.RandomState(int(rng)).choice(n))
    return int(rng.choice(n))


def farthest_point_sampling(
    dist: np.ndarray,
    num: int | None = None,
    dist_thresh: float | None = None,
    rng: None | int | np.random.Generator | np.random.RandomState = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest point sampling on a distance matrix (`mast3r.retrieval.graph.farthest_point_sampling`).

    The first point is a uniform random draw; each next one maximises the distance to the set.
    Like upstream, when `num` exceeds the number of distinct points the argmax repeats indices.

    Args:
        dist: (N, N) distances.
        num: number of points (default N).
        dist_thresh: stop once the best distance falls below it.
        rng: None (numpy's global RNG, upstream behaviour), an int seed (same draw as
            `np.random.seed(seed)` upstream) or a numpy Generator / RandomState.

    Returns:
        (indices (M,) int, distances (M,) of each chosen point to the earlier ones, first 0).
    """
    n = dist.shape[0]
    if num is None:
        num = n
    indices = [_rng_choice(n, rng)]
    distances: list[Any] = [0]
    for _ in range(1, num):
        d = dist[indices].min(axis=0)
        best = int(d.argmax())
        if dist_thresh is not None and d[best] < dist_thresh:
            break
        indices.append(best)
        distances.append(d[best])
    return np.array(indices), np.array(distances)


def make_pairs_fps(
    sim_mat: np.ndarray,
    num_anchors: int = 20,
    topk: int = 1,
    dist_thresh: float | None = None,
    rng: None | int | np.random.Generator | np.random.RandomState = None,
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Retrieval pair graph of MASt3R-SfM (`mast3r.retrieval.graph.make_pairs_fps`), upstream order.

    Pitfalls kept: keyframe pairs are stored as (earlier keyframe, later keyframe) in sampling
    order, not sorted, so (j, i) and (i, j) may both appear; with more keyframes than distinct
    images the sampling repeats an index and a keyframe self-pair (i, i) appears.

    Args:
        sim_mat: (N, N) similarity (distance = 1 - sim).
        num_anchors: Na, keyframes drawn by farthest point sampling (0: none).
        topk: k of the k-NN step (the image itself counts, 0: no k-NN step).
        dist_thresh: optional early stop of the sampling.
        rng: first-keyframe randomness, see `farthest_point_sampling`.

    Returns:
        (pairs as (i, j) int tuples, in upstream set order; keyframe indices (Na,)).
    """
    dist = 1 - sim_mat
    pairs: set[tuple[int, int]] = set()
    keys = np.array([], dtype=np.int64)
    if num_anchors != 0:
        keys, _ = farthest_point_sampling(dist, num=num_anchors, dist_thresh=dist_thresh, rng=rng)
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                pairs.add((int(keys[a]), int(keys[b])))
        nearest_key = dist[:, keys].argmin(axis=1)
        key_set = {int(k) for k in keys}
        for i in range(dist.shape[0]):
            if i in key_set:
                continue
            j = int(keys[nearest_key[i]])
            if i != j:
                pairs.add((min(i, j), max(i, j)))
    if topk > 0:
        for i in range(dist.shape[0]):
            for j in dist[i].argsort()[:topk]:  # numpy's default (introsort) like upstream: same ties
                j = int(j)
                if i != j:
                    pairs.add((min(i, j), max(i, j)))
    return list(pairs), keys


def _window_pairs(n: int, g: SceneGraph) -> list[tuple[int, int]]:
    """swin / logwin edges (i < j, or (i, i) for cyclic swin with K >= N) in upstream set order."""
    ids: set[tuple[int, int]] = set()
    if g.kind == "swin":
        for i in range(n):
            for off in range(1, g.winsize + 1):
                j = (i + off) % n if g.cyclic else i + off
                if j >= n:
                    continue
                ids.add((min(i, j), max(i, j)))
    else:
        offsets = [2**e for e in range(g.winsize)]
        for i in range(n):
            for j in [i - o for o in offsets] + [i + o for o in offsets]:
                if g.cyclic:
                    j %= n
                if j < 0 or j >= n or j == i:
                    continue
                ids.add((min(i, j), max(i, j)))
    return list(ids)


def _validate_sim_mat(sim_mat: Any, n: int) -> np.ndarray:
    if sim_mat is None:
        raise ValueError("scene_graph='retrieval-Na-k' needs sim_mat, an (N, N) image similarity matrix")
    sim = np.asarray(sim_mat)
    if sim.shape != (n, n):
        raise ValueError(f"sim_mat must have shape ({n}, {n}) for {n} images, got {sim.shape}")
    if not np.issubdtype(sim.dtype, np.number) or not np.all(np.isfinite(sim)):
        raise ValueError("sim_mat must hold finite numbers")
    return sim


def _seq_filter(edges: Sequence[tuple[int, int]], thr: int, cyclic: bool) -> list[int]:
    """Positions of the edges kept by `filter_pairs_seq` (n = largest idx + 1, as upstream)."""
    if not edges:
        return []
    n = max(max(e) for e in edges) + 1
    kept = []
    for e, (i, j) in enumerate(edges):
        dis = abs(i - j)
        if cyclic:
            dis = min(dis, abs(i + n - j), abs(i - n - j))
        if dis <= thr:
            kept.append(e)
    return kept


def _parse_prefilter(prefilter: str | None) -> tuple[int, bool] | None:
    if prefilter is None:
        return None
    if isinstance(prefilter, str) and (m := _PREFILTER_RE.match(prefilter)):
        return int(m.group(2)), m.group(1) == "cyc"
    raise ValueError(f"unrecognized prefilter={prefilter!r}: expected None, 'seqN' or 'cycN' (N an integer)")


def make_pair_indices(
    n: int,
    scene_graph: str = "complete",
    symmetrize: bool = True,
    sim_mat: np.ndarray | None = None,
    prefilter: str | None = None,
    rng: None | int | np.random.Generator | np.random.RandomState = None,
) -> list[tuple[int, int]]:
    """The edges `make_pairs` would build for images 0..n-1, as (i, j) position pairs, in order.

    No single-image special case here (see `make_pairs`); `prefilter` uses positions as idx.
    Raises ValueError for a bad graph string, an out-of-range `oneref` index, a missing or
    mis-shaped `sim_mat`, or a graph with no pair at all.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of images must be a non-negative int, got {n!r}")
    n = int(n)
    g = parse_scene_graph(scene_graph)
    filt = _parse_prefilter(prefilter)
    if g.kind == "complete":
        edges = [(i, j) for i in range(n) for j in range(i)]
    elif g.kind in ("swin", "logwin"):
        edges = _window_pairs(n, g)
        if any(i == j for i, j in edges):
            warnings.warn(
                f"scene_graph={scene_graph!r} on {n} images links images with themselves (window >= N in a "
                f"cyclic window, as the official code does); use a window <= {max(1, (n - 1) // 2)} to avoid it",
                SelfPairWarning,
                stacklevel=3,
            )
    elif g.kind == "oneref":
        if not 0 <= g.refid < n:
            raise ValueError(f"scene_graph={scene_graph!r}: reference image {g.refid} out of range for {n} images")
        edges = [(g.refid, j) for j in range(n) if j != g.refid]
    else:
        sim = _validate_sim_mat(sim_mat, n)
        edges, _ = make_pairs_fps(sim, num_anchors=g.num_anchors, topk=g.topk, rng=rng)
        if any(i == j for i, j in edges):
            warnings.warn(
                f"scene_graph={scene_graph!r}: keyframe sampling repeated an image (Na > number of distinct "
                "images), so the graph links an image with itself, as the official code does",
                SelfPairWarning,
                stacklevel=3,
            )
    if symmetrize:
        edges = edges + [(j, i) for i, j in edges]
    if filt is not None:
        edges = [edges[e] for e in _seq_filter(edges, *filt)]
    if not edges:
        raise ValueError(
            f"scene_graph={scene_graph!r}, prefilter={prefilter!r} gives no pair for {n} image(s)"
        )
    return edges


def make_pairs(
    imgs: Sequence[dict[str, Any]],
    scene_graph: str = "complete",
    prefilter: str | None = None,
    symmetrize: bool = True,
    sim_mat: np.ndarray | None = None,
    *,
    rng: None | int | np.random.Generator | np.random.RandomState = None,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of image dicts over a scene graph, in the official order (`make_pairs` of mast3r/dust3r).

    Args:
        imgs: the list returned by `load_images` (dicts with at least `idx`).
        scene_graph: see the module docstring ('complete', 'swin-K[-noncyclic]',
            'logwin-K[-noncyclic]', 'oneref-I', 'retrieval-Na-k').
        prefilter: None, 'seqN' or 'cycN': drop pairs whose `idx` are more than N apart
            (cyclically for 'cyc', over `max idx + 1` images), after symmetrisation.
        symmetrize: append (b, a) for every (a, b), after all of them.
        sim_mat: (N, N) similarity matrix, only for 'retrieval-Na-k'.
        rng: randomness of the first retrieval keyframe: None uses numpy's global RNG like the
            official code (so `np.random.seed(s)` before the call reproduces it), an int seeds it.

    Returns:
        A list of (view1, view2) tuples of the given dicts (not copies).

    A single image: the official demos pair it with a copy of itself whose `idx` is 1 (instance
    unchanged) and then build the graph over the two; this does the same (shallow copy, same
    arrays) so that one image still yields the pairs (copy, image) and (image, copy).

    Raises:
        ValueError: no image, a bad graph string or prefilter, an out-of-range `oneref` index, a
            missing or mis-shaped `sim_mat`, or a graph with no pair.
    """
    imgs = list(imgs)
    if not imgs:
        raise ValueError("make_pairs: no images")
    if len(imgs) == 1:
        if not isinstance(imgs[0], dict):
            raise ValueError("make_pairs: a single image must be an image dict (as returned by load_images)")
        imgs = [imgs[0], {**imgs[0], "idx": 1}]
    edges = make_pair_indices(len(imgs), scene_graph, symmetrize=symmetrize, sim_mat=sim_mat, rng=rng)
    pairs = [(imgs[i], imgs[j]) for i, j in edges]
    filt = _parse_prefilter(prefilter)
    if filt is not None:
        pairs = filter_pairs_seq(pairs, *filt)
        if not pairs:
            raise ValueError(f"make_pairs: prefilter={prefilter!r} removed every pair of scene_graph={scene_graph!r}")
    return pairs


def filter_pairs_seq(
    pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], seq_dis_thr: int, cyclic: bool = False
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Keep the pairs whose `idx` are at most `seq_dis_thr` apart (official `filter_pairs_seq`)."""
    edges = [(int(a["idx"]), int(b["idx"])) for a, b in pairs]
    return [pairs[e] for e in _seq_filter(edges, seq_dis_thr, cyclic)]


def pairs_to_edges(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> np.ndarray:
    """(E, 2) int32 array of the (view1 idx, view2 idx) of each pair, in order."""
    return np.array([(int(a["idx"]), int(b["idx"])) for a, b in pairs], dtype=np.int32).reshape(-1, 2)


def pairs_from_edges(imgs: Sequence[T], edges: np.ndarray | Sequence[Sequence[int]]) -> list[tuple[T, T]]:
    """Pairs of `imgs` from an (E, 2) array of positions; an index outside 0..N-1 is a clear error."""
    e = np.asarray(edges)
    if e.size == 0:
        return []
    if e.ndim != 2 or e.shape[1] != 2 or not np.issubdtype(e.dtype, np.integer):
        raise ValueError(f"edges must be an (E, 2) integer array, got shape {e.shape} dtype {e.dtype}")
    bad = (e < 0) | (e >= len(imgs))
    if bad.any():
        k = int(np.argwhere(bad.any(axis=1))[0, 0])
        raise ValueError(f"edge {k} = {tuple(int(x) for x in e[k])} names an image outside 0..{len(imgs) - 1}")
    return [(imgs[int(i)], imgs[int(j)]) for i, j in e]
