"""MST / known-poses initialisation: official fixtures (init_* state, metrics.json['mst']), synthetic ground
truth and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import fixture_path
from f3d_jax.align import AlignState
from f3d_jax.align.initialise import Initialisation, initialise_known_poses, initialise_mst
from f3d_jax.eval import pose_metrics, sim3_centres
from f3d_jax.eval.synthetic import make_edges, make_predictions, make_scene

CASES = ["dense_pco_4v", "dense_modular_3v_known_focal"]


def _load(case):
    d = fixture_path("alignment", case)
    inp = np.load(d / "inputs.npz")
    off = np.load(d / "official.npz")
    m = json.loads((d / "metrics.json").read_text())
    return inp, off, m


@pytest.fixture(scope="module", params=[(c, b) for c in CASES for b in ("cpu", "gpu")], ids=lambda p: "-".join(p))
def fixture_init(request):
    """Each case through both paths of the per-edge work: the CPU host float64 loop and the batched float32
    device calls that GPU / TPU take (`registration.on_device`; run here on the CPU devices)."""
    case, backend = request.param
    inp, off, m = _load(case)
    f = lambda k: inp[k].astype(np.float32)  # noqa: E731  exactly what the official optimiser saw
    pf = inp["preset_focals"]
    st = initialise_mst(inp["edges"], f("pred1_pts3d"), f("pred1_conf"), f("pred2_pts3d"), f("pred2_conf"),
                        float(m["optimizer"]["min_conf_thr"]), niter_pnp=m["optimizer"]["niter_PnP"],
                        preset_focals=pf if pf.size else None, backend=backend)
    return st, off, m


def test_mst_graph_matches_official(fixture_init):
    st, off, m = fixture_init
    np.testing.assert_allclose(st.edge_scores, m["mst"]["edge_scores"], rtol=1e-6)
    assert st.mst_edges.tolist() == m["mst"]["mst_edges_in_order"]
    np.testing.assert_allclose(st.mst_focals, m["mst"]["mst_focals"], rtol=1e-6)
    np.testing.assert_array_equal(st.im_conf, off["im_conf"].astype(np.float32))


def test_init_state_matches_official(fixture_init):
    """Decoded init state vs official init_* (measured: ~1e-6; PnP leaves included)."""
    st, off, _ = fixture_init
    c = off["init_cam2world"]
    np.testing.assert_allclose(st.state.cam2world[:, :3, :3], c[:, :3, :3], atol=2e-5)
    np.testing.assert_allclose(st.state.cam2world[:, :3, 3], c[:, :3, 3], atol=2e-5)
    np.testing.assert_allclose(st.state.focals, off["init_focals"].ravel(), rtol=1e-6)
    np.testing.assert_allclose(st.state.principal_points, off["init_principal_points"], atol=1e-6)
    np.testing.assert_allclose(st.state.depthmaps, off["init_depthmaps"], rtol=2e-5)
    np.testing.assert_allclose(st.state.pw_scales, off["init_pw_scale"], rtol=2e-5)
    scaled = st.state.pw_poses.copy()
    scaled[:, :3] *= st.state.pw_scales[:, None, None]
    np.testing.assert_allclose(scaled, off["init_pw_poses_scaled"], atol=2e-5)
    # raw parameters too (same quaternion sign convention, same translation code, root pinned at exactly 0)
    np.testing.assert_allclose(st.raw_im_poses, off["init_raw_im_poses"], atol=2e-5)
    np.testing.assert_allclose(st.raw_pw_poses, off["init_raw_pw_poses"], atol=5e-5)
    np.testing.assert_allclose(st.raw_im_focals, off["init_raw_im_focals"].ravel(), atol=1e-4)
    assert np.all(st.raw_im_poses[st.root, 4:] == 0.0)
    assert st.norm_pw_scale
    np.testing.assert_allclose(np.exp(np.log(st.state.pw_scales).mean()), 0.5, rtol=1e-5)


@pytest.fixture(scope="module")
def synth():
    sc = make_scene(5, 56, 80, seed=7)
    edges = make_edges(5)
    pr = make_predictions(sc, edges, "clean", seed=8)
    return sc, edges, pr


def test_init_mst_synthetic_clean_is_accurate(synth):
    sc, edges, pr = synth
    st = initialise_mst(edges, pr["pred1_pts3d"], pr["pred1_conf"], pr["pred2_pts3d"], pr["pred2_conf"])
    assert isinstance(st, Initialisation) and isinstance(st.state, AlignState)
    acc = pose_metrics(st.state.cam2world, sc.cam2world)
    assert acc["rel_rot_err_deg_max"] < 0.2
    assert acc["rel_trans_angle_deg_max"] < 1.0
    assert acc["ATE_rmse_over_cam_spread"] < 0.01
    np.testing.assert_allclose(st.state.focals, sc.focals, rtol=5e-3)
    s, _, _ = sim3_centres(st.state.cam2world, sc.cam2world)
    np.testing.assert_allclose(np.median(s * st.state.depthmaps / sc.depth), 1.0, rtol=5e-3)
    assert st.mst_edges.shape == (4, 2)


def test_init_mst_with_preset_poses_and_focals(synth):
    sc, edges, pr = synth
    mask = np.array([True, False, True, True, False])
    st = initialise_mst(edges, pr["pred1_pts3d"], pr["pred1_conf"], pr["pred2_pts3d"], pr["pred2_conf"],
                        preset_poses=sc.cam2world, preset_pose_mask=mask, preset_focals=sc.focals * 1.01,
                        preset_focal_mask=[0, 1])
    np.testing.assert_allclose(st.state.cam2world[mask], sc.cam2world[mask], atol=1e-5)
    np.testing.assert_allclose(st.state.cam2world[~mask], sc.cam2world[~mask], atol=0.05)  # aligned onto the known ones
    np.testing.assert_allclose(st.state.focals[:2], sc.focals[:2] * 1.01, rtol=1e-6)
    assert not st.norm_pw_scale
    # exactly one known pose: rigidly moved onto it
    st1 = initialise_mst(edges, pr["pred1_pts3d"], pr["pred1_conf"], pr["pred2_pts3d"], pr["pred2_conf"],
                         preset_poses=sc.cam2world, preset_pose_mask=np.arange(5) == 3)
    np.testing.assert_allclose(st1.state.cam2world[3], sc.cam2world[3], atol=1e-5)
    assert st1.norm_pw_scale


def test_initialise_known_poses(synth):
    sc, edges, pr = synth
    st = initialise_known_poses(edges, pr["pred1_pts3d"], pr["pred1_conf"], pr["pred2_pts3d"], pr["pred2_conf"],
                                sc.cam2world, sc.focals)
    np.testing.assert_allclose(st.state.cam2world, sc.cam2world, atol=1e-5)
    np.testing.assert_allclose(st.state.focals, sc.focals, rtol=1e-5)
    # pairwise scales undo the per-edge prediction scale; depths are metric
    np.testing.assert_allclose(st.state.pw_scales * pr["pair_scale"], 1.0, rtol=0.02)
    np.testing.assert_allclose(np.median(np.abs(st.state.depthmaps / sc.depth - 1)), 0.0, atol=0.01)
    assert not st.norm_pw_scale and st.root == -1


def test_bad_inputs_raise_clear_errors(synth):
    _, edges, pr = synth
    a = (pr["pred1_pts3d"], pr["pred1_conf"], pr["pred2_pts3d"], pr["pred2_conf"])
    with pytest.raises(ValueError, match="pred2_pts3d"):
        initialise_mst(edges, a[0], a[1], a[2][:, :-1], a[3])
    bad = a[0].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        initialise_mst(edges, bad, *a[1:])
    sub = [e for e, (i, j) in enumerate(edges) if {int(i), int(j)} in ({0, 1}, {2, 3}, {3, 4})]
    with pytest.raises(ValueError, match="disconnected"):
        initialise_mst(edges[sub], *(x[sub] for x in a))
    with pytest.raises(ValueError, match="cover"):
        initialise_mst(edges[:1] + np.array([[0, 5]]), *(x[:1] for x in a))
    with pytest.raises(ValueError, match="edges"):
        initialise_mst(np.zeros((0, 2), int), *(x[:0] for x in a))


def test_batched_device_registration_and_focals_equal_host_float64(monkeypatch):
    """The MST init's batched device reductions (float32, blocked sums; the GPU/TPU path, run here on CPU devices)
    against the float64 host functions:
    rows of K = 70 000 points (three levels of blocks, a padded tail), batches of 2 rows (the last one
    padded), a reflection-free fit of a noisy similarity."""
    from f3d_jax.align import registration
    from f3d_jax.align.initialise import register_sim3
    from f3d_jax.geometry.focal import estimate_focal_weiszfeld

    monkeypatch.setattr(registration, "BATCH_BYTES", 2 * 7 * 4 * 70_000)
    rng = np.random.default_rng(0)
    E, H, W = 3, 250, 280
    pts = (rng.normal(size=(2, E, H, W, 3)) * [1.0, 0.7, 0.5] + [0.3, -0.2, 4.0]).astype(np.float32)
    conf = rng.uniform(1, 5, (2, E, H, W)).astype(np.float32)
    A = 1.7 * np.linalg.qr(rng.normal(size=(3, 3)))[0]
    A *= np.sign(np.linalg.det(A))
    pts[1, 2] = (pts[0, 1] @ A.T + [1.0, 2.0, -0.5] + 0.05 * rng.normal(size=(H, W, 3))).astype(np.float32)
    src, dst, wts = [(0, 1), (1, 0), (0, 2)], [(1, 2), (0, 0), (1, 1)], [(0, 1), (1, 0), (1, 2)]
    s, R, t = registration.register_many(tuple(pts), tuple(conf), src, dst, wts, backend="gpu")  # device path
    for b in range(3):
        s0, R0, t0 = register_sim3(pts[src[b]].reshape(-1, 3), pts[dst[b]].reshape(-1, 3), conf[wts[b]].reshape(-1))
        assert abs(s[b] - s0) < 1e-6 * s0 and np.abs(R[b] - R0).max() < 1e-6 and np.abs(t[b] - t0).max() < 1e-5
    np.testing.assert_allclose(s[0], np.linalg.det(A) ** (1 / 3), rtol=1e-3)  # the planted similarity
    # camera-frame pointmaps of focal 300 with 3% noise on the rays
    from f3d_jax.geometry.cameras import pixel_grid

    z = rng.uniform(1, 5, (E, H, W, 1))
    rays = (pixel_grid(H, W, np.float64) - [W / 2, H / 2]) / 300.0 * (1 + 0.03 * rng.normal(size=(E, H, W, 2)))
    cam = np.concatenate([rays * z, z], axis=-1).astype(np.float32)
    f = registration.focals_many(cam, [2, 0, 1], (W / 2, H / 2), backend="gpu")
    f0 = estimate_focal_weiszfeld(cam[[2, 0, 1]].astype(np.float64), min_focal=None, max_focal=None)
    np.testing.assert_allclose(f, f0, rtol=3e-7)
    np.testing.assert_allclose(f, 300.0, rtol=0.02)

