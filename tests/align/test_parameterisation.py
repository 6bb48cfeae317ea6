"""The pose parameterisations behind one interface: round trips, gradient masks, retraction, and the gauge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3d_jax.align import ManifoldParam, OfficialParam, Parameterisation, parameterisation


def _poses(k=5, seed=0):
    rng = np.random.default_rng(seed)
    R = np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(k)])
    R *= np.sign(np.linalg.det(R))[:, None, None]
    return jnp.asarray(R, jnp.float32), jnp.asarray(rng.normal(size=(k, 3)), jnp.float32)


def test_lookup_by_name():
    assert isinstance(parameterisation("official"), OfficialParam)
    assert isinstance(parameterisation("manifold"), ManifoldParam)
    for p in (OfficialParam(), ManifoldParam()):
        assert isinstance(p, Parameterisation)
        assert parameterisation(p.name) == p
    with pytest.raises(ValueError, match="param must be one of"):
        parameterisation("euler")


@pytest.mark.parametrize("name", ["official", "manifold"])
def test_round_trip_and_zero_update(name):
    p = parameterisation(name)
    R, T = _poses()

    @jax.jit  # one compilation instead of many small eager ones
    def run(R, T):
        group = p.encode_poses(R, T)
        # the gradient of a pytree holding a pose group has the structure of its mask; a zero step changes nothing
        params = {"pose": group, "x": jnp.ones(3)}
        loss, g = p.value_and_grad(lambda q: jnp.sum(p.decode_poses(q["pose"])[1] ** 2) + jnp.sum(q["x"]))(params)
        mask = {"pose": p.pose_mask(jnp.ones(5), jnp.zeros(5)), "x": jnp.ones(3)}
        same = p.apply_updates(params, jax.tree.map(jnp.zeros_like, g))
        return p.decode_poses(group), loss, g, mask, p.decode_poses(same["pose"])

    (R2, T2), loss, g, mask, (_, T3) = run(R, T)
    np.testing.assert_allclose(np.asarray(R2), np.asarray(R), atol=2e-6)
    np.testing.assert_allclose(np.asarray(T2), np.asarray(T), atol=2e-6)
    assert jax.tree.structure(g) == jax.tree.structure(mask)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(mask)))
    np.testing.assert_allclose(float(loss), float(jnp.sum(T ** 2) + 3), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(T3), np.asarray(T), atol=2e-6)


@pytest.mark.parametrize("name", ["official", "manifold"])
def test_masked_step_freezes_poses_and_pins_the_gauge(name):
    """A masked gradient step moves free poses, never frozen ones, and never the pinned camera's centre
    (manifold: explicitly; official: by the zero derivative of its translation code at a zero translation)."""
    p = parameterisation(name)
    R, T = _poses()
    T = T.at[2].set(0.0)  # camera 2 at the origin: the gauge camera (the MST root is the identity)
    target = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
    free = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0])
    pin = jnp.array([0.0, 0.0, 1.0, 0.0, 0.0])

    def loss(q):
        Rq, Tq = p.decode_poses(q)
        return jnp.sum((Tq - target) ** 2) + jnp.sum(Rq[:, 0, 1])

    @jax.jit
    def run(R, T):
        group = p.encode_poses(R, T)
        _, g = p.value_and_grad(loss)(group)
        g = jax.tree.map(jnp.multiply, g, p.pose_mask(free, pin))
        return p.decode_poses(group), p.decode_poses(p.apply_updates(group, jax.tree.map(lambda x: -0.1 * x, g)))

    (R0, T0), (R2, T2) = jax.tree.map(np.asarray, run(R, T))
    np.testing.assert_allclose(T2[1], T0[1], atol=1e-6)  # frozen pose
    np.testing.assert_allclose(R2[1], R0[1], atol=1e-6)
    np.testing.assert_allclose(T2[2], 0.0, atol=1e-7)  # pinned centre
    assert np.abs(R2[2] - R0[2]).max() > 1e-4  # ... while its rotation is free
    for k in (0, 3, 4):
        assert np.abs(T2[k] - T0[k]).max() > 1e-3
    np.testing.assert_allclose(np.einsum("kab,kac->kbc", R2, R2), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=2e-6)
