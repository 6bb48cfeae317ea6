"""Registry of released checkpoints against the shared manifests."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import RELEASED_NETWORKS, fixture_path
from f3d_jax.weights.constructor import format_constructor, hf_config_constructor, with_defaults
from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.registry import CheckpointInfo, get_checkpoint_info, list_checkpoints

RELEASED = (*RELEASED_NETWORKS, "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_trainingfree")


def test_every_release_listed():
    assert tuple(n for n in list_checkpoints() if get_checkpoint_info(n).family != "stereoflow") == RELEASED
    assert list_checkpoints("dust3r") == RELEASED[4:7]
    assert list_checkpoints("croco") == RELEASED[:4]


@pytest.mark.parametrize("name", RELEASED)
def test_entry_matches_manifest(name):
    m = json.loads(fixture_path("networks", "manifests", f"{name}.json").read_text())
    info = get_checkpoint_info(name)
    assert info.name == m["checkpoint"] and info.family == m["family"]
    assert info.file == m["file"]
    assert info.constructor == m.get("constructor")
    assert info.license == "CC BY-NC-SA 4.0"
    base = {"croco": "CroCo", "dust3r": "DUSt3R"}.get(info.family, "MASt3R")
    for f, url in zip(info.files, info.urls, strict=True):
        assert url == f"https://download.europe.naverlabs.com/ComputerVision/{base}/{f}"
    if info.constructor is None:
        assert info.kwargs_inferred and m["confidence"] == "inferred"
        assert info.class_name is None and info.backbone in RELEASED
        assert info.files[1] == m["companion_file"].split(" ")[0]
        return
    assert info.class_name == info.constructor.split("(")[0]
    assert format_constructor(info.class_name, info.inference_kwargs) == m["constructor_after_official_load_model"]
    hf = m.get("huggingface")
    assert info.hf_repo == (hf["repo"] if hf else None)
    if hf:
        cls, kw = hf_config_constructor(hf["config_json_reconstructed"])
        assert cls == info.class_name
        assert with_defaults(cls, kw) == with_defaults(cls, info.inference_kwargs)
    assert info.kwargs_inferred == ("inferred" in m["source"].lower())


def test_lookup_aliases_and_errors():
    name = "DUSt3R_ViTLarge_BaseDecoder_512_dpt"
    info = get_checkpoint_info(name)
    assert get_checkpoint_info(f"naver/{name}") is info and get_checkpoint_info(f"{name}.pth") is info
    retrieval = get_checkpoint_info("MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_codebook")
    assert retrieval.family == "retrieval"
    assert info.kwargs["enc_depth"] == 24 and "landscape_only" not in info.kwargs
    assert info.kwargs["patch_embed_cls"] == "ManyAR_PatchEmbed"
    assert info.inference_kwargs["patch_embed_cls"] == "PatchEmbedDust3R"
    with pytest.raises(TypeError):
        info.kwargs["enc_depth"] = 1  # read-only view
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]
    with pytest.raises(CheckpointError, match=r"DUSt3R_Huge: unknown checkpoint name; known: CroCo, "):
        get_checkpoint_info("DUSt3R_Huge")
    assert isinstance(info, CheckpointInfo)
