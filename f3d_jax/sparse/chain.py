"""Kinematic chain of the sparse global alignment (spec `alignment.md` section 4.3): which camera each camera's
pose is expressed relative to.

`'mst'`: maximum spanning tree of the match counts. `'hclust-ward'` (official default): Ward agglomerative
clustering of 1 - affinity, each merge adding an edge between the clusters' representatives. Either tree is
then oriented from its most central node (breadth-first ranks, first index on ties) and listed as
(parent, child) edges in breadth-first order. Host-side numpy/scipy: N x N work, once per call.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.cluster.hierarchy as sch
from scipy import sparse as sp
from scipy.sparse import csgraph


@dataclasses.dataclass(frozen=True)
class KinematicChain:
    """root: the root image; edges: (parent, child) in breadth-first order; merges: the clustering's
    (a, b) representative pairs in merge order (hclust only, else empty)."""

    root: int
    edges: tuple[tuple[int, int], ...]
    merges: tuple[tuple[int, int], ...] = ()

    def parents(self, n: int) -> np.ndarray:
        """(n,) int32 parent of every image, the root being its own parent."""
        p = np.arange(n, dtype=np.int32)
        for a, b in self.edges:
            p[b] = a
        return p

    def depth(self) -> int:
        """Number of edges on the longest root-to-leaf path."""
        level = {self.root: 0}
        for a, b in self.edges:
            level[b] = level[a] + 1
        return max(level.values())


def _bfs_ranks(tree, start: int) -> np.ndarray:
    order, _ = csgraph.breadth_first_order(tree, start, directed=False)
    ranks = np.arange(len(order))
    ranks[order] = ranks.copy()
    return ranks


def orient_tree(weights: np.ndarray) -> tuple[int, list[tuple[int, int]]]:
    """Spanning tree of `-weights` (nonzero entries), oriented from its most central node.

    Returns (root, [(parent, child), ...]) in breadth-first order from the root.
    """
    w = np.asarray(weights, np.float64)
    graph = sp.dok_array(w.shape)
    for i, j in zip(*np.nonzero(w)):  # same construction as the official (it fixes the BFS neighbour order)
        graph[i, j] = -float(w[i, j])
    tree = csgraph.minimum_spanning_tree(graph)
    ranks1 = _bfs_ranks(tree, 0)
    ranks2 = _bfs_ranks(tree, int(ranks1.argmax()))
    ranks1 = _bfs_ranks(tree, int(ranks2.argmax()))
    root = int(np.minimum(ranks1, ranks2).argmax())  # argmax: first index on ties (pitfall)
    order, pred = csgraph.breadth_first_order(tree, root, directed=False)
    return root, [(int(pred[i]), int(i)) for i in order[1:]]


def hclust_tree(scores: np.ndarray, n_patches: np.ndarray, linkage: str = "ward") -> tuple[np.ndarray, list]:
    """0/1 tree adjacency (with unit diagonal) from agglomerative clustering, and the merges.

    Args:
        scores: (N, N) match counts. n_patches: (N,) anchors per image ((W // s) * (H // s)).
    """
    n = len(scores)
    cap = 3 * np.minimum(n_patches[:, None], n_patches[None, :]).astype(np.float32)
    pws = np.minimum(np.asarray(scores, np.float32) / cap, np.float32(1))
    np.fill_diagonal(pws, 1)
    dist = np.where(pws != 0, 1 - pws, 2)
    Z = sch.linkage(sch.distance.squareform(dist), method=linkage)
    tree = np.eye(n)
    rep = {i: i for i in range(n)}
    merges = []
    for k, (a, b) in enumerate(Z[:, :2].astype(int)):
        a, b = rep[a], rep[b]
        tree[a, b] = tree[b, a] = 1
        merges.append((int(a), int(b)))
        best = a if pws[a].sum() > pws[b].sum() else b  # ties go to b (official)
        rep[n + k] = best
        pws[best] = np.maximum(pws[a], pws[b])
    return tree, merges


def reroot(chain: KinematicChain, root: int) -> KinematicChain:
    """The same undirected tree oriented from `root` (edges in breadth-first order from it; merges kept).

    Used with known poses: a known camera becomes the root, so every other camera is chained to a known one.
    """
    if root == chain.root:
        return chain
    n = max([chain.root, root] + [max(e) for e in chain.edges]) + 1
    adj = sp.dok_array((n, n))
    for a, b in chain.edges:
        adj[a, b] = adj[b, a] = 1.0
    order, pred = csgraph.breadth_first_order(adj.tocsr(), root, directed=False)
    return KinematicChain(int(root), tuple((int(pred[i]), int(i)) for i in order[1:]), chain.merges)


def kinematic_chain(scores: np.ndarray, n_patches: np.ndarray, mode: str = "hclust-ward") -> KinematicChain:
    """The official kinematic chain.

    Args:
        scores: (N, N) symmetric match counts (0 where a pair has no matches or was not computed).
        n_patches: (N,) (W // s) * (H // s) per image.
        mode: 'mst' or 'hclust-<linkage>' ('hclust-ward' official default).
    """
    n = len(scores)
    if n == 1:
        return KinematicChain(0, ())
    if mode == "mst":
        root, edges = orient_tree(scores)
        return KinematicChain(root, tuple(edges))
    if isinstance(mode, str) and mode.startswith("hclust-"):
        tree, merges = hclust_tree(scores, np.asarray(n_patches), mode.split("-", 1)[1])
        root, edges = orient_tree(tree)
        return KinematicChain(root, tuple(edges), tuple(merges))
    raise ValueError(f"kinematic_mode must be 'mst' or 'hclust-<linkage>' (e.g. 'hclust-ward'), got {mode!r}")
