"""PairViewer (two views, no optimisation) against the official `pairviewer_2v` run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fixture_path
from f3d_jax.align import global_align


def _output(inp):
    return dict(
        view1=dict(idx=inp["edges"][:, 0]), view2=dict(idx=inp["edges"][:, 1]),
        pred1=dict(pts3d=inp["pred1_pts3d"], conf=inp["pred1_conf"]),
        pred2=dict(pts3d_in_other_view=inp["pred2_pts3d"], conf=inp["pred2_conf"]),
    )


def test_pairviewer_matches_official():
    d = fixture_path("alignment", "pairviewer_2v")
    inp, off = np.load(d / "inputs.npz"), np.load(d / "official.npz")
    scene = global_align(_output(inp), mode="pairviewer")
    np.testing.assert_allclose(np.asarray(scene.cam2world), off["final_cam2world"], atol=2e-5)
    np.testing.assert_allclose(np.asarray(scene.focals), off["final_focals"][:, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(scene.principal_points), off["final_principal_points"])
    np.testing.assert_allclose(np.asarray(scene.depthmaps), off["final_depthmaps"], rtol=1e-5)
    pts_ref = off["final_pts3d"].astype(np.float32)  # float16 storage
    assert np.abs(np.asarray(scene.pts3d) - pts_ref).max() <= 2e-3 * max(1.0, np.abs(pts_ref).max())
    np.testing.assert_array_equal(np.asarray(scene.masks), off["masks"])
    assert scene.loss_curve.shape == (0,) and np.isnan(float(scene.final_loss))


def test_pairviewer_needs_symmetric_pair():
    d = fixture_path("alignment", "pairviewer_2v")
    inp = np.load(d / "inputs.npz")
    out = _output(inp)
    out["view1"]["idx"] = np.array([0, 0])
    out["view2"]["idx"] = np.array([1, 1])
    with pytest.raises(ValueError, match="symmetric"):
        global_align(out, mode="pairviewer")
