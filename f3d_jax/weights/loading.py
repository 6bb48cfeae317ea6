"""`load_model` / `save_model`: official checkpoints (.pth, Hugging Face folder or repo id) and
f3d-jax orbax checkpoints in, a `Model` (frozen config + params dict) out.

Equivalent of `dust3r.model.load_model`, `AsymmetricCroCo3DStereo.from_pretrained` and CroCo's
`croco_args_from_ckpt`, minus their hazards: no pickle code runs, constructor strings are parsed
(never `eval`-ed), and loading is strict (every checkpoint key must map onto the model).

Order of the checks, for every source: the constructor arguments are validated (types, ranges,
consistency), then the checkpoint's keys, shapes and dtypes are compared with those of the model
built abstractly (no memory), and only then is any tensor converted or restored. Anything wrong
is one `CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from f3d_jax.io.atomic import readable_path, replace_dir
from f3d_jax.models.config import CroCoConfig, DUSt3RConfig, brief, config_from_official
from f3d_jax.models.model import Model, abstract_params
from f3d_jax.weights.convert import (
    _short,
    cast_params,
    convert_state_dict,
    needs_sampled_check,
    reduced_config,
    sample_shape_problems,
    structure_problems,
)
from f3d_jax.weights.errors import CheckpointError

F3D_CONFIG = "f3d_model.json"  # marks an orbax directory written by `save_model`
_PARAMS_DIR = "params"
_F3D_CONFIG_MAX_BYTES = 64 << 10  # f3d_model.json / config.json: about 1 kB
_ORBAX_METADATA_MAX_BYTES = 16 << 20  # orbax's `_METADATA` tree: about 100 bytes per tensor
_MAX_TREE_DEPTH = 16


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
               revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Any:
    """Load a CroCo / DUSt3R / MASt3R model, or a CroCo-Stereo / CroCo-Flow model.

    Args:
      src: a `.pth` file (official `torch.save` checkpoint), a Hugging Face folder (`config.json`
        + `model.safetensors`), a Hugging Face repo id (`naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt`,
        resolved through `huggingface_hub`'s cache), a released checkpoint name from the registry,
        or a directory written by `save_model` (relative paths are fine).
      landscape_only: DUSt3R/MASt3R orientation handling. False (default) = the official
        inference model (`PatchEmbedDust3R`, each view's head called with its own (H, W));
        True = the training-time model (`ManyAR_PatchEmbed`: portrait entries stored transposed
        in landscape batches, `true_shape` says which).
      dtype: cast floating params on load (e.g. `jnp.bfloat16` to serve an fp32 checkpoint).
      revision, cache_dir: for Hugging Face repo ids.

    Returns:
      `Model(config, params)`; for a CroCo-Stereo / -Flow `.pth` (`{'model', 'args'}` with `args.task`,
      `args.crop`, `args.croco_args`, `args.criterion`, `args.tile_conf_mode`) a
      `f3d_jax.models.binocular.BinocularModel`: `model(img1, img2)` -> (B, H, W, C + 1) raw outputs.

    Raises:
      CheckpointError: unreadable, malformed or hostile source, unsupported configuration, or a
        checkpoint that does not match the model (missing / unexpected / mis-shaped keys, listed
        together). No other exception escapes for a bad file.
    """
    try:
        return _load(src, landscape_only, dtype, revision, cache_dir)
    except CheckpointError:
        raise
    except Exception as e:  # last line of defence: the checks above are meant to catch everything
        text = " ".join(str(e).split())
        text = text if len(text) <= 200 else text[:200] + "..."
        raise CheckpointError(_source_name(src), f"cannot load the checkpoint ({type(e).__name__}: {text})") from None


def _source_name(src: Any) -> str:
    try:
        return os.fspath(src)
    except TypeError:
        return brief(src)


def _load(src: Any, landscape_only: bool, dtype: Any, revision: str | None, cache_dir: Any) -> Any:
    if not isinstance(src, str | os.PathLike):
        raise CheckpointError(brief(src), f"expected a path, repo id or checkpoint name, got {type(src).__name__}")
    path = Path(src)
    if not path.exists() and not path.is_symlink():
        # an interrupted `save_model(..., overwrite=True)` may have left only the complete old
        # checkpoint, under the backup name
        found = readable_path(path)
        if found is not None and (found / F3D_CONFIG).is_file():
            return _load_orbax(found, landscape_only, dtype)
    if path.is_dir() and (path / F3D_CONFIG).is_file():
        return _load_orbax(path.absolute(), landscape_only, dtype)
    if path.is_dir():
        from f3d_jax.weights.constructor import hf_config_constructor
        from f3d_jax.weights.json_file import read_json_bounded
        from f3d_jax.weights.safetensors_io import read_hf_folder

        cfg_path = path / "config.json"
        if cfg_path.is_file():  # validated before any weight file is opened
            class_name, kwargs = hf_config_constructor(read_json_bounded(cfg_path, _F3D_CONFIG_MAX_BYTES), cfg_path)
            _config(class_name, kwargs, cfg_path)
        config_json, state_dict = read_hf_folder(path)
        class_name, kwargs = hf_config_constructor(config_json, cfg_path)
        config = _orientation(_config(class_name, kwargs, cfg_path), landscape_only)
        return Model(config, convert_state_dict(config, state_dict, path, dtype, consume=True))
    if path.is_file():
        from f3d_jax.weights.constructor import checkpoint_constructor
        from f3d_jax.weights.torch_pickle import read_pth

        ckpt = read_pth(path)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise CheckpointError(path, "not an official checkpoint: no 'model' state dict at the top level")
        from f3d_jax.weights.stereoflow_args import is_stereoflow_checkpoint

        if is_stereoflow_checkpoint(ckpt):
            return _load_stereoflow(ckpt, path, dtype)
        class_name, kwargs = checkpoint_constructor(ckpt, path)
        config = _orientation(_config(class_name, kwargs, path), landscape_only)
        return Model(config, convert_state_dict(config, ckpt["model"], path, dtype, consume=True))
    name = str(src)
    from f3d_jax.weights.registry import get_checkpoint_info, list_checkpoints

    if name in list_checkpoints():
        info = get_checkpoint_info(name)
        if info.hf_repo is None:
            raise CheckpointError(name, f"no Hugging Face repo for this checkpoint: download {info.url} "
                                        f"and pass the file path")
        name = info.hf_repo
    if _looks_like_repo_id(name) and not path.exists():
        from f3d_jax.weights.safetensors_io import resolve_hf_repo

        folder = resolve_hf_repo(name, revision=revision, cache_dir=cache_dir)
        return _load(folder, landscape_only, dtype, None, None)
    raise CheckpointError(src, "no such file or directory (nor a Hugging Face repo id 'org/name' "
                               "or a released checkpoint name)")


def _load_stereoflow(ckpt: dict[str, Any], path: Path, dtype: Any) -> Any:
    """A CroCo-Stereo / CroCo-Flow `.pth` (`{'model', 'args'}`) -> `BinocularModel`."""
    from f3d_jax.models.binocular import BinocularModel
    from f3d_jax.weights.stereoflow_args import stereoflow_settings

    config, tile_conf_mode, criterion = stereoflow_settings(ckpt, path)
    params = convert_state_dict(config, ckpt["model"], path, dtype, consume=True)
    return BinocularModel(config, params, tile_conf_mode=tile_conf_mode, criterion=criterion)


def _config_json(config: CroCoConfig) -> dict[str, Any]:
    from f3d_jax.weights.constructor import F3D_FORMAT

    return {"class": config.official_class, "kwargs": dataclasses.asdict(config), "format": F3D_FORMAT}


def _save_params(path: Path, params: Any) -> None:
    """Writes the params as an orbax checkpoint at `path` (absolute, not existing)."""
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, params)
    ckptr.wait_until_finished()


def save_model(model: Model, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save params + config as an orbax checkpoint directory (loadable without the original file).

    Atomic: the directory is written under a temporary sibling name and renamed into place; with
    `overwrite=True` the old directory is first renamed to a backup sibling, deleted once the new
    one is in place. At every instant `dst` (or, between the two renames, its backup, which
    `load_model(dst)` reads) holds the complete old or the complete new checkpoint. Leftovers of an
    interrupted save are cleaned by the next save to the same `dst`. See `f3d_jax.io.atomic`.

    Returns:
      The absolute path of `dst`.

    Raises:
      FileExistsError: `dst` exists and `overwrite` is False.
    """
    from f3d_jax.io.atomic import atomic_write_text

    if not isinstance(model, Model):  # f3d_model.json has no room for a stereo/flow model's task and tiling args
        raise ValueError(f"{dst}: save_model writes DUSt3R/MASt3R/CroCo models; keep the .pth of this "
                         f"{type(model).__name__} (CroCo-Stereo/-Flow) and load it with load_model")
    meta = json.dumps(_config_json(model.config), indent=2)

    def fill(tmp: Path) -> None:
        _save_params(tmp / _PARAMS_DIR, model.params)
        atomic_write_text(tmp / F3D_CONFIG, meta)

    return replace_dir(dst, fill, overwrite=overwrite)


def _flat_tree(tree: Any, source: Any) -> dict[str, Any]:
    """Dotted path -> leaf of a nested dict/list tree (iterative, depth-bounded)."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any, int]] = [("", tree, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        if isinstance(node, Mapping | list | tuple):
            if depth >= _MAX_TREE_DEPTH:
                raise CheckpointError(source, f"params tree nested deeper than {_MAX_TREE_DEPTH} levels")
            items = node.items() if isinstance(node, Mapping) else enumerate(node)
            for k, v in items:
                stack.append((f"{prefix}.{k}" if prefix else str(k), v, depth + 1))
        else:
            out[prefix] = node
    return out


def _read_orbax_metadata(path: Path) -> dict[str, Any]:
    """Dotted param path -> orbax `ArrayMetadata` (shape, dtype) of the stored params, read from
    orbax's metadata alone (no tensor is read)."""
    import orbax.checkpoint as ocp

    params_dir = path / _PARAMS_DIR
    meta_file = params_dir / "_METADATA"
    if not meta_file.is_file():
        raise CheckpointError(params_dir, "not an orbax checkpoint (no _METADATA file)")
    if meta_file.stat().st_size > _ORBAX_METADATA_MAX_BYTES:
        raise CheckpointError(meta_file, f"larger than {_ORBAX_METADATA_MAX_BYTES} bytes")
    try:
        meta = ocp.StandardCheckpointer().metadata(params_dir)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
    except Exception as e:  # orbax / tensorstore / json errors
        raise CheckpointError(params_dir, f"unreadable orbax metadata ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(tree, Mapping) or not tree:  # orbax logs a warning and returns None on a bad file
        raise CheckpointError(params_dir, "unreadable orbax metadata (no params tree)")
    return _flat_tree(tree, params_dir)


def _dotted(keypath: tuple) -> str:
    """The `_flat_tree` key of a `tree_map_with_path` key path."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)


def _leaf_problem(leaf: Any, expected: jax.ShapeDtypeStruct) -> str | None:
    shape, dt = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    try:
        floating = dt is not None and bool(jnp.issubdtype(jnp.dtype(dt), jnp.floating))
    except TypeError:
        floating = False
    if isinstance(shape, tuple | list) and tuple(shape) == tuple(expected.shape) and floating:
        return None
    shown = tuple(shape) if isinstance(shape, tuple | list) else brief(shape)
    return f"stored {shown} {brief(str(dt), 20)[1:-1]}, model expects {tuple(expected.shape)} floating"


def _orbax_problems(config: CroCoConfig, stored: Mapping[str, Any], target: Any) -> list[str]:
    want = _flat_tree(target, "params")
    missing = sorted(set(want) - set(stored))
    unexpected = sorted(set(stored) - set(want))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing param(s): " + ", ".join(missing[:20]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected param(s): " + ", ".join(brief(k) for k in unexpected[:20]))
    bad = [f"{k}: {p}" for k in sorted(set(want) & set(stored)) if (p := _leaf_problem(stored[k], want[k]))]
    if bad:
        problems.append(f"{len(bad)} mis-shaped param(s): " + "; ".join(bad[:20]))
    return problems


def _load_orbax(path: Path, landscape_only: bool, dtype: Any) -> Model:
    """An orbax directory of `save_model`: config validated, stored tree checked against the
    abstract params (keys, shapes, floating dtypes) from orbax's metadata, then restored into
    exactly the expected shapes."""
    import orbax.checkpoint as ocp

    from f3d_jax.weights.constructor import f3d_config_constructor
    from f3d_jax.weights.json_file import read_json_bounded

    meta_path = path / F3D_CONFIG
    class_name, kwargs = f3d_config_constructor(read_json_bounded(meta_path, _F3D_CONFIG_MAX_BYTES), meta_path)
    config = _config(class_name, kwargs, meta_path)
    stored = _read_orbax_metadata(path)
    # cheap block-count / width check before building the model abstractly
    shapes = {k: tuple(getattr(v, "shape", None) or ()) for k, v in stored.items()}
    problems = structure_problems(config, shapes)
    if not problems and needs_sampled_check(config):  # every shape against a one-block-per-stack model
        reduced = _flat_tree(abstract_params(reduced_config(config)), "params")
        sampled = sample_shape_problems({k: tuple(v.shape) for k, v in reduced.items()}, shapes)
        if sampled:
            problems = [f"{len(sampled)} mis-shaped param(s): " + "; ".join(sampled[:20])
                        + (" ..." if len(sampled) > 20 else "")]
    target_dtype = None if dtype is None else jnp.dtype(dtype)
    if not problems:
        target = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, target_dtype or s.dtype), abstract_params(config))
        problems = _orbax_problems(config, stored, target)
    if problems:
        raise CheckpointError(path, f"orbax params do not match {config.official_class} ({_short(config)}):\n  "
                                    + "\n  ".join(problems))
    if target_dtype is None:  # restore each leaf in the dtype it was saved in (a bf16 save loads as bf16)
        target = jax.tree_util.tree_map_with_path(
            lambda kp, s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(stored[_dotted(kp)].dtype)), target)
    try:
        params = ocp.StandardCheckpointer().restore(path / _PARAMS_DIR, target)
    except Exception as e:  # orbax/tensorstore errors -> one clear line
        raise CheckpointError(path, f"cannot restore the orbax params ({type(e).__name__}: {str(e)[:200]})") from None
    if dtype is not None:
        params = cast_params(params, dtype)
    return Model(_orientation(config, landscape_only), params)
