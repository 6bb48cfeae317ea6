"""Sharded train steps on the 8 virtual CPU devices (data parallel, FSDP, mixed) equal the single-device step;
the param, optimiser-state and batch shardings are the ones the rules give."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from f3d_jax.train import loop, optim, sharding
from tests.train.test_loop import _toy

MESHES = {"single": (1, 1), "data": (8, 1), "fsdp": (1, 8), "mixed": (2, 4)}


def _run(mesh_shape, steps=2):
    params, loss_fn, data = _toy()
    mesh = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:mesh_shape[0] * mesh_shape[1]])
    tx = optim.make_optimizer(optim.OptimConfig(lr=1e-2, clip_grad=1.0), params, 1e-2)
    p_sh = sharding.param_shardings(params, mesh, min_fsdp_size=65)
    st_sh = sharding.state_shardings(loop.abstract_state(params, tx), p_sh, params, mesh)
    b_sh = jax.tree.map(lambda _: sharding.batch_sharding(mesh), data)
    step = loop.jit_train_step(loop.make_train_step(loss_fn, tx), st_sh, b_sh, mesh)
    state = loop.init_state(jax.device_put(params, p_sh), tx, st_sh)
    for _ in range(steps):
        state, metrics = step(state, sharding.shard_batch(data, mesh), jax.random.key(0))
    return state, metrics, p_sh


@pytest.fixture(scope="module")
def runs():
    return {name: _run(shape) for name, shape in MESHES.items()}


@pytest.mark.parametrize("name", ["data", "fsdp", "mixed"])
def test_sharded_step_equals_single_device(runs, name):
    ref_state, ref_metrics, _ = runs["single"]
    state, metrics, _ = runs[name]
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_param_state_and_batch_shardings(runs):
    expect = {  # (fc1 kernel (16, 64), fc2 kernel (64, 8), fc1 bias (64,) below min_fsdp_size) per mesh
        "data": (P(), P(), P()),
        "fsdp": (P(None, "fsdp"), P("fsdp", None), P()),  # the largest axis divisible by 8
        "mixed": (P(None, "fsdp"), P("fsdp", None), P()),
    }
    for name, (k1, k2, b1) in expect.items():
        state, _, _ = runs[name]
        p = state.params
        assert (p["fc1"]["kernel"].sharding.spec, p["fc2"]["kernel"].sharding.spec,
                p["fc1"]["bias"].sharding.spec) == (k1, k2, b1), name
        # Adam's moments are laid out as their params; the counters replicated
        mus = [x for x in jax.tree.leaves(state.opt_state) if x.shape == (16, 64)]
        assert len(mus) == 2 and all(x.sharding.spec == k1 for x in mus)
        assert all(x.sharding.spec == P() for x in jax.tree.leaves(state.opt_state) if x.ndim == 0)
        # FSDP: each device holds 1/fsdp of the kernel
        fs = sharding.make_mesh(*MESHES[name]).shape["fsdp"]
        assert p["fc1"]["kernel"].addressable_shards[0].data.shape == (16, 64 // fs)
    mesh = sharding.make_mesh(2, 4)
    batch = sharding.shard_batch({"x": np.zeros((8, 16), np.float32)}, mesh)
    assert batch["x"].sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in batch["x"].addressable_shards} == {(1, 16)}  # 8 examples over 8 devices
    acc = sharding.shard_batch({"x": np.zeros((2, 8, 16), np.float32)}, mesh, batch_axis=1)
    assert acc["x"].sharding.spec == P(None, ("data", "fsdp"))


def test_rules_and_mesh_errors():
    mesh = sharding.make_mesh(2, 4)
    rules = [(r"qkv/kernel$", (None, "fsdp")), (r"attn/proj/kernel$", ("fsdp", None)), (r"norm", None), (r".*", "fsdp")]
    assert sharding.spec_for("enc_blocks/0/attn/qkv/kernel", (64, 192), mesh, rules) == P(None, "fsdp")
    assert sharding.spec_for("enc_blocks/0/attn/proj/kernel", (6, 64), mesh, rules) == P(None, None)  # 6 % 4
    assert sharding.spec_for("enc_norm/scale", (4096,), mesh, rules) == P()
    assert sharding.spec_for("patch_embed/proj/kernel", (16, 16, 3, 1024), mesh, rules) == P(None, None, None, "fsdp")
    with pytest.raises(ValueError, match="does not fit the 8 devices"):
        sharding.make_mesh(4, 4)

