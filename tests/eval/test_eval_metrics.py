"""Metric code reproduces the official metrics.json numbers from official.npz + gt.npz; invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import fixture_path
from f3d_jax.eval import pose_metrics, relative_pose_errors, scene_accuracy

CASES = ["dense_pco_4v", "dense_modular_3v_known_focal"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stage,key", [("init", "accuracy_after_init"), ("final", "accuracy")])
def test_reproduces_official_accuracy(case, stage, key):
    d = fixture_path("alignment", case)
    gt, off = np.load(d / "gt.npz"), np.load(d / "official.npz")
    ref = json.loads((d / "metrics.json").read_text())[key]
    acc = scene_accuracy(off[f"{stage}_cam2world"], off[f"{stage}_focals"].ravel(), off[f"{stage}_depthmaps"],
                         gt["cam2world"], gt["focals"], gt["depth"],
                         principal_points=off[f"{stage}_principal_points"],
                         gt_principal_points=gt["principal_points"], mask=off["masks"])
    p, r = acc["pose"], ref["pose"]
    np.testing.assert_allclose(p["per_pair_rot_err_deg"], r["per_pair_rot_err_deg"], atol=0.01)
    np.testing.assert_allclose(p["per_pair_trans_angle_deg"], r["per_pair_trans_angle_deg"], atol=0.01)
    for k in ("rel_rot_err_deg_mean", "rel_rot_err_deg_max", "rel_trans_angle_deg_mean", "rel_trans_angle_deg_max",
              "abs_rot_err_deg_mean_after_sim3"):
        assert p[k] == pytest.approx(r[k], abs=0.01), k
    for k in ("RRA@5", "RRA@15", "RRA@30", "RTA@5", "RTA@15", "RTA@30", "mAA@30", "n_pairs"):
        assert p[k] == r[k], k
    assert p["ATE_rmse"] == pytest.approx(r["ATE_rmse"], rel=1e-5)
    assert p["ATE_rmse_over_cam_spread"] == pytest.approx(r["ATE_rmse_over_cam_spread"], rel=1e-5)
    np.testing.assert_allclose(acc["focal"]["per_view_focal_rel_err"], ref["focal"]["per_view_focal_rel_err"],
                               rtol=1e-6, atol=1e-12)
    for k, v in ref["depth"].items():
        np.testing.assert_allclose(acc["depth"][k], v, rtol=1e-5, err_msg=k)
    for grp in ("pointcloud_after_centre_sim3", "pointcloud_after_dense_sim3"):
        for k, v in ref[grp].items():
            # per-pixel and fraction: deterministic; NN figures: same 20k-sample draw (default_rng(0))
            np.testing.assert_allclose(acc[grp][k], v, rtol=1e-4, err_msg=f"{grp}/{k}")


def test_pose_metrics_invariances():
    rng = np.random.default_rng(0)
    gt = np.tile(np.eye(4), (5, 1, 1))
    gt[:, :3, :3] = Rotation.random(5, random_state=1).as_matrix()
    gt[:, :3, 3] = rng.normal(size=(5, 3))
    # a global similarity of the prediction changes nothing
    S = np.eye(4)
    S[:3, :3] = 2.5 * Rotation.random(random_state=2).as_matrix()
    S[:3, 3] = [1, -2, 3]
    pred = S @ gt
    pred[:, :3, :3] /= 2.5
    m = pose_metrics(pred, gt)
    assert m["rel_rot_err_deg_max"] < 1e-5 and m["rel_trans_angle_deg_max"] < 1e-5
    assert m["ATE_rmse"] < 1e-10 and m["mAA@30"] == 1.0 and m["RRA@5"] == 1.0
    # a 10 degree rotation error on one camera: the pairs with it show 10 degrees
    bad = gt.copy()
    bad[0, :3, :3] = bad[0, :3, :3] @ Rotation.from_rotvec([0, 0, np.deg2rad(10)]).as_matrix()
    rot, _, pairs = relative_pose_errors(bad, gt)
    np.testing.assert_allclose(rot[[k for k, (i, j) in enumerate(pairs) if i == 0]], 10.0, atol=1e-9)
    assert pose_metrics(bad, gt)["RRA@5"] == pytest.approx(6 / 10)
    # pure rotation rig: translation metrics omitted
    rot_only = gt.copy()
    rot_only[:, :3, 3] = 0
    assert "ATE_rmse" not in pose_metrics(rot_only, rot_only, with_translation=False)
    with pytest.raises(ValueError, match="poses"):
        pose_metrics(gt[:1], gt[:1])
