"""Training losses beyond the stored official runs: the criterion-string language, MultiLoss semantics,
normalisation modes and torch-style medians against numpy references, correspondences sampled from a key,
shuffled matching blocks. Tiny shapes, few compilations."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f3d_jax.train.losses import (CriterionError, InfoNCE, MatchingLoss, Term, build_criterion, infer_namespace,
                                  normalize_pointcloud, sample_correspondences)
from f3d_jax.train.losses._common import affine_inverse, masked_quantile, nanmedian_lower
from f3d_jax.train.losses.correspondences import reciprocal_maps
from tests.conftest import fixture_path

OFFICIAL = {  # the strings of the official READMEs / training scripts, and the namespace they are built in
    "ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)": "dust3r",
    "Regr3D_ScaleShiftInv(L21, gt_scale=True)": "dust3r",
    "ConfLoss(Regr3D(L21, norm_mode='?avg_dis'), alpha=0.2) + 0.075*ConfMatchingLoss(MatchingLoss(InfoNCE("
    "mode='proper', temperature=0.05), negatives_padding=0, blocksize=8192), alpha=10.0, confmode='mean')": "mast3r",
    "Regr3D_ScaleShiftInv(L21, norm_mode='?avg_dis', gt_scale=True, sky_loss_value=0) + -1.*MatchingLoss("
    "APLoss(nq='torch', fp=torch.float16), negatives_padding=12288)": "mast3r",
    "Regr3D(L21, norm_mode='?avg_dis', gt_scale=True, sky_loss_value=0) + -1.*MatchingLoss(APLoss(nq='torch', "
    "fp=torch.float16), negatives_padding=12288)": "mast3r",
    "LaplacianLossBounded2()": "stereoflow",
    "LaplacianLossBounded()": "stereoflow",
    "LaplacianLoss()": "stereoflow",
}


@pytest.mark.parametrize("text", list(OFFICIAL))
def test_official_strings_build_in_their_namespace(text):
    assert infer_namespace(text) == OFFICIAL[text]
    crit = build_criterion(text)
    assert callable(crit)


def test_official_weights_and_defaults_are_kept():
    mast3r = build_criterion([t for t, ns in OFFICIAL.items() if "InfoNCE" in t][0])
    (w1, conf), (w2, match) = mast3r.terms
    assert (w1, w2) == (1.0, 0.075)
    assert conf.alpha == 0.2 and conf.pixel_loss.sky_loss_value == 2 and conf.pixel_loss.norm_mode == "?avg_dis"
    assert conf.pixel_loss.criterion.reduction == "none"  # ConfLoss switches its inner criterion to per pixel
    assert (match.alpha, match.confmode) == (10.0, "mean") and match.pixel_loss.withconf
    assert match.pixel_loss.criterion.temperature == 0.05 and match.pixel_loss.blocksize == 8192
    test = build_criterion([t for t in OFFICIAL if "ScaleShiftInv" in t and "APLoss" in t][0])
    assert [w for w, _ in test.terms] == [1.0, -1.0]
    assert test.terms[1][1].criterion.fp == jnp.float16 and test.terms[1][1].negatives_padding == 12288
    # the same DUSt3R-looking string has the MASt3R sky term only in the MASt3R namespace
    text = "ConfLoss(Regr3D(L21, norm_mode='avg_dis'), alpha=0.2)"
    assert build_criterion(text).terms[0][1].pixel_loss.sky_loss_value == 0
    assert build_criterion(text, namespace="mast3r").terms[0][1].pixel_loss.sky_loss_value == 2


@pytest.mark.parametrize("text, needle", [
    ("Foo(L21)", "unknown name 'Foo'"),
    ("Regr3D(L21", "invalid syntax"),
    ("__import__('os').system('true')", "unsupported call"),
    ("Regr3D.__class__", "unsupported attribute"),
    ("(lambda: 0)()", "unsupported"),
    ("ConfLoss(Regr3D(L21), alpha=0)", "alpha must be > 0"),
    ("ConfLoss(Regr3D(L21, norm_mode='?avg_dis'), alpha=0.2, loss_in_log=False)", "loss_in_log"),
    ("Regr3D(L21) - Regr3D(L21)", "unsupported operation"),
    ("-Regr3D(L21)", "numbers only"),
    ("Regr3D(L21, norm_mode='?avg_dis')", "sky_loss_value"),  # MASt3R's bare Regr3D needs ConfLoss (official assert)
    ("Regr3D(L21, norm_mode='avg_foo')", "bad distance mode"),
    ("Regr3D(L21, bogus=1)", "bogus"),
    ("ConfLoss(Regr3D(L21) + Regr3D(L21))", "single Regr3D"),
    ("ConfMatchingLoss(MatchingLoss(InfoNCE(mode='x')))", "mode must be"),
    ("3", "does not evaluate to a criterion"),
    ("", "expected a criterion string"),
])
def test_bad_strings_are_refused_naming_the_string(text, needle):
    with pytest.raises(CriterionError) as e:
        build_criterion(text)
    assert needle in str(e.value) and (not text or repr(text) in str(e.value))


def test_question_mark_norm_is_refused_in_the_dust3r_namespace():
    with pytest.raises(CriterionError, match="MASt3R namespace"):
        build_criterion("ConfLoss(Regr3D(L21, norm_mode='?avg_dis'), alpha=0.2)", namespace="dust3r")


# -- a tiny random batch ---------------------------------------------------------------------------------

def _batch(seed=0, B=2, H=3, W=5, D=6):
    rng = np.random.default_rng(seed)

    def view():
        A = np.linalg.qr(rng.normal(size=(B, 3, 3)))[0]
        pose = np.tile(np.eye(4), (B, 1, 1))
        pose[:, :3, :3], pose[:, :3, 3] = A, rng.normal(size=(B, 3))
        valid = rng.random((B, H, W)) > 0.3
        valid[:, 0, 0] = True
        return {"pts3d": (rng.normal(size=(B, H, W, 3)) + [0, 0, 4]).astype(np.float32), "valid_mask": valid,
                "camera_pose": pose.astype(np.float32), "sky_mask": rng.random((B, H, W)) < 0.3,
                "is_metric_scale": np.array([True, False][:B])}

    def pred(key):
        d = rng.normal(size=(B, H, W, D)).astype(np.float32)
        return {key: (rng.normal(size=(B, H, W, 3)) + [0, 0, 4]).astype(np.float32),
                "conf": (1 + rng.random((B, H, W))).astype(np.float32),
                "desc": d / np.linalg.norm(d, axis=-1, keepdims=True),
                "desc_conf": (0.5 + rng.random((B, H, W))).astype(np.float32)}

    return view(), view(), pred("pts3d"), pred("pts3d_in_other_view")


@dataclasses.dataclass(frozen=True)
class _Const(Term):
    """A stand-in term: loss = value * sum(pred1['x']), details {name: that loss}."""

    value: float
    name: str

    def compute_loss(self, gt1, gt2, pred1, pred2, key):
        loss = self.value * jnp.sum(pred1["x"])
        return loss, {self.name: loss}


def test_multiloss_weights_and_details_follow_the_official_chain():
    A, B, C = _Const(1.0, "a"), _Const(10.0, "b"), _Const(100.0, "a")
    x = {"x": jnp.ones(())}
    evaluate = lambda crit: tuple(map(float, [crit(None, None, x, None)[0]])) + (
        {k: float(v) for k, v in crit(None, None, x, None)[1].items()},)
    # k * (A + B) weights only A (the weight sits on the chain head); A*k == k*A; weights are set, not multiplied
    assert evaluate(2 * (A + B)) == (12.0, {"a": 1.0, "b": 10.0})  # details are before the weights
    assert evaluate(A * 3 + B) == evaluate(3 * A + B) == (13.0, {"a": 1.0, "b": 10.0})
    assert evaluate(2 * (3 * A)) == (2.0, {"a": 1.0})
    assert evaluate(A + -1.0 * B) == (-9.0, {"a": 1.0, "b": 10.0})
    assert evaluate(A + 0.5 * C) == (51.0, {"a": 100.0})  # same detail key: the later term wins
    assert evaluate((A + B) + (C + B)) == (121.0, {"a": 100.0, "b": 10.0})
    with pytest.raises(TypeError):
        A * "2"
    # the parser builds the same chains from the strings
    crit = build_criterion("2*(Regr3D(L21) + Regr3D_ShiftInv(L21)) + Regr3D(L21)*3 + -1.*Regr3D_ScaleInv(L21)")
    assert [(w, t.name) for w, t in crit.terms] == [(2.0, "Regr3D"), (1.0, "Regr3D_ShiftInv"), (3.0, "Regr3D"),
                                                   (-1.0, "Regr3D_ScaleInv")]


def _np_lower_median(x):
    x = np.sort(x)
    return x[(len(x) - 1) // 2] if len(x) else np.nan


@pytest.mark.parametrize("mode", ["avg_dis", "avg_log1p", "avg_warp-log1p", "median_dis", "sqrt_dis"])
def test_normalize_pointcloud_against_numpy(mode):
    gt1, gt2, _, _ = _batch(seed=3)
    p1, p2, v1, v2 = gt1["pts3d"], gt2["pts3d"], gt1["valid_mask"], gt2["valid_mask"]
    v2[1] = False
    v2[1, 0, : 3 + (v1[1].sum() + 3) % 2] = True  # entry 1: an even number of valid points -> torch's lower median
    got1, got2, f = map(np.asarray, normalize_pointcloud(p1, p2, mode, v1, v2))
    for b in range(2):
        d1, d2 = np.linalg.norm(p1[b].astype(np.float64), axis=-1), np.linalg.norm(p2[b].astype(np.float64), axis=-1)
        dv = np.concatenate([d1[v1[b]], d2[v2[b]]])
        w1 = w2 = 1.0
        if mode == "avg_dis":
            ref = dv.sum() / len(dv)
        elif mode == "avg_log1p":
            ref = np.log1p(dv).sum() / len(dv)
        elif mode == "avg_warp-log1p":
            ref = np.log1p(dv).sum() / len(dv)
            w1 = np.where(v1[b], np.log1p(d1) / d1, 0)[..., None]  # invalid points are zeroed first
            w2 = np.where(v2[b], np.log1p(d2) / d2, 0)[..., None]
        elif mode == "median_dis":
            assert len(dv) % 2 == 0 or b == 0  # the lower middle value, not the average of the two
            ref = _np_lower_median(dv)
        else:
            ref = np.sqrt(dv).mean() ** 2
        np.testing.assert_allclose(f[b], ref, rtol=2e-6)
        np.testing.assert_allclose(got1[b], p1[b] * w1 / ref, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(got2[b], p2[b] * w2 / ref, rtol=2e-5, atol=1e-6)


def test_medians_and_quantiles_follow_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10)).astype(np.float32)
    valid = rng.random((3, 10)) > 0.4
    valid[2] = False
    got = np.asarray(nanmedian_lower(x, valid))
    for b in range(2):
        assert got[b] == _np_lower_median(x[b][valid[b]])  # lower middle value, never an average
    assert np.isnan(got[2])
    qs = (0.0, 0.25, 0.5, 0.9, 1.0)
    got = jax.jit(lambda x, v: [masked_quantile(x, v, q) for q in qs])(x, valid)
    np.testing.assert_allclose(got, [np.quantile(x[valid], q) for q in qs], rtol=1e-6)


def test_affine_inverse_is_the_matrix_inverse():
    gt1, _, _, _ = _batch(seed=5)
    T = gt1["camera_pose"].copy()
    T[0, :3, :3] *= 2.5  # not only rotations
    np.testing.assert_allclose(affine_inverse(T), np.linalg.inv(T.astype(np.float64)), atol=1e-6)


def test_correspondences_sampled_from_a_key():
    inp = np.load(fixture_path("training", "mast3r_matching_loss", "inputs.npz"))
    views = [{k: inp[f"batch.view{i}.{k}"] for k in ("pts3d", "camera_intrinsics", "camera_pose")} for i in (1, 2)]
    rng = np.random.default_rng(0)
    preds = [{"desc": rng.normal(size=(2, 48, 64, 8)).astype(np.float32),
              "desc_conf": (0.5 + rng.random((2, 48, 64))).astype(np.float32)} for _ in range(2)]
    n = 200
    # when the views carry no correspondences, the matching loss samples them from the criterion's key
    crit = build_criterion("ConfMatchingLoss(MatchingLoss(InfoNCE(mode='all', temperature=0.1), num_corres=200, "
                           "corres_nneg=0.5), alpha=1.0)")

    @jax.jit  # one compilation: the term's own draw and the same draw by hand are one computation for XLA
    def run(key, v1, v2, p1, p2):
        c1, c2, valid = sample_correspondences(jax.random.fold_in(jax.random.fold_in(key, 0), 1), v1, v2, n, 0.5)
        sampled = crit(v1, v2, p1, p2, key=key)
        given = crit({**v1, "corres": c1, "valid_corres": valid}, {**v2, "corres": c2}, p1, p2)
        return c1, c2, valid, sampled, given

    c1, c2, valid, (loss, details), (loss_given, _) = run(jax.random.key(0), *views, *preds)
    assert np.isfinite(loss) and float(loss) == float(loss_given)
    assert set(details) == {"matching_conf_loss", "MatchingLoss", "Conf1_std", "Conf2_std"}
    again, other = run(jax.random.key(0), *views, *preds), run(jax.random.key(1), *views, *preds)
    assert (np.asarray(again[0]) == c1).all() and (np.asarray(other[0]) != c1).any()  # deterministic per key
    c1, c2, valid = map(np.asarray, (c1, c2, valid))
    assert c1.shape == c2.shape == (2, n, 2) and valid.shape == (2, n)
    W = views[0]["pts3d"].shape[2]
    for b in range(2):
        one = lambda v: {k: v[k][b] for k in v}
        c12, _, rec1, rec2 = map(np.asarray, jax.jit(reciprocal_maps)(one(views[0]), one(views[1])))
        i1, i2 = c1[b, :, 0] + W * c1[b, :, 1], c2[b, :, 0] + W * c2[b, :, 1]
        assert valid[b].sum() == n // 2 and valid[b, : n // 2].all()  # positives first, nneg = 0.5
        assert len(set(i1[valid[b]])) == n // 2 and len(set(i1[~valid[b]])) == n // 2  # without replacement
        np.testing.assert_array_equal(c12[i1[valid[b]]], i2[valid[b]])
        assert rec1[i1[valid[b]]].all() and not rec1[i1[~valid[b]]].any() and not rec2[i2[~valid[b]]].any()
    with pytest.raises(ValueError, match="PRNG key"):
        crit(*views, *preds)


def test_shuffled_blocks_equal_infonce_on_each_block():
    gt1, gt2, p1, p2 = _batch(seed=4, H=4, W=6)
    rng = np.random.default_rng(0)
    N, bs = 12, 4
    for g in (gt1, gt2):
        flat = np.stack([rng.permutation(24)[:N] for _ in range(2)])
        g["corres"] = np.stack([flat % 6, flat // 6], -1)
    gt1["valid_corres"] = rng.random((2, N)) < 0.7
    info = InfoNCE(mode="proper", temperature=0.1)
    term = MatchingLoss(info, blocksize=bs)
    key = jax.random.key(7)
    @jax.jit  # one compilation: the term, and the same permutation drawn the way the term draws it, by hand
    def run(g1, g2, a, b, key):
        loss, valid, _, _, _ = term.matches(g1, g2, a, b, key)
        perm = jax.vmap(lambda k: jax.random.permutation(k, N))(jax.random.split(jax.random.fold_in(key, 2), 2))
        take = lambda d, c: jnp.take_along_axis(d[jnp.arange(2)[:, None], c[..., 1], c[..., 0]], perm[..., None], 1)
        d1, d2 = take(a["desc"], g1["corres"]), take(b["desc"], g2["corres"])
        ref = info.loss(d1.reshape(2 * N // bs, bs, -1), d2.reshape(2 * N // bs, bs, -1)).reshape(2, N)
        return loss, valid, perm, ref

    loss, valid, perm, ref = run(gt1, gt2, p1, p2, key)
    assert sorted(np.asarray(perm)[0]) == list(range(N))
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_array_equal(valid, np.take_along_axis(gt1["valid_corres"], perm, 1))
    with pytest.raises(ValueError, match="PRNG key"):
        term(gt1, gt2, p1, p2)
    with pytest.raises(ValueError, match="blocks of 5"):
        MatchingLoss(info, blocksize=5)(gt1, gt2, p1, p2, key=key)
    with pytest.raises(ValueError, match="negatives_padding"):
        MatchingLoss(info, negatives_padding=2)(gt1, gt2, p1, p2)


def test_stereoflow_criteria_refuse_mismatched_shapes():
    crit = build_criterion("LaplacianLossBounded2()")
    with pytest.raises(ValueError, match="must both be"):
        crit(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 5, 1)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="conf"):
        crit(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 3)))
