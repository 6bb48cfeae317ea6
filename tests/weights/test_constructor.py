"""Constructor strings: parsed with ast (never evaluated), validated against the official signatures."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import numpy as np
import pytest

from conftest import RELEASED_NETWORKS, fixture_path
from f3d_jax.weights.constructor import (
    CONSTRUCTOR_DEFAULTS,
    ConstructorError,
    checkpoint_constructor,
    format_constructor,
    hf_config_constructor,
    official_load_model_rewrite,
    parse_constructor,
    with_defaults,
)
from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.torch_pickle import Namespace, read_pth

from .conftest import MODEL_CASES

MANIFESTS = RELEASED_NETWORKS


def _strings(source: dict) -> tuple[str, str]:
    return source["constructor"], source.get("constructor_after_official_load_model", source["constructor"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_constructors_parse_and_rewrite(name):
    m = json.loads(fixture_path("networks", "manifests", f"{name}.json").read_text())
    training, after = _strings(m)
    cls, kw = parse_constructor(training)
    assert cls == training.split("(")[0]
    assert format_constructor(cls, kw) == training  # lossless round trip
    # The official load_model rewrite gives exactly the string the official code then evaluates.
    assert format_constructor(cls, official_load_model_rewrite(cls, kw)) == after
    assert official_load_model_rewrite(cls, kw, keep_training_settings=True) == kw
    hf = m.get("huggingface")
    if hf:  # the released config.json describes the rewritten model
        hf_cls, hf_kw = hf_config_constructor(hf["config_json_reconstructed"])
        assert hf_cls == cls
        assert with_defaults(hf_cls, hf_kw) == with_defaults(cls, official_load_model_rewrite(cls, kw))


@pytest.mark.parametrize("case", MODEL_CASES)
def test_fixture_checkpoint_constructors(case, pth_file):
    meta = json.loads(fixture_path("networks", case, "meta.json").read_text())
    ckpt = read_pth(pth_file(case))
    cls, kw = checkpoint_constructor(ckpt, pth_file(case))
    assert format_constructor(cls, kw) == meta["constructor"]
    if "constructor_kwargs" in meta:
        assert kw == meta["constructor_kwargs"]
    training, after = _strings(meta)
    assert format_constructor(cls, official_load_model_rewrite(cls, kw)) == after


def test_parsed_values():
    cls, kw = parse_constructor(
        "AsymmetricMASt3R(depth_mode=['exp', float('-inf'), float('inf')], conf_mode=('exp', 1, math.inf), "
        "desc_conf_mode=('exp', -0.5, +inf), img_size=[512, 384], mlp_ratio=4.0, two_confs=True, "
        "patch_embed_cls=\"ManyAR_PatchEmbed\", landscape_only=True)"
    )
    assert cls == "AsymmetricMASt3R"
    assert kw["depth_mode"] == ("exp", -math.inf, math.inf) and isinstance(kw["depth_mode"], tuple)
    assert kw["conf_mode"] == ("exp", 1, math.inf) and kw["desc_conf_mode"] == ("exp", -0.5, math.inf)
    assert kw["img_size"] == (512, 384) and kw["mlp_ratio"] == 4.0 and kw["two_confs"] is True
    inference = official_load_model_rewrite(cls, kw)
    assert inference["patch_embed_cls"] == "PatchEmbedDust3R" and inference["landscape_only"] is False
    assert kw["landscape_only"] is True and kw["patch_embed_cls"] == "ManyAR_PatchEmbed"  # input untouched
    assert parse_constructor("CroCoNet()") == ("CroCoNet", {})
    assert official_load_model_rewrite("CroCoNet", {"pos_embed": "RoPE100"}) == {"pos_embed": "RoPE100"}


@pytest.mark.parametrize(
    "s, problem",
    [
        ("os.system('touch x')", "expected a single call"),
        ("Evil(enc_depth=2)", "unknown class 'Evil'"),
        ("AsymmetricCroCo3DStereo(1024)", "positional arguments"),
        ("CroCoNet(**{'enc_depth': 2})", "`**kwargs` expansion"),
        ("CroCoNet(enc_depth=2, enc_depth=3)", "given twice"),
        ("CroCoNet(enc_depth=1+1)", "non-literal value `1 + 1`"),
        ("CroCoNet(pos_embed=f'RoPE{100}')", "non-literal value"),
        ("CroCoNet(enc_depth=__import__('os').system('touch x'))", "non-literal value"),
        ("CroCoNet(norm_layer=partial(nn.LayerNorm, eps=1e-6))", "non-literal value"),
        ("CroCoNet(enc_depth=(lambda: 2)())", "non-literal value"),
        ("CroCoNet(img_size=float('nan'))", "non-literal value"),
        ("CroCoNet(pos_embed=b'RoPE100')", "unsupported constant"),
        ("CroCoNet(foo=1, bar=2)", "unknown keyword argument(s) 'foo', 'bar' for CroCoNet"),
        ("AsymmetricCroCo3DStereo(two_confs=True)", "unknown keyword argument(s) 'two_confs'"),
        ("CroCoNet(landscape_only=False)", "unknown keyword argument(s) 'landscape_only'"),
        ("CroCoNet(enc_depth='12')", "enc_depth='12' should be a positive int"),
        ("CroCoNet(enc_depth=True)", "should be a positive int"),
        ("CroCoNet(img_size=(512, 384, 3))", "img_size"),
        ("AsymmetricCroCo3DStereo(depth_mode='exp')", "should be a (name, min, max) triple"),
        ("CroCoNet(", "not valid Python syntax"),
        ("CroCoNet(); import os", "not valid Python syntax"),
        ("torch.nn.Module()", "expected a single call"),
    ],
)
def test_rejected_strings(s, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a `touch x` that ran would leave a file here
    with pytest.raises(ConstructorError) as e:
        parse_constructor(s)
    msg = str(e.value)
    assert problem in msg and repr(s) in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, CheckpointError)
    assert not (tmp_path / "x").exists()


def test_checkpoint_layouts():
    sd = OrderedDict(mask_token=np.zeros((1, 1, 512), np.float32), **{"prediction_head.weight": np.zeros((768, 512))})
    assert checkpoint_constructor({"model": sd}) == ("CroCoNet", {})  # CroCo v1 release: defaults
    assert checkpoint_constructor({"model": sd, "croco_kwargs": {"pos_embed": "RoPE100", "img_size": [224, 224]}}) == (
        "CroCoNet",
        {"pos_embed": "RoPE100", "img_size": (224, 224)},
    )
    ns = Namespace(model="CroCoNet(enc_depth=24)", lr=1e-4)
    assert checkpoint_constructor({"model": sd, "args": ns}) == ("CroCoNet", {"enc_depth": 24})
    assert checkpoint_constructor({"model": sd, "args": {"model": "CroCoNet()"}}) == ("CroCoNet", {})

    dust3r_sd = {"dec_blocks2.0.norm1.weight": np.zeros(3)}
    with pytest.raises(CheckpointError, match=r"^my\.pth: .*DUSt3R/MASt3R state dict without args\.model"):
        checkpoint_constructor({"model": dust3r_sd}, "my.pth")
    with pytest.raises(CheckpointError, match=r"^my\.pth: .*unknown keyword argument\(s\) 'bogus'"):
        checkpoint_constructor({"model": sd, "croco_kwargs": {"bogus": 1}}, "my.pth")
    with pytest.raises(CheckpointError, match=r"^my\.pth: .*unknown class 'RetrievalModel'"):
        checkpoint_constructor({"model": sd, "args": Namespace(model="RetrievalModel(backbone=None)")}, "my.pth")
    with pytest.raises(CheckpointError, match=r"^d\.pth: .*DUNE backbone"):
        checkpoint_constructor({"model": sd, "mast3r_model_str": "AsymmetricMASt3R()"}, "d.pth")
    with pytest.raises(CheckpointError, match=r"neither"):
        checkpoint_constructor({"optimizer": {}}, "o.pth")


def test_hf_config_class_inference():
    assert hf_config_constructor({"head_type": "dpt", "landscape_only": False})[0] == "AsymmetricCroCo3DStereo"
    assert hf_config_constructor({"head_type": "catmlp+dpt"})[0] == "AsymmetricMASt3R"
    assert hf_config_constructor({"two_confs": False})[0] == "AsymmetricMASt3R"
    with pytest.raises(CheckpointError, match=r"^cfg/config\.json: .*unknown keyword argument\(s\) 'hidden_size'"):
        hf_config_constructor({"head_type": "dpt", "hidden_size": 3}, "cfg/config.json")


def test_defaults_follow_official_signatures():
    d = CONSTRUCTOR_DEFAULTS
    assert d["CroCoNet"]["patch_size"] == 16 and d["CroCoNet"]["norm_im2_in_dec"] is True
    assert d["CroCoNet"]["pos_embed"] == "cosine" and d["CroCoNet"]["dec_embed_dim"] == 512
    assert d["AsymmetricCroCo3DStereo"]["landscape_only"] is True
    assert d["AsymmetricCroCo3DStereo"]["conf_mode"] == ("exp", 1, math.inf)
    assert d["AsymmetricMASt3R"]["desc_conf_mode"] is None and d["AsymmetricMASt3R"]["two_confs"] is False
    # MASt3R accepts every DUSt3R keyword, DUSt3R every CroCoNet keyword.
    assert set(d["CroCoNet"]) < set(d["AsymmetricCroCo3DStereo"]) < set(d["AsymmetricMASt3R"])
