"""The train step against one official CroCo pretraining iteration, the official parameter groups and
schedule, gradient accumulation and bf16 compute, and the tiny config training through `f3d train`."""

from __future__ import annotations

import json
import lzma
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3d_jax.train import loop, optim
from f3d_jax.train.metrics import read_events, read_jsonl
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def croco_fixture(tmp_path_factory):
    from f3d_jax.weights.loading import load_model

    d = fixture_path("training", "croco_train_step")
    pth = tmp_path_factory.mktemp("croco_step") / "checkpoint.pth"
    with lzma.open(d / "checkpoint.pth.xz") as f, open(pth, "wb") as g:
        shutil.copyfileobj(f, g)
    model = load_model(pth)
    return model, json.loads((d / "meta.json").read_text()), np.load(d / "inputs.npz"), np.load(d / "outputs.npz")


def test_official_parameter_groups(croco_fixture):
    from f3d_jax.weights.convert import abstract_model

    model, meta, _, _ = croco_fixture
    _, _, table = abstract_model(model.config)
    torch_name = {"/".join(map(str, path)): key for key, (path, _) in table.items()}
    groups = optim.param_groups(model.params, loop.trainable_mask(model.config))
    decay, no_decay = meta["optimizer"]["param_group_members"]
    assert sorted(torch_name[p] for p in groups["decay"]) == sorted(decay)
    assert sorted(torch_name[p] for p in groups["no_decay"]) == sorted(no_decay)


def test_one_official_croco_step(croco_fixture):
    """One AdamW step of CroCo pretraining from the fixture's weights, images and mask: loss, grad norm and every
    parameter after the step (fixture README tolerances), and the decoupled weight decay of the decay group."""
    from f3d_jax.models.croco import masked_mse
    from f3d_jax.models.model import croco_forward
    from f3d_jax.weights.convert import params_to_state_dict

    model, meta, inp, out = croco_fixture
    cfg, lr = model.config, meta["optimizer"]["lr_used"]
    trainable = loop.trainable_mask(cfg)
    tx = optim.make_optimizer(optim.OptimConfig(weight_decay=0.05), model.params, lr, trainable)

    def loss_fn(p, batch, rng):  # the fixture's mask instead of one drawn from rng
        o, m, t = croco_forward(cfg, p, batch["img1"], batch["img2"], batch["mask"])
        return masked_mse(o, m, t, True), {}

    step = jax.jit(loop.make_train_step(loss_fn, tx, trainable=trainable))
    batch = {"img1": inp["img1"].transpose(0, 2, 3, 1), "img2": inp["img2"].transpose(0, 2, 3, 1), "mask": out["mask"]}
    state, metrics = step(loop.init_state(model.params, tx), batch, jax.random.key(0))
    np.testing.assert_allclose(metrics["loss"], out["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], out["grad_norm"], rtol=1e-5)
    after = params_to_state_dict(cfg, jax.device_get(state.params))
    before = params_to_state_dict(cfg, jax.device_get(model.params))
    assert set(after) == {k[len("param_after."):] for k in out.files if k.startswith("param_after.")}
    worst = max(float(np.abs(after[k] - out[f"param_after.{k}"]).max()) for k in after)
    assert worst < 2e-5, worst  # README: atol 2e-5 (floor 1.2e-6); the updates are ~lr = 1.5e-4
    # decoupled decay: (after - before + lr sign(g)) / p ~ -lr wd over the decay group, 0 over no_decay
    decay = meta["optimizer"]["param_group_members"][0]
    for group, expect in ((decay, -lr * 0.05), ([k for k in after if k not in decay], 0.0)):
        r = np.concatenate([((after[k] - before[k] + lr * np.sign(out[f"grad.{k}"])) / before[k]).ravel()
                            for k in group])
        r = r[np.isfinite(r) & (np.abs(np.concatenate([out[f"grad.{k}"].ravel() for k in group])) > 1e-4)]
        assert abs(np.median(r) - expect) < 1.5e-6, (expect, np.median(r))


@pytest.mark.parametrize("epoch, expected", [(0.0, 0.0), (20.0, 0.5e-4), (40.0, 1e-4), (420.0, 0.5e-4 + 0.5e-6),
                                             (800.0, 1e-6)])
def test_official_schedule(epoch, expected):
    """adjust_learning_rate: linear warm-up to the peak at 40 epochs, half-cycle cosine to min_lr at 800."""
    cfg = optim.OptimConfig(lr=1e-4, min_lr=1e-6, warmup_epochs=40, epochs=800)
    # update u of an epoch of 100 micro-batches with accum_iter 4 is at epoch u * 4 / 100
    sched = optim.lr_schedule(cfg, cfg.peak_lr(1), iters_per_epoch=100, accum_iter=4)
    np.testing.assert_allclose(float(sched(jnp.int32(round(epoch * 25)))), expected, rtol=1e-6, atol=1e-12)
    assert math.isclose(optim.OptimConfig(blr=1.5e-4).peak_lr(64 * 8), 1.5e-4 * 2)  # blr * eff_batch / 256


def _toy(params_seed=0):
    """A 2-layer regression (kernels, biases, a norm scale): cheap to compile, same step machinery."""
    rng = np.random.default_rng(params_seed)
    params = {"fc1": {"kernel": rng.normal(size=(16, 64)).astype(np.float32), "bias": np.zeros(64, np.float32)},
              "norm": {"scale": np.ones(64, np.float32)},
              "fc2": {"kernel": rng.normal(size=(64, 8)).astype(np.float32) / 8, "bias": np.zeros(8, np.float32)}}

    def loss_fn(p, batch, rng):
        h = jnp.tanh(batch["x"] @ p["fc1"]["kernel"] + p["fc1"]["bias"]) * p["norm"]["scale"]
        y = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
        return jnp.mean((y - batch["y"]) ** 2), {"abs_err": jnp.mean(jnp.abs(y - batch["y"]))}

    data = {"x": rng.normal(size=(8, 16)).astype(np.float32), "y": rng.normal(size=(8, 8)).astype(np.float32)}
    return params, loss_fn, data


def test_accumulation_equals_the_full_batch_and_clipping_applies():
    """accum_iter=2 over two halves == one step on the whole batch (mean gradient), with clipping on the mean."""
    params, loss_fn, data = _toy()
    cfg = optim.OptimConfig(lr=1e-2, clip_grad=0.5)
    tx = optim.make_optimizer(cfg, params, 1e-2)
    full = jax.jit(loop.make_train_step(loss_fn, tx))
    acc = jax.jit(loop.make_train_step(loss_fn, tx, accum_iter=2))
    s0 = loop.init_state(params, tx)
    s1, m1 = full(s0, data, jax.random.key(0))
    s2, m2 = acc(loop.init_state(params, tx), loop.stack_micro_batches([jax.tree.map(lambda a: a[:4], data),
                                                                         jax.tree.map(lambda a: a[4:], data)]),
                 jax.random.key(0))
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-5)
    assert m1["grad_norm"] > 0.5  # the clip is active: the update is the clipped one in both
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # by hand (numpy): clip the gradient to norm 0.5, one AdamW step (first step: update = -lr * g / (|g| + eps))
    g = jax.device_get(jax.jit(jax.grad(lambda p: loss_fn(p, data, None)[0]))(params))
    scale = 0.5 / np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(g)))
    gk, gb, k = g["fc1"]["kernel"] * scale, g["fc1"]["bias"] * scale, params["fc1"]["kernel"]
    np.testing.assert_allclose(s1.params["fc1"]["kernel"], k - 1e-2 * (gk / (np.abs(gk) + 1e-8) + 0.05 * k), atol=1e-6)
    np.testing.assert_allclose(s1.params["fc1"]["bias"], -1e-2 * gb / (np.abs(gb) + 1e-8), atol=1e-7)  # 1-d: no decay


def test_bf16_compute_keeps_fp32_master_weights():
    params, loss_fn, data = _toy()
    tx = optim.make_optimizer(optim.OptimConfig(lr=1e-3), params, 1e-3)
    seen = []

    def spy(p, batch, rng):
        seen.append(p["fc1"]["kernel"].dtype)
        return loss_fn(p, batch, rng)

    s32, m32 = jax.jit(loop.make_train_step(loss_fn, tx))(loop.init_state(params, tx), data, jax.random.key(0))
    s16, m16 = jax.jit(loop.make_train_step(spy, tx, compute_dtype=jnp.bfloat16))(loop.init_state(params, tx), data,
                                                                                  jax.random.key(0))
    assert seen == [jnp.bfloat16]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))
    assert m16["loss"].dtype == jnp.float32
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)  # bf16 forward, same loss to 2 %
    moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s16.params), jax.tree.leaves(params))]
    assert min(moved) > 1e-4  # every fp32 master weight took its step


def test_tiny_config_trains_through_the_cli(tiny_config, tmp_path, capsys):
    """`f3d train experiments/configs/tiny_croco.py`: 60 updates on synthetic pairs; the loss drops, the logs
    (JSONL and TensorBoard events) hold every step."""
    from f3d_jax.cli.main import main
    from tests.train.conftest import TINY

    out = tmp_path / "run"
    assert main(["train", str(TINY), "--out", str(out), "--mesh-data", "1", "--quiet"]) == 0
    assert "loss" in capsys.readouterr().out
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, tiny_config.steps + 1))
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-10:]])
    assert last < 0.85 * first, (first, last)  # measured: 1.17 (first 5) -> 0.875 (last 10)
    assert last < 0.95  # below the ~1.0 of predicting each normalised patch's mean: the model learned something
    events = read_events(next((out / "tb").iterdir()))
    assert [s for s, _ in events] == list(range(1, tiny_config.steps + 1))
    np.testing.assert_allclose([e["loss"] for _, e in events], [r["loss"] for r in rows], rtol=1e-6)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["30", "60"]
    # a second call finds the run finished
    assert main(["train", str(TINY), "--out", str(out), "--mesh-data", "1", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_official_init_distributions_and_sharded_placement():
    """CroCoNet.initialize_weights: xavier_uniform backbone Linears / patch-embed conv, zero biases, LayerNorm (1, 0),
    mask_token N(0, 0.02); DUSt3R heads: PyTorch's default U(+-1/sqrt(fan_in)); FSDP placement at creation."""
    from f3d_jax.models.config import DUSt3RConfig
    from f3d_jax.train import sharding

    cfg = DUSt3RConfig(img_size=(32, 32), patch_size=8, enc_embed_dim=64, enc_depth=1, enc_num_heads=2,
                       dec_embed_dim=64, dec_depth=1, dec_num_heads=2, pos_embed="RoPE100")
    mesh = sharding.make_mesh(1, 8)
    p = loop.init_params(cfg, 3, sharding.param_shardings(jax.eval_shape(lambda: loop.init_params(cfg, 3)), mesh,
                                                          min_fsdp_size=1024))

    def bound_ok(x, bound):
        a = np.abs(np.asarray(x))
        return a.max() <= bound and a.max() > 0.95 * bound

    qkv = p["enc_blocks"][0]["attn"]["qkv"]
    assert bound_ok(qkv["kernel"], np.sqrt(6 / (64 + 192))) and not np.asarray(qkv["bias"]).any()
    assert bound_ok(p["patch_embed"]["proj"]["kernel"], np.sqrt(6 / (8 * 8 * 3 + 64)))
    assert (np.asarray(p["enc_norm"]["scale"]) == 1).all() and not np.asarray(p["enc_norm"]["bias"]).any()
    assert abs(float(np.std(p["mask_token"])) - 0.02) < 0.008
    head = p["downstream_head1"]["proj"]  # linear head: PyTorch default, bias included
    assert bound_ok(head["kernel"], 1 / 8) and bound_ok(head["bias"], 1 / 8)
    assert qkv["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert qkv["kernel"].addressable_shards[0].data.shape == (64, 24)
    np.testing.assert_array_equal(qkv["kernel"], loop.init_params(cfg, 3)["enc_blocks"][0]["attn"]["qkv"]["kernel"])
