"""Dense GA against the official runs (`dense_pco_4v`, `dense_modular_3v_known_focal`) started from their stored
init_* state: loss curve (tight at both ends, loose in the chaotic middle), decoded final state, accuracy vs
ground truth (at least the official one), and the manifold parameterisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import fixture_path
from f3d_jax.align import global_align
from f3d_jax.eval.metrics import scene_accuracy

CASES = ["dense_pco_4v", "dense_modular_3v_known_focal"]


def _load(case: str):
    d = fixture_path("alignment", case)
    inp, off, gt = (np.load(d / f"{n}.npz") for n in ("inputs", "official", "gt"))
    m = json.loads((d / "metrics.json").read_text())
    out = dict(
        view1=dict(idx=inp["edges"][:, 0]), view2=dict(idx=inp["edges"][:, 1]),
        pred1=dict(pts3d=inp["pred1_pts3d"], conf=inp["pred1_conf"]),
        pred2=dict(pts3d_in_other_view=inp["pred2_pts3d"], conf=inp["pred2_conf"]),
    )
    s = off["init_pw_scale"]
    pw = off["init_pw_poses_scaled"].copy()
    pw[:, :3] /= s[:, None, None]  # official get_pw_poses() = [s R | s T] -> rigid [R | T]
    init = dict(cam2world=off["init_cam2world"], focals=off["init_focals"][:, 0],
                principal_points=off["init_principal_points"], depthmaps=off["init_depthmaps"], pw_poses=pw,
                pw_scales=s)
    # preset focals: feed the official decoded values (exp(20 log f / 20) in torch float32), see README
    kw = dict(mode="modular", preset_focals=off["init_focals"][:, 0]) if inp["preset_focals"].size else {}
    return out, init, kw, off, gt, m


@pytest.fixture(scope="module", params=CASES)
def official_run(request):
    out, init, kw, off, gt, m = _load(request.param)
    scene = global_align(out, start=init, param="official", **kw)
    return request.param, scene, off, gt, m


def _rel(a, b):
    return np.abs(np.asarray(a, np.float64) - b) / np.abs(b)


def test_loss_and_lr_curves(official_run):
    case, scene, off, _, m = official_run
    lc, ref = np.asarray(scene.loss_curve), off["loss_curve"]
    rel = _rel(lc, ref)
    assert rel[0] < 1e-6, case  # same start state: same loss
    assert rel[:40].max() < 2e-4, (case, rel[:40].max())
    assert rel[250:].max() < 1e-4, (case, rel[250:].max())
    assert rel.max() < 5e-2, (case, rel.max())  # the chaotic middle (README: up to ~3e-2)
    np.testing.assert_allclose(np.asarray(scene.lr_curve), off["lr_curve"], rtol=1e-6)
    assert abs(float(scene.final_loss) - m["final_loss"]) / m["final_loss"] < 1e-4


def test_final_decoded_state(official_run):
    case, scene, off, _, _ = official_run
    c2w, ref = np.asarray(scene.cam2world), off["final_cam2world"]
    assert np.abs(c2w[:, :3, :3] - ref[:, :3, :3]).max() < 6e-4, case
    assert np.abs(c2w[:, :3, 3] - ref[:, :3, 3]).max() / np.abs(ref[:, :3, 3]).max() < 6e-4, case
    assert _rel(scene.focals, off["final_focals"][:, 0]).max() < 1e-4, case
    depth_rel = _rel(scene.depthmaps, off["final_depthmaps"])
    assert np.median(depth_rel) < 2e-5 and depth_rel.max() < 1e-3, (case, np.median(depth_rel), depth_rel.max())
    assert _rel(scene.pw_scales, off["final_pw_scale"]).max() < 3e-5, case
    assert np.abs(np.asarray(scene.pw_poses_scaled()) - off["final_pw_poses_scaled"]).max() < 6e-4, case
    # world points: the official ones are stored as float16 (~1e-3 absolute at these magnitudes)
    pts_ref = off["final_pts3d"].astype(np.float32)
    assert np.abs(np.asarray(scene.pts3d) - pts_ref).max() < 3e-3, case
    np.testing.assert_array_equal(np.asarray(scene.masks), off["masks"])
    np.testing.assert_allclose(np.asarray(scene.conf), off["im_conf"].astype(np.float32), rtol=0, atol=0)
    # the state the optimisation started from is the fixture's init state
    np.testing.assert_allclose(np.asarray(scene.start.cam2world), off["init_cam2world"], atol=2e-6)


def test_accuracy_at_least_official(official_run):
    case, scene, _, gt, m = official_run
    acc = scene_accuracy(np.asarray(scene.cam2world), np.asarray(scene.focals), np.asarray(scene.depthmaps),
                         gt["cam2world"], gt["focals"], gt["depth"], pointclouds=False)
    ref = m["accuracy"]
    for k in ("RRA@5", "RTA@5"):
        assert acc["pose"][k] >= ref["pose"][k], (case, k)
    # float-noise slack: the run differs from the official one in its chaotic middle (README)
    assert acc["pose"]["ATE_rmse"] <= ref["pose"]["ATE_rmse"] * 1.01 + 1e-6, case
    assert acc["focal"]["focal_rel_err_mean"] <= ref["focal"]["focal_rel_err_mean"] * 1.02 + 1e-6, case


def test_manifold_parameterisation_pco():
    """Manifold (jaxlie SE3) reaches the same loss, pins the root centre, and is about as accurate (measured:
    not better on ATE/focal for this case, which is why 'official' stays the default)."""
    out, init, kw, off, gt, m = _load("dense_pco_4v")
    scene = global_align(out, start=init, param="manifold", niter=300, **kw)
    assert abs(float(scene.final_loss) - m["final_loss"]) / m["final_loss"] < 1e-3
    root = int(np.argmin(np.linalg.norm(off["init_cam2world"][:, :3, 3], axis=-1)))
    np.testing.assert_allclose(np.asarray(scene.cam2world)[root, :3, 3], 0.0, atol=1e-7)
    acc = scene_accuracy(np.asarray(scene.cam2world), np.asarray(scene.focals), np.asarray(scene.depthmaps),
                         gt["cam2world"], gt["focals"], gt["depth"], pointclouds=False)
    assert acc["pose"]["RRA@5"] == 1.0 and acc["pose"]["RTA@5"] == 1.0
    assert acc["pose"]["ATE_rmse"] < 1.1 * m["accuracy"]["pose"]["ATE_rmse"]
    assert acc["focal"]["focal_rel_err_mean"] < 1.3 * m["accuracy"]["focal"]["focal_rel_err_mean"]
