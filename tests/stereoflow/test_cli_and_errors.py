"""`f3d stereo` / `f3d flow` end to end on the fixture pairs (files compared with the official results), the
file formats, and the clear errors of bad input (nothing runs the network before they are raised)."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import f3d_jax
from f3d_jax.cli.main import main
from f3d_jax.models.binocular import CroCoDownstreamConfig, dpt_hooks
from f3d_jax.stereoflow import read_flo, read_pfm, tiled_pred, write_flo, write_pfm
from f3d_jax.stereoflow.pictures import disparity_to_rgb, flow_to_rgb
from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.stereoflow_args import stereoflow_settings

from .conftest import assert_head_close, nhwc


def _png(path: Path, arr: np.ndarray) -> str:
    PIL.Image.fromarray(arr).save(path)
    return str(path)


@pytest.mark.parametrize("case", ["crocostereo", "crocoflow"])
def test_cli_writes_the_official_result_and_a_picture(case, tmp_path, sf_pth, sf_npz, capsys):
    inputs, outputs = sf_npz(case, "inputs"), sf_npz(case, "outputs")
    a = _png(tmp_path / "a.png", inputs["tiled.image1_uint8"][0])
    b = _png(tmp_path / "b.png", inputs["tiled.image2_uint8"][0])
    task = case[len("croco"):]
    assert main([task, a, b, "--model", str(sf_pth(case)), "--out", str(tmp_path / "res"), "--quiet"]) == 0
    h, w = inputs["tiled.image1_uint8"].shape[1:3]
    assert f"f3d {task}: {w}x{h}" in capsys.readouterr().out
    ref = nhwc(outputs["tiled.pred"])[0]
    if task == "stereo":
        got = read_pfm(tmp_path / "res.pfm")
        assert got.shape == ref.shape[:2]
        assert_head_close(got, ref[..., 0])
    else:
        got = read_flo(tmp_path / "res.flo")
        assert_head_close(got, ref)
    pic = np.asarray(PIL.Image.open(tmp_path / "res.png"))
    assert pic.shape == ref.shape[:2] + (3,) and pic.dtype == np.uint8 and pic.std() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.png", "b.png", "res.png",
                                                                 "res.pfm" if task == "stereo" else "res.flo"])


def test_cli_bad_input_is_one_line(tmp_path, sf_pth, sf_npz, capsys):
    inputs = sf_npz("crocostereo", "inputs")
    a = _png(tmp_path / "a.png", inputs["upscale.image1_uint8"][0])
    big = _png(tmp_path / "big.png", inputs["tiled.image1_uint8"][0])
    stereo, flow = str(sf_pth("crocostereo")), str(sf_pth("crocoflow"))
    cases = [
        (["stereo", a, big, "--model", stereo], "the two images must have the same size"),
        (["stereo", a, a, "--model", flow], "is a CroCo-Flow checkpoint, not a CroCo-Stereo one"),
        (["flow", a, str(tmp_path / "missing.png"), "--model", flow], "missing.png: no such file"),
        (["stereo", a, a, "--model", stereo, "--overlap", "1.0"], "--overlap 1.0 should be in [0, 1)"),
        (["stereo", a, a, "--model", stereo, "--conf-mode", "conf_x"], "conf_mode='conf_x' should be"),
        (["stereo", a, a, "--model", stereo, "--out", str(tmp_path / "no" / "d")], "does not exist"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "big.png"]  # nothing written


def _rewrite_pkl(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    """Copy of a torch zip checkpoint with one pickled string (BINUNICODE) replaced."""
    with zipfile.ZipFile(src) as z:
        records = [(info.filename, z.read(info)) for info in z.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            if name.endswith("/data.pkl"):
                opcode = b"X" + len(old).to_bytes(4, "little") + old
                assert data.count(opcode) == 1
                data = data.replace(opcode, b"X" + len(new).to_bytes(4, "little") + new)
            z.writestr(name, data)
    dst.write_bytes(out.getvalue())
    return dst


def test_checkpoint_args_are_checked(tmp_path, sf_pth):
    src = sf_pth("crocostereo")
    for old, new, needle in [(b"task", b"tusk", "the checkpoint's args lack the task"),
                             (b"stereo", b"stereu", "args.task='stereu' should be 'stereo' or 'flow'"),
                             (b"LaplacianLossBounded2()", b"LaplacianLossBounded3()", "not one of the official criteria"),
                             (b"conf_expsigmoid_15_3", b"conf_expsigmoid_15_x", "conf_mode='conf_expsigmoid_15_x'")]:
        bad = _rewrite_pkl(src, tmp_path / "bad.pth", old, new)
        with pytest.raises(CheckpointError) as e:
            f3d_jax.load_model(bad)
        assert str(e.value).startswith(str(bad)) and needle in str(e.value), str(e.value)
    args = {"task": "flow", "crop": [64, 80], "criterion": "LaplacianLossBounded()", "tile_conf_mode": "conf_expbeta3",
            "croco_args": {"pos_embed": "RoPE100", "img_size": [64, 80]}}
    with pytest.raises(CheckpointError, match=r"x.pth: args.crop=\(64, 80\) is not a multiple of 32"):
        stereoflow_settings({"args": args}, "x.pth")
    ok = stereoflow_settings({"args": {**args, "crop": [64, 96], "croco_args": {"pos_embed": "RoPE100"}}})
    assert ok[0].img_size == (64, 96) and ok[0].num_channels == 3 and ok[1:] == ("conf_expbeta3", args["criterion"])
    assert stereoflow_settings({"args": {**args, "crop": [64, 96], "criterion": "L1Loss()",
                                         "croco_args": {}}})[0].num_channels == 2  # no confidence channel


def test_tiled_pred_refuses_bad_input_before_running(sf_model, sf_npz):
    model = sf_model("crocostereo")
    x = nhwc(sf_npz("crocostereo", "inputs")["tiled.img1"])
    with pytest.raises(ValueError, match=r"img1 and img2 have different shapes: \(1, 96, 160, 3\) vs \(1, 96, 128, 3\)"):
        tiled_pred(model, x, x[:, :, :128])
    with pytest.raises(ValueError, match=r"crop=\(48, 96\) is not a multiple of 32"):
        tiled_pred(model, x, x, crop=(48, 96))
    with pytest.raises(ValueError, match="overlap=1.0 should be a number in"):
        tiled_pred(model, x, x, overlap=1.0)
    with pytest.raises(ValueError, match="conf_mode='conf_expsigmoid_15' should be"):
        tiled_pred(model, x, x, conf_mode="conf_expsigmoid_15")
    with pytest.raises(ValueError, match=r"image size \(80, 160\) is not a multiple of 32.*tiled_pred"):
        model(x[:, :80], x[:, :80])
    with pytest.raises(ValueError, match=r"still smaller than the 64x32 crop"):
        tiled_pred(model, x[:, :40, :100], x[:, :40, :100], crop=(64, 32))  # wide image, tall crop


def test_config_hooks_and_errors():
    assert dpt_hooks(24, 12) == (23, 27, 31, 35) and dpt_hooks(12, 8) == (10, 13, 16, 19)
    assert dpt_hooks(24, 24) == (23, 31, 39, 47) and dpt_hooks(2, 8) == (0, 3, 6, 9) and dpt_hooks(1, 12) == (0, 4, 8, 12)
    cfg = CroCoDownstreamConfig(enc_depth=12, dec_depth=8, img_size=(96, 64), task="flow")
    assert cfg.dim_tokens == (768, 512, 512, 512) and cfg.num_channels == 3  # encoder block 10 hooked, not the last
    for kw, needle in [({"dec_depth": 10}, "decoder depths [8, 12, 24] only"),
                       ({"enc_depth": 1, "dec_depth": 8}, "too shallow"),
                       ({"img_size": (80, 64)}, "not a multiple of 32"),
                       ({"task": "depth"}, "should be 'stereo' or 'flow'"),
                       ({"patch_size": 8, "img_size": (64, 64)}, "patch size 16")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            CroCoDownstreamConfig(**{"img_size": (64, 64), **kw})


def test_pfm_and_flo_files(tmp_path):
    rng = np.random.default_rng(0)
    disp = rng.normal(size=(5, 7)).astype(np.float32)
    write_pfm(tmp_path / "d.pfm", disp)
    raw = (tmp_path / "d.pfm").read_bytes()
    assert raw.startswith(b"Pf\n7 5\n-1.000000\n")  # the official writePFM header (little-endian)
    np.testing.assert_array_equal(np.frombuffer(raw[-4 * 35:], "<f4").reshape(5, 7), disp[::-1])  # bottom row first
    np.testing.assert_array_equal(read_pfm(tmp_path / "d.pfm"), disp)
    flow = rng.normal(size=(4, 6, 2)).astype(np.float32)
    write_flo(tmp_path / "f.flo", flow)
    raw = (tmp_path / "f.flo").read_bytes()
    assert np.frombuffer(raw[:4], "<f4")[0] == np.float32(202021.25) and raw[4:12] == np.array([6, 4], "<i4").tobytes()
    np.testing.assert_array_equal(read_flo(tmp_path / "f.flo"), flow)
    with pytest.raises(ValueError, match=r"should be \(H, W, 2\)"):
        write_flo(tmp_path / "g.flo", disp)
    assert not (tmp_path / "g.flo").exists()


def test_pictures():
    # Middlebury wheel (as flow_vis draws it): +x red, -x cyan-blue, +y (down) yellow, -y violet, zero flow
    # white, non-finite black
    f = np.array([[[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0], [np.nan, 0]]], np.float32)
    rgb = flow_to_rgb(f).astype(int)[0]
    np.testing.assert_array_equal(rgb, [[255, 0, 0], [0, 208, 255], [255, 229, 0], [88, 0, 255], [255, 255, 255],
                                        [0, 0, 0]])
    half = flow_to_rgb(f * 0.5, max_flow=1.0).astype(int)[0]  # half the magnitude: halfway to white
    assert half[0, 0] == 255 and 120 < half[0, 1] < 135
    d = disparity_to_rgb(np.linspace(0, 10, 100).reshape(10, 10))
    lum = d.astype(float).sum(-1).ravel()
    assert np.all(np.diff(lum) >= -1) and lum[-1] > lum[0] + 500  # brighter = larger disparity (nearer)


def test_public_names():
    import f3d_jax.stereoflow.tiling as tiling

    assert f3d_jax.stereoflow.tiled_pred is tiling.tiled_pred  # reachable from `import f3d_jax` alone
    assert f3d_jax.stereoflow.CroCoDownstreamBinocular.__name__ == "CroCoDownstreamBinocular"
    assert "stereoflow" in dir(f3d_jax) and set(f3d_jax.stereoflow.__all__) <= set(dir(f3d_jax.stereoflow))
