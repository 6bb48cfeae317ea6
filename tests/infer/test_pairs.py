"""make_pairs: official graphs and pair order, prefilters, single image, bad strings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import fixture_path

from f3d_jax.infer.pairs import (
    SelfPairWarning,
    make_pair_indices,
    make_pairs,
    pairs_from_edges,
    pairs_to_edges,
    parse_scene_graph,
)


def _imgs(n: int) -> list[dict]:
    return [dict(idx=i, instance=str(i)) for i in range(n)]


def _edges(n: int, graph: str, symmetrize: bool = False, **kw) -> list[tuple[int, int]]:
    return [tuple(e) for e in pairs_to_edges(make_pairs(_imgs(n), graph, symmetrize=symmetrize, **kw)).tolist()]


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_complete_order(n):
    lower = [(i, j) for i in range(n) for j in range(i)]
    assert _edges(n, "complete") == lower
    # Symmetrised: all originals first, then every one swapped, in the same order (not interleaved).
    assert _edges(n, "complete", symmetrize=True) == lower + [(j, i) for i, j in lower]
    if n == 3:
        assert _edges(3, "complete", symmetrize=True) == [(1, 0), (2, 0), (2, 1), (0, 1), (0, 2), (1, 2)]


# Orders of the official code (its Python set's iteration order for these insertions).
OFFICIAL_ORDERS = {
    (4, "swin-1"): [(0, 1), (1, 2), (2, 3), (0, 3)],
    (4, "swin-2"): [(0, 1), (1, 2), (0, 3), (2, 3), (0, 2), (1, 3)],
    (4, "swin-2-noncyclic"): [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)],
    (4, "logwin-2-noncyclic"): [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)],
    (6, "swin-1"): [(0, 1), (1, 2), (3, 4), (2, 3), (4, 5), (0, 5)],
    (6, "swin-2"): [(0, 1), (2, 4), (1, 2), (0, 4), (3, 4), (1, 5), (2, 3), (0, 2), (4, 5), (0, 5), (1, 3), (3, 5)],
    (6, "swin-2-noncyclic"): [(0, 1), (2, 4), (1, 2), (3, 4), (2, 3), (0, 2), (4, 5), (1, 3), (3, 5)],
    (6, "swin"): [(0, 1), (2, 4), (1, 2), (0, 4), (3, 4), (1, 5), (0, 3), (1, 4), (2, 3), (0, 2), (4, 5), (0, 5),
                  (2, 5), (1, 3), (3, 5)],
    (6, "logwin-2"): [(0, 1), (2, 4), (1, 2), (0, 4), (3, 4), (1, 5), (2, 3), (0, 2), (4, 5), (0, 5), (1, 3), (3, 5)],
    (6, "logwin-3"): [(0, 1), (2, 4), (1, 2), (0, 4), (3, 4), (1, 5), (2, 3), (0, 2), (4, 5), (0, 5), (1, 3), (3, 5)],
    (6, "logwin-2-noncyclic"): [(0, 1), (2, 4), (1, 2), (3, 4), (2, 3), (0, 2), (4, 5), (1, 3), (3, 5)],
}


@pytest.mark.parametrize("n,graph", list(OFFICIAL_ORDERS))
def test_window_graph_official_order(n, graph):
    want = OFFICIAL_ORDERS[(n, graph)]
    assert _edges(n, graph) == want
    assert _edges(n, graph, symmetrize=True) == want + [(j, i) for i, j in want]


def _window_set(n: int, k: int, cyclic: bool, log: bool) -> set[tuple[int, int]]:
    """Edge set from the definition: i ~ i + d for d in 1..k (swin) or +/- 2^0..2^(k-1) (logwin)."""
    offs = [2**e for e in range(k)] if log else list(range(1, k + 1))
    if log:
        offs = offs + [-o for o in offs]
    out = set()
    for i in range(n):
        for o in offs:
            j = i + o
            if cyclic:
                j %= n
            if 0 <= j < n and (j != i or not log):
                out.add((min(i, j), max(i, j)))
    return out


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
@pytest.mark.parametrize("kind", ["swin", "logwin"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("cyclic", [True, False])
def test_window_graph_edge_sets(n, kind, k, cyclic):
    graph = f"{kind}-{k}" + ("" if cyclic else "-noncyclic")
    want = _window_set(n, k, cyclic, kind == "logwin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SelfPairWarning)
        if not want:
            with pytest.raises(ValueError, match="no pair"):
                make_pair_indices(n, graph, symmetrize=False)
            return
        got = make_pair_indices(n, graph, symmetrize=False)
    assert len(got) == len(set(got)) and set(got) == want


def test_swin_self_pairs_like_official():
    # Cyclic swin with K >= N wraps onto the image itself; upstream keeps (i, i). Kept, warned.
    with pytest.warns(SelfPairWarning):
        got = make_pair_indices(3, "swin-3", symmetrize=False)
    assert got == [(0, 1), (1, 2), (0, 0), (1, 1), (0, 2), (2, 2)]


@pytest.mark.parametrize("n,ref", [(2, 0), (2, 1), (5, 0), (5, 3), (5, 4)])
def test_oneref(n, ref):
    want = [(ref, j) for j in range(n) if j != ref]
    assert _edges(n, f"oneref-{ref}") == want
    assert _edges(n, f"oneref-{ref}", symmetrize=True) == want + [(j, ref) for j in range(n) if j != ref]
    if ref == 0:
        assert _edges(n, "oneref") == want


class _FixedFirst:
    """An rng whose first keyframe draw is fixed (make_pairs accepts any object with .choice)."""

    def __init__(self, first: int):
        self.first = first

    def choice(self, n: int) -> int:
        return self.first


def test_retrieval_hand_derived():
    # Six images on a line at x = 0, 1, 3, 10, 11, 13; similarity 1 - |dx| / 20.
    x = np.array([0, 1, 3, 10, 11, 13.0])
    sim = 1 - np.abs(x[:, None] - x[None]) / 20
    got = _edges(6, "retrieval-2-2", sim_mat=sim, rng=_FixedFirst(0))
    # Keyframes by FPS from 0: [0, 5]. Keyframe pair (0, 5); others to the nearest keyframe:
    # 1->0, 2->0, 3->5, 4->5; k = 2 nearest (self + 1): 1-0, 2-1, 3-4, 4-3, 5-4.
    assert set(got) == {(0, 5), (0, 1), (0, 2), (3, 5), (4, 5), (1, 2), (3, 4)}
    assert got == [(0, 1), (1, 2), (3, 4), (4, 5), (0, 2), (0, 5), (3, 5)]  # upstream set order


@pytest.mark.parametrize(
    "seed,want",
    [
        (0, [(0, 7), (3, 8), (2, 4), (0, 4), (5, 8), (1, 8), (4, 5), (2, 6), (0, 5), (3, 6), (5, 3), (2, 5),
             (1, 3), (7, 8), (2, 8)]),
        (7, [(0, 1), (2, 4), (4, 3), (3, 1), (3, 7), (6, 8), (4, 6), (1, 8), (0, 3), (4, 5), (1, 7), (0, 2),
             (4, 8), (0, 5), (0, 8), (4, 1)]),
    ],
)
def test_retrieval_official_order_and_seeding(seed, want):
    # Official outputs after np.random.seed(seed): keyframe pairs keep FPS order, hence (5, 3), (4, 1).
    rng = np.random.default_rng(seed)
    sim = rng.random((9, 9))
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1)
    assert _edges(9, "retrieval-3-3", sim_mat=sim, rng=seed) == want
    np.random.seed(seed)  # rng=None draws from numpy's global RNG, exactly like upstream
    assert _edges(9, "retrieval-3-3", sim_mat=sim) == want
    sym = _edges(9, "retrieval-3-3", symmetrize=True, sim_mat=sim, rng=seed)
    assert sym == want + [(j, i) for i, j in want]


def test_retrieval_more_keyframes_than_images_self_pair():
    sim = np.eye(3) * 0.5 + 0.5
    with pytest.warns(SelfPairWarning):
        got = make_pair_indices(3, "retrieval-5-0", symmetrize=False, sim_mat=sim, rng=_FixedFirst(1))
    assert (0, 0) in got or (1, 1) in got or (2, 2) in got


def test_fixture_pair_arrays():
    for case in ("dust3r_linear", "dust3r_dpt", "mast3r"):
        ref = np.load(fixture_path("networks", case, "inputs.npz"))
        edges = pairs_to_edges(make_pairs(_imgs(2), "complete", symmetrize=True))
        assert edges.dtype == np.int32 and edges.shape == (2, 2)
        np.testing.assert_array_equal(edges, ref["pairs"])


def test_pairs_are_the_given_dicts():
    imgs = _imgs(3)
    pairs = make_pairs(imgs, "complete")
    assert pairs[0][0] is imgs[1] and pairs[0][1] is imgs[0]
    assert pairs_from_edges(imgs, pairs_to_edges(pairs)) == pairs


def test_prefilter():
    # complete + symmetrize on 5 images, then seq1 keeps |i - j| <= 1, in the original order.
    assert _edges(5, "complete", symmetrize=True, prefilter="seq1") == [
        (1, 0), (2, 1), (3, 2), (4, 3), (0, 1), (1, 2), (2, 3), (3, 4)]
    # cyc1 also keeps the wrap-around (4, 0) and (0, 4) (n = largest idx + 1 = 5).
    assert _edges(5, "complete", symmetrize=True, prefilter="cyc1") == [
        (1, 0), (2, 1), (3, 2), (4, 0), (4, 3), (0, 1), (1, 2), (2, 3), (0, 4), (3, 4)]
    # The filter reads the dicts' idx, not list positions.
    imgs = [dict(idx=10), dict(idx=11), dict(idx=14)]
    kept = make_pairs(imgs, "complete", prefilter="seq1")
    assert pairs_to_edges(kept).tolist() == [[11, 10], [10, 11]]


def test_single_image_pairs_with_itself():
    img = dict(idx=0, instance="0", img=np.zeros((1, 4, 4, 3), np.float32))
    pairs = make_pairs([img])
    assert pairs_to_edges(pairs).tolist() == [[1, 0], [0, 1]]
    copy, orig = pairs[0]
    assert orig is img and img["idx"] == 0  # the caller's dict is untouched
    assert copy["idx"] == 1 and copy["instance"] == "0" and copy["img"] is img["img"]


@pytest.mark.parametrize(
    "graph",
    ["", "completes", "Complete", "swin-x", "swin-0", "logwin-0", "swin-2-cyc", "oneref-a", "oneref--1",
     "retrieval", "retrieval-3", "retrieval-20-1-10-1", "retrieval-a-b", "mst", "swin-2 "],
)
def test_bad_graph_strings(graph):
    with pytest.raises(ValueError, match="scene_graph"):
        make_pairs(_imgs(4), graph, sim_mat=np.eye(4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="out of range"):
        make_pairs(_imgs(5), "oneref-5")
    with pytest.raises(ValueError, match="needs sim_mat"):
        make_pairs(_imgs(4), "retrieval-2-2")
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        make_pairs(_imgs(4), "retrieval-2-2", sim_mat=np.eye(3))
    with pytest.raises(ValueError, match="prefilter"):
        make_pairs(_imgs(4), "complete", prefilter="seqx")
    with pytest.raises(ValueError, match="no images"):
        make_pairs([], "complete")
    with pytest.raises(ValueError, match="scene_graph must be a string"):
        make_pairs(_imgs(3), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside 0..2"):
        pairs_from_edges(_imgs(3), [[0, 1], [1, 3]])
    assert parse_scene_graph("swin-4-noncyclic").winsize == 4
    assert parse_scene_graph("logwin").winsize == 3 and parse_scene_graph("logwin").cyclic
