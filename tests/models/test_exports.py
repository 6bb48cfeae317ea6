"""`f3d_jax.models` exposes the configs and the functional runtime; the configs alone stay cheap."""

from __future__ import annotations

import subprocess
import sys

import f3d_jax.models as models
from f3d_jax.models import config, model


def test_models_package_reexports():
    from f3d_jax.models import (CroCoConfig, DUSt3RConfig, MASt3RConfig, Model, croco_forward, decode_pairs,
                                encode_images, stereo_forward, symmetric_forward)

    assert (CroCoConfig, DUSt3RConfig, MASt3RConfig) == (config.CroCoConfig, config.DUSt3RConfig,
                                                         config.MASt3RConfig)
    assert (Model, stereo_forward, symmetric_forward, encode_images, decode_pairs, croco_forward) == (
        model.Model, model.stereo_forward, model.symmetric_forward, model.encode_images, model.decode_pairs,
        model.croco_forward)
    assert set(models.__all__) <= set(dir(models))
    assert not hasattr(model, "init_params")  # removed: it built a new jit on every call


def test_configs_import_without_jax():
    code = ("import sys; from f3d_jax.models import CroCoConfig, DUSt3RConfig, MASt3RConfig; "
            "assert issubclass(MASt3RConfig, DUSt3RConfig) and issubclass(DUSt3RConfig, CroCoConfig); "
            "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
