"""Predictions stay on the devices until asked for: host transfers per shape bucket (segment), not per pair;
the official layout as views; `to_host=False`; feature stores sharded over the mesh; the decode step's
memory at batch 8 of 512x384 DPT pairs (XLA memory analysis of an abstract compile).

Compile budget: one device, batch 2, the tiny fixture models (shared with test_engine's steps).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import f3d_jax.infer.steps as steps_mod
from f3d_jax.infer import InferenceEngine, inference
from f3d_jax.infer.engine import DECODE_TEMP_BYTES, auto_pairs_per_step, decode_temp_bytes
from f3d_jax.infer.outputs import LazyRows
from f3d_jax.infer.pairs import make_pairs
from f3d_jax.models.model import abstract_params, encode_images

from .conftest import fixture_images

ONE = jax.devices()[:1]


def _mixed_pairs():
    """3 images, one of another size: complete symmetrized graph of 6 pairs in 3 shape buckets."""
    a, b = fixture_images("dust3r_linear")
    c = dict(img=a["img"][:, 16:80, 16:112].copy(), true_shape=np.array([[64, 96]], np.int32), idx=2, instance="2")
    return make_pairs([a, b, c], "complete", symmetrize=True)


def _same_size_pairs():
    a, b = fixture_images("dust3r_linear")
    c = dict(img=a["img"][:, :, ::-1].copy(), true_shape=a["true_shape"], idx=2, instance="2")
    d = dict(img=-b["img"], true_shape=b["true_shape"], idx=3, instance="3")
    return make_pairs([a, b, c, d], "complete", symmetrize=True)  # 12 pairs, one bucket


def _count_transfers(monkeypatch) -> list[int]:
    """Patch `jax.device_get` to record, per call that moves device arrays, how many arrays it moves."""
    calls: list[int] = []
    real = jax.device_get

    def counting(x):
        n = sum(isinstance(v, jax.Array) for v in jax.tree.leaves(x))
        if n:
            calls.append(n)
        return real(x)

    monkeypatch.setattr(jax, "device_get", counting)
    return calls


def test_host_transfers_once_per_bucket_not_per_pair(fixture_model, monkeypatch):
    model = fixture_model("dust3r_linear")
    for pairs, n_buckets in ((_same_size_pairs(), 1), (_mixed_pairs(), 3)):
        ref = [model(v1, v2) for v1, v2 in pairs]
        eng = InferenceEngine(model, 2, devices=ONE)
        calls = _count_transfers(monkeypatch)
        res = eng(pairs)
        monkeypatch.undo()
        assert len(eng.stats.buckets) == n_buckets and eng.stats.decoder_calls >= len(pairs) // 2
        # one device_get per bucket (each moving that bucket's prediction arrays), however many pairs / batches
        assert len(calls) == n_buckets, calls
        for k, (r1, r2) in enumerate(ref):
            for name, v in r1.items():
                np.testing.assert_allclose(res["pred1"][name][k], v[0], rtol=1e-5, atol=1e-5)
            for name, v in r2.items():
                np.testing.assert_allclose(res["pred2"][name][k], v[0], rtol=1e-5, atol=1e-5)
    # the batched layout stays writable numpy, as before
    res = inference(_same_size_pairs(), model, batch_size=2, verbose=False, devices=ONE)
    assert isinstance(res["pred1"]["pts3d"], np.ndarray) and res["pred1"]["pts3d"].flags.writeable


def test_segments_bound_device_memory_and_keep_results(fixture_model, monkeypatch):
    """With host outputs and a tiny segment size, each batch is its own segment; every segment but the last is
    already on the host when decoding ends (devices hold at most two), and the result is unchanged."""
    model = fixture_model("dust3r_linear")
    pairs = _same_size_pairs()
    eng = InferenceEngine(model, 2, devices=ONE)
    full = eng(pairs)
    out = eng.decode(pairs, to_host=True, segment_bytes=1)
    assert len(out.segments) == 6  # 12 pairs, batch 2
    assert [s.preds is None for s in out.segments] == [True] * 5 + [False]
    calls = _count_transfers(monkeypatch)
    p1, p2 = out.stacked()
    monkeypatch.undo()
    assert len(calls) == 1  # the last segment; the 5 others were moved during decoding
    for name, v in p1.items():
        np.testing.assert_array_equal(v, full["pred1"][name])
    for name, v in p2.items():
        np.testing.assert_array_equal(v, full["pred2"][name])


def test_to_host_false_keeps_predictions_on_the_devices(fixture_model, monkeypatch):
    model = fixture_model("dust3r_linear")
    pairs = _same_size_pairs()
    host = inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    calls = _count_transfers(monkeypatch)
    dev = inference(pairs, model, batch_size=2, verbose=False, devices=ONE, to_host=False)
    assert calls == []  # nothing came back to the host
    monkeypatch.undo()
    for p in ("pred1", "pred2"):
        for name, v in dev[p].items():
            assert isinstance(v, jax.Array) and v.shape == host[p][name].shape
            np.testing.assert_array_equal(np.asarray(v), host[p][name])
    # per-pair list layout: lazy rows, one transfer per bucket on first read
    pairs = _mixed_pairs()
    host = inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    calls = _count_transfers(monkeypatch)
    dev = inference(pairs, model, batch_size=2, verbose=False, devices=ONE, to_host=False)
    rows = dev["pred1"]["pts3d"]
    assert isinstance(rows, LazyRows) and len(rows) == len(pairs) and calls == []
    got = [rows[k] for k in range(len(pairs))]
    assert len(calls) == 3  # the three buckets, once each
    monkeypatch.undo()
    for k in range(len(pairs)):
        np.testing.assert_array_equal(got[k], host["pred1"]["pts3d"][k])
        np.testing.assert_array_equal(dev["pred2"]["conf"][k], host["pred2"]["conf"][k])


def test_feature_store_sharded_over_8_devices(fixture_model):
    assert jax.device_count() == 8
    model = fixture_model("dust3r_linear")
    pairs = _same_size_pairs()
    eng = InferenceEngine(model, 2)  # 8 devices: batch and encoder batch 8
    from f3d_jax.infer.views import distinct_images
    _, distinct = distinct_images(pairs, "test")
    _, stores = eng.encode(distinct)
    (store,) = stores.values()
    for arr in (store.feat, store.pos):
        assert arr.sharding.is_fully_replicated is False
        assert arr.sharding.spec == P("data") and len(arr.sharding.device_set) == 8
        assert arr.addressable_shards[0].data.shape[0] == arr.shape[0] // 8  # each device: 1/8 of the images
    sharded = eng(pairs)
    single = inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    for p in ("pred1", "pred2"):
        for name, v in single[p].items():
            np.testing.assert_allclose(sharded[p][name], v, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(v).max())))


def test_decode_step_memory_at_batch_8_of_512_dpt_pairs(fixture_model):
    """XLA memory analysis of the decode step, compiled on abstract inputs (no weights materialised): 512x384
    DPT pairs at batch 8, with the fixture's tiny trunk but the real DPT heads (feature dims 256 / 128 at full
    resolution, which dominate the step's temporaries: the whole batch at once needs about 4.1 GiB, full-size
    trunk or tiny). The automatic GPU / TPU choice decodes it in sub-steps whose temporaries fit
    `DECODE_TEMP_BYTES` (1.5 GiB), and the estimate that makes the choice is an upper bound of what XLA reports."""
    config = dataclasses.replace(fixture_model("dust3r_dpt").config, img_size=(512, 512))
    hw, batch = (384, 512), 8
    pps = auto_pairs_per_step(config, hw, hw, batch, 1, "accelerator")
    assert pps == 2  # 4 sequential sub-steps of 2 pairs on one GPU
    assert decode_temp_bytes(config, hw, hw, batch) > DECODE_TEMP_BYTES  # the whole batch would not fit
    assert auto_pairs_per_step(config, hw, hw, batch, 8, "accelerator") is None  # one pair per device: fits
    assert auto_pairs_per_step(config, hw, hw, batch, 1, "cpu") == 1

    params = abstract_params(config)
    img = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    f, p = jax.eval_shape(lambda q, i, t: encode_images(config, q, i, t, None), params, img,
                          jax.ShapeDtypeStruct((1, 2), jnp.int32))
    sf = jax.ShapeDtypeStruct((16, *f.shape[1:]), f.dtype)
    sp = jax.ShapeDtypeStruct((16, *p.shape[1:]), jnp.int32)
    idx, ts = jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((batch, 2), jnp.int32)
    compiled = steps_mod.decode_step.lower(params, sf, sp, sf, sp, idx, idx, ts, ts, config=config, impl=None,
                                           mesh=steps_mod.make_mesh(ONE), hw1=hw, hw2=hw,
                                           pairs_per_step=pps).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    out_bytes = batch * 2 * hw[0] * hw[1] * 4 * 4  # pts3d + conf, two views, float32
    assert temp <= DECODE_TEMP_BYTES, temp / 2**30
    # the sub-step's DPT maps are really there: at least half the estimate (a collapsed graph would be tiny)
    assert temp >= decode_temp_bytes(config, hw, hw, pps) // 2, temp / 2**30
    assert compiled.memory_analysis().output_size_in_bytes <= out_bytes + (1 << 20)
