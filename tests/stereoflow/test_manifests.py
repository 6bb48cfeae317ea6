"""Every released CroCo-Stereo / CroCo-Flow checkpoint (../shared/fixtures/stereoflow/manifests): its args build
a model (abstractly: no memory, no download) whose state dict has exactly the manifest's keys and shapes, both
names of the shared DPT tensors included; the registry lists every release with the same args."""

from __future__ import annotations

import json
import math

import jax
import pytest

from conftest import fixture_path
from f3d_jax.models.model import abstract_params
from f3d_jax.weights.convert import expected_torch_shapes
from f3d_jax.weights.registry import get_checkpoint_info, list_checkpoints
from f3d_jax.weights.stereoflow_args import stereoflow_settings

MANIFESTS = ("crocostereo", "crocostereo_eth3d", "crocostereo_finetune_kitti",
             "crocostereo_subtrain_vitb_smalldecoder", "crocostereo_subtrain_vitb_basedecoder", "crocoflow",
             "crocoflow_finetune_kitti", "crocoflow_vitb_smalldecoder", "crocoflow_vitb_basedecoder")


def _manifest(name: str) -> dict:
    return json.loads(fixture_path("stereoflow", "manifests", f"{name}.json").read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_key_maps(name):
    m = _manifest(name)
    config, conf_mode, criterion = stereoflow_settings({"args": m["args_used_by_test_py"]}, name)
    assert list(config.hooks) == m["head"]["hooks_idx"] and list(config.dim_tokens) == m["head"]["dim_tokens"]
    assert config.num_channels == m["head"]["num_channels"]
    # no tensor depends on the crop (RoPE): the shapes are built once per backbone and task
    got = expected_torch_shapes(config.replace(img_size=(32, 32)))
    want = {e["key"]: tuple(e["shape"]) for e in m["state_dict"]}
    assert sorted(set(want) - set(got)) == [], "keys of the checkpoint the model cannot take"
    assert sorted(set(got) - set(want)) == [], "keys the model needs that the checkpoint lacks"
    assert {k: got[k] for k in want} == want
    for group in m["shared_tensor_groups"]:  # both names present, same shape
        assert len(group) == 2 and want[group[0]] == want[group[1]]
    n_params = sum(math.prod(s.shape) for s in jax.tree.leaves(abstract_params(config.replace(img_size=(32, 32)))))
    assert n_params == m["num_parameters"]
    shared = sum(math.prod(want[g[1]]) for g in m["shared_tensor_groups"])
    assert n_params + shared == m["num_state_dict_elements"]
    # the registry entry (and those with the same keys) carries the same args
    for entry in [name] + [f.removesuffix(".pth") for f in m["same_keys_as"]]:
        info = get_checkpoint_info(entry)
        assert info.family == "stereoflow" and info.class_name == "CroCoDownstreamBinocular"
        assert info.url == f"https://download.europe.naverlabs.com/ComputerVision/CroCo/StereoFlow_models/{entry}.pth"
        assert stereoflow_settings({"args": dict(info.args)}) == (config, conf_mode, criterion)
        assert info.kwargs_inferred == ("inferred" in m["source"].lower())


def test_registry_lists_every_release():
    names = set(MANIFESTS) | {f.removesuffix(".pth") for n in MANIFESTS for f in _manifest(n)["same_keys_as"]}
    assert set(list_checkpoints("stereoflow")) == names and len(names) == 12
