"""Training losses against the official runs: values, details and gradients w.r.t. the predictions.

Fixtures: ../shared/fixtures/training (dust3r_regr3d_confloss, mast3r_matching_loss, croco_train_step),
../shared/fixtures/networks/croco_v{1,2} (MaskedMSE variants) and ../shared/fixtures/stereoflow (criteria with
gradients, metrics, tiled validation). Tolerances from their READMEs: losses and details rtol 1e-5,
gradients atol 1e-5 * max|ref| (training) / 1e-6 * max|ref| (stereoflow), metrics rtol 1e-5.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from f3d_jax.train.losses import build_criterion, masked_mse
from f3d_jax.train.losses.correspondences import reciprocal_maps
from f3d_jax.train.stereoflow_metrics import metrics_for_task
from tests.conftest import fixture_path

PRED_KEYS = ("pts3d", "pts3d_in_other_view", "conf", "desc", "desc_conf")


def _views(npz, prefix: str) -> dict:
    p = f"{prefix}."
    return {k[len(p):]: npz[k] for k in npz.files if k.startswith(p) and npz[k].dtype.kind != "U"}


@pytest.fixture(scope="module", params=["dust3r_regr3d_confloss", "mast3r_matching_loss"])
def case(request):
    d = fixture_path("training", request.param)
    sv, out = np.load(d / "symmetrized_views.npz"), np.load(d / "outputs.npz")
    meta = json.loads((d / "meta.json").read_text())
    preds = [{k: out[f"pred{i}.{k}"] for k in PRED_KEYS if f"pred{i}.{k}" in out.files} for i in (1, 2)]
    return request.param, meta, _views(sv, "sym.view1"), _views(sv, "sym.view2"), preds, out


def _criteria(name: str, meta: dict) -> list[tuple[str, str, str]]:
    """(output prefix, criterion string, namespace) of every stored criterion run."""
    ns = "mast3r" if name.startswith("mast3r") else "dust3r"
    return [("crit", meta["criterion"], ns)] + [(v["prefix"], v["criterion"], v["namespace"])
                                               for v in meta.get("variants", [])]


def test_pointmap_and_matching_criteria_match_official(case):
    name, meta, gt1, gt2, (pred1, pred2), out = case
    runs = _criteria(name, meta)
    crits = [build_criterion(text, namespace=ns) for _, text, ns in runs]

    # one compilation for all the criteria of the case; the views are arguments, not constants (XLA would
    # constant-fold the GT medians at compile time, slowly)
    @jax.jit
    def evaluate(g1, g2, p1, p2):
        return [jax.value_and_grad(lambda a, b, c=c: c(g1, g2, a, b), argnums=(0, 1), has_aux=True)(p1, p2)
                for c in crits]

    results = evaluate(gt1, gt2, pred1, pred2)
    # garbage in the GT outside the masks (nan points, inf at sky pixels) changes nothing, gradients included
    # (the official code returns nan there); same shapes, so no new compilation
    bad = [dict(g) for g in (gt1, gt2)]
    for g in bad:
        g["pts3d"] = np.where(g["valid_mask"][..., None], g["pts3d"], np.float32(np.nan))
        g["pts3d"][~g["valid_mask"] & g["sky_mask"]] = np.inf
    for ((loss, _), grads), ((loss2, _), grads2) in zip(results, evaluate(*bad, pred1, pred2)):
        assert float(loss2) == float(loss)
        for g, g2 in zip(grads, grads2):
            for k in g:
                np.testing.assert_array_equal(g2[k], g[k])

    for (prefix, text, _), ((loss, details), grads) in zip(runs, results):
        np.testing.assert_allclose(loss, out[f"{prefix}.loss"], rtol=1e-5, err_msg=f"{name} {text}")
        ref_details = {k[len(prefix) + 9:] for k in out.files if k.startswith(f"{prefix}.details.")}
        assert set(details) == ref_details, (text, sorted(details), sorted(ref_details))
        for k, v in details.items():
            np.testing.assert_allclose(v, out[f"{prefix}.details.{k}"], rtol=1e-5, err_msg=f"{text}: {k}")
        for i, g in enumerate(grads, 1):
            assert set(g) == {k for k in PRED_KEYS if f"{prefix}.grad.pred{i}.{k}" in out.files}
            for k, v in g.items():
                ref = out[f"{prefix}.grad.pred{i}.{k}"]
                np.testing.assert_allclose(v, ref, rtol=0, atol=1e-5 * max(np.abs(ref).max(), 1e-30),
                                           err_msg=f"{text}: d/d pred{i}.{k}")


def test_fixture_correspondences_are_the_reciprocal_reprojections():
    """The official `corres` (numpy sampler) agree with this package's reprojection: positives are reciprocal
    pixel pairs (image-2 pixel = projection of the image-1 pixel), negatives non-reciprocal on both sides."""
    inp = np.load(fixture_path("training", "mast3r_matching_loss", "inputs.npz"))
    v1, v2 = _views(inp, "batch.view1"), _views(inp, "batch.view2")
    for b in range(v1["pts3d"].shape[0]):
        one = lambda v: {k: v[k][b] for k in ("pts3d", "camera_intrinsics", "camera_pose")}
        c12, c21, rec1, rec2 = map(np.asarray, jax.jit(reciprocal_maps)(one(v1), one(v2)))
        W1, W2 = v1["pts3d"].shape[2], v2["pts3d"].shape[2]
        i1 = v1["corres"][b, :, 0] + W1 * v1["corres"][b, :, 1]
        i2 = v2["corres"][b, :, 0] + W2 * v2["corres"][b, :, 1]
        valid = v1["valid_corres"][b]
        assert valid.sum() == 128 and (v2["valid_corres"][b] == valid).all()
        np.testing.assert_array_equal(c12[i1[valid]], i2[valid])
        assert rec1[i1[valid]].all() and rec2[i2[valid]].all()
        assert not rec1[i1[~valid]].any() and not rec2[i2[~valid]].any()
        # the official positives are a subset of all reciprocal pixels, which number more than 128 here
        assert rec1.sum() > 128


@pytest.mark.parametrize("case, keys", [
    ("croco_v1", ("norm_pix_1", "norm_pix_0", "unmasked_norm_pix_1")),
    ("croco_v2", ("norm_pix_1", "norm_pix_0", "unmasked_norm_pix_1")),
])
def test_masked_mse_matches_network_fixtures(case, keys):
    out = np.load(fixture_path("networks", case, "outputs.npz"))
    settings = {"norm_pix_1": (True, True), "norm_pix_0": (False, True), "unmasked_norm_pix_1": (True, False)}
    for k in keys:
        norm, masked = settings[k]
        got = masked_mse(out["out"], out["target"], out["mask"], norm_pix_loss=norm, masked=masked)
        np.testing.assert_allclose(got, out[f"loss.{k}"], rtol=1e-6, err_msg=k)


def test_masked_mse_matches_the_croco_train_step():
    out = np.load(fixture_path("training", "croco_train_step", "outputs.npz"))
    np.testing.assert_allclose(masked_mse(out["out"], out["target"], out["mask"]), out["loss"], rtol=1e-6)
    # the unbiased variance matters at this tolerance (a biased one is off by ~2e-3)
    assert abs(float(masked_mse(out["out"], out["target"] * 1.0, out["mask"])) / float(out["loss"]) - 1) < 1e-6


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, -1)


@pytest.mark.parametrize("case", ["crocostereo", "crocoflow"])
def test_stereoflow_criteria_and_metrics_match_official(case):
    d = fixture_path("stereoflow", case)
    out, inp = np.load(d / "outputs.npz"), np.load(d / "inputs.npz")
    meta = json.loads((d / "meta.json").read_text())
    pred, conf, gt = _nhwc(out["forward.pred"]), out["forward.conf"][:, 0], _nhwc(inp["criterion.gt"])
    runs = [("default", meta["criterion"])] + [(f"variant{i}", s) for i, s in enumerate(meta["criterion_variants"])]
    crits = [build_criterion(text) for _, text in runs]
    metrics = metrics_for_task(meta["task"])
    main = build_criterion(meta["criterion"])
    tpred, tconf, tgt = _nhwc(out["tiled.pred"]), out["tiled.conf"], _nhwc(inp["tiled.gt"])
    tiles = np.moveaxis(out["tiled.tile_outputs"], 2, -1)  # (ntiles, B, h, w, C + 1), generator order
    h, w = tiles.shape[2:4]
    gt_tiles = np.stack([tgt[:, y:y + h, x:x + w] for y in inp["tiled.tile_y0"] for x in inp["tiled.tile_x0"]])

    @jax.jit  # one compilation for the whole case
    def evaluate(pred, conf, gt, tpred, tconf, tgt, tiles, gt_tiles):
        runs = [jax.value_and_grad(lambda p, c, f=f: f(p, gt, c) if f.with_conf else f(p, gt), argnums=(0, 1))(pred, conf)
                for f in crits]
        per_tile = jax.vmap(lambda t, g: main(t[..., :-1], g, t[..., -1]))(tiles, gt_tiles)
        return runs, metrics(pred, gt), main(tpred, tgt, tconf), metrics(tpred, tgt), per_tile.mean()

    results, got, tiled_loss, tiled_metrics, tile_loss = evaluate(pred, conf, gt, tpred, tconf, tgt, tiles, gt_tiles)
    for (name, text), crit, (loss, (gp, gc)) in zip(runs, crits, results):
        np.testing.assert_allclose(loss, out[f"criterion.{name}.loss"], rtol=1e-5, err_msg=text)
        ref = _nhwc(out[f"criterion.{name}.grad_pred"])
        np.testing.assert_allclose(gp, ref, rtol=0, atol=1e-6 * np.abs(ref).max(), err_msg=f"{text} d/dpred")
        if crit.with_conf:
            ref = out[f"criterion.{name}.grad_conf"][:, 0]
            np.testing.assert_allclose(gc, ref, rtol=0, atol=1e-6 * np.abs(ref).max(), err_msg=f"{text} d/dconf")
        else:
            assert not np.asarray(gc).any()

    assert set(got) == {k[8:] for k in out.files if k.startswith("metrics.")}
    for k, v in got.items():
        np.testing.assert_allclose(v, out[f"metrics.{k}"], rtol=1e-5, err_msg=k)
    # validation as validate_one_epoch runs it: on the stitched tiled prediction, and per tile
    np.testing.assert_allclose(tiled_loss, out["tiled_val.loss"], rtol=1e-5)
    for k, v in tiled_metrics.items():
        np.testing.assert_allclose(v, out[f"tiled_val.metrics.{k}"], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(tile_loss, out["tiled_val.tiled_loss"], rtol=1e-5)
