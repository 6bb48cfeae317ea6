"""`f3d demo` and `f3d reconstruct` end to end, each run once (module fixtures): the files other tools read are
read back with those tools (pycolmap, trimesh, JSON), the demo's poses are checked against its known cameras,
and a failed write (full disk) leaves the previous result intact."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pycolmap
import pytest
import trimesh

from PIL.ImageOps import exif_transpose

from conftest import fixture_path
from f3d_jax.cli.main import main
from f3d_jax.cli.options import DEMO_COMMAND
from f3d_jax.cli.summary import pose_errors
from f3d_jax.eval.synthetic import make_scene
from f3d_jax.export import Reconstruction
from f3d_jax.io import atomic


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A scratch cwd with a private XDG cache folder and no network (what a fresh clone sees)."""
    root = tmp_path_factory.mktemp("f3d_cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.chdir(root)
        yield root


@pytest.fixture(scope="module")
def demo_run(sandbox):
    rc, out, err = _run(["demo", "--quiet"])  # the README's main job, as it is (default --out f3d_demo)
    assert rc == 0, err
    return sandbox / "f3d_demo", out


LANDSCAPE_PHOTOS = ("Chateau1.png", "Chateau2.png", "exif_orientation6.jpg",
                    "2679C386-1DC0-4443-81B5-93D7EDE4AB37-83120-000041DADB2EA917.jpg")


@pytest.fixture(scope="module")
def reconstruct_run(sandbox, demo_run):
    """The fixture photos that load at 128x96 (4 of them, one rotated by its EXIF tag) plus two mirrored copies:
    6 views of the demo's size, so the alignment reuses the program the demo compiled (same shapes, same
    options), which keeps this test cheap."""
    ckpt = sandbox / "tiny.pth"
    with lzma.open(fixture_path("networks", "dust3r_linear", "checkpoint.pth.xz")) as f, open(ckpt, "wb") as g:
        shutil.copyfileobj(f, g)
    photos = fixture_path("networks", "image_preprocessing", "photos")
    (sandbox / "photos").mkdir()
    for name in LANDSCAPE_PHOTOS:
        shutil.copy(photos / name, sandbox / "photos" / name)
    for name in LANDSCAPE_PHOTOS[::3]:
        with PIL.Image.open(photos / name) as im:
            exif_transpose(im).transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT).save(
                sandbox / "photos" / f"mirrored_{Path(name).stem}.png")
    argv = ["reconstruct", "photos", "--model", str(ckpt), "--out", "out", "--size", "128"]
    rc, out, err = _run(argv)
    assert rc == 0, err
    return sandbox / "out", out, err, sandbox / "photos"


def _colmap_stats(folder: Path) -> tuple[pycolmap.Reconstruction, float, float]:
    rec = pycolmap.Reconstruction(str(folder / "colmap" / "sparse" / "0"))
    return rec, rec.compute_mean_track_length(), rec.compute_mean_reprojection_error()


def test_demo_writes_every_export_that_real_tools_read(demo_run):
    folder, stdout = demo_run
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("f3d demo: 6 views, 30 pairs") and "compile" in lines[0]
    assert lines[-1].endswith(DEMO_COMMAND)
    # COLMAP: the acceptance numbers
    rec, track, reproj = _colmap_stats(folder)
    assert rec.num_reg_images() == 6 and rec.num_points3D() > 1000
    assert track >= 2.0 and reproj < 1.5
    # the views were rendered at 256x192 and loaded at 128x96: the COLMAP cameras are at the source size
    assert {(c.width, c.height) for c in rec.cameras.values()} == {(256, 192)}
    recon = Reconstruction.load(folder / "reconstruction.npz")
    np.testing.assert_allclose(recon.to_orig[0], [[2, 0, 0.5], [0, 2, 0.5]], atol=1e-9)
    assert all(Path(p).is_file() and Path(p).parent == folder / "images" for p in recon.paths)
    # PLY, GLB (trimesh), transforms.json, per-view npz, summary.png
    cloud = trimesh.load(folder / "points.ply")
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) > 10_000
    scene = trimesh.load(folder / "scene.glb")
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) >= 7  # points + 6 frusta
    transforms = json.loads((folder / "transforms.json").read_text())
    assert len(transforms["frames"]) == 6 and (folder / transforms["ply_file_path"]).is_file()
    for frame in transforms["frames"]:
        assert (folder / frame["file_path"]).is_file() and np.asarray(frame["transform_matrix"]).shape == (4, 4)
    assert len(list((folder / "views").glob("*.npz"))) == 6
    with PIL.Image.open(folder / "summary.png") as im:
        assert im.format == "PNG" and im.size[0] >= 1000 and im.size[1] >= 600
    assert not [p for p in folder.parent.iterdir() if ".f3d-tmp-" in p.name or ".f3d-backup" in p.name]


def test_demo_poses_match_the_known_cameras(demo_run):
    folder, stdout = demo_run
    recon = Reconstruction.load(folder / "reconstruction.npz")
    known = make_scene(6, 96, 128, seed=0).cam2world  # the demo's scene (its defaults)
    err = pose_errors(recon.cam2world, known)
    assert err.rot_deg.max() < 2.0, err.rot_deg
    assert err.pos_err.max() < 0.05 * err.spread, err.pos_err / err.spread
    # the summary line reports the same numbers
    assert f"rotation error mean {err.rot_deg.mean():.2f} deg" in stdout


def test_reconstruct_on_the_fixture_photos_writes_every_export(reconstruct_run):
    folder, stdout, stderr, photos = reconstruct_run
    assert stdout.strip().splitlines()[-1].startswith("f3d reconstruct: 6 images, 30 pairs")
    for stage in ("model", "load", "inference", "align", "export"):
        assert f" {stage} " in stdout
    assert "align" in stderr and "decode" in stderr  # the progress bars (not --quiet)
    recon = Reconstruction.load(folder / "reconstruction.npz")
    assert recon.n == 6 and recon.images.shape == (6, 96, 128, 3)
    assert set(recon.names) == {p.name for p in photos.iterdir()}
    rec, _, _ = _colmap_stats(folder)
    assert rec.num_reg_images() == 6
    for image in rec.images.values():  # COLMAP cameras at each photo's own size (EXIF rotation applied)
        with PIL.Image.open(photos / image.name) as im:
            size = exif_transpose(im).size
        camera = rec.cameras[image.camera_id]
        assert (camera.width, camera.height) == size, image.name
    assert isinstance(trimesh.load(folder / "points.ply"), trimesh.PointCloud)
    assert isinstance(trimesh.load(folder / "scene.glb"), trimesh.Scene)
    assert len(json.loads((folder / "transforms.json").read_text())["frames"]) == 6
    assert len(list((folder / "views").glob("*.npz"))) == 6
    with PIL.Image.open(folder / "summary.png") as im:
        assert im.format == "PNG"


def test_export_subcommand_rewrites_formats(reconstruct_run, tmp_path):
    folder, *_ = reconstruct_run
    rc, out, err = _run(["export", str(folder), "--format", "ply", "colmap", "--out", str(tmp_path / "again")])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["colmap", "images", "points.ply"]
    a = trimesh.load(folder / "points.ply").vertices
    b = trimesh.load(tmp_path / "again" / "points.ply").vertices
    np.testing.assert_array_equal(a, b)


def test_view_serves_the_result(reconstruct_run, monkeypatch):
    import f3d_jax.viewer

    calls = []
    monkeypatch.setattr(f3d_jax.viewer, "serve", lambda *a, **k: calls.append((a, k)))
    folder, *_ = reconstruct_run
    rc, _, err = _run(["view", str(folder), "--port", "8123"])
    assert rc == 0, err
    assert calls == [((folder / "reconstruction.npz",), {"port": 8123, "host": "127.0.0.1", "block": True})]


def test_full_disk_keeps_the_previous_result(demo_run, monkeypatch):
    """A write that fails with ENOSPC (the third file): exit 1, one line, the previous result untouched, no
    temporary file or folder left."""
    folder, _ = demo_run
    before = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    make_temp_file = atomic._make_temp_file
    count = []

    def full(dst):
        count.append(dst)
        if len(count) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return make_temp_file(dst)

    monkeypatch.setattr(atomic, "_make_temp_file", full)
    rc, out, err = _run(["demo", "--quiet"])
    assert rc == 1
    assert err.strip().count("\n") == 0 and "no space left" in err and "Traceback" not in err
    after = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert after == before
    assert not [p for p in folder.parent.iterdir() if ".f3d-tmp-" in p.name or ".f3d-backup" in p.name]
