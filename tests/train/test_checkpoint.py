"""Checkpoints: exact resume (k steps, checkpoint, fresh state and iterator from disk, k more == 2k straight,
bit for bit, data order included), refusal of a checkpoint from another config, partial init, event files."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from f3d_jax.train.checkpoint import ConfigMismatchError, config_diff, partial_load
from f3d_jax.train.metrics import crc32c
from f3d_jax.train.trainer import train
from f3d_jax.weights.errors import CheckpointError


class _Recording:
    """Wraps a data iterator and records the first image of every batch it hands out (the data order)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __next__(self):
        b = next(self.inner)
        self.seen.append(b["view1"]["img"][:, 0, 0, 0].copy())
        return b

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, s):
        self.inner.set_state(s)


def test_resume_is_bit_exact(tiny_config, tmp_path):
    from f3d_jax.train.config import DataConfig
    from f3d_jax.train.trainer import data_iterator

    cfg = tiny_config.replace(steps=6, save_every=3, keep=2, data=DataConfig(num_scenes=4))
    straight_data = _Recording(data_iterator(cfg))
    straight = train(cfg, tmp_path / "straight", data=straight_data, quiet=True)
    first_data = _Recording(data_iterator(cfg))
    first = train(cfg, tmp_path / "resumed", data=first_data, stop_at=3, quiet=True)  # killed
    assert int(first.state.step) == 3
    second_data = _Recording(data_iterator(cfg))  # a fresh iterator: its position comes from the checkpoint
    second = train(cfg, tmp_path / "resumed", data=second_data, quiet=True)
    assert second.start_step == 3
    assert [h["loss"] for h in first.history + second.history] == [h["loss"] for h in straight.history]
    np.testing.assert_array_equal(np.stack(first_data.seen + second_data.seen), np.stack(straight_data.seen))
    for a, b in zip(jax.tree.leaves(second.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps = sorted(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert steps == [3, 6]  # keep=2

    # another config refuses the checkpoint, naming every difference
    other = cfg.replace(optim=cfg.optim.__class__(lr=1e-3, warmup_epochs=2, epochs=30), batch_size=4)
    with pytest.raises(ConfigMismatchError) as e:
        train(other, tmp_path / "resumed", quiet=True)
    msg = str(e.value)
    assert "batch_size: checkpoint 8, this run 4" in msg and "optim.lr: checkpoint 0.003, this run 0.001" in msg
    assert "steps" not in msg.replace("steps=", "")  # the run length is not state-defining


def test_config_diff_lists_every_difference():
    a = {"model": "CroCoNet(x=1)", "optim": {"lr": 1.0, "betas": [0.9, 0.95]}}
    b = {"model": "CroCoNet(x=2)", "optim": {"lr": 1.0, "betas": (0.9, 0.95)}, "new": 3}
    assert config_diff(a, b) == ["model: checkpoint 'CroCoNet(x=1)', this run 'CroCoNet(x=2)'",
                                 "new: checkpoint '<absent>', this run 3"]


def test_partial_load_reports_and_copies_dec_blocks():
    target = {"enc_blocks": {0: {"w": np.zeros((2, 2))}}, "dec_blocks": {0: {"w": np.zeros(3)}},
              "dec_blocks2": {0: {"w": np.zeros(3)}}, "head": {"w": np.zeros(4)}}
    source = {"enc_blocks": {0: {"w": np.ones((2, 2))}}, "dec_blocks": {0: {"w": np.full(3, 2.0)}},
              "prediction_head": {"w": np.ones(5)}}
    params, report = partial_load(target, source)
    assert report == {"loaded": ["dec_blocks/0/w", "dec_blocks2/0/w", "enc_blocks/0/w"],
                      "missing": ["head/w"], "unexpected": ["prediction_head/w"]}
    np.testing.assert_array_equal(params["dec_blocks2"][0]["w"], 2.0)  # CroCo decoder -> DUSt3R's second decoder
    np.testing.assert_array_equal(params["head"]["w"], 0.0)
    with pytest.raises(CheckpointError, match=r"enc_blocks/0/w: checkpoint \(2, 2\), model \(3, 3\)"):
        partial_load({"enc_blocks": {0: {"w": np.zeros((3, 3))}}}, source)


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
