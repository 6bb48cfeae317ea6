"""Geometry helpers against brute-force references, invariants and OpenCV round trips (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from f3d_jax.geometry import (apply_transform, depth_to_pts3d, estimate_focal_weiszfeld, inverse_pose, make_pose,
                              pixel_grid, pnp_ransac, pts3d_to_depth, quat_xyzw_to_rotmat, rotmat_to_quat_xyzw,
                              signed_expm1, signed_log1p, umeyama)


def _random_pose(rng, t_scale=1.0):
    return make_pose(Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(), rng.normal(0, t_scale, 3))


def test_pixel_grid_convention():
    g = pixel_grid(3, 4)
    assert g.shape == (3, 4, 2)
    assert tuple(g[2, 1]) == (1.0, 2.0)  # grid[v, u] = (u, v)


def test_quaternion_roundtrip_and_sign():
    rng = np.random.default_rng(0)
    R = Rotation.random(50, random_state=1).as_matrix()
    q = rotmat_to_quat_xyzw(R)
    np.testing.assert_allclose(quat_xyzw_to_rotmat(q), R, atol=1e-12)
    # same rotation as scipy's XYZW quaternion up to sign
    qs = Rotation.from_matrix(R).as_quat()
    np.testing.assert_allclose(np.abs(np.sum(q * qs, -1)), 1.0, atol=1e-12)
    # near identity the scalar part is positive (roma's branch choice)
    small = Rotation.from_rotvec(rng.normal(0, 1e-3, (10, 3))).as_matrix()
    assert (rotmat_to_quat_xyzw(small)[:, 3] > 0).all()
    # unnormalised input is normalised on read
    np.testing.assert_allclose(quat_xyzw_to_rotmat(3.7 * q), R, atol=1e-12)


def test_signed_log1p_expm1_inverse_and_pinned_zero_gradient():
    x = np.linspace(-5, 5, 101)
    np.testing.assert_allclose(signed_expm1(signed_log1p(x)), x, atol=1e-12)
    g = jax.grad(lambda t: signed_expm1(t, xnp=jnp))(0.0)
    assert float(g) == 0.0  # the official root-translation pin
    assert float(jax.grad(lambda t: signed_expm1(t, xnp=jnp))(0.3)) == pytest.approx(np.exp(0.3))


def test_pose_inverse_and_transform():
    rng = np.random.default_rng(1)
    T = np.stack([_random_pose(rng) for _ in range(4)])
    np.testing.assert_allclose(inverse_pose(T) @ T, np.tile(np.eye(4), (4, 1, 1)), atol=1e-12)
    pts = rng.normal(size=(4, 5, 6, 3))
    ref = np.einsum("bij,bhwj->bhwi", T[:, :3, :3], pts) + T[:, None, None, :3, 3]
    np.testing.assert_allclose(apply_transform(T, pts), ref, atol=1e-12)


def test_depth_pointmap_roundtrip_and_principal_point():
    rng = np.random.default_rng(2)
    H, W = 8, 10
    depth = rng.uniform(1, 3, (2, H, W))
    f = np.array([8.0, 12.0])
    c2w = np.stack([_random_pose(rng) for _ in range(2)])
    pts = depth_to_pts3d(depth, f, cam2world=c2w)
    np.testing.assert_allclose(pts3d_to_depth(pts, c2w), depth, atol=1e-12)
    cam = depth_to_pts3d(depth, f)
    # pixel (W/2, H/2) is on the optical axis (DUSt3R convention, no half-pixel shift)
    np.testing.assert_allclose(cam[:, H // 2, W // 2, :2], 0.0, atol=1e-12)
    np.testing.assert_allclose(cam[0, 0, 0, 0], -(W / 2) / f[0] * depth[0, 0, 0])


@pytest.mark.parametrize("with_scale", [True, False])
def test_umeyama_recovers_transform_weighted(with_scale):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    T = _random_pose(rng)
    s = 2.3 if with_scale else 1.0
    y = s * x @ T[:3, :3].T + T[:3, 3]
    w = rng.uniform(0.5, 2.0, 200)
    # corrupt points with zero weight: they must not matter
    y[:20] += rng.normal(0, 5, (20, 3))
    w[:20] = 0.0
    s_, R_, t_ = umeyama(x, y, w, with_scale=with_scale)
    np.testing.assert_allclose(s_, s, rtol=1e-10)
    np.testing.assert_allclose(R_, T[:3, :3], atol=1e-10)
    np.testing.assert_allclose(t_, T[:3, 3], atol=1e-10)
    assert np.linalg.det(R_) == pytest.approx(1.0)


def test_umeyama_matches_brute_force_weighted_least_squares():
    """With noise, the weighted objective at Umeyama's answer is not beaten by local perturbations."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 3))
    y = 1.7 * x @ Rotation.random(random_state=5).as_matrix().T + 0.3 + rng.normal(0, 0.1, (100, 3))
    w = rng.uniform(0.1, 1, 100)
    s, R, t = umeyama(x, y, w)

    def obj(s, R, t):
        return np.sum(w * np.sum((s * x @ R.T + t - y) ** 2, -1))

    best = obj(s, R, t)
    for k in range(50):
        dR = Rotation.from_rotvec(rng.normal(0, 1e-3, 3)).as_matrix()
        assert obj(s * (1 + rng.normal(0, 1e-3)), dR @ R, t + rng.normal(0, 1e-3, 3)) >= best


def test_umeyama_jax_matches_numpy_and_is_differentiable():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 3))
    y = 0.8 * x @ Rotation.random(random_state=7).as_matrix().T + 1.0 + rng.normal(0, 0.01, (30, 3))
    s, R, t = umeyama(x, y)
    sj, Rj, tj = jax.jit(lambda a, b: umeyama(a, b, xnp=jnp))(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(sj, s, rtol=1e-4)
    np.testing.assert_allclose(Rj, R, atol=1e-4)
    g = jax.grad(lambda b: umeyama(jnp.asarray(x, jnp.float32), b, xnp=jnp)[0])(jnp.asarray(y, jnp.float32))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


def _pointmap(f, H=48, W=64, seed=0):
    rng = np.random.default_rng(seed)
    depth = 2 + np.sin(np.arange(W) / 7)[None, :] + 0.5 * np.cos(np.arange(H) / 5)[:, None] + rng.uniform(0, 0.1, (H, W))
    return depth_to_pts3d(depth[None], np.array([f]))[0]


def test_weiszfeld_focal_exact_and_robust():
    pts = _pointmap(70.0)
    assert float(estimate_focal_weiszfeld(pts)) == pytest.approx(70.0, rel=1e-9)
    # 5% gross outliers barely move the robust estimate
    rng = np.random.default_rng(1)
    bad = pts.copy()
    m = rng.random(bad.shape[:2]) < 0.05
    bad[m] *= rng.uniform(0.3, 3, (m.sum(), 1)) * np.array([1.5, 0.5, 1.0])
    assert float(estimate_focal_weiszfeld(bad)) == pytest.approx(70.0, rel=5e-3)
    # batch + clip range in units of max(H, W) / (2 tan 30deg)
    both = np.stack([pts, _pointmap(10.0)])
    f = estimate_focal_weiszfeld(both)
    assert f[0] == pytest.approx(70.0, rel=1e-9)
    assert f[1] == pytest.approx(0.5 * 64 / (2 * np.tan(np.pi / 6)), rel=1e-9)
    assert float(estimate_focal_weiszfeld(both[1], min_focal=None)) == pytest.approx(10.0, rel=1e-9)
    fj = estimate_focal_weiszfeld(jnp.asarray(pts, jnp.float32), xnp=jnp)
    assert float(fj) == pytest.approx(70.0, rel=1e-4)


def test_pnp_ransac_recovers_pose():
    H, W, f = 48, 64, 60.0
    cam = _pointmap(f, H, W)
    rng = np.random.default_rng(8)
    c2w = _random_pose(rng)
    world = apply_transform(c2w, cam)
    mask = np.ones((H, W), bool)
    res = pnp_ransac(world, mask, f)
    assert res is not None
    np.testing.assert_allclose(res[1], c2w, atol=1e-5)
    # unknown focal: tries 21 candidates, keeps the one with most inliers
    f_hat, pose = pnp_ransac(world, mask, None)
    assert 0.5 * 64 <= f_hat <= 3 * 64
    assert pnp_ransac(world, np.zeros((H, W), bool), f) is None
    with pytest.raises(ValueError, match="pts3d"):
        pnp_ransac(world[..., :2], mask, f)
