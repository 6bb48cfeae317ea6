"""COLMAP tracks from matches (`tracks_from_matches`) on a synthetic scene with known geometry, the pair graph
chosen for N images, and the chunked prediction server (a fake engine: no network)."""

from __future__ import annotations

import numpy as np
import pytest

from f3d_jax.export import Tracks
from f3d_jax.sfm.graph import default_scene_graph, resolve_scene_graph, sfm_pairs
from f3d_jax.sfm.predictions import PairPredictions
from f3d_jax.sfm.tracks import reprojection_errors, tracks_from_matches

H, W, F = 48, 64, 200.0


def _look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = center
    return c2w


@pytest.fixture(scope="module")
def scene():
    """Three cameras looking at a tilted plane; per-pixel world points (ray-plane intersections)."""
    K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1.0]])
    c2w = np.stack([_look_at(np.array([x, 0.1 * x, 0.0]), np.array([0.0, 0.0, 5.0])) for x in (-0.6, 0.0, 0.7)])
    n, d = np.array([0.1, -0.2, 1.0]), 5.0  # plane n . X = d
    v, u = np.mgrid[:H, :W]
    rays_cam = np.stack([(u - W / 2) / F, (v - H / 2) / F, np.ones_like(u, float)], -1)
    pts = []
    for c in c2w:
        rays = rays_cam @ c[:3, :3].T
        t = (d - n @ c[:3, 3]) / (rays @ n)
        pts.append(c[:3, 3] + t[..., None] * rays)
    return dict(K=np.stack([K] * 3), c2w=c2w, pts=np.stack(pts))


def _project(scene, k: int, X: np.ndarray) -> np.ndarray:
    w2c = np.linalg.inv(scene["c2w"][k])
    Xc = X @ w2c[:3, :3].T + w2c[:3, 3]
    return (Xc @ scene["K"][k].T)[:, :2] / Xc[:, 2:]


def _matches(scene, rng, n=60):
    """Pixels of view 0 on a grid, their true positions in views 1 and 2 (rounded): pairs (0,1), (1,2), (0,2)."""
    xy0 = np.stack(np.meshgrid(np.arange(16, 48, 4), np.arange(12, 36, 4)), -1).reshape(-1, 2)[:n]
    X = scene["pts"][0][xy0[:, 1], xy0[:, 0]]
    xy = [xy0] + [np.round(_project(scene, k, X)).astype(np.int32) for k in (1, 2)]
    for p in xy:
        assert (p >= 0).all() and (p[:, 0] < W).all() and (p[:, 1] < H).all()
    conf = np.ones(len(xy0), np.float32)
    return X, xy, [(0, 1, xy[0], xy[1], conf), (1, 2, xy[1], xy[2], conf), (0, 2, xy[0], xy[2], conf)]


def test_tracks_join_pairs_and_triangulate(scene):
    rng = np.random.default_rng(0)
    X, xy, matches = _matches(scene, rng)
    # noisy dense points (5 % of the depth): the starting points are off, the reprojection refinement fixes them
    noisy = scene["pts"] * (1 + 0.05 * rng.standard_normal(scene["pts"].shape[:3]))[..., None]
    images = rng.integers(0, 255, (3, H, W, 3), dtype=np.uint8)
    tracks, stats = tracks_from_matches(matches, noisy, np.ones((3, H, W)), images, scene["K"], scene["c2w"])
    assert isinstance(tracks, Tracks)
    # one track per grid pixel, seen by all three views (the three pairs joined by union-find)
    assert stats.n_points == tracks.n_points == len(X)
    assert (tracks.track_lengths() == 3).all()
    assert stats.n_matches == 3 * len(X)
    # the triangulated points are the true ones up to the rounding of the pixels (< 0.71 px)
    in0 = tracks.obs_view == 0  # each track's view-0 pixel says which grid point it is
    grid = {tuple(p): k for k, p in enumerate(xy[0].tolist())}
    truth = X[[grid[tuple(p)] for p in tracks.obs_uv[in0].astype(int).tolist()]]
    est = tracks.xyz[tracks.obs_point[in0]]
    depth = np.linalg.norm(truth, axis=1)
    err = np.linalg.norm(est - truth, axis=1)
    assert np.median(err / depth) < 0.01 and (err / depth).max() < 0.03
    start_err = np.linalg.norm(noisy[0][xy[0][:, 1], xy[0][:, 0]] - X, axis=1)  # one view's dense point
    assert np.median(err) < 0.5 * np.median(start_err)
    reproj = reprojection_errors(tracks, scene["K"], scene["c2w"])
    assert reproj.max() < 0.75 and abs(stats.mean_reproj_error - reproj.mean()) < 1e-9
    # colours: the mean of the observations' pixels
    mean_rgb = np.zeros((tracks.n_points, 3))
    for k in range(3):
        o = tracks.obs_view == k
        uu, vv = tracks.obs_uv[o].astype(int).T
        mean_rgb[tracks.obs_point[o]] += images[k, vv, uu]
    assert np.abs(tracks.rgb.astype(float) - mean_rgb / 3).max() <= 0.5 + 1e-9


def test_inconsistent_and_wrong_matches_are_dropped(scene):
    rng = np.random.default_rng(1)
    X, xy, matches = _matches(scene, rng)
    n = len(X)
    # pair (0, 2): the first match points one pixel off (a second pixel of view 2 in track 0: view 2 leaves it);
    # pair (1, 2): the second match points to a wrong pixel that no other match uses (a reprojection outlier)
    xy2_a = xy[2].copy()
    xy2_a[0] += (1, 1)
    xy2_b = xy[2].copy()
    xy2_b[1] = (2, 2)
    matches = [matches[0], (1, 2, xy[1], xy2_b, matches[1][4]), (0, 2, xy[0], xy2_a, matches[2][4])]
    tracks, stats = tracks_from_matches(matches, scene["pts"], np.ones((3, H, W)), np.zeros((3, H, W, 3), np.uint8),
                                        scene["K"], scene["c2w"], max_reproj_error=2.0)
    lengths = tracks.track_lengths()
    assert stats.n_points == n and sorted(lengths.tolist()) == [2, 2] + [3] * (n - 2)
    short = np.flatnonzero(lengths == 2)
    for p in short:  # the two damaged tracks lost their view-2 observation
        assert 2 not in tracks.obs_view[tracks.obs_point == p].tolist()
    assert reprojection_errors(tracks, scene["K"], scene["c2w"]).max() < 0.75
    # a chain 0-1-2 whose view-2 pixel is wrong (no conflict inside the track): the reprojection test drops it
    far = xy[2].copy()
    far[3] = (3, 40)
    t3, st3 = tracks_from_matches([matches[0], (1, 2, xy[1], far, np.ones(n))], scene["pts"], np.ones((3, H, W)),
                                  np.zeros((3, H, W, 3), np.uint8), scene["K"], scene["c2w"], max_reproj_error=2.0)
    assert st3.n_points == n and sorted(t3.track_lengths().tolist()) == [2] + [3] * (n - 1)
    assert st3.max_reproj_error < 0.75
    # only two views and a wrong match between them: the whole 2-view track goes
    bad = xy[1].copy()
    bad[:5] = (60, 44)  # far from where the points project, all five to one pixel (one component, 6 obs)
    tracks2, st2 = tracks_from_matches([(0, 1, xy[0], bad, np.ones(n))], scene["pts"], np.ones((3, H, W)),
                                       np.zeros((3, H, W, 3), np.uint8), scene["K"], scene["c2w"])
    assert st2.n_points == n - 5 and (tracks2.track_lengths() == 2).all()


def test_bad_matches_raise_clear_errors(scene):
    args = (scene["pts"], np.ones((3, H, W)), np.zeros((3, H, W, 3), np.uint8), scene["K"], scene["c2w"])
    xy = np.array([[1, 1]])
    with pytest.raises(ValueError, match="outside the 64x48"):
        tracks_from_matches([(0, 1, xy, np.array([[64, 1]]), np.ones(1))], *args)
    with pytest.raises(ValueError, match=r"\(0, 5\) names no pair"):
        tracks_from_matches([(0, 5, xy, xy, np.ones(1))], *args)
    with pytest.raises(ValueError, match="min_track_length"):
        tracks_from_matches([], *args, min_track_length=1)
    empty, st = tracks_from_matches([(0, 1, np.zeros((0, 2), int), np.zeros((0, 2), int), np.zeros(0))], *args)
    assert empty.n_points == 0 and st.n_matches == 0


def test_scene_graph_grows_linearly():
    assert default_scene_graph(2) == default_scene_graph(12) == "complete"
    assert default_scene_graph(13) == "retrieval-6-10"
    assert default_scene_graph(200) == "retrieval-20-10"
    assert resolve_scene_graph("retrieval", 30) == "retrieval-15-10"
    assert resolve_scene_graph("retrieval-5", 30) == "retrieval-15-5"
    assert resolve_scene_graph("swin-3", 30) == "swin-3"
    with pytest.raises(ValueError, match="scene_graph"):
        resolve_scene_graph("retrieval-a-b", 30)
    # 200 images, the default graph: pairs linear in N (Na (Na - 1) / 2 + N k at most), far below N^2 / 2
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((200, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    imgs = [dict(idx=k, instance=str(k)) for k in range(200)]
    pairs, graph, sim = sfm_pairs(imgs, None, None, sim_mat=feats @ feats.T)
    unordered = {frozenset((a["idx"], b["idx"])) for a, b in pairs}
    assert graph == "retrieval-20-10" and sim.shape == (200, 200)
    assert len(pairs) == 2 * len(unordered) and 200 <= len(unordered) <= 190 + 200 * 9
    assert all(len(u) == 2 for u in unordered)
    assert {i for u in unordered for i in u} == set(range(200))


class _FakeEngine:
    """`predict(pairs)` -> per pair (pred1, pred2) rows, recording the chunks it was asked for."""

    batch_size = 4

    def __init__(self):
        self.calls: list[list[tuple[int, int]]] = []

    def predict(self, pairs):
        self.calls.append([(a["idx"], b["idx"]) for a, b in pairs])
        return [({"pts3d": np.full((2, 2, 3), 10 * a["idx"] + b["idx"], np.float32)},
                 {"pts3d_in_other_view": np.full((2, 2, 3), -(10 * a["idx"] + b["idx"]), np.float32)})
                for a, b in pairs]


def test_predictions_are_decoded_in_chunks_in_call_order():
    views = [dict(idx=k) for k in range(5)]
    edges = [(1, 0), (2, 0), (2, 1), (3, 2), (4, 3)]
    pairs = [(views[i], views[j]) for i, j in edges] + [(views[j], views[i]) for i, j in edges]
    engine = _FakeEngine()
    preds = PairPredictions(engine, pairs, chunk_pairs=2)
    assert preds.n_chunks == 3
    for i, j in edges:  # the sparse alignment's order: each unordered pair as first met, both orders
        for a, b in ((i, j), (j, i)):
            p1, p2 = preds(views[a], views[b])
            assert p1["pts3d"].shape == (1, 2, 2, 3) and p1["pts3d"][0, 0, 0, 0] == 10 * a + b
            assert p2["pts3d"][0, 0, 0, 0] == -(10 * a + b)  # view 2's points renamed 'pts3d'
    # three engine calls of (at most) two unordered pairs, both orders each: never one pair at a time
    assert engine.calls == [[(1, 0), (0, 1), (2, 0), (0, 2)], [(2, 1), (1, 2), (3, 2), (2, 3)], [(4, 3), (3, 4)]]
    assert preds._ready == {}  # everything handed out was dropped
    with pytest.raises(ValueError, match=r"\(0, 4\) is not in the pair graph"):
        preds(views[0], views[4])
