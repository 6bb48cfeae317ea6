"""Pair inference engine: official `inference` / `symmetric_inference` outputs, encoder cache, static
shapes (no recompilation), 8-device sharding, per-pair list layout, scene API, bad inputs.

Compile budget: every test runs on one device with batch 2 (encoder batch 2) unless it tests
sharding, so the decode step of a bucket is compiled once per model and shared across tests.
"""

from __future__ import annotations

import gc
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path
from jax.sharding import PartitionSpec as P

import f3d_jax.infer
import f3d_jax.infer.engine as engine_mod
import f3d_jax.infer.steps as steps_mod
from f3d_jax.infer import (InferenceEngine, PairInputError, infer_scene, inference, symmetric_inference,
                           symmetric_inference_pairs)
from f3d_jax.infer.pairs import make_pairs, pairs_to_edges
from f3d_jax.models import model as model_mod
from f3d_jax.models.model import Model, symmetric_forward

from .conftest import fixture_images

MODEL_CASES = ("dust3r_linear", "dust3r_dpt", "mast3r")

ONE = jax.devices()[:1]


def assert_close(got, ref, what=""):
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())),
                               err_msg=what)


def _io(case):
    return (np.load(fixture_path("networks", case, "inputs.npz")),
            np.load(fixture_path("networks", case, "outputs.npz")))


def _four_images(case="dust3r_linear"):
    """The two fixture images plus two more of the same size (flipped / negated copies)."""
    a, b = fixture_images(case)
    c = dict(img=a["img"][:, :, ::-1].copy(), true_shape=a["true_shape"], idx=2, instance="2")
    d = dict(img=-b["img"], true_shape=b["true_shape"], idx=3, instance="3")
    return [a, b, c, d]


# ---------------------------------------------------------------------------------------------
# official outputs


@pytest.mark.parametrize("case", ["dust3r_linear", "mast3r"])  # dust3r_dpt: in test_decoding_in_sequential_steps_*
def test_inference_matches_official(case, fixture_model):
    model = fixture_model(case)
    inputs, outputs = _io(case)
    imgs = fixture_images(case)
    pairs = [(imgs[i], imgs[j]) for i, j in inputs["pairs"]]
    res = inference(pairs, model, batch_size=int(inputs["batch_size"]), verbose=False, devices=ONE)
    assert str(outputs["inference.layout"]) == "batched"
    assert set(res) == {"view1", "view2", "pred1", "pred2"}
    for v in ("view1", "view2"):
        assert res[v]["idx"] == outputs[f"inference.{v}.idx"].tolist()
        assert res[v]["instance"] == [str(i) for i in outputs[f"inference.{v}.idx"]]
        np.testing.assert_array_equal(res[v]["true_shape"], outputs[f"inference.{v}.true_shape"])
        assert res[v]["img"].shape == (len(pairs),) + imgs[0]["img"].shape[1:]
    for p in ("pred1", "pred2"):
        keys = {k.split(".")[-1] for k in outputs.files if k.startswith(f"inference.{p}.")}
        assert set(res[p]) == keys
        for k in keys:
            ref = outputs[f"inference.{p}.{k}"]
            assert res[p][k].shape == ref.shape and res[p][k].dtype == np.float32
            assert_close(res[p][k], ref, f"{case} {p}.{k}")


def test_symmetric_inference_matches_official(fixture_model):
    model = fixture_model("mast3r")
    inputs, outputs = _io("mast3r")
    v1, v2 = (dict(img=inputs[f"forward.view{k}.img"].transpose(0, 2, 3, 1),
                   true_shape=inputs[f"forward.view{k}.true_shape"]) for k in (1, 2))
    res11, res21, res22, res12 = symmetric_inference(model, v1, v2)
    for name, res in (("res22", res22), ("res12", res12)):
        assert set(res) == {"pts3d", "conf", "desc", "desc_conf"}
        for k, got in res.items():
            assert_close(got, outputs[f"symmetric.{name}.{k}"], f"{name}.{k}")
    # res11 / res21 are model(view1, view2) (official: bit for bit); view 2 keeps the key pts3d.
    for k, got in res11.items():
        assert_close(got, outputs[f"forward.view1.{k}"], f"res11.{k}")
    for k, got in res21.items():
        assert_close(got, outputs[f"forward.view2.{'pts3d_in_other_view' if k == 'pts3d' else k}"], f"res21.{k}")

    batched = symmetric_inference_pairs([(v1, v2)], model, batch_size=2, verbose=False, devices=ONE)
    for name, res in zip(("res11", "res21", "res22", "res12"), (res11, res21, res22, res12)):
        for k in res:
            np.testing.assert_array_equal(batched[name][k], res[k])


def test_symmetric_forward_is_engine_result(fixture_model):
    """The pure jitted `symmetric_forward` equals the engine's two directions."""
    model = fixture_model("dust3r_linear")
    a, b = fixture_images("dust3r_linear")
    got = symmetric_forward(model.config, model.params, a["img"], b["img"], a["true_shape"], b["true_shape"])
    want = symmetric_inference(model, a, b)
    for g, w in zip(got, want):
        assert set(g) == set(w) == {"pts3d", "conf"}
        for k in w:
            assert_close(g[k], w[k], k)


# ---------------------------------------------------------------------------------------------
# encoder cache, static shapes


def test_encoder_runs_once_per_image(fixture_model, monkeypatch):
    model = fixture_model("dust3r_linear")
    imgs = _four_images()
    pairs = make_pairs(imgs, "complete", symmetrize=True)
    assert len(pairs) == 12

    executed = []
    real_encode = steps_mod.encode_images

    def counting_encode(config, params, img, true_shape=None, impl=None, precision=None):
        jax.debug.callback(lambda n: executed.append(int(n)), img.shape[0])
        return real_encode(config, params, img, true_shape, impl, precision)

    steps_mod.encode_step.clear_cache()  # retrace the step with the counting encoder
    monkeypatch.setattr(steps_mod, "encode_images", counting_encode)
    try:
        eng = InferenceEngine(model, 2, devices=ONE)
        res = eng(pairs)
        jax.effects_barrier()
    finally:
        steps_mod.encode_step.clear_cache()  # drop the executable that holds the callback
    # 4 images, encoder batches of 2: two encoder executions of 2 rows = 4 encoder evaluations
    # (the official code would run 24 on this graph, 12 with its symmetrized-batch shortcut).
    assert sum(executed) == 4 and len(executed) == 2
    assert (eng.stats.encoder_images, eng.stats.encoder_calls, eng.stats.n_images) == (4, 2, 4)
    assert (eng.stats.decoder_pairs, eng.stats.decoder_calls) == (12, 6)
    # The graph holds the fixture's two pairs: same numbers as the official batch.
    _, outputs = _io("dust3r_linear")
    edges = pairs_to_edges(pairs).tolist()
    for row_ref, e in enumerate([[1, 0], [0, 1]]):
        r = edges.index(e)
        assert_close(res["pred1"]["pts3d"][r], outputs["inference.pred1.pts3d"][row_ref])
        assert_close(res["pred2"]["pts3d_in_other_view"][r], outputs["inference.pred2.pts3d_in_other_view"][row_ref])


def test_duplicate_images_share_one_encoding(fixture_model):
    """Identity is the pixels: re-created dicts of the same image (e.g. the single-image copy)
    are encoded once; idx/instance are not trusted."""
    model = fixture_model("dust3r_linear")
    a, b = fixture_images("dust3r_linear")
    a2 = dict(a, img=a["img"].copy(), idx=7)
    b_same_idx = dict(b, idx=0, instance="0")  # same idx as `a`, different pixels
    eng = InferenceEngine(model, 2, devices=ONE)
    res = eng([(a, b_same_idx), (a2, b)], verbose=False)
    assert eng.stats.n_images == 2 and eng.stats.encoder_images == 2
    np.testing.assert_array_equal(res["pred1"]["pts3d"][0], res["pred1"]["pts3d"][1])


def _trace_guard(fn):
    """`fn` (a jitted model function) behind a plain wrapper that chex lets be traced at most 0 times more:
    the steps call it only while they are being traced."""
    def traced(*args, **kwargs):
        return fn(*args, **kwargs)

    return chex.assert_max_traces(traced, n=0)


def test_second_call_compiles_nothing(fixture_model, monkeypatch):
    model = fixture_model("dust3r_linear")
    imgs = _four_images()
    pairs = make_pairs(imgs, "complete", symmetrize=True)
    inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    sizes = (steps_mod.encode_step._cache_size(), steps_mod.decode_step._cache_size())
    # From here on, tracing either step raises (chex), and jit's own caches must not grow.
    chex.clear_trace_counter()
    monkeypatch.setattr(steps_mod, "encode_images", _trace_guard(model_mod.encode_images))
    monkeypatch.setattr(steps_mod, "decode_pairs", _trace_guard(model_mod.decode_pairs))
    # New pixels, same sizes, another graph over 3 images (store capacity still 4), a new engine and a
    # new model object holding the same weights: nothing new.
    other = [dict(im, img=np.clip(im["img"] * 0.5 + 0.1, -1, 1)) for im in imgs[:3]]
    same = Model(model.config, jax.tree.map(lambda a: a, model.params))
    res = inference(make_pairs(other, "swin-1"), same, batch_size=2, verbose=False, devices=ONE)
    assert (steps_mod.encode_step._cache_size(), steps_mod.decode_step._cache_size()) == sizes
    assert np.isfinite(res["pred1"]["pts3d"]).all()
    # The guard does catch a trace: images of a new size must trace the encoder step (and fail at once).
    small = [dict(im, img=im["img"][:, :48, :64], true_shape=np.array([[48, 64]], np.int32)) for im in imgs[:2]]
    with pytest.raises(AssertionError, match="traced > 0 times"):
        inference(make_pairs(small, "complete"), model, batch_size=2, verbose=False, devices=ONE)


# ---------------------------------------------------------------------------------------------
# state: the engine owns its prepared params, inference() follows the model's current weights


def test_inference_sees_in_place_weight_edits(fixture_model):
    """Editing `model.params` in place (the nested dicts) changes `inference()` exactly as a direct
    `model(view1, view2)` call; an engine built before the edit keeps the weights it was built with."""
    base = fixture_model("dust3r_linear")
    model = Model(base.config, jax.tree.map(lambda a: a, base.params))  # own dicts: the fixture stays intact
    a, b = fixture_images("dust3r_linear")
    pairs = [(a, b), (b, a)]
    before = inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    kept = InferenceEngine(model, 2, devices=ONE)

    enc = model.params["enc_norm"]
    enc["bias"] = enc["bias"] + 0.05  # in place: the same dicts, new leaves
    head = model.params["downstream_head2"]["proj"]
    head["bias"] = head["bias"] + 0.1

    after = inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    for k, (v1, v2) in enumerate(pairs):
        ref1, ref2 = model(v1, v2)
        for name, ref in ref1.items():
            assert_close(after["pred1"][name][k], ref[0], f"pair {k} pred1.{name}")
        for name, ref in ref2.items():
            assert_close(after["pred2"][name][k], ref[0], f"pair {k} pred2.{name}")
    for p, key in (("pred1", "pts3d"), ("pred2", "pts3d_in_other_view")):
        moved = np.abs(after[p][key] - before[p][key]).max() / np.abs(before[p][key]).max()
        assert moved > 1e-3, (p, moved)  # far beyond the 1e-5 tolerance: the edit is visible
    old = kept(pairs)
    for p in ("pred1", "pred2"):
        for name, v in old[p].items():
            np.testing.assert_array_equal(v, before[p][name], err_msg=f"{p}.{name}")


def _holds_device_arrays(value) -> bool:
    try:
        leaves = jax.tree.leaves(value)
    except Exception:  # noqa: BLE001 - not a pytree jax can flatten: look at the object itself
        leaves = [value]
    return any(isinstance(x, jax.Array) for x in leaves)


def test_engine_owns_its_params_and_nothing_outlives_a_call(fixture_model):
    """The prepared (here bfloat16) params live exactly as long as their engine: `inference()` leaves no
    device copy of the model behind, and no module of f3d_jax.infer holds device arrays."""
    model = fixture_model("dust3r_linear")
    a, b = fixture_images("dust3r_linear")
    gc.collect()
    alive = jax.live_arrays()  # kept referenced, so their ids cannot be reused
    old = {id(x) for x in alive}

    def new_bf16():
        gc.collect()
        return [x for x in jax.live_arrays() if id(x) not in old and x.dtype == jnp.bfloat16]

    eng = InferenceEngine(model, 2, dtype=jnp.bfloat16, devices=ONE)
    n_cast = sum(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(eng.params))
    assert n_cast > 10 and len(new_bf16()) == n_cast  # the engine holds the cast copy
    eng([(a, b)])
    del eng
    assert new_bf16() == []  # dropped with the engine

    res = inference([(a, b)], model, batch_size=2, verbose=False, devices=ONE, dtype=jnp.bfloat16)
    assert np.isfinite(res["pred1"]["pts3d"]).all()
    assert new_bf16() == []  # nothing of the call's engine survives it

    mods = [m for m in vars(f3d_jax.infer).values() if isinstance(m, types.ModuleType)]
    assert {m.__name__ for m in mods} >= {"f3d_jax.infer.engine", "f3d_jax.infer.steps", "f3d_jax.infer.views",
                                          "f3d_jax.infer.collate"}
    for m in mods:
        held = [name for name, v in vars(m).items() if _holds_device_arrays(v)]
        assert held == [], f"{m.__name__} holds device arrays in {held}"


# ---------------------------------------------------------------------------------------------
# sharding


def test_sharded_over_8_devices_equals_single_device(fixture_model):
    assert jax.device_count() == 8
    model = fixture_model("dust3r_linear")
    pairs = make_pairs(_four_images(), "complete", symmetrize=True)
    eng = InferenceEngine(model, 2)  # all 8 devices: batch rounded up to 8
    assert eng.batch_size == 8 and eng.n_devices == 8
    rows: dict[int, dict] = {}
    for idx, (pred1, pred2) in eng.iter_batches(pairs):
        for leaf in jax.tree.leaves((pred1, pred2)):
            assert leaf.shape[0] == 8
            assert leaf.sharding.spec == P("data")
            assert len(leaf.sharding.device_set) == 8
        host = jax.device_get(pred1)
        for r, k in enumerate(idx):
            rows[k] = {n: v[r] for n, v in host.items()}
    assert sorted(rows) == list(range(12))
    single = inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    for k in range(12):
        for n in ("pts3d", "conf"):
            assert_close(rows[k][n], single["pred1"][n][k], f"pair {k} {n}")
    full = eng(pairs)
    for n, v in full["pred2"].items():
        assert_close(v, single["pred2"][n], n)


def test_decoding_in_sequential_steps_stays_sharded_and_equal(fixture_model, monkeypatch):
    """The CPU large-pair path (one pair per device per sub-step, `lax.map`) on 8 devices: outputs sharded on
    'data', equal to the one-step single-device result, DPT head included; that result on the fixture's pairs
    equals the official `inference` output (the DPT model's parity through the engine)."""
    model = fixture_model("dust3r_dpt")
    pairs = make_pairs(_four_images("dust3r_dpt"), "complete", symmetrize=True)
    hw = tuple(int(v) for v in pairs[0][0]["img"].shape[1:3])
    monkeypatch.setattr(engine_mod, "CPU_PAIR_TOKENS", 1)  # tiny images take the large-pair path
    eng = InferenceEngine(model, 16)
    assert eng._pairs_per_step(hw, hw) == 8  # 2 sequential sub-steps of 8 pairs, one per device
    rows: dict[int, dict] = {}
    for idx, (pred1, pred2) in eng.iter_batches(pairs):
        for leaf in jax.tree.leaves((pred1, pred2)):
            assert leaf.shape[0] == 16 and leaf.sharding.spec == P("data")
        host = jax.device_get(pred2)
        for r, k in enumerate(idx):
            rows[k] = {n: v[r] for n, v in host.items()}
    assert sorted(rows) == list(range(12))
    one = InferenceEngine(model, 4, devices=ONE, pairs_per_step=4)  # one step
    single = one(pairs)
    for k in range(12):
        for n, v in rows[k].items():
            assert_close(v, single["pred2"][n][k], f"pair {k} {n}")
    # the one-step result of the fixture's two pairs is the official `inference` output (the DPT case of
    # test_inference_matches_official, checked here to compile the DPT model's steps once less)
    inputs, outputs = _io("dust3r_dpt")
    where = {(int(a["idx"]), int(b["idx"])): k for k, (a, b) in enumerate(pairs)}
    for r, (i, j) in enumerate(inputs["pairs"].tolist()):
        for p in ("pred1", "pred2"):
            keys = {k.split(".")[-1] for k in outputs.files if k.startswith(f"inference.{p}.")}
            assert set(single[p]) == keys
            for n in keys:
                assert_close(single[p][n][where[(i, j)]], outputs[f"inference.{p}.{n}"][r], f"official {p}.{n} {r}")
    for bad in (4, 24):  # not a multiple of 8 devices; does not divide the batch of 16
        with pytest.raises(ValueError, match="multiple of the device count"):
            InferenceEngine(model, 16, pairs_per_step=bad)


# ---------------------------------------------------------------------------------------------
# layouts


def test_mixed_sizes_give_official_per_pair_lists(fixture_model):
    model = fixture_model("dust3r_linear")
    a, b = fixture_images("dust3r_linear")
    c = dict(img=a["img"][:, 16:80, 16:112].copy(), true_shape=np.array([[64, 96]], np.int32), idx=2, instance="2")
    pairs = make_pairs([a, b, c], "complete", symmetrize=True)
    res = inference(pairs, model, batch_size=2, verbose=False, devices=ONE)
    n = len(pairs)
    assert res["view1"]["idx"] == [int(p[0]["idx"]) for p in pairs]
    assert res["view2"]["instance"] == [p[1]["instance"] for p in pairs]
    for v, j in (("view1", 0), ("view2", 1)):
        assert isinstance(res[v]["img"], list) and len(res[v]["img"]) == n
        for k, (p, img, ts) in enumerate(zip(pairs, res[v]["img"], res[v]["true_shape"])):
            np.testing.assert_array_equal(img, p[j]["img"][0])  # (H, W, 3): batch dim dropped
            np.testing.assert_array_equal(ts, p[j]["true_shape"][0])
    for k, (v1, v2) in enumerate(pairs):
        ref1, ref2 = model(v1, v2)
        for name, ref in ref1.items():
            got = res["pred1"][name][k]
            assert got.shape == ref.shape[1:]
            assert_close(got, ref[0], f"pair {k} pred1.{name}")
        for name, ref in ref2.items():
            assert_close(res["pred2"][name][k], ref[0], f"pair {k} pred2.{name}")


def test_view_shapes_differ_but_consistent_stay_batched(fixture_model):
    """Official rule: batched when all view-1 shapes agree and all view-2 shapes agree."""
    model = fixture_model("dust3r_linear")
    a, b = fixture_images("dust3r_linear")
    c = dict(img=a["img"][:, 16:80, 16:112].copy(), true_shape=np.array([[64, 96]], np.int32), idx=2, instance="2")
    res = inference([(c, a), (c, b)], model, batch_size=2, verbose=False, devices=ONE)
    assert res["pred1"]["pts3d"].shape == (2, 64, 96, 3)
    assert res["pred2"]["pts3d_in_other_view"].shape == (2, 96, 128, 3)
    assert res["view1"]["img"].shape == (2, 64, 96, 3)


# ---------------------------------------------------------------------------------------------
# scene API


def test_infer_scene_from_photos_matches_official(fixture_model):
    model = fixture_model("dust3r_linear")
    photos = fixture_path("networks", "image_preprocessing", "photos")
    res = infer_scene([photos / "Chateau1.png", photos / "Chateau2.png"], model, batch_size=2, size=128,
                      verbose=False, devices=ONE)
    _, outputs = _io("dust3r_linear")
    np.testing.assert_array_equal(res["edges"], [[1, 0], [0, 1]])
    assert len(res["images"]) == 2
    for p in ("pred1", "pred2"):
        for k, v in res[p].items():
            assert_close(v, outputs[f"inference.{p}.{k}"], f"{p}.{k}")


def test_infer_scene_single_image_pairs_with_itself(fixture_model):
    model = fixture_model("dust3r_linear")
    a = fixture_images("dust3r_linear")[0]
    res = infer_scene([a], model, batch_size=2, verbose=False, devices=ONE)
    np.testing.assert_array_equal(res["edges"], [[1, 0], [0, 1]])
    # both directions are the same image: identical predictions
    np.testing.assert_array_equal(res["pred1"]["pts3d"][0], res["pred1"]["pts3d"][1])
    assert np.isfinite(res["pred2"]["pts3d_in_other_view"]).all()


def test_infer_scene_explicit_edges(fixture_model):
    model = fixture_model("dust3r_linear")
    imgs = _four_images()
    res = infer_scene(imgs, model, edges=[[0, 1]], batch_size=2, verbose=False, devices=ONE)
    np.testing.assert_array_equal(res["edges"], [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"edge 0 = \(0, 5\)"):
        infer_scene(imgs, model, edges=[[0, 5]], verbose=False)
    with pytest.raises(ValueError, match="oneref"):
        infer_scene(imgs, model, scene_graph="oneref-9", verbose=False)
    with pytest.raises(ValueError, match="scene_graph"):
        infer_scene(imgs, model, scene_graph="star", verbose=False)


# ---------------------------------------------------------------------------------------------
# mixed precision


def test_bfloat16_heads_stay_float32(fixture_model):
    model = fixture_model("dust3r_linear")
    inputs, outputs = _io("dust3r_linear")
    imgs = fixture_images("dust3r_linear")
    pairs = [(imgs[i], imgs[j]) for i, j in inputs["pairs"]]
    eng = InferenceEngine(model, 2, dtype=jnp.bfloat16, devices=ONE)
    assert eng.params["enc_blocks"][0]["attn"]["qkv"]["kernel"].dtype == jnp.bfloat16
    assert eng.params["downstream_head1"]["proj"]["kernel"].dtype == jnp.float32
    res = eng(pairs)
    for p in ("pred1", "pred2"):
        for k, v in res[p].items():
            ref = outputs[f"inference.{p}.{k}"]
            assert v.dtype == np.float32
            err = np.abs(v - ref).max() / np.abs(ref).max()
            assert 0 < err < 5e-2, (p, k, err)  # bf16: visibly different, still close


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs(fixture_model):
    model = fixture_model("dust3r_linear")
    a, b = fixture_images("dust3r_linear")
    with pytest.raises(PairInputError, match="empty pair list"):
        inference([], model, verbose=False)
    with pytest.raises(PairInputError, match="pair 0 must be a"):
        inference([a, b], model, verbose=False)
    with pytest.raises(PairInputError, match="list of"):
        inference(a, model, verbose=False)
    with pytest.raises(PairInputError, match=r"pair 1 view2\['img'\] must have shape \(1, H, W, 3\).*batch > 1"):
        inference([(a, b), (a, dict(b, img=np.concatenate([b["img"]] * 2)))], model, verbose=False)
    with pytest.raises(PairInputError, match="NCHW"):
        inference([(a, dict(b, img=b["img"].transpose(0, 3, 1, 2)))], model, verbose=False)
    with pytest.raises(PairInputError, match="img\\[None\\]"):
        inference([(a, dict(b, img=b["img"][0]))], model, verbose=False)
    with pytest.raises(PairInputError, match="pair 0 view1 has no 'img'"):
        inference([({"idx": 0}, b)], model, verbose=False)
    with pytest.raises(PairInputError, match="floating point"):
        inference([(a, dict(b, img=(b["img"] > 0).astype(np.uint8)))], model, verbose=False)
    with pytest.raises(TypeError, match="no `device`"):
        inference([(a, b)], model, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        inference([(a, b)], model, 0)
    with pytest.raises(TypeError, match="DUSt3R / MASt3R"):
        inference([(a, b)], object())
