"""Parity of the Flax models with the official PyTorch ones (`networks/<case>` fixtures).

Every stored output and intermediate is compared with the fixtures README tolerance
`rtol=1e-5, atol=1e-5 * max(1, |ref|max)` (fp32 on CPU): tight enough that a LayerNorm eps of 1e-5 or
the tanh GELU fails.
"""

from __future__ import annotations

import numpy as np
import pytest

import f3d_jax
from conftest import fixture_path
from f3d_jax.models.croco import masked_mse, random_mask

STEREO = ("dust3r_linear", "dust3r_dpt", "mast3r")
CROCO = ("croco_v1", "croco_v2")


def assert_close(got, ref, name: str) -> None:
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    if ref.dtype.kind in "iub":
        np.testing.assert_array_equal(got, ref, err_msg=name)
        return
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())), err_msg=name)


def nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)


def compare_intermediate(inter: dict, key: str, ref: np.ndarray, name: str) -> None:
    """Fixture maps are NCHW; big maps are stored as first 32 channels + per-channel means (float64)."""
    if key.endswith(".first32ch"):
        assert_close(np.asarray(inter[key[: -len(".first32ch")]])[..., :32], nhwc(ref), name)
    elif key.endswith(".chanmean"):
        got = np.asarray(inter[key[: -len(".chanmean")]], np.float64).mean(axis=(1, 2))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()), err_msg=name)
    else:
        got = np.asarray(inter[key])
        assert_close(got, nhwc(ref) if ref.ndim == 4 else ref, name)


def view(inp, prefix: str) -> dict:
    return {"img": nhwc(inp[f"{prefix}.img"]), "true_shape": inp[f"{prefix}.true_shape"]}


@pytest.fixture(scope="module")
def stereo(pth_file):
    cache = {}

    def get(case: str, landscape_only: bool = False):
        if (case, landscape_only) not in cache:
            cache[case, landscape_only] = f3d_jax.load_model(pth_file(case), landscape_only=landscape_only)
        return cache[case, landscape_only]

    return get


def _npz(case: str, name: str):
    return np.load(fixture_path("networks", case, f"{name}.npz"))


@pytest.mark.parametrize("case", STEREO)
def test_stereo_forward_and_intermediates(stereo, case):
    inp, out, ref_inter = _npz(case, "inputs"), _npz(case, "outputs"), _npz(case, "intermediates")
    model = stereo(case)
    pred1, pred2, inter = model(view(inp, "forward.view1"), view(inp, "forward.view2"), return_intermediates=True)
    for v, pred in (("view1", pred1), ("view2", pred2)):
        for k in pred:
            assert_close(pred[k], out[f"forward.{v}.{k}"], f"{case} forward.{v}.{k}")
    assert set(pred2) >= {"pts3d_in_other_view", "conf"} and "pts3d" not in pred2
    keys = [k for k in ref_inter.files if not k.startswith("manyar.")]
    assert keys
    for key in keys:
        compare_intermediate(inter, key, ref_inter[key], f"{case} {key}")


@pytest.mark.parametrize("case", ["dust3r_linear", "dust3r_dpt"])  # the cases with a training-style batch
def test_stereo_training_orientation(stereo, case):
    """`landscape_only=True` (ManyAR): mixed landscape/portrait batch in landscape storage."""
    inp, out, ref_inter = _npz(case, "inputs"), _npz(case, "outputs"), _npz(case, "intermediates")
    model = stereo(case, landscape_only=True)
    assert model.config.manyar and model.config.landscape_only
    v1, v2 = view(inp, "manyar.view1"), view(inp, "manyar.view2")
    pred1, pred2, inter = model(v1, v2, return_intermediates=True)
    for v, pred in (("view1", pred1), ("view2", pred2)):
        for k in pred:
            assert_close(pred[k], out[f"manyar.{v}.{k}"], f"{case} manyar.{v}.{k}")
    for key in ref_inter.files:
        if not key.startswith("manyar."):
            continue
        name = key[len("manyar."):]
        if ".head." in name:  # per-orientation head calls: call0 = landscape entries, call1 = portrait
            v = name.split(".")[0]
            ts = v1["true_shape"] if v == "view1" else v2["true_shape"]
            portrait = ts[:, 1] < ts[:, 0]
            stage, call = name.split(".head.")[1].rsplit(".", 1)
            orient, sel = ("landscape", ~portrait) if call == "call0" else ("portrait", portrait)
            got = np.asarray(inter[f"{v}.head.{orient}.{stage}"])[sel]
            ref = ref_inter[key]
            assert_close(got, nhwc(ref) if ref.ndim == 4 else ref, f"{case} {key}")
        else:
            compare_intermediate(inter, name, ref_inter[key], f"{case} {key}")


@pytest.mark.parametrize("case", STEREO)
def test_pth_and_hf_give_identical_params(stereo, hf_folder, case):
    a = stereo(case)
    b = f3d_jax.load_model(hf_folder(case))
    assert a.config == b.config
    la, lb = dict(_flat(a.params)), dict(_flat(b.params))
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_array_equal(np.asarray(la[k]), np.asarray(lb[k]), err_msg=str(k))


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + (k,))
        else:
            yield prefix + (k,), v


@pytest.mark.parametrize("case", CROCO)
def test_croco_forward_losses_and_intermediates(pth_file, case):
    inp, out, ref_inter = _npz(case, "inputs"), _npz(case, "outputs"), _npz(case, "intermediates")
    model = f3d_jax.load_model(pth_file(case))
    o, mask, target, inter = model(nhwc(inp["img1"]), nhwc(inp["img2"]), mask=out["mask"], return_intermediates=True)
    assert_close(o, out["out"], "out")
    assert_close(mask, out["mask"], "mask")
    assert_close(target, out["target"], "target")
    for key, kw in (("loss.norm_pix_1", {}), ("loss.norm_pix_0", {"norm_pix_loss": False}),
                    ("loss.unmasked_norm_pix_1", {"masked": False})):
        np.testing.assert_allclose(masked_mse(o, mask, target, **kw), out[key], rtol=1e-5, err_msg=key)
    for key in ref_inter.files:
        compare_intermediate(inter, key, ref_inter[key], f"{case} {key}")


def test_croco_random_mask_from_key(pth_file):
    import jax

    model = f3d_jax.load_model(pth_file("croco_v2"))
    n, ratio = model.config.num_patches, model.config.mask_ratio
    mask = np.asarray(random_mask(jax.random.key(3), 4, n, ratio))
    assert mask.shape == (4, n) and (mask.sum(1) == int(ratio * n)).all()
    assert len({m.tobytes() for m in mask}) == 4  # a different mask per row
    img = np.zeros((1, *model.config.img_size, 3), np.float32)
    _, m1, _ = model(img, img, key=jax.random.key(5))
    _, m2, _ = model(img, img, key=jax.random.key(5))
    np.testing.assert_array_equal(m1, m2)
    with pytest.raises(ValueError, match="mask"):
        model(img, img)
