"""The synthetic scene generator (`f3d_jax.eval.synthetic`): geometry of the rendered scene, the pair lists, and
the predictions' frames and scales."""

from __future__ import annotations

import numpy as np
import pytest

from f3d_jax.eval.synthetic import camera_points, make_edges, make_predictions, make_scene, world_points


@pytest.fixture(scope="module")
def scene():
    return make_scene(3, 24, 32, seed=3)


def test_scene_geometry(scene):
    assert scene.cam2world.shape == (3, 4, 4) and scene.depth.shape == (3, 24, 32)
    R = scene.cam2world[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-12)
    assert np.all(np.isfinite(scene.depth)) and scene.depth.min() > 0
    # every world point lies inside the room (walls at +-half extents, floor 0, ceiling height)
    X = world_points(scene)
    ax, ay = scene.room["half_extent_xy"]
    assert np.all(np.abs(X[..., 0]) <= ax + 1e-9) and np.all(np.abs(X[..., 1]) <= ay + 1e-9)
    assert X[..., 2].min() >= -1e-9 and X[..., 2].max() <= scene.room["height"] + 1e-9
    # the camera-frame z of a pixel's point is its depth; the ray goes through the pixel (u, v) from (W/2, H/2)
    C = camera_points(scene)
    np.testing.assert_allclose(C[..., 2], scene.depth)
    np.testing.assert_allclose(scene.focals[1] * C[1, 5, 7, 0] / C[1, 5, 7, 2] + 16, 7, atol=1e-9)
    # same seed: same scene
    np.testing.assert_array_equal(make_scene(3, 24, 32, seed=3).depth, scene.depth)


def test_edges():
    assert make_edges(3).tolist() == [[1, 0], [2, 0], [2, 1], [0, 1], [0, 2], [1, 2]]
    sw = make_edges(5, "swin-1", symmetrize=False)
    assert sw.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]]
    with pytest.raises(ValueError, match="graph"):
        make_edges(3, "star")


def test_clean_predictions_are_the_scene_in_camera_i_at_the_pair_scale(scene):
    edges = make_edges(3)
    pr = make_predictions(scene, edges, "clean", seed=1)
    C, X = camera_points(scene), world_points(scene)
    for e, (i, j) in enumerate(edges):
        s = pr["pair_scale"][e]
        rel1 = np.linalg.norm(pr["pred1_pts3d"][e] / s - C[i], axis=-1) / C[i][..., 2]
        w2c = np.linalg.inv(scene.cam2world[i])
        Xj = X[j] @ w2c[:3, :3].T + w2c[:3, 3]
        rel2 = np.linalg.norm(pr["pred2_pts3d"][e] / s - Xj, axis=-1) / np.abs(Xj[..., 2])
        assert np.median(rel1) < 0.01 and np.median(rel2) < 0.02, (e, np.median(rel1), np.median(rel2))
    assert pr["pred1_conf"].min() >= 1.0
    with pytest.raises(ValueError, match="noise"):
        make_predictions(scene, edges, "extreme")


def test_render_rgb_at_twice_the_size_sees_the_scene_cameras(scene):
    """Rendered at scale 2 with focals * 2 and pp = (W + 0.5, H + 0.5) (what `f3d demo` does before the loader's
    resize), each 2x2 block looks through the scene's pixel: on a plane 1/z is affine in the pixel coordinates, so
    the block's mean inverse depth is the scene pixel's, exactly."""
    from f3d_jax.eval.synthetic import render, render_rgb

    _, H, W = scene.depth.shape
    depth2, sid2 = render(scene.cam2world, 2 * scene.focals, 2 * H, 2 * W, scene.room, pp=(W + 0.5, H + 0.5))
    inv = (1 / depth2).reshape(-1, H, 2, W, 2)
    ids = sid2.reshape(-1, H, 2, W, 2)
    same = (ids.min((2, 4)) == ids.max((2, 4))) & (ids.max((2, 4)) == scene.surface_id) & (scene.surface_id < 6)
    assert same.mean() > 0.5
    np.testing.assert_allclose(inv.mean((2, 4))[same], 1 / scene.depth[same], rtol=1e-9)
    # colours: deterministic, textured (not flat), seed-dependent
    rgb = render_rgb(scene.cam2world, scene.focals, H, W, scene.room, seed=1)
    assert rgb.shape == (3, H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, render_rgb(scene.cam2world, scene.focals, H, W, scene.room, seed=1))
    assert rgb.reshape(-1, 3).std(0).min() > 15
    assert np.abs(rgb.astype(int) - render_rgb(scene.cam2world, scene.focals, H, W, scene.room, seed=2)).max() > 0
