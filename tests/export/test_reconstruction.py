"""Reconstruction: npz round trip, clear errors on bad files, construction from an alignment result, and the
official `clean_pointcloud` rule against a per-pixel reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scene import synthetic_reconstruction

from f3d_jax.align.types import AlignResult
from f3d_jax.export import Reconstruction, ReconstructionError, Tracks, build_tracks, clean_confidence
from f3d_jax.export import reconstruction_from_alignment


@pytest.fixture(scope="module")
def recon():
    return synthetic_reconstruction(n=3, H=24, W=32)


def _assert_same(a: Reconstruction, b: Reconstruction) -> None:
    for f in dataclasses.fields(Reconstruction):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif isinstance(x, Tracks):
            for g in dataclasses.fields(Tracks):
                np.testing.assert_array_equal(getattr(x, g.name), getattr(y, g.name))
        else:
            assert x == y, f.name


def test_save_load_round_trip(recon, tmp_path):
    p = recon.save(tmp_path / "sub" / "reconstruction.npz")
    assert p.is_file() and not [q for q in p.parent.iterdir() if q != p]
    _assert_same(recon, Reconstruction.load(p))
    with_tracks = recon.replace(tracks=build_tracks(recon, max_points=200), paths=("/a/x.png", "", "b.jpg"))
    _assert_same(with_tracks, Reconstruction.load(with_tracks.save(p)))


def test_load_bad_files_name_the_file(recon, tmp_path):
    with pytest.raises(ReconstructionError, match=r"missing\.npz: no such file"):
        Reconstruction.load(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ReconstructionError, match=r"garbage\.npz: not a readable \.npz"):
        Reconstruction.load(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ReconstructionError, match=r"other\.npz: not a reconstruction file \(missing format_version"):
        Reconstruction.load(other)
    good = recon.save(tmp_path / "good.npz")
    with np.load(good) as z:
        data = dict(z)
    truncated = tmp_path / "bad_shape.npz"
    np.savez(truncated, **{**data, "depth": data["depth"][:, :-1]})
    with pytest.raises(ReconstructionError, match=r"bad_shape\.npz: .*depth must have shape \(3, 24, 32\)"):
        Reconstruction.load(truncated)
    future = tmp_path / "future.npz"
    np.savez(future, **{**data, "format_version": np.array(99)})
    with pytest.raises(ReconstructionError, match=r"future\.npz: format version 99"):
        Reconstruction.load(future)
    half = tmp_path / "half.npz"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ReconstructionError, match=r"half\.npz"):
        Reconstruction.load(half)


def test_constructor_validates(recon):
    with pytest.raises(ReconstructionError, match="names must be unique"):
        recon.replace(names=("a.png", "a.png", "b.png"))
    with pytest.raises(ReconstructionError, match="not a plain file name"):
        recon.replace(names=("a b.png", "c.png", "d.png"))
    with pytest.raises(ReconstructionError, match="mask must be bool"):
        recon.replace(mask=recon.mask.astype(np.uint8))


def _fake_result(recon: Reconstruction) -> AlignResult:
    N = recon.n
    z = np.zeros((1,), np.float32)
    return AlignResult(cam2world=recon.cam2world.astype(np.float32), focals=recon.intrinsics[:, 0, 0],
                       principal_points=recon.intrinsics[:, :2, 2], depthmaps=recon.depth, pts3d=recon.pts3d,
                       conf=recon.conf, masks=recon.mask, pw_poses=np.zeros((2, 4, 4)), pw_scales=np.ones(2),
                       edges=np.zeros((2, 2), np.int32), loss_curve=z, lr_curve=z, final_loss=z[0],
                       start=None)  # type: ignore[arg-type]


def test_reconstruction_from_alignment(recon):
    imgs = []
    for k in range(recon.n):
        d = dict(img=(recon.images[k:k + 1].astype(np.float32) / 255 - 0.5) / 0.5, idx=k)
        if k < 2:  # two dicts from files, one in-memory image without provenance keys (identity)
            d.update(to_orig=recon.to_orig[k:k + 1], orig_shape=recon.orig_sizes[k:k + 1, ::-1].astype(np.int32),
                     path=f"/photos/IMG {k}.JPG" if k == 0 else "/other/IMG 0.JPG")
        imgs.append(d)
    r = reconstruction_from_alignment(_fake_result(recon), imgs, min_conf_thr=3.0)
    np.testing.assert_array_equal(r.images, recon.images)
    np.testing.assert_array_equal(r.mask, recon.conf > 3.0)
    np.testing.assert_allclose(r.intrinsics, recon.intrinsics, rtol=1e-6)
    # same basename twice: index prefix; spaces become '_'; in-memory images get a generated name
    assert r.names == ("000_IMG_0.JPG", "001_IMG_0.JPG", "image_002.png")
    assert r.paths == ("/photos/IMG 0.JPG", "/other/IMG 0.JPG", "")
    np.testing.assert_array_equal(r.to_orig[:2], recon.to_orig[:2])
    np.testing.assert_array_equal(r.to_orig[2], [[1, 0, 0], [0, 1, 0]])
    assert r.orig_sizes.tolist() == recon.orig_sizes[:2].tolist() + [[32, 24]]
    cleaned = reconstruction_from_alignment(_fake_result(recon), imgs, min_conf_thr=3.0, clean_depth=True,
                                            names=["a.png", "b.png", "c.png"])
    assert cleaned.names == ("a.png", "b.png", "c.png")
    want = clean_confidence(recon.conf, recon.intrinsics, recon.cam2world, recon.depth, recon.pts3d) > 3.0
    np.testing.assert_array_equal(cleaned.mask, want)


def _clean_reference(conf, K, cam2world, depth, pts3d, tol=0.001, bad_conf=0.0):
    """The official clean_pointcloud, pixel by pixel."""
    res = conf.astype(np.float32).copy()
    N, H, W = conf.shape
    for i in range(N):
        for j in range(N):
            if i == j:
                continue
            w2c = np.linalg.inv(cam2world[j])
            for y in range(H):
                for x in range(W):
                    p = w2c[:3, :3] @ pts3d[i, y, x] + w2c[:3, 3]
                    if p[2] <= 0:
                        continue
                    q = K[j] @ p
                    u, v = int(np.round(q[0] / q[2])), int(np.round(q[1] / q[2]))
                    if 0 <= u < W and 0 <= v < H and p[2] < (1 - tol) * depth[j, v, u] and res[i, y, x] < res[j, v, u]:
                        res[i, y, x] = min(res[i, y, x], bad_conf)
    return res


def test_clean_confidence_matches_per_pixel_reference():
    r = synthetic_reconstruction(n=3, H=12, W=16, seed=3)
    rng = np.random.default_rng(0)
    # push some points towards their camera (in front of other views' surfaces), so the rule fires
    c = r.cam2world[:, None, None, :3, 3]
    shrink = np.where(rng.random(r.depth.shape) < 0.3, rng.uniform(0.5, 0.95, r.depth.shape), 1.0)[..., None]
    pts = (c + (r.pts3d - c) * shrink).astype(np.float64)
    depth = (r.depth * shrink[..., 0]).astype(np.float64)
    want = _clean_reference(r.conf, r.intrinsics, r.cam2world, depth, pts)
    got = clean_confidence(r.conf, r.intrinsics, r.cam2world, depth, pts)
    assert (want == 0).sum() > 10  # the rule fired
    np.testing.assert_array_equal(got, want)
