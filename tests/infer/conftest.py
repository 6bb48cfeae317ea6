"""Session-scoped tiny models built from the network fixtures (official HF folders)."""

from __future__ import annotations

import json
import lzma
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path

MODEL_CASES = {"dust3r_linear": "AsymmetricCroCo3DStereo", "dust3r_dpt": "AsymmetricCroCo3DStereo",
               "mast3r": "AsymmetricMASt3R"}


def build_fixture_model(case: str):
    """`Model` of a fixture case from its `hf/` folder (config.json + xz-compressed safetensors)."""
    from safetensors.numpy import load_file

    from f3d_jax.models.config import config_from_official
    from f3d_jax.models.model import Model
    from f3d_jax.weights.convert import convert_state_dict

    hf = fixture_path("networks", case, "hf")
    config = config_from_official(MODEL_CASES[case], json.loads((hf / "config.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "model.safetensors"
        with lzma.open(hf / "model.safetensors.xz") as f, open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
        sd = load_file(str(dst))
    return Model(config, convert_state_dict(config, sd))


def fixture_images(case: str) -> list[dict]:
    """The case's `image{k}` inputs as load_images dicts (NHWC, idx k, instance str(k))."""
    d = np.load(fixture_path("networks", case, "inputs.npz"))
    out = []
    k = 0
    while f"image{k}.img" in d:
        out.append(dict(img=d[f"image{k}.img"].transpose(0, 2, 3, 1).copy(), true_shape=d[f"image{k}.true_shape"],
                        idx=k, instance=str(k)))
        k += 1
    return out


_MODELS: dict[str, object] = {}


@pytest.fixture(scope="session")
def fixture_model():
    """Callable case -> Model, each built once per session."""

    def get(case: str):
        if case not in _MODELS:
            _MODELS[case] = build_fixture_model(case)
        return _MODELS[case]

    return get
