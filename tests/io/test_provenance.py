"""load_images provenance: `orig_shape`, `path` and the `to_orig` affine (working pixel -> source pixel).

The brute-force reference: a float ('F' mode) image whose pixels hold their own source coordinate goes through the
loader's exact PIL resize + crop; a resampling filter reproduces a linear ramp away from the borders, so every
interior working pixel must read the source coordinate that `to_orig` predicts for its centre.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
from conftest import fixture_path

from f3d_jax.io import load_images
from f3d_jax.io.images import _resize_crop_affine


def _ramp(W1: int, H1: int, axis: int) -> PIL.Image.Image:
    grid = np.meshgrid(np.arange(W1, dtype=np.float32), np.arange(H1, dtype=np.float32), indexing="xy")[axis]
    return PIL.Image.fromarray(np.ascontiguousarray(grid), mode="F")


@pytest.mark.parametrize("W1, H1, size, square_ok, patch", [
    (640, 480, 512, False, 16),   # downscale, 4:3, no crop
    (300, 400, 224, False, 16),   # 224 rule: short side to 224, centre square (crop in rows)
    (777, 555, 224, False, 14),   # 224 rule, landscape (crop in columns), anisotropic rounding
    (1000, 1000, 512, False, 16),  # square -> 4:3 crop
    (1000, 1000, 512, True, 16),   # square_ok keeps it square
    (257, 131, 512, False, 16),   # upscale (BICUBIC) with a crop to multiples of 16
    (700, 500, 336, False, 14),   # odd patch size: a fractional box rounded by PIL
])
def test_to_orig_matches_brute_force(W1, H1, size, square_ok, patch):
    out_x, A = _resize_crop_affine(_ramp(W1, H1, 0), size, square_ok, patch)
    out_y, A_y = _resize_crop_affine(_ramp(W1, H1, 1), size, square_ok, patch)
    np.testing.assert_array_equal(A, A_y)
    X, Y = np.asarray(out_x, np.float64), np.asarray(out_y, np.float64)
    h, w = X.shape
    assert A.shape == (2, 3) and A.dtype == np.float64 and A[0, 1] == A[1, 0] == 0
    u, v = np.meshgrid(np.arange(w), np.arange(h), indexing="xy")
    pred = np.einsum("ij,jhw->ihw", A, np.stack([u, v, np.ones_like(u)]).astype(np.float64))
    b = 4  # the filters renormalise their clipped kernels at the borders: a ramp is exact only inside
    np.testing.assert_allclose(pred[0][b:-b, b:-b], X[b:-b, b:-b], atol=0.01)
    np.testing.assert_allclose(pred[1][b:-b, b:-b], Y[b:-b, b:-b], atol=0.01)
    # the four image corners (pixel edges) land inside the source image
    corners = A @ np.array([[-0.5, -0.5, 1], [w - 0.5, h - 0.5, 1]]).T
    assert corners[0].min() >= -0.5 - 1e-9 and corners[0].max() <= W1 - 0.5 + 1e-9
    assert corners[1].min() >= -0.5 - 1e-9 and corners[1].max() <= H1 - 0.5 + 1e-9


@pytest.mark.parametrize("size", [224, 512])
def test_load_images_provenance(size):
    root = fixture_path("networks", "image_preprocessing")
    photos = [root / "photos" / n for n in json.loads((root / "meta.json").read_text())["photos"]]
    out = load_images(photos, size, verbose=False)
    for d, path in zip(out, photos):
        with PIL.Image.open(path) as raw:
            exif_rotated = raw.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            W1, H1 = raw.size[::-1] if exif_rotated else raw.size
            _, want = _resize_crop_affine(PIL.Image.new("L", (W1, H1)), size, False, 16)
        assert d["path"] == str(path)
        assert d["orig_shape"].dtype == np.int32 and d["orig_shape"].tolist() == [[H1, W1]]
        assert d["to_orig"].shape == (1, 2, 3) and d["to_orig"].dtype == np.float64
        np.testing.assert_array_equal(d["to_orig"][0], want)
        # the working image spans the source: scale factors W1 / w_resized, and the crop inside the source
        H, W = d["true_shape"][0]
        A = d["to_orig"][0]
        assert 0 < A[0, 0] * W <= W1 + 1e-6 and 0 < A[1, 1] * H <= H1 + 1e-6
    exif = out[4]  # stored 300x400 portrait with orientation 6: shown (and measured) as 400x300
    assert exif["orig_shape"].tolist() == [[300, 400]]


def test_in_memory_images_have_no_path():
    arr = np.zeros((100, 200, 3), np.uint8)
    (d,) = load_images([arr], 64, verbose=False)
    assert d["path"] == "" and d["orig_shape"].tolist() == [[100, 200]]
    # 200x100 -> 64x32 (factor 3.125 on both axes), no crop
    np.testing.assert_allclose(d["to_orig"][0], [[3.125, 0, 1.0625], [0, 3.125, 1.0625]])
