"""MASt3R matching against the official runs (fixtures) and against a numpy port of the official loop."""

from __future__ import annotations

import numpy as np
import pytest

from f3d_jax.matching import extract_correspondences, fast_reciprocal_nns, merge_corres, nearest_neighbours
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def fastnn():
    d = fixture_path("alignment", "fastnn_pair")
    return np.load(d / "inputs.npz"), np.load(d / "official.npz")


@pytest.mark.parametrize(
    "setting, kw",
    [
        ("kdtree_l2_default", dict(subsample=8, dist="l2")),
        ("bruteforce_dot_sparse_ga", dict(subsample=8, dist="dot", block_size=2**13)),
        ("kdtree_l2_subsample4", dict(subsample=4, dist="l2")),
    ],
)
def test_fast_reciprocal_nns_equals_official(fastnn, setting, kw):
    inp, off = fastnn
    xy1, xy2 = fast_reciprocal_nns(inp["desc_a"], inp["desc_b"], **kw)
    # identical matches in the identical order (sorted by xy1's flat index, then xy2's)
    np.testing.assert_array_equal(xy1, off[f"{setting}_xy1"])
    np.testing.assert_array_equal(xy2, off[f"{setting}_xy2"])


def test_extract_correspondences_equals_official(fastnn):
    inp, off = fastnn
    a, b = inp["desc_a"], inp["desc_b"]
    q = np.full(a.shape[:2], 2.0, np.float32)
    xy1, xy2, conf = extract_correspondences([a, b, b, a], [q, q, q, q], subsample=8)
    np.testing.assert_array_equal(xy1, off["extract_correspondences_xy1"])
    np.testing.assert_array_equal(xy2, off["extract_correspondences_xy2"])
    np.testing.assert_array_equal(conf, np.full(len(xy1), 2.0, np.float32))


# ---- a numpy port of the official algorithm, brute force in float64 (the reference for random cases) ----

def _nn_ref(q, db, dist):
    if dist == "dot":
        return np.argmax(q @ db.T, axis=1)
    return np.argmin(((q[:, None, :] - db[None, :, :]) ** 2).sum(-1), axis=1)


def _official_ref(d1, d2, subsample, dist, init=None, pixel_tol=0):
    h1, w1, d = d1.shape
    p1, p2 = d1.reshape(-1, d).astype(np.float64), d2.reshape(-1, d).astype(np.float64)
    if init is None:
        y, x = np.mgrid[subsample // 2 : h1 : subsample, subsample // 2 : w1 : subsample].reshape(2, -1)
        max_iter = 10
    else:
        x, y = init
        max_iter = 1
    xy1 = np.unique(x + w1 * y)
    xy2 = np.full_like(xy1, -1)
    old1, old2 = xy1.copy(), xy2.copy()
    notyet = np.ones(len(xy1), bool)
    it = 0
    while notyet.any():
        xy2[notyet] = _nn_ref(p1[xy1[notyet]], p2, dist)
        notyet &= old2 != xy2
        xy1[notyet] = _nn_ref(p2[xy2[notyet]], p1, dist)
        notyet &= old1 != xy1
        it += 1
        if it >= max_iter:
            break
        old2[:] = xy2
        old1[:] = xy1
    if pixel_tol > 0:
        a = np.stack(np.unravel_index(old1, (h1, w1)), 1)
        b = np.stack(np.unravel_index(xy1, (h1, w1)), 1)
        keep = np.linalg.norm(a - b, axis=1) < pixel_tol
        xy1 = old1
    else:
        keep = ~notyet
    pairs = sorted(set(zip(xy1[keep].tolist(), xy2[keep].tolist())))
    return np.array(pairs, np.int64).reshape(-1, 2)


def _smooth_desc(rng, h, w, d, noise):
    """Descriptors that vary smoothly over the image (so the walk has basins, like real ones), L2-normalised."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    freq = rng.normal(size=(2, d)) * 6.0
    phase = rng.uniform(0, 2 * np.pi, d)
    f = np.sin(xx[..., None] * freq[0] + yy[..., None] * freq[1] + phase) + noise * rng.normal(size=(h, w, d))
    return (f / np.linalg.norm(f, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed, dist, shapes", [(0, "dot", ((20, 28), (24, 20))), (1, "l2", ((16, 16), (16, 24)))])
def test_fast_reciprocal_nns_matches_numpy_port(seed, dist, shapes):
    rng = np.random.default_rng(seed)
    (h1, w1), (h2, w2) = shapes
    d1, d2 = _smooth_desc(rng, h1, w1, 8, 0.3), _smooth_desc(rng, h2, w2, 8, 0.3)
    ref = _official_ref(d1, d2, 4, dist)
    assert len(ref) > 5  # the case has matches to compare
    # blocks that do not divide N, and queries searched 7 at a time (only the still-moving ones after round 1)
    xy1, xy2 = fast_reciprocal_nns(d1, d2, subsample=4, dist=dist, block_size=37, query_chunk=7)
    np.testing.assert_array_equal(xy1[:, 0] + w1 * xy1[:, 1], ref[:, 0])
    np.testing.assert_array_equal(xy2[:, 0] + w2 * xy2[:, 1], ref[:, 1])


def test_pixel_tol_with_explicit_queries_returns_start_pixels():
    rng = np.random.default_rng(3)
    d1, d2 = _smooth_desc(rng, 18, 22, 8, 0.2), _smooth_desc(rng, 18, 22, 8, 0.2)
    x = rng.integers(0, 22, 40)
    y = rng.integers(0, 18, 40)
    ref = _official_ref(d1, d2, 0, "dot", init=(x, y), pixel_tol=1.5)
    xy1, xy2 = fast_reciprocal_nns(d1, d2, dist="dot", pixel_tol=1.5, init_xy1=(x, y), ret_xy=False)
    np.testing.assert_array_equal(np.c_[xy1, xy2], ref)
    assert len(ref) > 0 and set(xy1.tolist()) <= set((x + 22 * y).tolist())


@pytest.mark.parametrize("dist", ["dot", "l2"])
def test_nearest_neighbours_ties_go_to_the_first_index_whatever_the_blocks(dist):
    rng = np.random.default_rng(5)
    db = rng.normal(size=(50, 6))
    db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32)  # unit rows: each is its own dot-NN
    db[[7, 23, 41]] = db[3]  # exact duplicates: ties at 3, 7, 23, 41
    db[[30, 45]] = db[12]
    q = np.concatenate([db[[41, 45, 3]], rng.normal(size=(9, 6)).astype(np.float32)])
    ref = _nn_ref(q.astype(np.float64), db.astype(np.float64), dist)
    assert ref[0] == 3 and ref[1] == 12 and ref[2] == 3
    for bs in (None, 50, 7, 13, 1):
        np.testing.assert_array_equal(np.asarray(nearest_neighbours(q, db, dist=dist, block_size=bs)), ref)


def test_extract_correspondences_confidences_of_first_occurrence():
    rng = np.random.default_rng(7)
    a1, b1 = _smooth_desc(rng, 16, 20, 8, 0.2), _smooth_desc(rng, 16, 20, 8, 0.2)
    a2 = _smooth_desc(rng, 16, 20, 8, 0.2)  # the second pass sees different descriptors of image 1
    qs = [rng.uniform(1, 10, (16, 20)).astype(np.float32) for _ in range(4)]
    xy1, xy2, conf = extract_correspondences([a1, b1, b1, a2], qs, subsample=4)
    # reference: the four official match lists in pooling order, the first occurrence keeps its confidences
    i1, i2, c = [], [], []
    for a, b, qa, qb in ((a1, b1, qs[0], qs[1]), (a2, b1, qs[3], qs[2])):
        m12 = _official_ref(a, b, 4, "dot")
        m21 = _official_ref(b, a, 4, "dot")[:, ::-1]
        for m in (m12, m21):
            i1 += m[:, 0].tolist()
            i2 += m[:, 1].tolist()
            c += np.sqrt(qa.ravel()[m[:, 0]] * qb.ravel()[m[:, 1]]).tolist()
    seen = {}
    for p, cc in zip(zip(i1, i2), c):
        seen.setdefault(p, cc)
    keys = sorted(seen)
    np.testing.assert_array_equal(xy1[:, 0] + 20 * xy1[:, 1], [k[0] for k in keys])
    np.testing.assert_array_equal(xy2[:, 0] + 20 * xy2[:, 1], [k[1] for k in keys])
    np.testing.assert_allclose(conf, [seen[k] for k in keys], rtol=1e-6)
    assert len(set(zip(i1, i2))) < len(i1)  # duplicates were pooled, so the first-occurrence rule was exercised


def test_merge_corres_sorts_by_image1_then_image2_and_keeps_first():
    xy1, xy2, first = merge_corres(np.array([5, 2, 5, 2, 5]), np.array([1, 9, 0, 9, 1]), (4, 4), (4, 4), ret_xy=False)
    np.testing.assert_array_equal(xy1, [2, 5, 5])
    np.testing.assert_array_equal(xy2, [9, 0, 1])
    np.testing.assert_array_equal(first, [1, 2, 0])


def test_bad_inputs_raise_clear_errors():
    a = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="desc1 must be"):
        fast_reciprocal_nns(a[0], a)
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        fast_reciprocal_nns(a, np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="subsample"):
        fast_reciprocal_nns(a, a, subsample=0)
    with pytest.raises(ValueError, match="outside"):
        fast_reciprocal_nns(a, a, init_xy1=(np.array([4]), np.array([0])))


def test_first_argmax_is_argmax_with_ties_across_groups_and_padding():
    """The grouped argmax of `nearest_neighbours` (groups of 128 columns, the last one padded) returns
    jnp.argmax's first index of the row maximum, ties within and across groups and -inf entries included."""
    import jax.numpy as jnp

    from f3d_jax.matching.nearest import first_argmax

    rng = np.random.default_rng(9)
    s = rng.integers(0, 4, size=(40, 300)).astype(np.float32)  # many exact ties
    s[5] = -np.inf  # a row with no finite score: index 0, as argmax
    s[6, :200] = -np.inf  # the first maximum sits in the last, padded group
    s[7, 127:129] = 9.0  # a tie straddling the boundary of the first two groups
    s[8, 250] = 7.0
    s[8, 299] = 7.0  # a tie between the padded group and an earlier one
    got = np.asarray(first_argmax(jnp.asarray(s)))
    np.testing.assert_array_equal(got, np.argmax(s, axis=1))
    assert got[7] == 127 and got[8] == 250 and got[5] == 0
