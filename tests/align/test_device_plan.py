"""Device-aware dense GA: the loss blocking chosen per backend, edge sharding over the 8 virtual CPU devices
(equal to one device), and the vectorised pieces of the MST initialisation (equal to the reference formulas)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3d_jax.align.core import SHARD_MIN_EDGE_PIXELS, edge_mesh
from f3d_jax.align.initialise import register_sim3
from f3d_jax.align.losses import (ACCELERATOR_CHUNK_PIXELS, CPU_CHUNK_PIXELS, alignment_loss, default_chunk_pixels,
                                  plan_blocks)
from f3d_jax.geometry.procrustes import umeyama

P512 = 512 * 384


def test_default_chunk_pixels_per_backend():
    assert default_chunk_pixels("cpu") == CPU_CHUNK_PIXELS == 24576
    for b in ("gpu", "cuda", "rocm", "tpu"):
        assert default_chunk_pixels(b) == ACCELERATOR_CHUNK_PIXELS >= 4 * 2**20


@pytest.mark.parametrize("E", [240, 9900])
def test_cpu_plan_is_cache_sized(E):
    """CPU: the tuned plan (12 edges x 2048-pixel tiles at 512x384), whatever E."""
    p = plan_blocks(E, P512, backend="cpu")
    assert (p.C, p.T, p.nT) == (12, 2048, 96) and p.nE == -(-E // 12) and not p.fused
    assert p.C * p.T <= CPU_CHUNK_PIXELS


def test_accelerator_plans_use_large_blocks():
    """GPU/TPU: whole images per block, ~32M edge-pixels: N=16 (240 edges) in 2 blocks, N=100 (9900 edges)
    in 59 blocks of 168 edges; a problem under the chunk is one fused pass (no loop)."""
    for b in ("gpu", "tpu"):
        p = plan_blocks(240, P512, backend=b)
        assert (p.C, p.nE, p.T, p.nT) == (120, 2, P512, 1)
        p = plan_blocks(9900, P512, backend=b)
        assert (p.C, p.T, p.nT) == (168, P512, 1) and p.nE == 59 and p.C * p.T <= ACCELERATOR_CHUNK_PIXELS
        assert plan_blocks(56, 160 * 112, backend=b).fused
    # an explicit chunk overrides the backend default on any backend; a chunk under one image tiles its pixels
    p = plan_blocks(240, P512, chunk_pixels=4 * P512, backend="gpu")
    assert (p.C, p.nE, p.nT) == (4, 60, 1)
    p = plan_blocks(240, P512, chunk_pixels=P512 // 4, backend="tpu")
    assert (p.C, p.T, p.nT) == (1, P512 // 4, 4)
    assert plan_blocks(240, P512, chunk_pixels=1 << 30, backend="cpu").C == 12  # the CPU keeps its edge cap


def _loss_inputs(E=13, N=5, P=250, seed=0):
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, N, E).astype(np.int32)
    ej = ((ei + 1 + rng.integers(0, N - 1, E)) % N).astype(np.int32)
    qi, qp = rng.normal(size=(N, 3, 3)), rng.normal(size=(E, 3, 3))
    return dict(
        R_im=jnp.asarray(np.linalg.qr(qi)[0], jnp.float32), T_im=jnp.asarray(rng.normal(size=(N, 3)), jnp.float32),
        cam_pts=jnp.asarray(rng.normal(size=(N, 3, P)), jnp.float32),
        R_pw=jnp.asarray(np.linalg.qr(qp)[0], jnp.float32), T_pw=jnp.asarray(rng.normal(size=(E, 3)), jnp.float32),
        s_pw=jnp.asarray(rng.uniform(0.5, 2, E), jnp.float32),
        pred_i=jnp.asarray(rng.normal(size=(E, 3, P)), jnp.float32),
        pred_j=jnp.asarray(rng.normal(size=(E, 3, P)), jnp.float32),
        conf_i=jnp.asarray(rng.uniform(1, 5, (E, P)), jnp.float32),
        conf_j=jnp.asarray(rng.uniform(1, 5, (E, P)), jnp.float32),
        keep=jnp.asarray(rng.uniform(size=(N, P)) > 0.1, jnp.float32),
        edge_weights=jnp.asarray(rng.uniform(0.5, 1.5, E), jnp.float32), ei=jnp.asarray(ei), ej=jnp.asarray(ej))


@pytest.mark.parametrize("backend,chunk", [("cpu", None), ("cpu", 200), ("gpu", None), ("gpu", 500), ("tpu", 100)])
def test_loss_value_and_gradient_equal_across_plans(backend, chunk):
    """Every plan (the CPU scan of small blocks, the accelerator fused pass, whole-image blocks, pixel tiles) gives
    the value and the gradients of the fused single-pass loss, to float32 summation order."""
    a = _loss_inputs()
    diff = ("R_im", "T_im", "cam_pts", "R_pw", "T_pw", "s_pw", "pred_i", "conf_j")

    def f(kw, **opt):
        return alignment_loss(**{**a, **kw}, **opt)

    ref_v, ref_g = jax.value_and_grad(lambda kw: f(kw, backend="gpu", chunk_pixels=1 << 30))({k: a[k] for k in diff})
    plan = plan_blocks(13, 250, chunk, backend)
    assert plan.fused == (backend == "gpu" and chunk is None)
    v, g = jax.value_and_grad(lambda kw: f(kw, backend=backend, chunk_pixels=chunk))({k: a[k] for k in diff})
    np.testing.assert_allclose(float(v), float(ref_v), rtol=2e-6)
    for k in diff:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(ref_g[k]), rtol=2e-5, atol=1e-7, err_msg=k)


def test_edge_mesh_choice():
    assert len(jax.local_devices()) == 8
    assert edge_mesh(None, 56, 100) is None  # small: automatic sharding stays off
    # never automatic on CPU devices, however large (see `edge_mesh`); forced, it is the 8-device mesh
    assert edge_mesh(None, SHARD_MIN_EDGE_PIXELS // 1000 + 1, 1000) is None
    m = edge_mesh(True, SHARD_MIN_EDGE_PIXELS // 1000 + 1, 1000)
    assert m is not None and m.size == 8 and m.axis_names == ("edges",)
    assert edge_mesh(True, 6, 10).size == 8 and edge_mesh(False, 10**6, 10**6) is None
    assert edge_mesh(True, 6, 10, devices=jax.local_devices()[:1]) is None  # one device: nothing to split


def test_sharded_loss_equals_single_device():
    """The loss and its gradients with the 16 edges split over 8 devices (2 each) equal the one-device ones."""
    a = _loss_inputs(E=16)
    mesh = edge_mesh(True, 16, 250)
    diff = ("R_im", "cam_pts", "T_pw", "s_pw", "pred_j", "conf_i")
    one = jax.jit(jax.value_and_grad(lambda kw: alignment_loss(**{**a, **kw})))({k: a[k] for k in diff})
    sh = jax.jit(jax.value_and_grad(lambda kw: alignment_loss(**{**a, **kw}, mesh=mesh)))({k: a[k] for k in diff})
    np.testing.assert_allclose(float(sh[0]), float(one[0]), rtol=2e-6)
    for k in diff:
        np.testing.assert_allclose(np.asarray(sh[1][k]), np.asarray(one[1][k]), rtol=2e-5, atol=1e-7, err_msg=k)
    with pytest.raises(ValueError, match="do not split"):
        alignment_loss(**_loss_inputs(E=13), mesh=mesh)


def test_register_sim3_equals_umeyama():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(5000, 3)) + [0.3, -0.2, 3.0]).astype(np.float32)
    A = 1.7 * np.linalg.qr(rng.normal(size=(3, 3)))[0]
    y = x.astype(np.float64) @ A.T + [1.0, 2.0, -0.5] + 0.05 * rng.normal(size=(5000, 3))
    w = rng.uniform(1, 5, 5000).astype(np.float32)
    s, R, t = register_sim3(x, y, w)
    s0, R0, t0 = umeyama(x.astype(np.float64), y, w.astype(np.float64))
    assert abs(s - s0) < 1e-12 * s0 and np.abs(R - R0).max() < 1e-12 and np.abs(t - t0).max() < 1e-11
    assert np.linalg.det(R) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_image_conf_accelerator_path_equals_cpu_loop(monkeypatch, dtype):
    """The segment_max used off CPU gives the CPU loop's per-image max confidence exactly (from 0, any dtype)."""
    from f3d_jax.align import core

    rng = np.random.default_rng(5)
    ei = jnp.asarray([0, 1, 2, 0, 3], jnp.int32)
    ej = jnp.asarray([1, 2, 0, 3, 0], jnp.int32)
    ci = jnp.asarray(rng.uniform(1, 9, (5, 4, 6)), dtype)
    cj = jnp.asarray(rng.uniform(1, 9, (5, 4, 6)), dtype)
    cpu = np.asarray(core._image_conf(ci, cj, ei, ej, 5))  # image 4 has no edge: 0, as officially
    monkeypatch.setattr(core.jax, "default_backend", lambda: "gpu")
    acc = np.asarray(core._image_conf(ci, cj, ei, ej, 5))
    np.testing.assert_array_equal(acc, cpu)
    assert (cpu[4] == 0).all() and cpu[0].max() > 1
