"""load_images against the official loader's outputs (fixtures) and hand-derived resize/crop rules."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import fixture_path

from f3d_jax.io import ImageLoadError, ShapeWarning, SkippedImageWarning, load_images

PREP = ("networks", "image_preprocessing")


def _u8(img: np.ndarray) -> np.ndarray:
    """[-1, 1] float image -> the uint8 pixels it encodes (README: round((x * 0.5 + 0.5) * 255))."""
    return np.round((img * 0.5 + 0.5) * 255).astype(np.int64)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    root = fixture_path(*PREP)
    meta = json.loads((root / "meta.json").read_text())
    return [root / "photos" / name for name in meta["photos"]]


@pytest.fixture(scope="module", params=[224, 512])
def loaded(request, photos):
    size = request.param
    ref = np.load(fixture_path(*PREP, f"load_images_size{size}.npz"))
    return size, load_images(photos, size, verbose=False), ref


def test_matches_official_every_photo(loaded, photos):
    size, out, ref = loaded
    assert len(out) == len(photos) == 5
    for k, got in enumerate(out):
        want = ref[f"image{k}.img"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
        assert got["img"].dtype == np.float32 and got["img"].shape == want.shape, (size, k)
        # PIL decodes and resizes here exactly as upstream: uint8 pixels equal, no grey-level slack.
        np.testing.assert_array_equal(_u8(got["img"]), _u8(want), err_msg=f"size {size} photo {k}")
        np.testing.assert_array_equal(got["img"], want)  # and the float conversion is bit-identical
        assert got["true_shape"].dtype == np.int32
        np.testing.assert_array_equal(got["true_shape"], ref[f"image{k}.true_shape"])
        assert got["idx"] == int(ref[f"image{k}.idx"]) == k
        assert got["instance"] == str(ref[f"image{k}.instance"]) == str(k)


def test_exif_orientation_applied(loaded, photos):
    size, out, _ = loaded
    raw = PIL.Image.open(photos[4])
    assert raw.size == (300, 400) and raw.getexif().get(0x0112) == 6  # stored portrait, shown landscape
    expected = (224, 224) if size == 224 else (384, 512)
    assert tuple(out[4]["true_shape"][0]) == expected
    # The EXIF photo is the landscape photo (index 3) downscaled: upright, their content agrees.
    assert np.abs(out[4]["img"] - out[3]["img"]).mean() < 0.05


@pytest.mark.parametrize(
    "case,size,names",
    [
        ("dust3r_linear", 128, ["Chateau1.png", "Chateau2.png"]),
        ("mast3r", 64, ["Chateau1.png", "Chateau2.png"]),  # square -> 4:3 (48x64)
        ("dust3r_dpt", 64, ["01D90321-69C8-439F-B0B0-E87E7634741C-83120-000041DAE419D7AE.jpg"]),
    ],
)
def test_matches_model_fixture_inputs(case, size, names):
    ref = np.load(fixture_path("networks", case, "inputs.npz"))
    out = load_images([fixture_path(*PREP, "photos", n) for n in names], size, verbose=False)
    for k, got in enumerate(out):
        np.testing.assert_array_equal(got["img"], ref[f"image{k}.img"].transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(got["true_shape"], ref[f"image{k}.true_shape"])


def _reference(img: PIL.Image.Image, new_size: tuple[int, int], resample, box) -> np.ndarray:
    return np.asarray(img.resize(new_size, resample).crop(box), dtype=np.uint8)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)


def test_long_side_rule_hand_derived(noise):
    # 300x200 at 512: grows (BICUBIC) to 512 x round(200 * 512 / 300) = 341; cx, cy = 256, 170;
    # rows ((2 * 170) // 16) * 16 = 336 -> crop (0, 2, 512, 338).
    (out,) = load_images([noise], 512, verbose=False)
    assert tuple(out["true_shape"][0]) == (336, 512)
    want = _reference(PIL.Image.fromarray(noise), (512, 341), PIL.Image.Resampling.BICUBIC, (0, 2, 512, 338))
    np.testing.assert_array_equal(_u8(out["img"][0]), want)


def test_short_side_rule_hand_derived(noise):
    # 300x200 at 224: long side target round(224 * 1.5) = 336 >= 300 -> BICUBIC to 336x224,
    # centre square of half min(168, 112) = 112 -> crop (56, 0, 280, 224).
    (out,) = load_images([noise], 224, verbose=False)
    want = _reference(PIL.Image.fromarray(noise), (336, 224), PIL.Image.Resampling.BICUBIC, (56, 0, 280, 224))
    np.testing.assert_array_equal(_u8(out["img"][0]), want)
    # 1000x400: target round(224 * 2.5) = 560 < 1000 -> LANCZOS to 560x224, crop (168, 0, 392, 224).
    wide = np.random.default_rng(1).integers(0, 256, size=(400, 1000, 3), dtype=np.uint8)
    (out,) = load_images([wide], 224, verbose=False)
    want = _reference(PIL.Image.fromarray(wide), (560, 224), PIL.Image.Resampling.LANCZOS, (168, 0, 392, 224))
    np.testing.assert_array_equal(_u8(out["img"][0]), want)


def test_patch_size_14(noise):
    # 400x300 at 518 -> 518x389 (round(388.5) = 388, half to even);
    # cx, cy = 259, 194: cols ((518) // 14) * 14 = 518, rows (388 // 14) * 14 = 378.
    img = np.random.default_rng(2).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    (out,) = load_images([img], 518, patch_size=14, verbose=False)
    assert tuple(out["true_shape"][0]) == (378, 518)
    want = _reference(PIL.Image.fromarray(img), (518, 388), PIL.Image.Resampling.BICUBIC, (0, 5, 518, 383))
    np.testing.assert_array_equal(_u8(out["img"][0]), want)


def test_square_inputs_and_the_official_pitfall(photos):
    chateau = photos[0]  # 224x224
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ShapeWarning at multiples of 64
        assert tuple(load_images([chateau], 64, verbose=False)[0]["true_shape"][0]) == (48, 64)
    assert tuple(load_images([chateau], 96, square_ok=True, verbose=False)[0]["true_shape"][0]) == (96, 96)
    # size 96, square_ok=False: halfh = 3 * 48 / 4 = 36 -> 72 rows, not a multiple of 16. Kept, warned.
    with pytest.warns(ShapeWarning, match="72"):
        (out,) = load_images([chateau], 96, verbose=False)
    assert tuple(out["true_shape"][0]) == (72, 96)


def test_in_memory_inputs_equal_paths(photos):
    by_path = load_images(photos[:3], 512, verbose=False)
    rgba = np.asarray(PIL.Image.open(photos[0]))  # (224, 224, 4): alpha must be dropped
    assert rgba.shape == (224, 224, 4)
    mixed = load_images([rgba, PIL.Image.open(photos[1]), str(photos[2])], 512, verbose=False)
    for a, b in zip(by_path, mixed):
        np.testing.assert_array_equal(a["img"], b["img"])
        np.testing.assert_array_equal(a["true_shape"], b["true_shape"])
    assert [m["idx"] for m in mixed] == [0, 1, 2] and [m["instance"] for m in mixed] == ["0", "1", "2"]
    # A PIL image keeps its EXIF orientation handling; a grey array becomes RGB.
    exif = load_images(PIL.Image.open(photos[4]), 512, verbose=False)
    np.testing.assert_array_equal(exif[0]["img"], load_images(photos[4], 512, verbose=False)[0]["img"])
    grey = load_images([np.full((40, 60), 7, np.uint8)], 64, verbose=False)[0]["img"]
    np.testing.assert_allclose(grey, 7 / 255 * 2 - 1, atol=1e-6)
    stack = load_images(np.zeros((2, 30, 40, 3), np.uint8), 64, verbose=False)
    assert len(stack) == 2 and stack[1]["img"].shape == (1, 48, 64, 3)


def test_folder_sorted_and_unsupported_skipped(tmp_path, photos):
    # Copies named so that sorted order differs from the fixture order.
    names = ["b.png", "a.PNG", "c.jpg"]
    for name, src in zip(names, photos[:3]):
        shutil.copy(src, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    with pytest.warns(SkippedImageWarning) as rec:
        out = load_images(tmp_path, 512, verbose=False)
    messages = " ".join(str(w.message) for w in rec)
    assert len(rec) == 2 and "notes.txt" in messages and "folder" in messages
    ref = load_images([photos[1], photos[0], photos[2]], 512, verbose=False)  # a.PNG, b.png, c.jpg
    assert len(out) == 3
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a["img"], b["img"])
    assert [o["idx"] for o in out] == [0, 1, 2]


def test_unsupported_file_in_list_is_skipped(tmp_path, photos):
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    with pytest.warns(SkippedImageWarning, match="x.txt"):
        out = load_images([txt, photos[0]], 224, verbose=False)
    assert len(out) == 1 and out[0]["idx"] == 0


def test_verbose_prints_like_official(capsys, photos):
    load_images([photos[0]], 512, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ">> Loading a list of 1 images"
    assert lines[1] == f" - adding {photos[0]} with resolution 224x224 --> 512x384"
    assert lines[2] == " (Found 1 images)"


def test_bad_inputs(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError, match="missing.jpg: no such file"):
        load_images([missing], 512, verbose=False)
    with pytest.raises(ImageLoadError, match="no such file or folder"):
        load_images(str(tmp_path / "nope"), 512, verbose=False)
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is text, not a JPEG")
    with pytest.raises(ImageLoadError, match="fake.jpg"):
        load_images([fake], 512, verbose=False)
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(ImageLoadError, match="empty.png: empty file"):
        load_images([empty], 512, verbose=False)
    trunc = tmp_path / "trunc.jpg"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        load_images([trunc], 64, verbose=False)
    only_txt = tmp_path / "only_txt"
    only_txt.mkdir()
    (only_txt / "a.txt").write_text("x")
    with pytest.warns(SkippedImageWarning), pytest.raises(ImageLoadError, match="no images found"):
        load_images(only_txt, 512, verbose=False)
    with pytest.raises(ImageLoadError, match=r"images\[0\].*uint8"):
        load_images([np.zeros((8, 8, 3), np.float32)], 64, verbose=False)
    with pytest.raises(ImageLoadError, match=r"images\[1\].*shape"):
        load_images([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)], 64, verbose=False)
    with pytest.raises(ImageLoadError, match=r"images\[0\].*int"):
        load_images([3], 64, verbose=False)
    with pytest.raises(ValueError, match="size"):
        load_images([np.zeros((8, 8, 3), np.uint8)], 0, verbose=False)
    with pytest.raises(ImageLoadError, match="empty crop"):
        load_images([np.zeros((8, 8, 3), np.uint8)], 8, verbose=False)
