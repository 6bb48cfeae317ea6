"""Session-scoped tiny models loaded from the network fixtures (official HF folders)."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import fixture_path

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
def fixture_model(hf_folder):
    """Callable case -> Model loaded with `f3d_jax.load_model` from the case's HF folder, once per session."""
    import f3d_jax

    def get(case: str):
        if case not in _MODELS:
            _MODELS[case] = f3d_jax.load_model(hf_folder(case))
        return _MODELS[case]

    return get
