"""MASt3R-SfM end to end.

* Accuracy: `sfm_from_predictions` on the `alignment/sparse_ga_4v` stand-in network (fixture predictions served
  through the model contract): the COLMAP model read back with pycolmap has the 4 images registered with the
  scene's cameras, every point reprojects onto its observations, and the track points lie on the ground-truth
  surface.
* The command line on a tiny MASt3R checkpoint (`tests/sfm/tiny.py`) and three photos: `f3d reconstruct
  --align sparse --graph retrieval` (pycolmap reads the model: cameras at the SOURCE resolution, tracks
  consistent) and `f3d match` (the drawing), plus their one-line errors.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pycolmap
import pytest
from PIL.ImageOps import exif_transpose

from conftest import fixture_path
from f3d_jax.cli.main import main
from f3d_jax.export import Reconstruction
from f3d_jax.geometry.procrustes import umeyama
from f3d_jax.infer.pairs import make_pairs
from f3d_jax.sfm import sfm_from_predictions
from f3d_jax.sfm.tracks import reprojection_errors
from tests.sfm.tiny import write_tiny_mast3r
from tests.sparse.standin import StandIn, load_case

PHOTOS = ("Chateau1.png", "Chateau2.png", "exif_orientation6.jpg")  # load at 64x48 (crops and a resize)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _colmap_consistency(model: pycolmap.Reconstruction, tol_px: np.ndarray | float) -> int:
    """Every track element's 2D point refers back to its 3D point and the point projects within `tol_px` (per
    image id, source pixels) of it, with COLMAP's own camera model. Returns the number of observations."""
    n_obs = 0
    for pid, p in model.points3D.items():
        assert p.track.length() >= 2
        for el in p.track.elements:
            image = model.images[el.image_id]
            p2d = image.points2D[el.point2D_idx]
            assert p2d.point3D_id == pid
            xy = image.project_point(p.xyz)
            assert xy is not None
            tol = tol_px if np.isscalar(tol_px) else tol_px[el.image_id]
            assert np.linalg.norm(np.asarray(xy) - np.asarray(p2d.xy)) <= tol, (pid, el.image_id)
            n_obs += 1
    return n_obs


# ---------------------------------------------------------------------------------------------------------------
# accuracy on the stand-in network


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory):
    case_dir = fixture_path("alignment", "sparse_ga_4v")
    inp, _, gt = load_case(case_dir)
    n, H, W = inp["images"].shape[:3]
    imgs = [dict(img=(inp["images"][k][None].astype(np.float32) / 127.5 - 1), true_shape=np.array([[H, W]], np.int32),
                 idx=k, instance=str(k)) for k in range(n)]
    pairs = make_pairs(imgs, "complete", symmetrize=True)
    out = tmp_path_factory.mktemp("sfm_standin")
    # the MASt3R demo settings, as tests/sparse run them (same shapes: the compiled stages are shared)
    res = sfm_from_predictions(imgs, pairs, StandIn(inp), out_dir=out, formats=("colmap", "reconstruction"),
                               niter1=300, niter2=300, matching_conf_thr=0.0)
    return res, gt, out, json.loads((case_dir / "metrics.json").read_text())


def test_standin_colmap_model_is_consistent_and_accurate(standin_run):
    res, gt, out, metrics = standin_run
    model = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert model.num_reg_images() == 4 and model.num_points3D() == res.track_stats.n_points > 200
    recon = res.reconstruction
    # the written cameras are the scene's: world-to-camera of cam2world, K at the (here identical) source size
    for image in model.images.values():
        k = image.image_id - 1
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        assert np.abs(w2c @ res.scene.cam2world[k] - np.eye(4)).max() < 1e-5
        cam = model.cameras[image.camera_id]
        assert (cam.width, cam.height) == (192, 128)
        assert np.allclose(cam.params, [*np.diag(res.scene.intrinsics[k])[:2], *(res.scene.intrinsics[k][:2, 2] + 0.5)])
    # every observation within max_reproj_error (working = source pixels here) of its point, pycolmap's projection
    n_obs = _colmap_consistency(model, 4.0 + 1e-6)
    assert n_obs == res.track_stats.n_observations and res.track_stats.mean_track_length > 2.1
    assert res.track_stats.median_reproj_error < 1.0
    errs = reprojection_errors(recon.tracks, recon.intrinsics, recon.cam2world)
    assert abs(errs.mean() - res.track_stats.mean_reproj_error) < 1e-9
    # track points on the true surface: map the estimate onto the ground truth by the Sim(3) of the camera centres,
    # then compare each point's depth in each observing camera with the true depth at the observed pixel
    s, R, t = umeyama(res.scene.cam2world[:, :3, 3], gt["cam2world"][:, :3, 3])
    X = (s * recon.tracks.xyz @ R.T) + t
    tr = recon.tracks
    w2c = np.linalg.inv(gt["cam2world"])[tr.obs_view]
    z = np.einsum("mj,mj->m", w2c[:, 2, :3], X[tr.obs_point]) + w2c[:, 2, 3]
    u, v = np.round(tr.obs_uv).astype(int).T
    z_true = gt["depth"][tr.obs_view, v, u]
    rel = np.abs(z - z_true) / z_true
    # the aligned dense depth at the same pixels (what the tracks start from): the refinement does not lose to it
    rel_dense = np.abs(s * recon.depth[tr.obs_view, v, u] - z_true) / z_true
    assert np.median(rel) < 0.02 and np.mean(rel < 0.05) > 0.85, (np.median(rel), np.mean(rel < 0.05))
    assert np.median(rel) <= np.median(rel_dense), (np.median(rel), np.median(rel_dense))
    # the saved reconstruction carries the same tracks (f3d export / f3d view read it)
    loaded = Reconstruction.load(res.written["reconstruction"])
    assert loaded.tracks is not None and np.array_equal(loaded.tracks.obs_uv, tr.obs_uv)


# ---------------------------------------------------------------------------------------------------------------
# the command line on a tiny MASt3R


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfm_cli")
    model = write_tiny_mast3r(fixture_path("networks", "mast3r", "hf"), root / "tiny_mast3r")
    photos = root / "photos"
    photos.mkdir()
    src = fixture_path("networks", "image_preprocessing", "photos")
    for name in PHOTOS:
        shutil.copy(src / name, photos / name)
    dust3r = root / "tiny_dust3r.pth"
    with lzma.open(fixture_path("networks", "dust3r_linear", "checkpoint.pth.xz")) as f, open(dust3r, "wb") as g:
        shutil.copyfileobj(f, g)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield dict(root=root, model=model, photos=photos, dust3r=dust3r)


@pytest.fixture(scope="module")
def sfm_cli_run(cli_inputs):
    out = cli_inputs["root"] / "out"
    rc, stdout, stderr = _run(["reconstruct", str(cli_inputs["photos"]), "--align", "sparse", "--graph", "retrieval",
                               "--model", str(cli_inputs["model"]), "--out", str(out), "--size", "64",
                               "--niter1", "60", "--niter2", "0", "--format", "colmap", "ply", "--quiet"])
    # (the fine stage runs in the stand-in test, every format in tests/cli: the same writers)
    assert rc == 0, stderr
    return out, stdout


def test_cli_sparse_reconstruct_writes_a_colmap_model_pycolmap_reads(sfm_cli_run, cli_inputs):
    out, stdout = sfm_cli_run
    assert "sparse alignment" in stdout and "f3d reconstruct: 3 images, " in stdout, stdout
    # retrieval-1-2 on 3 images: one keyframe, each image with its nearest other image; symmetrized
    n_pairs = int(stdout.split("3 images, ")[1].split(" pairs")[0])
    assert n_pairs in (4, 6), stdout
    model = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert model.num_reg_images() == 3
    recon = Reconstruction.load(out / "reconstruction.npz")
    assert recon.tracks is not None and model.num_points3D() == recon.tracks.n_points > 0
    # cameras at the source resolution (EXIF-rotated), names as the files; the tolerance of each image is the
    # working-pixel bound scaled to its source pixels
    tol = {}
    for image in model.images.values():
        with PIL.Image.open(cli_inputs["photos"] / image.name) as im:
            size = exif_transpose(im).size
        cam = model.cameras[image.camera_id]
        assert (cam.width, cam.height) == size
        k = image.image_id - 1
        scale = abs(np.linalg.det(recon.to_orig[k][:, :2])) ** 0.5
        assert scale > 1.5  # 224 or 300 source pixels per 48 working rows
        assert np.allclose(cam.params[:2], scale * np.diag(recon.intrinsics[k])[:2], rtol=1e-6)
        tol[image.image_id] = 4.0 * scale + 1e-6
    assert sorted(im.name for im in model.images.values()) == sorted(PHOTOS)
    assert _colmap_consistency(model, tol) == len(recon.tracks.obs_view)
    for name in ("points.ply", "summary.png"):
        assert (out / name).is_file(), name


def test_cli_match_draws_the_matches(cli_inputs):
    import f3d_jax
    from f3d_jax.export.reconstruction import images_to_uint8

    photos, png = cli_inputs["photos"], cli_inputs["root"] / "matches.png"
    rc, stdout, stderr = _run(["match", str(photos / PHOTOS[0]), str(photos / PHOTOS[1]), "--model",
                               str(cli_inputs["model"]), "--out", str(png), "--size", "64", "--max-draw", "25",
                               "--quiet"])
    assert rc == 0, stderr
    n = int(stdout.split("f3d match: ")[1].split(" matches")[0])
    assert n > 25 and "25 drawn" in stdout, stdout
    with PIL.Image.open(png) as im:
        drawn = np.asarray(im.convert("RGB"))
    plain = np.concatenate(images_to_uint8(f3d_jax.load_images([str(photos / p) for p in PHOTOS[:2]], 64,
                                                               verbose=False)), axis=1)
    assert drawn.shape == plain.shape == (48, 128, 3)
    changed = (drawn != plain).any(-1)
    assert 150 < changed.sum() < 0.6 * changed.size  # lines and circles, not a blank or repainted canvas
    assert changed[:, :64].any() and changed[:, 64:].any()


@pytest.mark.parametrize("argv, needle", [
    (["{photo}", "{missing}", "--model", "{model}"], "no such file"),
    (["{photo}", "{photo}", "--model", "{dust3r}"], "has no descriptors to match"),
    (["{photo}", "{photo}", "--model", "{model}", "--out", "{root}"], "is a folder"),
    (["{photo}", "{photo}", "--model", "{model}", "--max-draw", "-1"], "--max-draw must be >= 0"),
])
def test_cli_match_errors_are_one_line(cli_inputs, argv, needle, capsys):
    values = dict(photo=cli_inputs["photos"] / PHOTOS[0], missing=cli_inputs["root"] / "nope.png",
                  model=cli_inputs["model"], dust3r=cli_inputs["dust3r"], root=cli_inputs["root"])
    rc = main(["match", *[a.format(**values) for a in argv], "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err



def test_run_sfm_refuses_bad_input_before_the_network(cli_inputs, tmp_path):
    import f3d_jax

    src = fixture_path("networks", "image_preprocessing", "photos")
    with pytest.raises(ValueError, match="must be a MASt3R model"):
        f3d_jax.run_sfm(cli_inputs["photos"], str(cli_inputs["dust3r"]), size=64, progress=False)
    model = f3d_jax.load_model(cli_inputs["model"])
    with pytest.raises(ValueError, match="at least 2 images"):
        f3d_jax.run_sfm([str(cli_inputs["photos"] / PHOTOS[0])], model, size=64, progress=False)
    mixed = [str(src / "01D90321-69C8-439F-B0B0-E87E7634741C-83120-000041DAE419D7AE.jpg"),  # portrait
             str(src / "2679C386-1DC0-4443-81B5-93D7EDE4AB37-83120-000041DADB2EA917.jpg")]  # landscape
    with pytest.raises(ValueError, match=r"different sizes \(48x64: 01D90321.*64x48: 2679C386"):
        f3d_jax.run_sfm(mixed, model, size=64, progress=False)
