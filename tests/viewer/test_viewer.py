"""The viewer: a tiny reconstruction served on a free port; the page answers, the scene holds exactly the
points the confidence filter keeps (numpy count and values), one frustum per camera at its pose, the sliders
re-filter live; bad input fails with one line naming it."""

from __future__ import annotations

import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest

from f3d_jax.export import Reconstruction
from f3d_jax.viewer import ViewerError, prepare_scene, serve, visible_points
from f3d_jax.viewer.scene import rotation_to_wxyz


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.stack([_quat_to_matrix(qi) for qi in q])


def tiny_reconstruction(seed: int = 0):
    """3 views of 6 x 8 pixels; random poses, points, confidences in [1, 6); two non-finite pixels."""
    rng = np.random.default_rng(seed)
    N, H, W = 3, 6, 8
    cam2world = np.tile(np.eye(4), (N, 1, 1))
    cam2world[:, :3, :3] = _random_rotations(rng, N)
    cam2world[:, :3, 3] = rng.normal(size=(N, 3))
    K = np.tile(np.array([[9.0, 0, W / 2], [0, 7.0, H / 2], [0, 0, 1]]), (N, 1, 1))
    pts = rng.normal(size=(N, H, W, 3)).astype(np.float32)
    pts[0, 1, 2, 0] = np.nan
    pts[2, 5, 7, 1] = np.inf
    conf = rng.uniform(1.0, 6.0, size=(N, H, W)).astype(np.float32)
    return Reconstruction(
        images=rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8), cam2world=cam2world, intrinsics=K,
        depth=rng.uniform(1, 2, size=(N, H, W)).astype(np.float32), pts3d=pts, conf=conf, mask=conf >= 2.5,
        names=tuple(f"im{i}.png" for i in range(N)), orig_sizes=np.tile([W, H], (N, 1)),
        to_orig=np.tile(np.eye(3)[:2], (N, 1, 1)))


def _expected(recon, thr: float, mask_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(recon.pts3d).all(-1) & (recon.conf >= thr)
    if mask_only:
        keep &= recon.mask
    return recon.pts3d[keep], recon.images[keep]


def _wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_rotation_to_wxyz_round_trips():
    R = _random_rotations(np.random.default_rng(1), 64)
    R[0] = np.diag([1.0, -1.0, -1.0])  # 180 degrees: w = 0, the branch a naive formula divides by
    q = rotation_to_wxyz(R)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0) and (q[:, 0] >= 0).all()
    np.testing.assert_allclose(np.stack([_quat_to_matrix(qi) for qi in q]), R, atol=1e-12)


def test_scene_preparation_filters_like_numpy():
    recon = tiny_reconstruction()
    scene = prepare_scene(recon)
    assert len(scene.points) == np.isfinite(recon.pts3d).all(-1).sum() == 3 * 6 * 8 - 2
    assert scene.default_threshold() == pytest.approx(recon.conf[recon.mask].min())
    for thr, mask_only in [(1.0, False), (3.3, False), (2.0, True), (7.0, False)]:
        keep = visible_points(scene, thr, mask_only)
        pts, cols = _expected(recon, thr, mask_only)
        np.testing.assert_array_equal(scene.points[keep], pts)
        np.testing.assert_array_equal(scene.colors[keep], cols)
    # subsampled: a seeded subset, still filtered exactly
    small = prepare_scene(recon, max_points=50)
    assert len(small.points) == 50
    flat = recon.pts3d.reshape(-1, 3)
    assert all((flat == p).all(1).any() for p in small.points)
    # the frustum's vertical field of view: 2 atan(H / 2 / fy)
    np.testing.assert_allclose(scene.fov, 2 * np.arctan(3 / 7.0))
    np.testing.assert_allclose(scene.aspect, 8 / 6)


def test_serve_answers_http_and_filters_live():
    recon = tiny_reconstruction()
    viewer = serve(recon, port=0, block=False, verbose=False)
    try:
        with urllib.request.urlopen(viewer.url, timeout=10) as page:  # closed: an open one delays stop()
            assert page.status == 200 and b"<html" in page.read().lower()

        thr0 = float(recon.conf[recon.mask].min())  # the default slider position reproduces the export mask
        pts, cols = _expected(recon, thr0)
        assert viewer.num_points == len(pts) == recon.mask.sum()
        np.testing.assert_allclose(viewer.point_cloud.points, pts)
        np.testing.assert_array_equal(viewer.point_cloud.colors, cols)

        # the GUI slider (as a browser moves it) re-filters: its callback runs on viser's thread pool
        viewer.gui["min_conf"].value = 4.0
        n4 = len(_expected(recon, 4.0)[0])
        assert _wait_for(lambda: viewer.num_points == n4), (viewer.num_points, n4)
        np.testing.assert_allclose(viewer.point_cloud.points, _expected(recon, 4.0)[0])
        assert f"**{n4:,}** of" in viewer.gui["count"].content

        viewer.gui["export_mask"].value = True
        viewer.gui["min_conf"].value = viewer.gui["min_conf"].min
        n_mask = len(_expected(recon, 0.0, mask_only=True)[0])
        assert _wait_for(lambda: viewer.num_points == n_mask), (viewer.num_points, n_mask)

        size = viewer.gui["point_size"].max
        viewer.gui["point_size"].value = size
        assert _wait_for(lambda: viewer.point_cloud.point_size == pytest.approx(size))

        # nothing passes: one invisible stand-in point, the count says 0
        assert viewer.set_min_confidence(1e9) == 0 and viewer.num_points == 1
        assert viewer.gui["count"].content.startswith("**0**")

        # one frustum per camera, at its centre, with its orientation
        assert len(viewer.frusta) == 3
        for f, T in zip(viewer.frusta, recon.cam2world):
            np.testing.assert_allclose(f.position, T[:3, 3], atol=1e-6)
            np.testing.assert_allclose(_quat_to_matrix(np.asarray(f.wxyz)), T[:3, :3], atol=1e-6)
            assert f.fov == pytest.approx(2 * np.arctan(3 / 7.0))
    finally:
        viewer.stop()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(viewer.url, timeout=2)


def test_bad_input_names_it(tmp_path):
    with pytest.raises(ViewerError, match="no-such-dir"):
        serve(tmp_path / "no-such-dir", block=False)
    with pytest.raises(ViewerError, match="reconstruction.npz"):
        serve(tmp_path, block=False)
    with pytest.raises(ViewerError, match="port"):
        serve(tiny_reconstruction(), port=70000, block=False)
    (tmp_path / "reconstruction.npz").write_bytes(b"not an npz")
    with pytest.raises(ViewerError, match="reconstruction.npz"):
        serve(tmp_path, block=False)
    bad = types.SimpleNamespace(**{f: getattr(tiny_reconstruction(), f) for f in (
        "images", "cam2world", "intrinsics", "pts3d", "conf", "mask", "names")})
    bad.conf = bad.conf[:, :-1]
    with pytest.raises(ValueError, match="conf"):
        serve(bad, port=0, block=False)


def test_serve_reads_a_result_folder(tmp_path):
    recon = tiny_reconstruction(seed=3)
    recon.save(tmp_path / "reconstruction.npz")
    for source in (tmp_path, tmp_path / "reconstruction.npz"):
        viewer = serve(source, port=0, block=False, verbose=False)
        try:
            pts, _ = _expected(recon, float(recon.conf[recon.mask].min()))  # default: the export mask's lowest conf
            assert viewer.num_points == len(pts) > 0
            np.testing.assert_allclose(viewer.point_cloud.points, pts)
            assert viewer.scene.names == recon.names
        finally:
            viewer.stop()
