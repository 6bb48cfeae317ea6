"""The DUSt3R train step of `f3d train` with the official criterion string, on batches of the grain pipeline:
its loss equals the criterion evaluated by hand on an independent forward (two `stereo_forward` calls, the
official `make_batch_symmetric` in numpy), and the update moves the trainable params."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from f3d_jax.models.model import stereo_forward
from f3d_jax.train import data, loop, optim
from f3d_jax.train.config import load_config
from f3d_jax.train.losses import build_criterion
from f3d_jax.train.trainer import build_loss_fn

TINY_DUST3R = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "tiny_dust3r.py"
CRITERION = "ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)"


def test_tiny_dust3r_step_with_the_official_criterion():
    cfg = load_config(TINY_DUST3R).replace(criterion=CRITERION, batch_size=2)
    model_cfg = cfg.model_config()
    source = data.SyntheticPairs(4, size=(64, 48), seed=0)
    it = data.iterate(data.make_pair_dataset(source, data.DataConfig(batch_size=2, resolutions=((64, 48),))))
    batches = [loop.numeric(next(it)) for _ in range(2)]
    assert batches[0]["view1"]["img"].shape == (2, 48, 64, 3)

    params = loop.init_params(model_cfg, cfg.seed)
    trainable = loop.trainable_mask(model_cfg)
    tx = optim.make_optimizer(cfg.optim, params, 1e-3, trainable)
    step = jax.jit(loop.make_train_step(build_loss_fn(cfg), tx, trainable=trainable))
    state, m1 = step(loop.init_state(params, tx), batches[0], jax.random.key(0))
    after_one = jax.device_get(state.params)
    state, m2 = step(state, batches[1], jax.random.key(0))

    # by hand: both directions of each pair, interleaved as the official symmetrized batch
    b = batches[0]
    v1, v2 = b["view1"], b["view2"]
    r1, r2 = stereo_forward(model_cfg, params, v1["img"], v2["img"], v1["true_shape"], v2["true_shape"])
    s1, s2 = stereo_forward(model_cfg, params, v2["img"], v1["img"], v2["true_shape"], v1["true_shape"])
    pred1 = {k: loop.interleave(r1[k], s1[k]) for k in r1}
    pred2 = {k: loop.interleave(r2[k], s2[k]) for k in r2}
    sym = data.make_batch_symmetric(b)
    loss, details = jax.jit(build_criterion(CRITERION))(sym["view1"], sym["view2"], pred1, pred2)
    assert np.isfinite(float(loss)) and np.isfinite(float(m2["loss"]))
    np.testing.assert_allclose(m1["loss"], loss, rtol=1e-5)
    for k, v in details.items():
        np.testing.assert_allclose(m1[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    assert float(m1["grad_norm"]) > 0

    # every trainable leaf moved (AdamW's first step moves each by about lr), the frozen mask_token did not
    moved = jax.tree.map(lambda a, p: float(np.abs(np.asarray(a) - np.asarray(p)).max()), after_one, params)
    flags = jax.tree.leaves(trainable)
    assert all(d > 1e-5 for d, t in zip(jax.tree.leaves(moved), flags) if t)
    assert moved["mask_token"] == 0.0
