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
