"""f3d_jax.train.data: official crop/resize parity (fixture), pts3d/ImgNorm/symmetrisation parity, the on-disk
format, resolution buckets, determinism and exact resume, corrupt samples, CroCo pairs, host shards."""

from __future__ import annotations

import json
import logging

import grain
import numpy as np
import pytest
from etils import epath

from f3d_jax.eval.synthetic import make_scene, world_points
from f3d_jax.train.data import (TRAIN_RESOLUTIONS_512, DataConfig, PairsSource, SyntheticPairs, batch_resolution,
                                bbox_from_intrinsics_in_out, camera_matrix_of_crop, color_jitter,
                                crop_resize_if_necessary,
                                depthmap_to_absolute_camera_coordinates, export_synthetic_pairs, img_norm,
                                imagenet_norm, iterate, make_batch_symmetric, make_pair_dataset,
                                rescale_image_depthmap, write_pairs_dataset)
from f3d_jax.train.data.synthetic_source import _scene_seed
from conftest import fixture_path

SIZE = (40, 30)  # (W, H) of the tiny on-disk scenes
RES = ((32, 24), (32, 16), (32, 12))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """3 synthetic scenes x 3 views (40x30), 4 pairs each (12 pairs), written in the on-disk format."""
    root = tmp_path_factory.mktemp("pairs")
    export_synthetic_pairs(root, num_scenes=3, views_per_scene=3, size=SIZE, seed=5)
    return root


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _pair_id(batch: dict, k: int) -> tuple:
    """Entry k of a batch identified by its two camera centres (unique per ordered pair of the tiny scenes)."""
    return tuple(tuple(np.round(batch[v]["camera_pose"][k, :3, 3], 4).tolist()) for v in ("view1", "view2"))


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[v][k], b[v][k]) for v in ("view1", "view2") for k in a[v])


# --- parity with the official code ----------------------------------------------------------------------------------

def test_crop_resize_matches_official_fixture():
    d = fixture_path("training", "dust3r_train_crop")
    inp, out = np.load(d / "inputs.npz"), np.load(d / "outputs.npz")
    for i in range(5):
        g = lambda k: inp[f"ex{i}.{k}"]  # noqa: E731
        o = lambda k: out[f"ex{i}.{k}"]  # noqa: E731
        rng = np.random.default_rng(int(g("rng_seed")))
        img, depth, K = crop_resize_if_necessary(g("image"), g("depthmap"), g("intrinsics"), g("resolution"), rng,
                                                 int(g("aug_crop")))
        img = np.asarray(img)
        assert img.shape == o("out.image").shape, i  # includes the portrait / random-orientation choices
        # PIL's LANCZOS/BICUBIC are the official kernels: the README allows one grey level, we get it exact
        assert np.abs(img.astype(int) - o("out.image")).max() <= 1, i
        np.testing.assert_array_equal(depth, o("out.depthmap"))
        assert K.dtype == np.float32
        np.testing.assert_array_equal(K, o("out.intrinsics"))  # float32 bit-exact

        img2, depth2, K2 = rescale_image_depthmap(g("image"), g("depthmap"), g("intrinsics"), g("resolution"))
        assert np.abs(np.asarray(img2).astype(int) - o("rescale.image")).max() <= 1, i
        np.testing.assert_array_equal(depth2, o("rescale.depthmap"))
        np.testing.assert_array_equal(K2, o("rescale.intrinsics"))
        Kt = camera_matrix_of_crop(K2, img2.size, g("resolution"), offset_factor=0.5)
        np.testing.assert_array_equal(Kt, o("crop_of_rescaled.intrinsics_target"))
        assert bbox_from_intrinsics_in_out(K2, Kt, g("resolution")) == tuple(o("crop_of_rescaled.bbox"))


def test_pts3d_imgnorm_and_symmetrize_match_official():
    d = fixture_path("training", "dust3r_regr3d_confloss")
    inp, sym = np.load(d / "inputs.npz"), np.load(d / "symmetrized_views.npz")
    batch = {}
    for v in ("view1", "view2"):
        g = lambda k: inp[f"batch.{v}.{k}"]  # noqa: E731
        for b in range(2):
            pts, valid = depthmap_to_absolute_camera_coordinates(g("depthmap")[b], g("camera_intrinsics")[b],
                                                                 g("camera_pose")[b])
            np.testing.assert_allclose(pts, g("pts3d")[b], rtol=0, atol=1e-6 * np.abs(g("pts3d")[b]).max())
            np.testing.assert_array_equal(valid & np.isfinite(pts).all(-1), g("valid_mask")[b])
        img = g("img").transpose(0, 2, 3, 1)  # NCHW -> NHWC
        u8 = np.round((img * 0.5 + 0.5) * 255).astype(np.uint8)  # the official ImgNorm is invertible on uint8
        np.testing.assert_array_equal(img_norm(u8), img)
        batch[v] = {k: g(k) for k in ("depthmap", "camera_pose", "camera_intrinsics", "pts3d", "valid_mask",
                                      "sky_mask", "true_shape", "is_metric_scale")}
        batch[v]["img"] = img
    out = make_batch_symmetric(batch)
    for v in ("view1", "view2"):
        for k, x in out[v].items():
            ref = sym[f"sym.{v}.{k}"]
            np.testing.assert_array_equal(x, ref.transpose(0, 2, 3, 1) if k == "img" else ref)


def test_synthetic_views_give_the_generator_world_points():
    src = SyntheticPairs(3, size=(48, 36), seed=1)
    v1, v2 = src[2]
    scene = make_scene(n=2, H=36, W=48, seed=_scene_seed(1, 2), focal_jitter=0.1, rig="ring")
    X = world_points(scene)
    for k, v in enumerate((v1, v2)):
        pts, valid = depthmap_to_absolute_camera_coordinates(v["depthmap"], v["camera_intrinsics"], v["camera_pose"])
        assert valid.all()
        np.testing.assert_allclose(pts, X[k], atol=2e-5 * np.abs(X[k]).max())  # float32 of the float64 truth
    assert not np.array_equal(v1["img"], src[1][0]["img"])  # pairs differ
    np.testing.assert_array_equal(v1["img"], src[2][0]["img"])  # ... deterministically


# --- on-disk format -------------------------------------------------------------------------------------------------

def test_write_read_round_trip_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    views = []
    for k in range(3):
        views.append({"img": rng.integers(0, 256, (10, 14, 3), dtype=np.uint8),
                      "depthmap": rng.uniform(1, 5, (10, 14)).astype(np.float32),
                      "camera_intrinsics": np.array([[20.3, 0, 7.1], [0, 20.7, 4.9], [0, 0, 1]], np.float32),
                      "camera_pose": np.eye(4, dtype=np.float32) + np.float32(0.1) * k})
    views[1]["valid_mask"] = rng.random((10, 14)) > 0.3
    write_pairs_dataset(tmp_path, [{"name": "s", "views": views, "pairs": [(0, 1), (2, 1)]}])
    index = json.loads((tmp_path / "pairs.json").read_text())
    assert index["format"] == "f3d-jax/pairs" and index["scenes"][0]["views"][1]["mask"] == "s/0001.mask.png"
    src = PairsSource(tmp_path)
    assert len(src) == 2
    a, b = src[1]  # pair (2, 1)
    for got, want in ((a, views[2]), (b, views[1])):
        np.testing.assert_array_equal(got["img"], want["img"])
        np.testing.assert_array_equal(got["camera_intrinsics"], want["camera_intrinsics"])  # float32 exact
        np.testing.assert_array_equal(got["camera_pose"], want["camera_pose"])
    np.testing.assert_array_equal(b["depthmap"], np.where(views[1]["valid_mask"], views[1]["depthmap"], 0))
    with pytest.raises(FileExistsError, match="pairs.json"):
        write_pairs_dataset(tmp_path, [{"name": "s", "views": views}])
    with pytest.raises(ValueError, match="view 0.*'img'"):
        write_pairs_dataset(tmp_path / "x", [{"name": "s", "views": [{**views[0], "img": views[0]["img"][..., 0]},
                                                                     views[1]]}])
    with pytest.raises(FileNotFoundError, match="no pair index"):
        PairsSource(tmp_path / "nowhere")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "pairs.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an f3d-jax pair index"):
        PairsSource(tmp_path / "y")
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


# --- buckets, determinism, resume -----------------------------------------------------------------------------------

def test_official_train_buckets_one_static_shape_per_batch(tiny_root):
    assert TRAIN_RESOLUTIONS_512 == ((512, 384), (512, 336), (512, 288), (512, 256), (512, 160))
    cfg = DataConfig(batch_size=2, seed=3, num_epochs=1)
    it = iterate(make_pair_dataset(PairsSource(tiny_root), cfg))
    seen = set()
    for i in range(3):
        b = next(it)
        W, H = batch_resolution(cfg, i)
        seen.add((W, H))
        for v in ("view1", "view2"):
            x = b[v]
            assert x["img"].shape == (2, H, W, 3) and x["img"].dtype == np.float32
            assert x["pts3d"].shape == (2, H, W, 3) and x["valid_mask"].shape == x["depthmap"].shape == (2, H, W)
            assert x["camera_intrinsics"].shape == (2, 3, 3) and x["camera_pose"].shape == (2, 4, 4)
            np.testing.assert_array_equal(x["true_shape"], [[H, W]] * 2)
            assert -1 <= x["img"].min() and x["img"].max() <= 1
            assert x["valid_mask"].all()  # synthetic depth is complete
            # pts3d is the official unprojection of the cropped depth with the updated intrinsics
            for k in range(2):
                p, _ = depthmap_to_absolute_camera_coordinates(x["depthmap"][k], x["camera_intrinsics"][k],
                                                               x["camera_pose"][k])
                np.testing.assert_array_equal(p, x["pts3d"][k])
    assert len(seen) >= 2  # the bucket changes between batches


def test_portrait_views_are_transposed_to_landscape(tmp_path):
    views = [dict(v, img=np.ascontiguousarray(v["img"].swapaxes(0, 1)),
                  depthmap=np.ascontiguousarray(v["depthmap"].swapaxes(0, 1)),
                  camera_intrinsics=v["camera_intrinsics"][[1, 0, 2]][:, [1, 0, 2]])
             for v in SyntheticPairs(1, size=(30, 22))[0]]  # 22x30 portrait views
    write_pairs_dataset(tmp_path, [{"name": "p", "views": views}])
    b = next(iterate(make_pair_dataset(PairsSource(tmp_path), DataConfig(batch_size=1, resolutions=((16, 12),)))))
    x = b["view1"]
    assert x["img"].shape == (1, 12, 16, 3)  # landscape storage ...
    np.testing.assert_array_equal(x["true_shape"], [[16, 12]])  # ... of a portrait (H, W) = (16, 12) view
    K = x["camera_intrinsics"][0]
    assert K[0, 0] == 0 and K[1, 1] == 0 and K[0, 1] > 0 and K[1, 0] > 0  # official: rows swapped
    p, _ = depthmap_to_absolute_camera_coordinates(x["depthmap"][0].T, K[[1, 0, 2]], x["camera_pose"][0])
    np.testing.assert_array_equal(p.swapaxes(0, 1), x["pts3d"][0])


def test_deterministic_and_exact_resume(tiny_root, tmp_path):
    src = PairsSource(tiny_root)
    cfg = DataConfig(batch_size=3, resolutions=RES, seed=11, aug_crop=4, num_epochs=2)
    ds = make_pair_dataset(src, cfg)
    assert len(ds) == 2 * (12 // 3)
    straight = _batches(iterate(ds), 8)
    it = iterate(make_pair_dataset(PairsSource(tiny_root), cfg))
    head = _batches(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    resumed = iterate(make_pair_dataset(PairsSource(tiny_root), cfg), state, num_threads=2)
    tail = _batches(resumed, 5)
    assert all(_same(a, b) for a, b in zip(straight, head + tail))
    # grain's orbax handler (what an orbax CheckpointManager calls) saves and restores the same state
    ckpt = epath.Path(tmp_path)
    grain.checkpoint.CheckpointHandler().save(ckpt, item=it)
    restored = grain.checkpoint.CheckpointHandler().restore(ckpt, item=iterate(make_pair_dataset(src, cfg)))
    assert _same(next(restored), straight[3]) and restored.stats["batches"] == 4
    assert resumed.stats == {"batches": 8, "skipped_samples": 0}
    with pytest.raises(StopIteration):
        next(resumed)
    # each epoch is a permutation of the 12 pairs, different in the two epochs (poses identify the pairs)
    ids = [_pair_id(b, k) for b in straight for k in range(3)]
    assert len(set(ids[:12])) == 12 and set(ids[:12]) == set(ids[12:]) and ids[:12] != ids[12:]
    other = _batches(iterate(make_pair_dataset(src, DataConfig(batch_size=3, resolutions=RES, seed=12, aug_crop=4))), 2)
    assert not _same(other[0], straight[0])


def test_host_shards_are_disjoint_with_the_same_buckets(tiny_root):
    src = PairsSource(tiny_root)
    shards = [_batches(iterate(make_pair_dataset(src, DataConfig(batch_size=2, resolutions=RES, seed=2, num_epochs=1,
                                                                 shard_index=h, shard_count=2))), 3) for h in (0, 1)]
    poses = [{_pair_id(b, k) for b in s for k in range(2)} for s in shards]
    assert len(poses[0]) == len(poses[1]) == 6 and not poses[0] & poses[1]
    for a, b in zip(*shards):
        assert a["view1"]["img"].shape == b["view1"]["img"].shape


# --- corrupt samples ------------------------------------------------------------------------------------------------

def test_corrupt_samples_are_skipped_logged_and_counted(tmp_path, caplog):
    scenes = []
    for s in range(6):  # s1, s2, s3 get corrupted below; s0, s4, s5 stay good
        views = SyntheticPairs(1, size=SIZE, seed=s)[0]
        scenes.append({"name": f"s{s}", "views": list(views), "pairs": [(0, 1), (1, 0)]})
    write_pairs_dataset(tmp_path, scenes)
    (tmp_path / "s1" / "0001.png").write_bytes(b"not a png")  # unreadable image
    np.save(tmp_path / "s2" / "0000.depth.npy", np.ones((5, 5), np.float32))  # wrong shape
    bad = np.load(tmp_path / "s3" / "0001.depth.npy")
    bad[3, 4] = np.nan
    np.save(tmp_path / "s3" / "0001.depth.npy", bad)  # NaN depth
    cfg = DataConfig(batch_size=2, resolutions=((32, 24),), num_epochs=1, seed=0)
    with caplog.at_level(logging.WARNING, logger="f3d_jax.train.data"):
        it = iterate(make_pair_dataset(PairsSource(tmp_path), cfg))
        batches = list(it)
    assert len(batches) == 6
    warnings = [r.getMessage() for r in caplog.records if r.name == "f3d_jax.train.data"]
    assert it.stats["skipped_samples"] == len(warnings) >= 6  # the 6 corrupt pairs come up once each per epoch
    text = "\n".join(warnings)
    assert "s1/0001.png: unreadable image" in text and "s2/0000.depth.npy: depth shape (5, 5)" in text
    assert "s3/1: non-finite depth (1 pixels)" in text
    for b in batches:  # only the good scene made it into the batches
        for v in ("view1", "view2"):
            assert np.isfinite(b[v]["depthmap"]).all() and b[v]["img"].shape == (2, 24, 32, 3)
    assert json.loads(json.dumps(it.get_state()))["skipped_samples"] == it.stats["skipped_samples"]
    # a dataset with nothing readable fails with a clear message instead of looping
    for s in (0, 4, 5):
        (tmp_path / f"s{s}" / "0000.png").write_bytes(b"")
    with pytest.raises(RuntimeError, match="corrupt samples in a row"):
        list(iterate(make_pair_dataset(PairsSource(tmp_path), DataConfig(batch_size=2, resolutions=((32, 24),),
                                                                         max_tries=3))))


# --- CroCo pretraining pairs ----------------------------------------------------------------------------------------

def test_croco_pairs_are_two_imagenet_normalised_random_crops(tiny_root):
    src = PairsSource(tiny_root)
    cfg = DataConfig(batch_size=2, mode="croco", croco_trfs="crop16", num_epochs=1, seed=4)
    b = next(iterate(make_pair_dataset(src, cfg)))
    assert set(b) == {"view1", "view2"} and set(b["view1"]) == {"img"}
    full = [imagenet_norm(src.load_pair(p, images_only=True)[v]["img"]) for p in range(len(src)) for v in (0, 1)]
    for v in ("view1", "view2"):
        x = b[v]["img"]
        assert x.shape == (2, 16, 16, 3) and x.dtype == np.float32
        for k in range(2):  # each crop is an exact window of one of the dataset's normalised images
            assert any(np.array_equal(f[i:i + 16, j:j + 16], x[k]) for f in full
                       for i in range(f.shape[0] - 15) for j in range(f.shape[1] - 15))
    jittered = next(iterate(make_pair_dataset(src, DataConfig(batch_size=2, mode="croco", croco_trfs="crop16+acolor"))))
    assert jittered["view2"]["img"].shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        DataConfig(batch_size=2, mode="croco", croco_trfs="crop16+flip")
    with pytest.raises(ValueError, match="no 'cropN'"):
        DataConfig(batch_size=2, mode="croco", croco_trfs="acolor")


def test_color_jitter_changes_the_images_only(tiny_root):
    img = SyntheticPairs(1, size=SIZE)[0][0]["img"]
    same = color_jitter(img, np.random.default_rng(0), (1, 1), (1, 1), (1, 1), None)
    np.testing.assert_array_equal(same, img)  # unit factors: identity (the PIL enhancers' blend with factor 1)
    src = PairsSource(tiny_root)
    plain, jit = (next(iterate(make_pair_dataset(src, DataConfig(batch_size=2, resolutions=RES, color_jitter=j))))
                  for j in (False, True))
    for v in ("view1", "view2"):
        for k in plain[v]:  # the crop draws come first: same geometry, only the colours change
            assert np.array_equal(plain[v][k], jit[v][k]) is (k != "img"), (v, k)
