"""`load_model` / `save_model`: official checkpoints (.pth, Hugging Face folder or repo id) and
f3d-jax orbax checkpoints in, a `Model` (frozen config + params dict) out.

Equivalent of `dust3r.model.load_model`, `AsymmetricCroCo3DStereo.from_pretrained` and CroCo's
`croco_args_from_ckpt`, minus their hazards: no pickle code runs, constructor strings are parsed
(never `eval`-ed), and loading is strict (every checkpoint key must map onto the model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from f3d_jax.models.config import CroCoConfig, DUSt3RConfig, config_from_official
from f3d_jax.models.model import Model, abstract_params
from f3d_jax.weights.convert import cast_params, convert_state_dict
from f3d_jax.weights.errors import CheckpointError

F3D_CONFIG = "f3d_model.json"  # marks an orbax directory written by `save_model`
_PARAMS_DIR = "params"


def _orientation(config: CroCoConfig, landscape_only: bool) -> CroCoConfig:
    if not isinstance(config, DUSt3RConfig):
        return config
    return config.for_training() if landscape_only else config.for_inference()


def _config(class_name: str, kwargs: dict[str, Any], source: Any) -> CroCoConfig:
    try:
        return config_from_official(class_name, kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(source, f"unsupported model configuration: {e}") from None


def _looks_like_repo_id(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s))


def load_model(src: str | os.PathLike, *, landscape_only: bool = False, dtype: Any = None,
               revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Model:
    """Load a CroCo / DUSt3R / MASt3R model.

    Args:
      src: a `.pth` file (official `torch.save` checkpoint), a Hugging Face folder (`config.json`
        + `model.safetensors`), a Hugging Face repo id (`naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt`,
        resolved through `huggingface_hub`'s cache), a released checkpoint name from the registry,
        or a directory written by `save_model`.
      landscape_only: DUSt3R/MASt3R orientation handling. False (default) = the official
        inference model (`PatchEmbedDust3R`, each view's head called with its own (H, W));
        True = the training-time model (`ManyAR_PatchEmbed`: portrait entries stored transposed
        in landscape batches, `true_shape` says which).
      dtype: cast floating params on load (e.g. `jnp.bfloat16` to serve an fp32 checkpoint).
      revision, cache_dir: for Hugging Face repo ids.

    Returns:
      `Model(config, params)`.

    Raises:
      CheckpointError: unreadable source, unsupported configuration, or a checkpoint that does not
        match the model (missing / unexpected / mis-shaped keys, listed together).
    """
    path = Path(src)
    if path.is_dir() and (path / F3D_CONFIG).is_file():
        return _load_orbax(path, landscape_only, dtype)
    if path.is_dir():
        from f3d_jax.weights.constructor import hf_config_constructor
        from f3d_jax.weights.safetensors_io import read_hf_folder

        config_json, state_dict = read_hf_folder(path)
        class_name, kwargs = hf_config_constructor(config_json, path)
        config = _orientation(_config(class_name, kwargs, path), landscape_only)
        return Model(config, convert_state_dict(config, state_dict, path, dtype))
    if path.is_file():
        from f3d_jax.weights.constructor import checkpoint_constructor
        from f3d_jax.weights.torch_pickle import read_pth

        ckpt = read_pth(path)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise CheckpointError(path, "not an official checkpoint: no 'model' state dict at the top level")
        class_name, kwargs = checkpoint_constructor(ckpt, path)
        config = _orientation(_config(class_name, kwargs, path), landscape_only)
        return Model(config, convert_state_dict(config, ckpt["model"], path, dtype))
    name = str(src)
    from f3d_jax.weights.registry import list_checkpoints, get_checkpoint_info

    if name in list_checkpoints():
        info = get_checkpoint_info(name)
        if info.hf_repo is None:
            raise CheckpointError(name, f"no Hugging Face repo for this checkpoint: download {info.url} "
                                        f"and pass the file path")
        name = info.hf_repo
    if _looks_like_repo_id(name) and not path.exists():
        from f3d_jax.weights.safetensors_io import resolve_hf_repo

        folder = resolve_hf_repo(name, revision=revision, cache_dir=cache_dir)
        return load_model(folder, landscape_only=landscape_only, dtype=dtype)
    raise CheckpointError(src, "no such file or directory (nor a Hugging Face repo id 'org/name' "
                               "or a released checkpoint name)")


def _config_json(config: CroCoConfig) -> dict[str, Any]:
    return {"class": config.official_class, "kwargs": dataclasses.asdict(config), "format": 1}


def save_model(model: Model, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save params + config as an orbax checkpoint directory (loadable without the original file).

    The directory is written under a temporary name and renamed when complete, so an interrupted
    save never leaves a half-written checkpoint at `dst`.
    """
    import orbax.checkpoint as ocp

    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: already exists (pass overwrite=True to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp / _PARAMS_DIR, model.params)
        ckptr.wait_until_finished()
        (tmp / F3D_CONFIG).write_text(json.dumps(_config_json(model.config), indent=2))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _load_orbax(path: Path, landscape_only: bool, dtype: Any) -> Model:
    import orbax.checkpoint as ocp

    try:
        meta = json.loads((path / F3D_CONFIG).read_text())
        config = config_from_official(meta["class"], meta["kwargs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path / F3D_CONFIG, f"unreadable f3d-jax model config ({e})") from None
    target_dtype = None if dtype is None else jnp.dtype(dtype)
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, target_dtype or s.dtype), abstract_params(config))
    try:
        params = ocp.StandardCheckpointer().restore(path / _PARAMS_DIR, target)
    except Exception as e:  # orbax/tensorstore errors -> one clear line
        raise CheckpointError(path, f"cannot restore the orbax params ({type(e).__name__}: {e})") from None
    if dtype is not None:
        params = cast_params(params, dtype)
    return Model(_orientation(config, landscape_only), params)
