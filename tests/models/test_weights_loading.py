"""Converter coverage of every released checkpoint, strict errors, and orbax save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import f3d_jax
from conftest import RELEASED_NETWORKS, fixture_path
from f3d_jax.models.config import DUSt3RConfig, config_from_official
from f3d_jax.models.model import abstract_params
from f3d_jax.weights.constructor import official_load_model_rewrite, parse_constructor
from f3d_jax.weights.convert import convert_state_dict, expected_torch_shapes, params_to_state_dict
from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.registry import get_checkpoint_info, list_checkpoints
from f3d_jax.weights.safetensors_io import read_hf_folder

MANIFESTS = RELEASED_NETWORKS


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("training", [False, True])
def test_every_released_key_is_mapped_with_its_shape(name, training):
    """Built abstractly (eval_shape: no random init, no download); every manifest key maps, none left over."""
    manifest = json.loads(fixture_path("networks", "manifests", f"{name}.json").read_text())
    class_name, kwargs = parse_constructor(manifest["constructor"])
    if not training:
        kwargs = official_load_model_rewrite(class_name, kwargs)
    config = config_from_official(class_name, kwargs)
    want = {e["key"]: tuple(e["shape"]) for e in manifest["state_dict"]}
    got = expected_torch_shapes(config)
    assert sorted(set(want) - set(got)) == [], "keys of the checkpoint the model cannot take"
    assert sorted(set(got) - set(want)) == [], "keys the model needs that the checkpoint lacks"
    assert {k: got[k] for k in want} == want
    n_params = sum(math.prod(s.shape) for s in jax.tree.leaves(abstract_params(config)))
    shared = sum(math.prod(want[g[1]]) for g in manifest.get("shared_tensor_groups", []))
    assert n_params == manifest["num_state_dict_elements"] - shared


def test_registry_covers_the_released_networks():
    names = set(list_checkpoints())
    assert set(MANIFESTS) <= names
    for name in MANIFESTS:
        info = get_checkpoint_info(name)
        config = config_from_official(info.class_name, dict(info.inference_kwargs))
        assert expected_torch_shapes(config)  # every preset builds


@pytest.fixture(scope="module")
def linear_sd(hf_folder):
    config_json, sd = read_hf_folder(hf_folder("dust3r_linear"))
    return config_json, sd


def _write_hf(folder: Path, config_json: dict, sd: dict) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config_json))
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


def test_strict_loading_lists_every_problem(tmp_path, linear_sd):
    config_json, sd = linear_sd
    bad = dict(sd)
    del bad["enc_norm.weight"]
    bad["dec_blocks.0.attn.qkv.weight"] = bad["dec_blocks.0.attn.qkv.weight"][:, :-1]
    bad["some.extra.weight"] = np.zeros(3, np.float32)
    folder = _write_hf(tmp_path / "bad", config_json, bad)
    with pytest.raises(CheckpointError) as e:
        f3d_jax.load_model(folder)
    msg = str(e.value)
    assert str(folder) in msg
    assert "1 missing key(s): enc_norm.weight" in msg
    assert "1 unexpected key(s): some.extra.weight" in msg
    assert "dec_blocks.0.attn.qkv.weight" in msg and "mis-shaped" in msg


def test_wrong_config_is_a_clear_error(tmp_path, linear_sd):
    config_json, sd = linear_sd
    folder = _write_hf(tmp_path / "cfg", {**config_json, "dec_depth": 3}, sd)
    with pytest.raises(CheckpointError, match=r"dec_blocks: the constructor says 3 block\(s\), the checkpoint has 2"):
        f3d_jax.load_model(folder)
    folder = _write_hf(tmp_path / "cfg2", {**config_json, "head_type": "conv"}, sd)
    with pytest.raises(CheckpointError, match="head_type"):
        f3d_jax.load_model(folder)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        f3d_jax.load_model(tmp_path / "nope.pth")


def test_state_dict_roundtrip(linear_sd):
    config_json, sd = linear_sd
    config = config_from_official("AsymmetricCroCo3DStereo", config_json)
    back = params_to_state_dict(config, convert_state_dict(config, sd))
    assert back.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_orbax_roundtrip_and_bf16(tmp_path, pth_file):
    model = f3d_jax.load_model(pth_file("mast3r"))
    dst = f3d_jax.save_model(model, tmp_path / "m")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    with pytest.raises(FileExistsError):
        f3d_jax.save_model(model, tmp_path / "m")
    back = f3d_jax.load_model(dst)
    assert back.config == model.config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), model.params, back.params)
    half = f3d_jax.load_model(dst, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
    train = f3d_jax.load_model(dst, landscape_only=True)
    assert isinstance(train.config, DUSt3RConfig) and train.config.landscape_only and train.config.manyar
