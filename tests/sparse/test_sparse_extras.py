"""Sparse GA beyond the official code, on a tiny synthetic scene with ground truth (tests/sparse/synth.py):
known poses and intrinsics, per-image masks, differentiability, documented edge cases, compile reuse.

All runs share N = 4 images of 48 x 64 and at least one known pose, so the padded problem sizes fall in the
same buckets and the two compiled stages (known-pose variant) are reused: the first test pays the compilation.
The plain alignment (no known pose) is covered by tests/sparse/test_sparse_ga.py on the fixture; its accuracy on
this synthetic case (rotation error 0.8 degrees, focal 1.5%) was measured, not re-run here, to keep these tests'
compile time inside the budget."""

from __future__ import annotations

import numpy as np
import pytest

from f3d_jax.eval.metrics import pose_metrics
from f3d_jax.sparse import sparse_global_alignment
from tests.sparse.synth import synth_case

SHORT = dict(niter1=100, niter2=100, matching_conf_thr=0.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The synthetic case, its network outputs and matches cached once on disk (later runs need no model)."""
    from f3d_jax.sparse import prepare

    scene, names, pairs, model = synth_case()
    cache = str(tmp_path_factory.mktemp("synth_cache"))
    prep = prepare(names, pairs, model, matching_conf_thr=0.0, cache_dir=cache)
    matches = [(p.i, p.j, p.xy_i, p.xy_j, p.conf) for p in prep.pair_data]  # all pairs pass threshold 0
    return dict(scene=scene, names=names, pairs=pairs, model=model, cache=cache, matches=matches)


def _pin(synth, k: int = 0) -> dict:
    return {synth["names"][k]: {"cam2w": synth["scene"].cam2world[k]}}


def _rot_err_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    cos = (np.trace(Ra.T @ Rb) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def test_all_poses_known_are_kept_exactly(synth):
    scene, names = synth["scene"], synth["names"]
    init = {nm: {"cam2w": scene.cam2world[k]} for k, nm in enumerate(names)}
    res = sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"], init=init, **SHORT)
    for k in range(4):
        assert np.array_equal(res.cam2world[k], scene.cam2world[k].astype(np.float32))  # bit-exact
    assert np.all(np.isfinite(res.loss_curve))
    # the depths and focals are solved in the known poses' units: focal error 0.6%, anchor depths ~ true depths
    assert np.abs(res.focals / scene.focals - 1).max() < 0.03
    s = 8
    for k in range(4):
        true = scene.depth[k][s // 2 :: s, s // 2 :: s]
        assert np.median(np.abs(res.sparse_depthmaps[k] / true - 1)) < 0.03


def test_some_poses_known_fix_gauge_and_scale(synth):
    """Two known cameras (0 and 2, not the chain root) fix the gauge and the scale: the other cameras come out in
    the ground-truth frame directly (no similarity fit); known intrinsics stay frozen through both stages."""
    scene, names = synth["scene"], synth["names"]
    K = np.zeros((4, 3, 3), np.float32)
    K[:, 0, 0] = K[:, 1, 1] = scene.focals
    K[:, :2, 2] = (32, 24)
    K[:, 2, 2] = 1
    init = {names[k]: {"cam2w": scene.cam2world[k]} for k in (0, 2)}
    init[names[1]] = {"intrinsics": K[1]}
    res = sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"], init=init, **SHORT)
    assert res.root in (0, 2)
    for k in (0, 2):
        assert np.array_equal(res.cam2world[k], scene.cam2world[k].astype(np.float32))
    for k in (1, 3):
        assert np.linalg.norm(res.cam2world[k, :3, 3] - scene.cam2world[k, :3, 3]) < 0.06  # metres; measured 0.02
        assert _rot_err_deg(res.cam2world[k, :3, :3], scene.cam2world[k, :3, :3]) < 2
    np.testing.assert_allclose(res.intrinsics[1], K[1], rtol=1e-6)  # frozen (float32 round-off of exp(log f))
    assert not np.allclose(res.intrinsics[3], res.intrinsics[1], rtol=1e-6)  # the unknown ones move


def test_one_pose_known_fixes_the_gauge(synth):
    """One known camera fixes rotation and position; the scale stays the network's (anti-collapse on)."""
    scene, names = synth["scene"], synth["names"]
    res = sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"],
                                  init={names[3]: {"cam2w": scene.cam2world[3]}}, **SHORT)
    assert res.root == 3 and np.array_equal(res.cam2world[3], scene.cam2world[3].astype(np.float32))
    c_gt = scene.cam2world[:, :3, 3] - scene.cam2world[3, :3, 3]
    c = res.cam2world[:, :3, 3] - res.cam2world[3, :3, 3]
    scale = np.sum(c * c_gt) / np.sum(c * c)  # scale-only fit about the known centre
    for k in range(3):
        assert _rot_err_deg(res.cam2world[k, :3, :3], scene.cam2world[k, :3, :3]) < 2  # no rotation fit
        assert np.linalg.norm(scale * c[k] - c_gt[k]) < 0.06


def test_bad_init(synth):
    names = synth["names"]
    run = lambda init: sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"],  # noqa: E731
                                               init=init, **SHORT)
    with pytest.raises(ValueError, match=r"init\['synth_001.png'\]\['cam2w'\] is not a rigid"):
        run({names[1]: {"cam2w": np.diag([2.0, 1, 1, 1])}})
    with pytest.raises(ValueError, match=r"init\['synth_001.png'\]\['cam2w'\] must be a finite \(4, 4\)"):
        run({names[1]: {"cam2w": np.eye(3)}})
    with pytest.raises(ValueError, match="init key 'nope.png' names no image"):
        run({"nope.png": {"cam2w": np.eye(4)}})
    with pytest.raises(ValueError, match="keys among"):
        run({names[0]: {"pose": np.eye(4)}})


def test_gradient_through_the_optimisation_matches_finite_differences(synth):
    """`align_arrays` (the optimisation as a pure function) composed with `problem_from_canonical`: `jax.grad` of
    a scalar of the cameras and depths w.r.t. the canonical pointmaps, against central finite differences along
    random directions (5 coarse iterations). Cameras 0 and 2 are known: they fix the gauge and the scale, which
    makes the function smooth (with a free gauge the root follows round-off gradients, spec 4.5, and the
    anti-collapse min over near-equal sizes has kinks). float32 tolerance: 10% of the directional derivative plus
    the finite-difference noise floor 3e-4 (about float32 eps x |f| / h at h = 0.01); measured 1-8%."""
    import jax
    import jax.numpy as jnp

    from f3d_jax.sparse import align_arrays, prepare, problem_from_canonical, stage_masks

    scene, names = synth["scene"], synth["names"]
    prep = prepare(names, synth["pairs"], None, matching_conf_thr=0.0, cache_dir=synth["cache"],
                   init={names[k]: {"cam2w": scene.cam2world[k]} for k in (0, 2)})
    trainable = stage_masks(prep.params, fixed_pose=[0, 2])
    canon = jnp.asarray(np.stack([c.canon for c in prep.canonical]))
    canon2 = jnp.asarray(np.stack([c.canon2 for c in prep.canonical]))
    n_entries = sum(prep.condensed.n_points)
    rebuilt = problem_from_canonical(prep.problem, canon, canon2, 8, n_entries=n_entries)
    for key, tol in (("core_depth", 1e-6), ("median_depths", 0), ("pt_offset", 0), ("base_focals", 1e-6)):
        np.testing.assert_allclose(getattr(rebuilt, key), getattr(prep.problem, key), rtol=tol, atol=0)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)

    def scalar(canon):
        problem = problem_from_canonical(prep.problem, canon, canon2, 8, n_entries=n_entries)
        # the initial state follows the pointmaps too (anchor depths, base focals)
        params = {**prep.params, "core_depth": problem.core_depth, "log_focals": jnp.log(problem.base_focals)}
        out = align_arrays(params, problem, trainable, depth_levels=prep.condensed.depth_levels, niter1=5, niter2=0,
                           known_poses=True)
        return jnp.sum(w * out["cam2w"][:, :3, 3]) + out["depth"][:, :40].mean()

    f = jax.jit(jax.value_and_grad(scalar))
    val, grad = f(canon)
    assert np.isfinite(float(val)) and bool(jnp.all(jnp.isfinite(grad)))
    for seed in (1, 2):
        v = jnp.asarray(np.random.default_rng(seed).normal(size=canon.shape), jnp.float32) * canon * 1e-2
        directional = float(jnp.sum(grad * v))
        assert abs(directional) > 3e-3  # the cameras do depend on the pointmaps (measured 0.024, 0.0058)
        for h in (0.01, 0.003):
            fd = (float(f(canon + h * v)[0]) - float(f(canon - h * v)[0])) / (2 * h)
            assert abs(fd - directional) < 0.1 * abs(directional) + 3e-4, (seed, h, fd, directional)


def test_masks_drop_matches_and_keep_accuracy(synth):
    """Masked-out pixels give no matches (so no matched-pixel anchors) and zero dense confidence; the matches
    kept are exactly the unmasked matches with both pixels inside the masks; the result stays accurate (camera 0
    pinned: the known-pose compiled variant of the other tests)."""
    scene, names = synth["scene"], synth["names"]
    H, W = scene.depth.shape[1:]
    masks = [None, np.ones((H, W), bool), np.ones((H, W), bool), None]
    # an eighth of images 1 and 2 (small enough that the problem keeps its padded sizes: no recompilation)
    masks[1][:, :8] = False
    masks[2][:6] = False
    res = sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"], masks=masks,
                                  init=_pin(synth), **SHORT)
    ok = lambda k, xy: np.ones(len(xy), bool) if masks[k] is None else masks[k][xy[:, 1], xy[:, 0]]  # noqa: E731
    n_free = n_masked = 0
    for (i, j, xi, xj, c), (i2, j2, fi, fj, fc) in zip(res.matches, synth["matches"]):
        assert (i, j) == (i2, j2)
        assert ok(i, xi).all() and ok(j, xj).all()
        keep = ok(i, fi) & ok(j, fj)
        np.testing.assert_array_equal(xi, fi[keep])
        np.testing.assert_array_equal(c, fc[keep])
        n_free, n_masked = n_free + len(fc), n_masked + len(c)
    assert n_masked < 0.95 * n_free  # the masks removed matches (measured: 525 of 561)
    assert sum(len(a) for a in res.anchor_pts3d) == 2 * n_masked
    _, _, confs = res.dense_pts3d(clean_depth=False)
    assert np.all(confs[1][:, :8] == 0) and np.all(confs[2][:6] == 0) and np.all(confs[1][:, 8:] > 0)
    pose = pose_metrics(res.cam2world, scene.cam2world)
    assert pose["RRA@5"] == 1.0 and pose["RTA@5"] == 1.0 and pose["rel_rot_err_deg_mean"] < 2  # measured 0.8
    with pytest.raises(ValueError, match=r"masks\[1\] \(synth_001.png\) has shape \(4, 4\)"):
        sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"],
                                masks=[None, np.ones((4, 4), bool), None, None], **SHORT)
    with pytest.raises(ValueError, match=r"masks\[0\] \(synth_000.png\) must be an \(H, W\) bool array"):
        sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"],
                                masks=[np.ones((H, W)), None, None, None], **SHORT)


def test_pure_rotation_scene(synth):
    """All cameras at one centre (documented behaviour, `sparse_global_alignment` docstring): the alignment runs
    and gives the rotations approximately; the camera centres are not forced together (the chained translation
    is the point the camera pivots about, spec 4.4), so they spread, and the focals of this tiny case are biased.
    Camera 0 pinned (shared compiled variant); the plain call measured the same (relative errors 0.4-11.3 deg)."""
    scene, names, pairs, model = synth_case(rig="rotation")
    res = sparse_global_alignment(names, pairs, model, init={names[0]: {"cam2w": scene.cam2world[0]}}, **SHORT)
    assert np.all(np.isfinite(res.cam2world)) and res.loss_curve[99] < res.loss_curve[0]
    R, G = res.cam2world[:, :3, :3], scene.cam2world[:, :3, :3]
    errs = [_rot_err_deg(R[k], G[k]) for k in range(1, 4)]  # camera 0 fixes the frame: no fit
    assert np.median(errs) < 6 and max(errs) < 15  # measured 3.5, 3.7, 11.5 (camera 3 has the least overlap)
    spread = np.linalg.norm(res.cam2world[:, :3, 3] - scene.cam2world[0, :3, 3], axis=1)
    assert spread.max() > 0.1 * np.median(scene.depth)  # the documented spread (measured 3.8 m at 3.3 m depth)


def test_nearby_problem_sizes_reuse_the_compiled_stages(synth):
    """A second call with a slightly different problem (a small mask removes a few matches) falls in the same
    padded buckets: no new compilation of the stages or the final decode."""
    from f3d_jax.sparse.data import bucket_size
    from f3d_jax.sparse.optimize import final_state, run_stage

    scene, names = synth["scene"], synth["names"]
    H, W = scene.depth.shape[1:]
    mask = np.ones((H, W), bool)
    mask[:10, :10] = False
    run = lambda masks: sparse_global_alignment(names, synth["pairs"], None, cache_dir=synth["cache"],  # noqa: E731
                                                masks=masks, init=_pin(synth), **SHORT)
    run(None)  # compiled here unless an earlier test did
    before = (run_stage._cache_size(), final_state._cache_size())
    res = run([mask, None, None, None])
    n_free = sum(len(m[4]) for m in synth["matches"])
    n_now = sum(len(m[4]) for m in res.matches)
    assert n_now < n_free and bucket_size(n_now) == bucket_size(n_free)
    assert (run_stage._cache_size(), final_state._cache_size()) == before
    assert [bucket_size(m) for m in (1, 512, 513, 4375, 8750, 70000, 8193)] == \
        [512, 512, 1024, 4608, 9216, 73728, 9216]  # multiples of 512, then of 2^(floor(log2 m) - 3)


def test_reroot_keeps_the_tree():
    from f3d_jax.sparse.chain import KinematicChain, reroot

    chain = KinematicChain(2, ((2, 1), (1, 3), (1, 0), (3, 4)), ((0, 1),))
    new = reroot(chain, 4)
    assert new.root == 4 and new.merges == chain.merges
    assert new.edges == ((4, 3), (3, 1), (1, 2), (1, 0))  # breadth-first from the new root
    assert {frozenset(e) for e in new.edges} == {frozenset(e) for e in chain.edges}
    assert new.parents(5).tolist() == [1, 3, 1, 4, 4] and new.depth() == 3
    assert reroot(chain, 2) is chain


def _clean_pointcloud_loop(confs, K, w2cam, depthmaps, pts3d, tol=0.001, bad_conf=0.0):
    """The official dust3r loop (every ordered pair, sequential in-place updates), as the package had it."""
    res = [np.array(c, np.float32) for c in confs]
    K, w2cam = np.asarray(K, np.float32), np.asarray(w2cam, np.float32)
    for i, pts in enumerate(pts3d):
        pts = np.asarray(pts, np.float32).reshape(res[i].shape + (3,))
        for j in range(len(pts3d)):
            if i == j:
                continue
            proj = pts @ w2cam[j, :3, :3].T + w2cam[j, :3, 3]
            pz = proj[..., 2]
            h = proj @ K[j].T
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = np.round(h[..., :2] / h[..., 2:3])
            H, W = res[j].shape
            u, v = uv[..., 0], uv[..., 1]
            inside = (pz > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            ui, vi = np.where(inside, u, 0).astype(np.int64), np.where(inside, v, 0).astype(np.int64)
            dj = np.asarray(depthmaps[j], np.float32).reshape(H, W)[vi, ui]
            bad = inside & (pz < (1 - tol) * dj) & (res[i] < res[j][vi, ui])
            res[i][bad] = np.minimum(res[i][bad], bad_conf)
    return res


def test_clean_pointcloud_equals_the_official_pairwise_loop():
    """The vectorised cleaning (all partners of an image at once) gives bit-identical confidences to the
    official in-place loop over ordered pairs, on 11 views (more than one group of 8 partners) whose points
    occlude each other, with non-finite points and confidences that make the visiting order matter."""
    from f3d_jax.sparse import clean_pointcloud

    rng = np.random.default_rng(4)
    n, H, W = 11, 12, 16
    K = np.tile(np.array([[14.0, 0, 7.5], [0, 14.0, 5.5], [0, 0, 1]], np.float32), (n, 1, 1))
    w2cam = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    w2cam[:, :3, 3] = rng.normal(0, 0.05, size=(n, 3))
    depth = rng.uniform(1.0, 3.0, size=(n, H, W)).astype(np.float32)
    v, u = np.mgrid[:H, :W]
    rays = np.stack([(u - 7.5) / 14.0, (v - 5.5) / 14.0, np.ones_like(u, dtype=float)], -1)
    pts = [((rays * depth[k][..., None]) - w2cam[k, :3, 3]).astype(np.float32) for k in range(n)]
    pts[3][2, 5] = np.nan
    confs = [rng.choice([1.0, 2.0, 3.0, 5.0], size=(H, W)).astype(np.float32) for _ in range(n)]
    got = clean_pointcloud(confs, K, w2cam, depth, pts, bad_conf=1.5)
    ref = _clean_pointcloud_loop(confs, K, w2cam, depth, pts, bad_conf=1.5)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    changed = sum(int((a != c).sum()) for a, c in zip(ref, confs))
    assert 50 < changed < 0.9 * n * H * W  # the case cleans some pixels, not all
