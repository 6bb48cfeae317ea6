"""The fallback similarity (mean-pooled, L2-normalised encoder features) on a tiny random model, against a
brute-force numpy pooling of the encoder output of each image alone."""

from __future__ import annotations

import numpy as np
import pytest

import f3d_jax
from f3d_jax.retrieval import pooled_descriptors, similarity_matrix
from f3d_jax.retrieval.encode import static_batch

from .tiny import encoder_tokens, tiny_images, tiny_model

SHAPES = [(64, 64), (64, 96), (64, 64), (64, 64), (64, 96)]  # two sizes: two shape groups, one padded batch each


def reference_descriptors(model, imgs) -> np.ndarray:
    """Per image, encoded on its own (with noise rows in its batch): the encoder output averaged over tokens in
    float64 and normalised (numpy)."""
    g = np.stack([t.mean(0) for t in encoder_tokens(model, imgs)])
    return g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def imgs():
    return tiny_images(SHAPES)


def test_fallback_matches_brute_force(model, imgs):
    """Batched, padded, shape-grouped descriptors equal the per-image numpy pooling; the matrix is their Gram
    matrix: exactly symmetric, diagonal 1 and each row's maximum."""
    ref = reference_descriptors(model, imgs)
    g = pooled_descriptors(model, imgs, batch_size=4)
    assert g.shape == (5, 32) and g.dtype == np.float32
    np.testing.assert_allclose(g, ref, atol=2e-6)
    s = similarity_matrix(model, imgs, batch_size=4)
    assert s.shape == (5, 5) and s.dtype == np.float32
    np.testing.assert_array_equal(s, s.T)
    np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-6)
    np.testing.assert_allclose(s, ref @ ref.T, atol=5e-6)
    off = s - 2 * np.eye(5)
    assert np.all(np.diag(s) > off.max(1))
    assert s.min() < 0.99  # random images are not all alike: the test can tell them apart


def test_fallback_invariances(model, imgs):
    """Reordering the images reorders the matrix (other padding rows); more images of a size than the batch size
    (two batches, the second padded) change nothing; an exact copy scores 1 with its original and a slightly
    perturbed copy ranks right after it."""
    s = similarity_matrix(model, imgs, batch_size=4)
    perm = [3, 0, 4, 1, 2]
    sp = similarity_matrix(model, [imgs[k] for k in perm], batch_size=4)
    np.testing.assert_allclose(sp, s[np.ix_(perm, perm)], atol=2e-6)
    rng = np.random.default_rng(5)
    near = dict(imgs[0], img=np.clip(imgs[0]["img"] + 0.02 * rng.standard_normal(imgs[0]["img"].shape), -1, 1)
                .astype(np.float32))
    s2 = similarity_matrix(model, imgs + [dict(imgs[0]), near], batch_size=4)  # 64x64: batches of 4, 1 + 3 padding
    assert s2.shape == (7, 7)
    np.testing.assert_allclose(s2[:5, :5], s, atol=2e-6)
    assert s2[0, 5] == pytest.approx(1.0, abs=1e-6)
    others = s2[0, 1:5]
    assert s2[0, 6] > others.max() + 1e-3


def test_static_batch_sizes():
    """Groups smaller than the batch size run at the next power of two, never at 1."""
    assert [static_batch(n, 8) for n in (1, 2, 3, 5, 8, 9, 20)] == [2, 2, 4, 8, 8, 8, 8]
    assert static_batch(1, 1) == 2 and static_batch(3, 3) == 3


def test_fallback_bad_input(model, imgs):
    with pytest.raises(ValueError, match="imgs is empty"):
        similarity_matrix(model, [])
    with pytest.raises(ValueError, match=r"imgs\[1\]\['img'\] must have shape \(1, H, W, 3\)"):
        similarity_matrix(model, [imgs[0], dict(imgs[1], img=imgs[1]["img"][0])])
    with pytest.raises(ValueError, match="list of image dicts"):
        similarity_matrix(model, imgs[0])
    with pytest.raises(TypeError, match="DUSt3R / MASt3R f3d_jax Model"):
        similarity_matrix(lambda a, b: None, imgs)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        similarity_matrix(model, imgs, batch_size=0)
    assert f3d_jax.retrieval.similarity_matrix is similarity_matrix
