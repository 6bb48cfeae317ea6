"""Dense GA API on tiny synthetic scenes: recovery of a known scene, presets/masks/robust/bf16 options, the
config object and the deprecated names, end-to-end gradients (vs finite differences), vmap, and bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import f3d_jax
from f3d_jax.align import AlignResult, AlignState, DenseConfig, align_dense, global_align, make_problem
from f3d_jax.align.core import align_dense_jit

H, W, F = 12, 16, 14.0


def _rot(rng, deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(deg)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def toy_scene(n=3, seed=0, noise=0.0):
    """Cameras looking at a bumpy wall, exact (optionally noisy) pairwise predictions at random scales."""
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for k in range(1, n):
        c2w[k, :3, :3] = _rot(rng, 8)
        c2w[k, :3, 3] = rng.normal(size=3) * 0.3
    uu, vv = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(uu - W / 2) / F, (vv - H / 2) / F, np.ones_like(uu, float)], -1)
    depth = 3.0 + 0.5 * rng.uniform(size=(n, H, W))
    world = np.einsum("nab,nhwb->nhwa", c2w[:, :3, :3], depth[..., None] * rays) + c2w[:, None, None, :3, 3]
    edges = np.array([(i, j) for i in range(n) for j in range(n) if i != j], np.int32)
    scales = rng.uniform(0.5, 2.0, size=len(edges))
    p1, p2 = [], []
    for (i, j), s in zip(edges, scales):
        w2c = np.linalg.inv(c2w[i])
        p1.append(s * (world[i] @ w2c[:3, :3].T + w2c[:3, 3]))
        p2.append(s * (world[j] @ w2c[:3, :3].T + w2c[:3, 3]))
    p1, p2 = np.float32(p1), np.float32(p2)
    p1 += noise * rng.normal(size=p1.shape)
    p2 += noise * rng.normal(size=p2.shape)
    c1 = 1.0 + 5.0 * rng.uniform(size=p1.shape[:3])
    c2 = 1.0 + 5.0 * rng.uniform(size=p2.shape[:3])
    out = dict(view1=dict(idx=edges[:, 0]), view2=dict(idx=edges[:, 1]),
               pred1=dict(pts3d=p1, conf=np.float32(c1)), pred2=dict(pts3d_in_other_view=p2, conf=np.float32(c2)))
    return out, dict(cam2world=c2w, depth=depth, scales=scales, edges=edges)


def near_truth_init(gt, seed=1, eps=0.02):
    """Ground truth (normalised scale) slightly perturbed, as an explicit starting state."""
    rng = np.random.default_rng(seed)
    n = len(gt["cam2world"])
    c2w = gt["cam2world"].copy()
    c2w[1:, :3, 3] += eps * rng.normal(size=(n - 1, 3))
    pw = np.stack([gt["cam2world"][i] for i, _ in gt["edges"]])
    return dict(cam2world=c2w, focals=np.full(n, F * 1.05), depthmaps=gt["depth"] * (1 + eps * rng.uniform(size=gt["depth"].shape)),
                pw_poses=pw, pw_scales=1.0 / gt["scales"])


def _rel_pose_err(a, b):
    """Max rotation (rad) and centre error of relative poses inv(a_i) a_j vs b, after matching scale."""
    n = len(a)
    ea, et = 0.0, 0.0
    ca = a[:, :3, 3] - a[:, :3, 3].mean(0)
    cb = b[:, :3, 3] - b[:, :3, 3].mean(0)
    s = np.linalg.norm(cb) / np.linalg.norm(ca)
    for i in range(n):
        for j in range(n):
            Ra = a[i, :3, :3].T @ a[j, :3, :3]
            Rb = b[i, :3, :3].T @ b[j, :3, :3]
            ea = max(ea, np.arccos(np.clip((np.trace(Ra.T @ Rb) - 1) / 2, -1, 1)))
            ta = a[i, :3, :3].T @ (a[j, :3, 3] - a[i, :3, 3]) * s
            tb = b[i, :3, :3].T @ (b[j, :3, 3] - b[i, :3, 3])
            et = max(et, np.linalg.norm(ta - tb))
    return ea, et


@pytest.fixture(scope="module")
def toy():
    return toy_scene()


def test_recovers_exact_scene_from_mst(toy):
    out, gt = toy
    scene = global_align(out, init="mst", niter=300, lr=0.01)
    rot, trans = _rel_pose_err(np.asarray(scene.cam2world, np.float64), gt["cam2world"])
    assert rot < 2e-3 and trans < 2e-2, (rot, trans)
    np.testing.assert_allclose(np.asarray(scene.focals), F, rtol=1e-2)
    assert float(scene.final_loss) < 2e-4  # exact predictions: the MST init is already exact, Adam keeps it
    assert np.all(np.isfinite(np.asarray(scene.pts3d)))


def test_modular_partial_presets_are_frozen(toy):
    out, gt = toy
    known = np.array([True, False, True])
    poses = gt["cam2world"][known]
    scene = global_align(out, mode="modular", start=near_truth_init(gt), niter=30,
                         preset_poses=poses, preset_pose_mask=known, preset_focals=[F], preset_focal_mask=[1])
    c2w = np.asarray(scene.cam2world)
    np.testing.assert_allclose(c2w[known], gt["cam2world"][known], atol=1e-5)
    assert np.abs(float(scene.focals[1]) - F) < 1e-4  # preset focal, frozen
    assert np.abs(c2w[1] - near_truth_init(gt)["cam2world"][1]).max() > 1e-5  # the free pose moved
    with pytest.raises(ValueError, match="modular"):  # pco: all or nothing
        global_align(out, mode="pco", start=near_truth_init(gt), niter=5, preset_poses=poses,
                     preset_pose_mask=known)


def test_user_masks_edge_weights_robust_bf16(toy):
    out, gt = toy
    init = near_truth_init(gt)
    base = global_align(out, start=init, niter=30)
    ign = np.zeros((3, H, W), bool)
    ign[0, :4] = True
    masked = global_align(out, start=init, niter=30, masks=ign)
    d0, d1 = np.asarray(masked.depthmaps), np.asarray(base.depthmaps)
    # ignored pixels get no gradient: their depth stays at the initial value (only the global scale moves)
    np.testing.assert_allclose(d0[0, :4], np.asarray(masked.start.depthmaps)[0, :4], rtol=1e-6)
    assert not np.asarray(masked.masks)[0, :4].any()
    assert np.abs(d1[0, :4] - np.asarray(base.start.depthmaps)[0, :4]).max() > 1e-4
    zero_w = global_align(out, start=init, niter=30, edge_weights=np.zeros(6))
    assert float(zero_w.final_loss) == 0.0
    rob = global_align(out, start=init, niter=30, robust="cauchy", robust_scale=0.05)
    assert np.isfinite(float(rob.final_loss)) and float(rob.loss_curve[-1]) < float(rob.loss_curve[0])
    bf = global_align(out, start=init, niter=30, storage_dtype="bfloat16")
    np.testing.assert_allclose(np.asarray(bf.loss_curve), np.asarray(base.loss_curve), rtol=2e-2)


def _core_inputs(out, init):
    prob = make_problem(np.stack([out["view1"]["idx"], out["view2"]["idx"]], -1), out["pred1"]["pts3d"],
                        out["pred2"]["pts3d_in_other_view"], out["pred1"]["conf"], out["pred2"]["conf"])
    pp = np.tile(np.float32([W / 2, H / 2]), (len(init["focals"]), 1))
    st = AlignState(**{k: jnp.asarray(np.float32(v)) for k, v in init.items()}, principal_points=jnp.asarray(pp))
    return prob, st


@pytest.mark.parametrize("dist,param", [("l1", "official"), ("l1", "manifold")])
def test_grad_wrt_predictions_matches_finite_differences(toy, dist, param):
    """jax.grad through the whole 8-step optimisation (the fused loss's custom VJP differentiated once more, the
    Adam steps, the parameterisation's decoding and retraction) against central differences of the jitted
    forward run: the default l1 distance and both parameterisations. (The l2 distance's custom VJP is checked
    against autodiff in test_losses.py; one value_and_grad compilation per case gives both the gradient and the
    finite differences' values, compile time being most of this test's cost.)"""
    out, gt = toy
    prob, st = _core_inputs(out, near_truth_init(gt))
    cfg = DenseConfig(niter=8, lr=0.003, dist=dist, param=param)
    v = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3)), jnp.float32)

    def objective(pred_i, conf_i):
        sc = align_dense(dataclasses.replace(prob, pred_i=pred_i, conf_i=conf_i), st, cfg)
        return jnp.sum(sc.cam2world[:, :3, 3] * v) + jnp.sum(sc.focals) * 1e-2

    value_and_grad = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
    f = lambda *a: value_and_grad(*a)[0]  # noqa: E731
    g_p, g_c = value_and_grad(prob.pred_i, prob.conf_i)[1]
    assert np.all(np.isfinite(np.asarray(g_p))) and np.abs(np.asarray(g_p)).max() > 0
    rng = np.random.default_rng(4)
    for arg, g in ((0, g_p), (1, g_c)):
        base = [prob.pred_i, prob.conf_i]
        # a random direction plus the gradient's own: along a purely random one the objective moves by ~1e-4,
        # about float32 noise of the 8-iteration optimisation, which makes the finite difference meaningless
        direction = g / jnp.abs(g).max() + 0.3 * jnp.asarray(rng.normal(size=base[arg].shape), jnp.float32)
        h = 1e-2 if arg == 0 else 5e-2
        plus, minus = list(base), list(base)
        plus[arg] = base[arg] + h * direction
        minus[arg] = base[arg] - h * direction
        fd = (float(f(*plus)) - float(f(*minus))) / (2 * h)
        an = float(jnp.sum(g * direction))
        assert abs(fd - an) <= 0.05 * abs(an) + 1e-4, (dist, param, arg, fd, an)


def test_config_object_and_deprecated_names(toy):
    """global_align(config=DenseConfig(...)) is the keyword call; a disagreeing keyword is an error; init_state=
    is the old name of start=; Scene / .init are the old names of AlignResult / .start."""
    out, gt = toy
    init = near_truth_init(gt)
    cfg = DenseConfig(niter=12, lr=0.005, dist="l2", schedule="linear")
    by_config = global_align(out, start=init, config=cfg)
    by_keywords = global_align(out, start=init, niter=12, lr=0.005, dist="l2", schedule="linear")
    np.testing.assert_array_equal(np.asarray(by_config.loss_curve), np.asarray(by_keywords.loss_curve))
    np.testing.assert_array_equal(np.asarray(by_config.cam2world), np.asarray(by_keywords.cam2world))
    assert by_config.loss_curve.shape == (12,)
    np.testing.assert_allclose(np.asarray(by_config.lr_curve)[[0, -1]], [0.005, 0.005 - (0.005 - 1e-6) * 11 / 12],
                               rtol=1e-6)  # the linear schedule of the config, not the cosine default
    # a keyword that agrees with the config is fine; one that disagrees (even at its default value) is not
    again = global_align(out, start=init, config=cfg, niter=12)
    np.testing.assert_array_equal(np.asarray(again.loss_curve), np.asarray(by_config.loss_curve))
    with pytest.raises(ValueError, match=r"niter=300 \(config.niter=12\)"):
        global_align(out, start=init, config=cfg, niter=300)
    with pytest.raises(ValueError, match="dist"):
        global_align(out, start=init, config=cfg, dist="l1")
    with pytest.raises(TypeError, match="DenseConfig"):
        global_align(out, start=init, config=dict(niter=3))
    with pytest.raises(ValueError, match="param must be one of"):
        DenseConfig(param="quaternion")
    # deprecated names
    old = global_align(out, init_state=init, config=cfg)
    np.testing.assert_array_equal(np.asarray(old.cam2world), np.asarray(by_config.cam2world))
    with pytest.raises(ValueError, match="once"):
        global_align(out, start=init, init_state=init, config=cfg)
    assert isinstance(by_config, AlignResult) and f3d_jax.Scene is AlignResult and f3d_jax.align.Scene is AlignResult
    assert by_config.init is by_config.start
    # a previous result is a valid starting state (restart)
    restart = global_align(out, start=by_config, config=cfg)  # cfg: no new compilation
    np.testing.assert_allclose(np.asarray(restart.start.cam2world), np.asarray(by_config.cam2world), atol=1e-6)


def test_vmap_over_scenes():
    scenes = [toy_scene(seed=s) for s in (0, 5)]
    cfg = DenseConfig(niter=20)
    probs, states = zip(*[_core_inputs(o, near_truth_init(g)) for o, g in scenes])
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    batched = jax.jit(jax.vmap(lambda p, s: align_dense(p, s, cfg)))(stack(probs), stack(states))
    for b in range(2):
        one = align_dense_jit(probs[b], states[b], config=cfg)  # compiled once with test_edge_chunking_is_exact
        np.testing.assert_allclose(np.asarray(batched.loss_curve[b]), np.asarray(one.loss_curve), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(batched.cam2world[b]), np.asarray(one.cam2world), atol=1e-5)


def test_edge_chunking_is_exact(toy):
    """The loss processed 4 edges at a time (2 chunks, the last one overlapping) equals the one-chunk loss."""
    out, gt = toy
    prob, st = _core_inputs(out, near_truth_init(gt))
    one = align_dense_jit(prob, st, config=DenseConfig(niter=20))
    chunked = jax.jit(lambda p, s: align_dense(p, s, DenseConfig(niter=20, chunk_pixels=4 * H * W)))(prob, st)
    np.testing.assert_allclose(np.asarray(chunked.loss_curve), np.asarray(one.loss_curve), rtol=2e-6)
    np.testing.assert_allclose(np.asarray(chunked.cam2world), np.asarray(one.cam2world), atol=2e-6)


def test_bad_inputs(toy):
    out, gt = toy

    def mod(path, value):
        o = {k: dict(v) for k, v in out.items()}
        o[path[0]][path[1]] = value
        return o

    with pytest.raises(ValueError, match="differ"):
        global_align(mod(("pred2", "pts3d_in_other_view"), out["pred2"]["pts3d_in_other_view"][:, :-1]))
    bad = out["pred1"]["pts3d"].copy()
    bad[2, 3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/inf.*edge 2"):
        global_align(mod(("pred1", "pts3d"), bad))
    badc = out["pred2"]["conf"].copy()
    badc[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"pred2\['conf'\]"):
        global_align(mod(("pred2", "conf"), badc))
    with pytest.raises(KeyError, match="pred1"):
        global_align({k: v for k, v in out.items() if k != "pred1"})
    # disconnected: 4 images, edges only inside {0,1} and {2,3}
    o4 = {k: dict(v) for k, v in out.items()}
    o4["view1"]["idx"] = np.array([0, 1, 2, 3, 0, 2])
    o4["view2"]["idx"] = np.array([1, 0, 3, 2, 1, 3])
    with pytest.raises(ValueError, match="disconnected"):
        global_align(o4)
    o1 = {k: dict(v) for k, v in out.items()}
    o1["view1"]["idx"] = np.zeros(6, int)
    o1["view2"]["idx"] = np.zeros(6, int)
    with pytest.raises(ValueError, match="itself"):
        global_align(o1)
    with pytest.raises(ValueError, match="mode"):
        global_align(out, mode="nope")
    with pytest.raises(ValueError, match="masks"):
        global_align(out, start=near_truth_init(gt), masks=np.zeros((3, 2, 2), bool))
    # divergence is reported, never returned as NaN poses
    with pytest.raises(FloatingPointError, match="diverged"):
        global_align(out, start=near_truth_init(gt), niter=30, lr=1e30)
