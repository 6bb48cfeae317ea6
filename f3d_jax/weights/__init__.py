"""Checkpoint readers, converters, registry and orbax storage."""

from f3d_jax.weights.constructor import (
    ConstructorError,
    checkpoint_constructor,
    f3d_config_constructor,
    format_constructor,
    hf_config_constructor,
    official_load_model_rewrite,
    parse_constructor,
    with_defaults,
)
from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.registry import CheckpointInfo, get_checkpoint_info, list_checkpoints
from f3d_jax.weights.safetensors_io import read_hf_folder, read_safetensors, resolve_hf_repo
from f3d_jax.weights.torch_pickle import read_pth

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "ConstructorError",
    "checkpoint_constructor",
    "f3d_config_constructor",
    "format_constructor",
    "get_checkpoint_info",
    "hf_config_constructor",
    "list_checkpoints",
    "official_load_model_rewrite",
    "parse_constructor",
    "read_hf_folder",
    "read_pth",
    "read_safetensors",
    "resolve_hf_repo",
    "with_defaults",
]
