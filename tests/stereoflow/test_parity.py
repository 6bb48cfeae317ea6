"""CroCo-Stereo / CroCo-Flow against the official outputs (../shared/fixtures/stereoflow, README tolerances):
the forward and every intermediate, per-tile outputs, tiled inference in both confidence modes, the
up-resize path, the tile offsets, and the batched tiles sharded over the 8 test devices.

Compilations are shared on purpose (the network is the expensive part): per case one forward of 2 pairs
with intermediates (also the 2 tiles of the up-resize case), one call over all tiles of the tiled image
(shared with the CLI test); one sharded call over 8 tiles for the multi-image check.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from f3d_jax.nn.layers import resize_bilinear_align_corners
from f3d_jax.stereoflow import predict_tiles, stitch_tiles, tiled_pred
from f3d_jax.stereoflow.formats import img_to_tensor

from .conftest import CASES, assert_backbone_close, assert_head_close, nhwc

BACKBONE = ("patch_embed", "enc_block", "enc_norm", "decoder_embed", "dec_block", "dec_norm")


def _pair(inputs: dict, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    return nhwc(inputs[f"{prefix}.img1"]), nhwc(inputs[f"{prefix}.img2"])


def _head_extra(model, inter: dict) -> dict:
    """The two head stages the fused output head does not materialise: conv 3x3 256->128 of refinenet1's
    output, then the x2 bilinear (align_corners=True) upsampling."""
    h = model.params["head"]["dpt"]["head"]["0"]
    conv0 = jax.lax.conv_general_dilated(inter["head.refinenet1"], h["kernel"], (1, 1), [(1, 1), (1, 1)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=jax.lax.Precision.HIGHEST) + h["bias"]
    return {"head.head_conv0": conv0,
            "head.head_interp": resize_bilinear_align_corners(conv0, 2 * conv0.shape[1], 2 * conv0.shape[2])}


@pytest.mark.parametrize("case", CASES)
def test_forward_and_every_intermediate(case, sf_model, sf_npz):
    model, inputs, outputs, ref = sf_model(case), sf_npz(case, "inputs"), sf_npz(case, "outputs"), \
        sf_npz(case, "intermediates")
    # the official img_to_tensor of the uint8 photos, bit for bit
    for k in ("img1", "img2"):
        np.testing.assert_array_equal(img_to_tensor(inputs[f"forward.image{k[-1]}_uint8"]), nhwc(inputs[f"forward.{k}"]))
    img1, img2 = _pair(inputs, "forward")
    out, inter = model(img1, img2, return_intermediates=True)
    assert out.shape == img1.shape[:3] + (model.config.num_channels,)
    assert_head_close(out, nhwc(outputs["forward.out"]), "forward.out")
    # split_prediction_conf: the confidence is the last channel, raw
    assert_head_close(out[..., :-1], nhwc(outputs["forward.pred"]))
    assert_head_close(out[..., -1:], nhwc(outputs["forward.conf"]))
    inter = {**inter, **_head_extra(model, inter)}
    compared = set()
    for key, want in ref.items():
        name, _, part = key.partition(".first8ch") if ".first8ch" in key else key.partition(".chanmean")
        got = np.asarray(inter[name])
        if key.endswith(".pos"):
            np.testing.assert_array_equal(got, want)  # positions (y, x) exactly
        elif got.ndim == 4:  # NHWC map vs NCHW reference (maybe reduced)
            if key.endswith(".first8ch"):
                assert_head_close(got[..., :8], nhwc(want), key)
            elif key.endswith(".chanmean"):
                np.testing.assert_allclose(got.astype(np.float64).mean(axis=(1, 2)), want, rtol=1e-4,
                                           atol=3e-5 * max(1.0, np.abs(want).max()), err_msg=key)
            else:
                assert_head_close(got, nhwc(want), key)
        elif any(b in name for b in BACKBONE):
            assert_backbone_close(got, want, key)
        else:
            raise AssertionError(f"unexpected reference key {key}")
        compared.add(name)
    n_dec = model.config.dec_depth
    assert {f"dec_block{i}" for i in range(n_dec)} <= compared and "head.head_interp" in compared
    # the image-2 stream is the decoder's memory: only image 1 goes through the decoder blocks
    assert all(inter[f"dec_block{i}"].shape[0] == img1.shape[0] for i in range(n_dec))


def official_stitch(tiles: np.ndarray, y0, x0, crop, conf_mode: str, hw) -> tuple[np.ndarray, np.ndarray]:
    """The official accumulation loop in float32 numpy: tiles (T, B, h, w, C + 1) in generator order."""
    t, b = tiles.shape[:2]
    nc = tiles.shape[-1] - 1
    accu_pred = np.zeros((b,) + tuple(hw) + (nc,), np.float32)
    accu_conf = np.zeros((b,) + tuple(hw), np.float32) + np.float32(1e-16)
    accu_c = np.zeros((b,) + tuple(hw), np.float32)
    offsets = [(y, x) for y in y0 for x in x0]
    for (y, x), out in zip(offsets, tiles, strict=True):
        pred, c = out[..., :nc], out[..., nc]
        if conf_mode.startswith("conf_expsigmoid_"):
            beta, bs = map(float, conf_mode[len("conf_expsigmoid_"):].split("_"))
            w = np.exp(np.float32(-beta * 2) * (np.float32(1) / (1 + np.exp(-c / np.float32(bs))) - np.float32(0.5)))
        else:
            w = np.exp(np.float32(-float(conf_mode[len("conf_expbeta"):])) * c)
        sl = (slice(None), slice(y, y + crop[0]), slice(x, x + crop[1]))
        accu_pred[sl] += pred * w[..., None]
        accu_conf[sl] += w
        accu_c[sl] += c * w
    return accu_pred / accu_conf[..., None], accu_c / accu_conf


@pytest.mark.parametrize("case", CASES)
def test_tiled_inference(case, sf_model, sf_npz):
    """Per-tile outputs, offsets and the stitched result in every confidence mode of the case."""
    model, inputs, outputs = sf_model(case), sf_npz(case, "inputs"), sf_npz(case, "outputs")
    img1, img2 = _pair(inputs, "tiled")
    tiles, plan = predict_tiles(model, img1, img2, overlap=0.7)  # the CLI test's compilation
    np.testing.assert_array_equal(plan.y0, inputs["tiled.tile_y0"])
    np.testing.assert_array_equal(plan.x0, inputs["tiled.tile_x0"])
    assert plan.resized_from is None and tiles.shape[:2] == (plan.num_tiles, 1)
    assert_head_close(tiles, nhwc(outputs["tiled.tile_outputs"]), "tile outputs")
    modes = [model.tile_conf_mode] + [k[len("tiled_"):-len(".pred")] for k in outputs
                                      if k.startswith("tiled_conf") and k.endswith(".pred")]
    assert len(modes) == (2 if case == "crocostereo" else 1)  # conf_expbeta3 variant for the stereo case
    for mode in modes:
        prefix = "tiled" if mode == model.tile_conf_mode else f"tiled_{mode}"
        pred, conf = stitch_tiles(tiles, plan, mode)
        assert_head_close(pred, nhwc(outputs[f"{prefix}.pred"]), f"{mode} pred")
        assert_head_close(conf, outputs[f"{prefix}.conf"], f"{mode} conf")
        ref_pred, ref_conf = official_stitch(np.asarray(tiles), plan.y0, plan.x0, plan.crop, mode, plan.hw)
        assert_head_close(pred, ref_pred, f"{mode} pred, numpy loop")
        assert_head_close(conf, ref_conf, f"{mode} conf, numpy loop")


@pytest.mark.parametrize("case", CASES)
def test_images_smaller_than_the_crop(case, sf_model, sf_npz):
    """The up-resize path: PyTorch-exact bicubic resize of the pair, tiles, stitching, resize back with the values
    rescaled. Its 2 tiles go through the forward test's compilation (2 pairs)."""
    from f3d_jax.stereoflow.tiling import _prepare, plan_tiles

    model, inputs, outputs = sf_model(case), sf_npz(case, "inputs"), sf_npz(case, "outputs")
    img1, img2 = _pair(inputs, "upscale")
    plan = plan_tiles(img1.shape[1:3], model.crop, 0.7)
    assert plan.hw == tuple(inputs["upscale.resized_hw"]) and plan.resized_from == img1.shape[1:3]
    np.testing.assert_array_equal(plan.y0, inputs["upscale.tile_y0"])
    np.testing.assert_array_equal(plan.x0, inputs["upscale.tile_x0"])
    t1, t2 = _prepare(img1, img2, plan)
    tiles = model(t1, t2, return_intermediates=True)[0][:, None]
    assert_head_close(tiles, nhwc(outputs["upscale.tile_outputs"]), "tiles of the bicubic-resized pair")
    pred, conf = stitch_tiles(tiles, plan, model.tile_conf_mode)
    assert pred.shape[1:3] == img1.shape[1:3] and conf.shape[1:] == plan.hw  # conf stays at the resized size
    assert_head_close(pred, nhwc(outputs["upscale.pred"]), "pred resized back, values rescaled")
    assert_head_close(conf, outputs["upscale.conf"])


def test_many_images_sharded_over_devices(sf_model, sf_npz):
    """Two pairs in one call (the one-call API: the checkpoint's crop and conf mode), their 4 tiles padded to 8
    and spread over the 8 test devices: image 0 gives the official result, image 1 (another pair) its own."""
    assert jax.device_count() == 8
    model, inputs, outputs = sf_model("crocostereo"), sf_npz("crocostereo", "inputs"), sf_npz("crocostereo", "outputs")
    a1, a2 = _pair(inputs, "upscale")
    b1, b2 = a2[:, :, ::-1], a1[:, :, ::-1]  # another pair: mirrored and swapped
    pred, conf = tiled_pred(model, np.concatenate([a1, b1]), np.concatenate([a2, b2]), overlap=0.7)
    assert_head_close(pred[:1], nhwc(outputs["upscale.pred"]))
    assert_head_close(conf[:1], outputs["upscale.conf"])
    tiles_b, plan = predict_tiles(model, b1, b2, overlap=0.7, shard=True, tiles_per_step=8)  # the same program
    pred_b, conf_b = stitch_tiles(tiles_b, plan, model.tile_conf_mode)
    np.testing.assert_allclose(np.asarray(pred[1:]), np.asarray(pred_b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(conf[1:]), np.asarray(conf_b), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(pred[0]), np.asarray(pred[1]), atol=1e-3)
