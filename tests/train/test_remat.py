"""Rematerialisation of the training forward (`TrainConfig.remat`, `f3d_jax.nn.remat`): the same loss and
gradients as the plain forward, and a compiled train step that keeps less for its backward pass."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from f3d_jax.nn.remat import check_remat
from f3d_jax.train import data, loop, optim
from f3d_jax.train.config import TrainConfig
from f3d_jax.train.losses import build_criterion

CRITERION = "ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)"
# tiny_dust3r with two encoder and two decoder blocks (each block kind is checkpointed, then the linear heads)
TINY_DUST3R = ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(64, 64), "
               "patch_size=8, head_type='linear', output_mode='pts3d', depth_mode=('exp', -inf, inf), "
               "conf_mode=('exp', 1, inf), enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, "
               "dec_depth=2, dec_num_heads=2)")
# big enough that the activations outweigh the params: 64 tokens per image, batch 8, 4 + 2 blocks
SMALL_CROCO = ("CroCoNet(img_size=64, patch_size=8, mask_ratio=0.75, enc_embed_dim=32, enc_depth=4, enc_num_heads=2, "
               "dec_embed_dim=32, dec_depth=2, dec_num_heads=2, pos_embed='RoPE100')")


def test_remat_keeps_the_stereo_loss_and_gradients():
    """DUSt3R step (symmetrised batch, official criterion): loss and every gradient leaf with remat='blocks'
    equal those without, to 1e-6 (float32 reassociation at most), on an all-landscape batch (remat skips the
    portrait head) and on a batch mixing a landscape and a portrait entry (both heads, selected per entry)."""
    mc = TrainConfig(model=TINY_DUST3R, criterion=CRITERION).model_config()
    params = loop.init_params(mc, 0)
    source = data.SyntheticPairs(2, size=(64, 48), seed=0)
    it = data.iterate(data.make_pair_dataset(source, data.DataConfig(batch_size=2, resolutions=((64, 48),))))
    batch = loop.numeric(next(it))
    mixed = jax.tree.map(np.copy, batch)
    for v in ("view1", "view2"):
        mixed[v]["true_shape"][1] = mixed[v]["true_shape"][1][::-1]  # entry 1: portrait (64, 48)
    crit = build_criterion(CRITERION)
    grads = {}
    for remat in ("none", "blocks"):
        lf = loop.stereo_loss_fn(mc, crit, remat=remat)
        f = jax.jit(jax.value_and_grad(lambda p, b, lf=lf: lf(p, b, jax.random.key(1))[0]))
        grads[remat] = [f(params, b) for b in (batch, mixed)]
    for (l0, g0), (l1, g1) in zip(grads["none"], grads["blocks"]):
        assert np.isfinite(float(l0)) and float(l0) > 0
        np.testing.assert_allclose(l1, l0, rtol=1e-6)
        scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g0))
        assert scale > 1e-3  # the gradients are not trivially zero
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g0)[0], jax.tree.leaves(g1), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path))
    assert abs(float(grads["none"][1][0]) - float(grads["none"][0][0])) > 1e-4  # the portrait entry mattered


def test_remat_shrinks_the_compiled_croco_step():
    """The compiled CroCo train step (XLA's memory analysis): remat='blocks' needs less than 0.5x the temporary
    memory of 'none' (measured 6.9 MB vs 20.1 MB), with the same loss and gradient norm."""
    mc = TrainConfig(model=SMALL_CROCO).model_config()
    params = loop.init_params(mc, 0)
    rng = np.random.default_rng(0)
    batch = {v: {"img": rng.uniform(-1, 1, (8, 64, 64, 3)).astype(np.float32)} for v in ("view1", "view2")}
    tx = optim.make_optimizer(optim.OptimConfig(), params, 1e-3, loop.trainable_mask(mc))
    temp, metrics = {}, {}
    for remat in ("none", "blocks"):
        step = jax.jit(loop.make_train_step(loop.croco_loss_fn(mc, remat=remat), tx))
        compiled = step.lower(loop.init_state(params, tx), batch, jax.random.key(0)).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
        _, metrics[remat] = compiled(loop.init_state(params, tx), batch, jax.random.key(0))
    assert temp["blocks"] < 0.5 * temp["none"], temp
    assert float(metrics["none"]["loss"]) > 0.5
    np.testing.assert_allclose(metrics["blocks"]["loss"], metrics["none"]["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["blocks"]["grad_norm"], metrics["none"]["grad_norm"], rtol=1e-5)


def test_bad_remat_is_a_clear_error():
    with pytest.raises(ValueError, match="remat"):
        check_remat("everything")
    with pytest.raises(ValueError, match="remat='all'"):
        TrainConfig(model=SMALL_CROCO, remat="all")
