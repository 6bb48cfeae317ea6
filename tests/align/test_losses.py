"""The blocked dense-GA loss against a float64 brute force: value and gradients, every blocking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3d_jax.align.losses import alignment_loss, block_plan


def _rot(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _inputs(N=4, E=13, HW=250, seed=0):
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, N, E)
    ej = (ei + rng.integers(1, N, E)) % N
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return dict(
        R_im=f32([_rot(rng) for _ in range(N)]), T_im=f32(rng.normal(size=(N, 3))),
        cam_pts=f32(rng.normal(size=(N, 3, HW)) + np.array([0.0, 0.0, 3.0])[:, None]),
        R_pw=f32([_rot(rng) for _ in range(E)]), T_pw=f32(rng.normal(size=(E, 3))),
        s_pw=f32(rng.uniform(0.5, 2.0, E)),
        pred_i=f32(rng.normal(size=(E, 3, HW))), pred_j=f32(rng.normal(size=(E, 3, HW))),
        conf_i=f32(1.0 + rng.exponential(2.0, (E, HW))), conf_j=f32(1.0 + rng.exponential(2.0, (E, HW))),
        keep=f32(rng.random((N, HW)) > 0.2), edge_weights=f32(rng.uniform(0.0, 2.0, E)),
        ei=ei.astype(np.int32), ej=ej.astype(np.int32),
    )


def _brute_force(a: dict, dist: str) -> float:
    d = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v) for k, v in a.items()}
    E, HW = d["conf_i"].shape
    world = np.einsum("nab,nbp->nap", d["R_im"], d["cam_pts"]) + d["T_im"][:, :, None]
    total = 0.0
    for idx, pred, conf in ((d["ei"], d["pred_i"], d["conf_i"]), (d["ej"], d["pred_j"], d["conf_j"])):
        aligned = d["s_pw"][:, None, None] * (np.einsum("eab,ebp->eap", d["R_pw"], pred) + d["T_pw"][:, :, None])
        r = np.linalg.norm(world[idx] - aligned, axis=1)
        w = np.log(conf) * d["keep"][idx] * d["edge_weights"][:, None]
        total += np.sum(w * (r if dist == "l1" else r * r))
    return total / (E * HW)


@pytest.mark.parametrize("dist", ["l1", "l2"])
@pytest.mark.parametrize("chunk_pixels", [1 << 20, 448, 50])
def test_blocked_loss_matches_brute_force(dist, chunk_pixels):
    a = _inputs()
    C, nE, T, nT = block_plan(13, 250, chunk_pixels)
    assert C * nE >= 13 and T * nT >= 250
    if chunk_pixels < 1 << 20:  # the small blockings overlap their last edge block and pixel tile
        assert C * nE > 13 and T * nT > 250, (C, nE, T, nT)
    diff = ("R_im", "T_im", "cam_pts", "R_pw", "T_pw", "s_pw", "pred_i", "conf_j")

    def f(*xs):
        kw = dict(a, **dict(zip(diff, xs)))
        return alignment_loss(**kw, dist=dist, chunk_pixels=chunk_pixels)

    args = [jnp.asarray(a[k]) for k in diff]
    val, grads = jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(diff)))))(*args)
    ref = _brute_force(a, dist)
    np.testing.assert_allclose(float(val), ref, rtol=2e-6)
    # gradients: central differences of the float64 brute force along a random direction per argument
    rng = np.random.default_rng(1)
    for k, g in zip(diff, grads):
        direction = rng.normal(size=a[k].shape)
        if k == "R_im":  # the camera-frame residual uses R^T R = 1: compare along rotations only
            w = direction[:, :, 0]
            skew = np.zeros_like(direction)
            skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
            direction = np.asarray(a[k], np.float64) @ (skew - np.swapaxes(skew, 1, 2))
        h = 1e-4
        plus, minus = dict(a), dict(a)
        plus[k] = np.asarray(a[k], np.float64) + h * direction
        minus[k] = np.asarray(a[k], np.float64) - h * direction
        fd = (_brute_force(plus, dist) - _brute_force(minus, dist)) / (2 * h)
        an = float(np.sum(np.asarray(g, np.float64) * direction))
        assert abs(an - fd) <= 1e-4 * abs(fd) + 1e-6, (k, an, fd)


def test_bfloat16_storage_reads_the_same_planes():
    a = _inputs(seed=2)
    f32 = alignment_loss(**a, chunk_pixels=448)
    low = dict(a, pred_i=jnp.asarray(a["pred_i"], jnp.bfloat16), pred_j=jnp.asarray(a["pred_j"], jnp.bfloat16))
    rounded = dict(a, pred_i=np.asarray(low["pred_i"], np.float32), pred_j=np.asarray(low["pred_j"], np.float32))
    np.testing.assert_allclose(float(alignment_loss(**low, chunk_pixels=448)), _brute_force(rounded, "l1"), rtol=2e-6)
    assert abs(float(f32) - float(alignment_loss(**low, chunk_pixels=448))) < 1e-2 * float(f32)


def _reference_terms(a: dict, dist: str) -> list[tuple[jax.Array, jax.Array]]:
    """[(w, d)] of the two terms of the dense GA loss written plainly in jnp (world frame, no blocking, no custom
    VJP): pixel weights (E, P) and distances (E, P) (norm for 'l1', squared norm for 'l2')."""
    world = jnp.einsum("nab,nbp->nap", a["R_im"], a["cam_pts"], precision="highest") + a["T_im"][:, :, None]
    out = []
    for idx, pred, conf in ((a["ei"], a["pred_i"], a["conf_i"]), (a["ej"], a["pred_j"], a["conf_j"])):
        aligned = a["s_pw"][:, None, None] * (
            jnp.einsum("eab,ebp->eap", a["R_pw"], pred, precision="highest") + a["T_pw"][:, :, None])
        sq = jnp.sum(jnp.square(world[idx] - aligned), axis=1)
        w = jnp.log(conf) * a["keep"][idx] * a["edge_weights"][:, None]
        out.append((w, jnp.sqrt(sq) if dist == "l1" else sq))
    return out


def _reference_loss(a: dict, dist: str, robust: str | None, c: float) -> jax.Array:
    """The loss from `_reference_terms` with the robust kernels written from their definitions: plain autodiff
    of it gives the true gradients of every input, including the kernels' slopes."""
    kernels = {
        None: lambda d: d,
        "huber": lambda d: jnp.where(d < c, d * d / (2 * c), d - c / 2),
        "cauchy": lambda d: c / 2 * jnp.log(1 + (d / c) ** 2),
        "geman_mcclure": lambda d: c / 2 * (d / c) ** 2 / (1 + (d / c) ** 2),
    }
    E, HW = a["conf_i"].shape
    return sum(jnp.sum(w * kernels[robust](d)) for w, d in _reference_terms(a, dist)) / (E * HW)


@pytest.mark.parametrize("robust", [None, "huber", "cauchy", "geman_mcclure"])
@pytest.mark.parametrize("dist", ["l1", "l2"])
def test_robust_kernels_value_and_gradient_match_autodiff(dist, robust):
    """The fused loss (value and the hand-written gradient of its custom VJP, blocked) equals plain autodiff of
    a jnp reference for every dist x robust pair, w.r.t. every differentiable input. The kernel scale c sits
    inside the distance range, so both branches of Huber and the curved parts of Cauchy and Geman-McClure
    are exercised."""
    a = {k: jnp.asarray(v) for k, v in _inputs(N=3, E=7, HW=120, seed=5).items()}
    c = 3.0 if dist == "l1" else 9.0
    dists = np.concatenate([np.asarray(d).ravel() for _, d in _reference_terms(a, dist)])
    assert 0.2 < np.mean(dists < c) < 0.8, np.mean(dists < c)  # the test's own setup: both regimes present
    diff = ("R_im", "T_im", "cam_pts", "R_pw", "T_pw", "s_pw", "pred_i", "pred_j", "conf_i", "conf_j", "keep",
            "edge_weights")

    def fused(*xs):  # chunk_pixels=200: 7 edges x 5 tiles of 24 pixels
        return alignment_loss(**dict(a, **dict(zip(diff, xs))), dist=dist, robust=robust, robust_scale=c,
                              chunk_pixels=200)

    def reference(*xs):
        return _reference_loss(dict(a, **dict(zip(diff, xs))), dist, robust, c)

    args = [a[k] for k in diff]
    argnums = tuple(range(len(diff)))
    val, grads = jax.jit(jax.value_and_grad(fused, argnums=argnums))(*args)
    ref_val, ref_grads = jax.jit(jax.value_and_grad(reference, argnums=argnums))(*args)
    np.testing.assert_allclose(float(val), float(ref_val), rtol=1e-5)
    for k, g, r in zip(diff, grads, ref_grads):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        if k == "R_im":  # the fused loss uses R^T R = 1: only the derivatives along rotations R @ skew agree
            R = np.asarray(a[k], np.float64)
            g, r = (np.swapaxes(R, 1, 2) @ x for x in (g, r))
            g, r = g - np.swapaxes(g, 1, 2), r - np.swapaxes(r, 1, 2)
        err = np.linalg.norm(g - r) / np.linalg.norm(r)
        assert err < 1e-5, (dist, robust, k, err)
