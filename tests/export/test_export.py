"""Every export read back with the real client (pycolmap, trimesh, json) on a synthetic scene with exact geometry
and non-trivial provenance (source images 2.5x larger and cropped), then reprojected."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
import trimesh
from export_scene import CROP, SCALE, synthetic_reconstruction

from f3d_jax.export import GLB_FROM_WORLD, ExportOptions, Reconstruction, build_tracks, export, export_mask


@pytest.fixture(scope="module")
def recon():
    return synthetic_reconstruction()


@pytest.fixture(scope="module")
def out(recon, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    written = export(recon, d)
    return d, written


def _read_colmap(path, binary: bool) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    (rec.read_binary if binary else rec.read_text)(str(path))
    return rec


def _cam_from_world(image) -> np.ndarray:
    """(3, 4) world-to-camera of a pycolmap image (a method in pycolmap >= 3.12 with frames, else a property)."""
    cfw = image.cam_from_world
    return np.asarray((cfw() if callable(cfw) else cfw).matrix())


def _observations(rec: pycolmap.Reconstruction):
    """(xyz, observed xy, projected xy, image ids) over every track element, projected with pycolmap's camera."""
    xyz, obs, proj, ids = [], [], [], []
    for pid, p in rec.points3D.items():
        for el in p.track.elements:
            im = rec.images[el.image_id]
            cam = rec.cameras[im.camera_id]
            assert im.points2D[el.point2D_idx].point3D_id == pid
            Xc = _cam_from_world(im) @ np.append(p.xyz, 1.0)
            xyz.append(p.xyz)
            obs.append(im.points2D[el.point2D_idx].xy)
            proj.append(cam.img_from_cam(Xc))
            ids.append(el.image_id)
    return np.array(xyz), np.array(obs), np.array(proj), np.array(ids)


def test_layout(recon, out):
    d, written = out
    assert set(written) == {"reconstruction", "colmap", "nerfstudio", "ply", "glb", "npz"}
    assert written["reconstruction"] == d / "reconstruction.npz"
    assert written["colmap"] == d / "colmap" / "sparse" / "0"
    for stem in ("cameras", "images", "points3D"):
        for ext in ("bin", "txt"):
            assert (written["colmap"] / f"{stem}.{ext}").is_file()
    assert written["ply"] == d / "points.ply" and written["glb"] == d / "scene.glb"
    assert written["nerfstudio"] == d / "transforms.json"
    assert sorted(p.name for p in written["npz"].iterdir()) == [f"view_{k}.npz" for k in range(4)]
    assert not [p for p in d.rglob("*") if ".f3d-tmp-" in p.name]  # no temporary file left behind
    np.testing.assert_array_equal(Reconstruction.load(written["reconstruction"]).pts3d, recon.pts3d)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_colmap_model_read_by_pycolmap(recon, out, binary):
    rec = _read_colmap(out[1]["colmap"], binary)
    N, H, W = recon.depth.shape
    assert rec.num_reg_images() == N and rec.num_cameras() == N
    A = recon.to_orig[0]
    for k in range(N):
        im = rec.images[k + 1]
        assert im.name == recon.names[k]
        cam = rec.cameras[im.camera_id]
        assert cam.model.name == "PINHOLE"
        # source resolution: (W + 2 crop) * 2.5; intrinsics rescaled by hand: f * 2.5, cx = 2.5 W/2 + offset + 0.5
        assert (cam.width, cam.height) == (round((W + 2 * CROP[0]) * SCALE), round((H + 2 * CROP[1]) * SCALE))
        f = recon.intrinsics[k, 0, 0]
        want = [SCALE * f, SCALE * f, SCALE * W / 2 + A[0, 2] + 0.5, SCALE * H / 2 + A[1, 2] + 0.5]
        np.testing.assert_allclose(cam.params, want, rtol=1e-12)
        np.testing.assert_allclose(_cam_from_world(im), np.linalg.inv(recon.cam2world[k])[:3], atol=1e-9)
    xyz, obs, proj, ids = _observations(rec)
    err = np.linalg.norm(obs - proj, axis=1)
    # acceptance: < 1.5 px. The default 'measured' observations interpolate each view's own pointmap: on exact
    # geometry that is a few hundredths of a (source) pixel, error of the local linearisation at curved surfaces
    # (the Gauss-Newton step is capped at 1.5 working pixels, SCALE source pixels each)
    assert err.mean() < 0.05 and np.quantile(err, 0.99) < 0.5 and err.max() < 1.5 * SCALE
    lengths = np.array([p.track.length() for p in rec.points3D.values()])
    assert lengths.min() >= 2 and lengths.mean() >= 2.2 and rec.num_points3D() > 2000
    assert all(len({el.image_id for el in p.track.elements}) == p.track.length() for p in rec.points3D.values())
    # the observations are real: each point lies on the surface the view sees where it projects (exact depth maps)
    Ainv = np.linalg.inv(np.vstack([A, [0, 0, 1]]))
    uv = (np.c_[proj - 0.5, np.ones(len(obs))] @ Ainv.T)[:, :2]
    q = np.round(uv).astype(int)
    w2c = np.linalg.inv(recon.cam2world)[ids - 1]
    z = np.einsum("mij,mj->mi", w2c[:, :3, :3], xyz)[:, 2] + w2c[:, 2, 3]
    np.testing.assert_array_less(np.abs(recon.depth[ids - 1, q[:, 1], q[:, 0]] - z), 0.0201 * z)  # depth_tol


def test_colmap_binary_and_text_are_the_same_model(out):
    b, t = _read_colmap(out[1]["colmap"], True), _read_colmap(out[1]["colmap"], False)
    assert set(b.points3D) == set(t.points3D)
    for pid in list(b.points3D)[::97]:
        np.testing.assert_allclose(b.points3D[pid].xyz, t.points3D[pid].xyz, rtol=1e-15)
        np.testing.assert_array_equal(b.points3D[pid].color, t.points3D[pid].color)
        assert [(e.image_id, e.point2D_idx) for e in b.points3D[pid].track.elements] == \
               [(e.image_id, e.point2D_idx) for e in t.points3D[pid].track.elements]
    for iid in b.images:
        np.testing.assert_allclose(b.images[iid].points2D[5].xy, t.images[iid].points2D[5].xy, atol=1e-6)


def test_colmap_bundle_adjustment_refines_perturbed_points(out):
    """COLMAP's own bundle adjuster uses the tracks: perturbed points (and free cameras) go back to ~0 error."""
    rec = _read_colmap(out[1]["colmap"], True)
    rng = np.random.default_rng(0)
    for p in rec.points3D.values():
        p.xyz = p.xyz + rng.normal(0, 0.01, 3)
    before = np.linalg.norm(np.subtract(*_observations(rec)[1:3]), axis=1).mean()
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    pycolmap.bundle_adjustment(rec, opts)
    after = np.linalg.norm(np.subtract(*_observations(rec)[1:3]), axis=1).mean()
    assert before > 0.5 and after < 0.05 * before


def test_measured_observations_let_colmap_correct_a_camera(recon, tmp_path):
    """'measured' observations come from each view's own pointmap: on exact geometry they agree with the
    projections (~0 error); when camera 1's exported pose is wrong they keep the true pixels, so COLMAP's pose
    refinement from camera 1's track observations returns to the true pose ('projection' ones keep it wrong)."""
    w = export(recon, tmp_path / "exact", formats=("colmap",), track_observations="measured")
    _, obs, proj, _ = _observations(_read_colmap(w["colmap"], True))
    assert np.linalg.norm(obs - proj, axis=1).mean() < 0.05
    c2w = recon.cam2world.copy()
    c2w[1, :3, 3] += [0.02, -0.012, 0.0]  # about 0.6 working pixels, 1.5 source pixels
    truth = np.linalg.inv(recon.cam2world[1])[:3]
    moved = {}
    for mode in ("measured", "projection"):
        w = export(recon.replace(cam2world=c2w), tmp_path / mode, formats=("colmap",), track_observations=mode)
        rec = _read_colmap(w["colmap"], True)
        xyz, obs, proj, ids = _observations(rec)
        sel = ids == 2
        start = rec.images[2].cam_from_world()
        res = pycolmap.refine_absolute_pose(start, obs[sel], xyz[sel], np.ones(sel.sum(), bool),
                                            rec.cameras[rec.images[2].camera_id])
        moved[mode] = np.abs(np.asarray(res["cam_from_world"].matrix()) - truth).max()
        assert np.abs(np.asarray(start.matrix()) - truth).max() > 0.015  # t = -R c moves by R (0.02, -0.012, 0)
    assert moved["measured"] < 0.002 and moved["projection"] > 0.015, moved


_FRAME_SCHEMA = {"file_path": str, "transform_matrix": list, "fl_x": float, "fl_y": float, "cx": float,
                 "cy": float, "w": int, "h": int}


def test_nerfstudio_frames_agree_with_colmap(recon, out):
    d, written = out
    meta = json.loads(written["nerfstudio"].read_text())
    assert meta["camera_model"] == "OPENCV" and (d / meta["ply_file_path"]).is_file()
    rec = _read_colmap(written["colmap"], True)
    by_name = {im.name: im for im in rec.images.values()}
    assert len(meta["frames"]) == recon.n
    xyz, obs, proj, ids = _observations(rec)
    for frame in meta["frames"]:
        for key, typ in _FRAME_SCHEMA.items():
            assert isinstance(frame[key], typ), key
        assert (d / frame["file_path"]).is_file() and frame["file_path"].startswith("images/")
        T = np.array(frame["transform_matrix"])
        assert T.shape == (4, 4) and np.allclose(T[3], [0, 0, 0, 1])
        im = by_name[frame["file_path"].split("/", 1)[1]]
        cam = rec.cameras[im.camera_id]
        assert (frame["w"], frame["h"]) == (cam.width, cam.height)
        np.testing.assert_allclose([frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"]], cam.params, rtol=1e-12)
        # after the axis flip, nerfstudio's camera is COLMAP's: cam2world_opencv = T @ diag(1, -1, -1, 1)
        c2w = T @ np.diag([1.0, -1, -1, 1])
        np.testing.assert_allclose(np.linalg.inv(c2w)[:3], _cam_from_world(im), atol=1e-9)
        # and a nerfstudio (OpenGL) projection of the COLMAP points lands where COLMAP's camera projects them
        sel = ids == im.image_id
        Xc = (xyz[sel] - T[:3, 3]) @ T[:3, :3]  # OpenGL camera frame: x right, y up, looking down -z
        u = frame["fl_x"] * Xc[:, 0] / -Xc[:, 2] + frame["cx"]
        v = -frame["fl_y"] * Xc[:, 1] / -Xc[:, 2] + frame["cy"]
        np.testing.assert_allclose(np.c_[u, v], proj[sel], atol=1e-6)


def test_ply_read_by_trimesh(recon, out):
    pc = trimesh.load(out[1]["ply"])
    assert isinstance(pc, trimesh.PointCloud)
    np.testing.assert_allclose(pc.vertices, recon.pts3d.reshape(-1, 3), rtol=1e-6)  # all pixels masked
    np.testing.assert_array_equal(np.asarray(pc.colors)[:, :3], recon.images.reshape(-1, 3))
    raw = out[1]["ply"].read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    assert b"format binary_little_endian 1.0" in header and b"property float confidence" in header
    data = np.frombuffer(body, np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3), ("confidence", "<f4")]))
    np.testing.assert_array_equal(data["confidence"], recon.conf.reshape(-1))


def test_glb_read_by_trimesh(recon, out):
    scene = trimesh.load(out[1]["glb"])
    assert isinstance(scene, trimesh.Scene)
    geoms = scene.geometry
    assert set(geoms) == {"points"} | {f"camera_{k:03d}" for k in range(recon.n)}
    np.testing.assert_allclose(geoms["points"].vertices, recon.pts3d.reshape(-1, 3) @ GLB_FROM_WORLD.T, rtol=1e-6)
    H, W = recon.hw
    for k in range(recon.n):
        v = np.asarray(geoms[f"camera_{k:03d}"].vertices) @ GLB_FROM_WORLD  # back to world (the flip is its inverse)
        np.testing.assert_allclose(v[0], recon.cam2world[k, :3, 3], atol=1e-5)  # apex = camera centre
        w2c = np.linalg.inv(recon.cam2world[k])
        Xc = v[1:] @ w2c[:3, :3].T + w2c[:3, 3]
        uv = Xc @ recon.intrinsics[k].T
        np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5],
                                                           [-0.5, H - 0.5]], atol=1e-3)  # float32 in glTF


def test_npz_views(recon, out):
    for k in range(recon.n):
        with np.load(out[1]["npz"] / f"view_{k}.npz") as z:
            np.testing.assert_array_equal(z["depth"], recon.depth[k])
            np.testing.assert_array_equal(z["conf"], recon.conf[k])
            np.testing.assert_array_equal(z["mask"], recon.mask[k])
            np.testing.assert_array_equal(z["image"], recon.images[k])
            np.testing.assert_allclose(z["K"], recon.intrinsics[k])
            np.testing.assert_allclose(z["cam2world"], recon.cam2world[k])
            np.testing.assert_allclose(z["K_orig"][:2], SCALE * recon.intrinsics[k][:2] + np.c_[
                np.zeros((2, 2)), recon.to_orig[k, :, 2]], rtol=1e-12)
            assert z["orig_size"].tolist() == recon.orig_sizes[k].tolist() and str(z["name"]) == recon.names[k]


def test_images_at_source_resolution(recon, out, tmp_path):
    import PIL.Image

    H, W = recon.hw
    v, u = np.mgrid[2:H - 2, 2:W - 2]
    for k, name in enumerate(recon.names):
        with PIL.Image.open(out[0] / "images" / name) as im:
            assert im.size == tuple(recon.orig_sizes[k])
            src = np.asarray(im.convert("RGB")).astype(float)
        # the working image sits where to_orig puts it: sampling the source at to_orig(u, v) gives it back,
        # much better than sampling one working pixel off
        def err(du):
            u1, v1 = np.einsum("ij,jhw->ihw", recon.to_orig[k], np.stack([u + du, v, np.ones_like(u)]))
            return np.abs(src[np.round(v1).astype(int), np.round(u1).astype(int)] - recon.images[k, v, u]).mean()
        assert err(0) < 12 and err(0) < 0.5 * min(err(1), err(-1))
    # a readable source file of the recorded size is copied byte for byte
    src = tmp_path / "src.png"
    W1, H1 = recon.orig_sizes[0]
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (H1, W1, 3), np.uint8)).save(src)
    r2 = recon.replace(paths=(str(src),) + ("",) * (recon.n - 1))
    export(r2, tmp_path / "o", formats=("nerfstudio",))
    assert (tmp_path / "o" / "images" / recon.names[0]).read_bytes() == src.read_bytes()
    # a source stored rotated (EXIF orientation 6) is written upright, without the tag (COLMAP ignores EXIF)
    upright = np.random.default_rng(2).integers(0, 255, (H1, W1, 3), np.uint8)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed = stored rotated 90 degrees clockwise
    rot = tmp_path / "rot.png"
    PIL.Image.fromarray(upright).transpose(PIL.Image.Transpose.ROTATE_90).save(rot, exif=exif)
    export(recon.replace(paths=(str(rot),) + ("",) * (recon.n - 1)), tmp_path / "r", formats=("colmap",))
    with PIL.Image.open(tmp_path / "r" / "images" / recon.names[0]) as im:
        assert im.getexif().get(0x0112, 1) == 1
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), upright)


def test_tracks_options(recon):
    t = build_tracks(recon, max_points=300, min_views=3)
    assert 0 < t.n_points <= 300 and t.track_lengths().min() >= 3
    # never twice the same view in one track
    pairs = t.obs_point * recon.n + t.obs_view
    assert len(np.unique(pairs)) == len(pairs)
    empty = build_tracks(recon, mask=np.zeros_like(recon.mask))
    assert empty.n_points == 0


def test_writers_on_their_own(recon, tmp_path):
    """The individual writers (recon first) with their defaults: tracks built by write_colmap itself."""
    from f3d_jax.export import write_colmap, write_glb, write_ply

    rec = _read_colmap(write_colmap(recon, tmp_path / "m", binary=False), False)
    assert rec.num_points3D() == build_tracks(recon).n_points > 0
    assert len(trimesh.load(write_ply(recon, tmp_path / "p.ply", max_points=50)).vertices) == 50
    assert len(trimesh.load(write_glb(recon, tmp_path / "s.glb", max_points=70)).geometry["points"].vertices) == 70


def test_colmap_without_points(recon, tmp_path):
    """Nothing above the threshold: a valid model with registered images and no points."""
    w = export(recon, tmp_path, formats=("colmap",), min_conf_thr=1e9)
    for binary in (True, False):
        rec = _read_colmap(w["colmap"], binary)
        assert rec.num_reg_images() == recon.n and rec.num_points3D() == 0


def test_export_options(recon, tmp_path):
    m = export_mask(recon, ExportOptions(min_conf_thr=3.0))
    np.testing.assert_array_equal(m, recon.conf > 3.0)
    w = export(recon, tmp_path, formats=("ply",), min_conf_thr=3.0, cloud_max_points=100, ply_confidence=False)
    pc = trimesh.load(w["ply"])
    assert len(pc.vertices) == 100 and b"confidence" not in w["ply"].read_bytes()[:400]
    with pytest.raises(ValueError, match="unknown format.*'obj'"):
        export(recon, tmp_path, formats=("obj",))
    with pytest.raises(TypeError, match="unknown option.*'conf_thr'"):
        export(recon, tmp_path, formats=("ply",), conf_thr=2)
