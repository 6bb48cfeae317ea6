"""Reads Hugging Face checkpoints (`config.json` + `model.safetensors`) into numpy.

Equivalent of `huggingface_hub.PyTorchModelHubMixin.from_pretrained` as used by
`dust3r.model.AsymmetricCroCo3DStereo.from_pretrained` / `mast3r.model.AsymmetricMASt3R`, minus
building the torch module: the config comes back as a dict and the weights as a state dict with
the same key set as the training `.pth` (shared DPT tensors restored under both names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from f3d_jax.weights.errors import CheckpointError, read_file_head

__all__ = ["HF_WEIGHT_PATTERNS", "read_hf_folder", "read_safetensors", "resolve_hf_repo"]

# What `resolve_hf_repo` fetches: enough to build the model, never a pickle.
HF_WEIGHT_PATTERNS: tuple[str, ...] = ("config.json", "*.safetensors", "model.safetensors.index.json", "README.md")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads one `.safetensors` file.

    Args:
        path: the file.

    Returns:
        `(tensors, metadata)`: every stored tensor as a numpy array in its stored dtype (bfloat16 as
        `ml_dtypes.bfloat16`), and the header's `__metadata__` (`{}` when absent). For files written
        by `save_pretrained` / `safetensors.torch.save_model` the metadata maps each dropped name of
        a shared tensor to the name that was kept, `{dropped_name: kept_name}`.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, or not a safetensors file.
    """
    from safetensors import safe_open

    path, size, head = read_file_head(path, 9)
    if head.startswith(b"PK"):
        raise CheckpointError(path, "not a safetensors file: this is a zip archive (a torch .pth? use read_pth)")
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) < 9 or head[8:9] != b"{":
        raise CheckpointError(path, "not a safetensors file (no JSON header after the 8-byte length)")
    if 8 + header_len > size:
        raise CheckpointError(
            path, f"truncated safetensors file: header claims {header_len} bytes but the file has {size} bytes"
        )
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(path, f"corrupt or truncated safetensors file ({e})") from None
    return tensors, metadata


def _restore_shared(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> dict[str, np.ndarray]:
    """Adds back the names that safetensors dropped for shared tensors (`{dropped: kept}`)."""
    out = dict(tensors)
    for dropped, kept in metadata.items():
        # Other metadata entries (e.g. `format: pt`) do not name a stored tensor: skip them.
        if dropped not in out and isinstance(kept, str) and kept in tensors:
            out[dropped] = tensors[kept]
    return out


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(folder, "no config.json in the Hugging Face folder")
    try:
        # Python's json accepts the `Infinity` / `-Infinity` tokens that save_pretrained writes.
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(cfg_path, f"invalid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(cfg_path, f"expected a JSON object, got {type(config).__name__}")
    return config


def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads a `save_pretrained` folder: `config.json` plus `model.safetensors`.

    Also accepts a sharded `model.safetensors.index.json` and, as a last resort, an older
    `pytorch_model.bin` (read with the restricted `.pth` reader, no pickle code runs).

    Args:
        path: the folder.

    Returns:
        `(config, state_dict)`: the parsed `config.json` (constructor keyword arguments; tuples
        appear as lists, infinities as `float('inf')`), and `{torch_key: ndarray}` with every name
        of the training `.pth` state dict, shared tensors under each of their names.

    Raises:
        CheckpointError: folder, config or weights missing or unreadable.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(folder, "no such folder" if not folder.exists() else "not a folder")
    config = _read_config(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        tensors, metadata = read_safetensors(single)
        return config, _restore_shared(tensors, metadata)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(index, f"invalid safetensors index ({e})") from None
        tensors: dict[str, np.ndarray] = {}
        metadata: dict[str, str] = {}
        for shard in shards:
            t, m = read_safetensors(folder / shard)
            tensors.update(t)
            metadata.update(m)
        return config, _restore_shared(tensors, metadata)
    legacy = folder / "pytorch_model.bin"
    if legacy.is_file():
        from f3d_jax.weights.torch_pickle import read_pth

        state = read_pth(legacy)
        return config, {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    raise CheckpointError(folder, "no model.safetensors (nor a safetensors index) in the Hugging Face folder")


def resolve_hf_repo(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    local_files_only: bool | None = None,
) -> Path:
    """Local folder of a Hugging Face model repo (e.g. `naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt`).

    Goes through `huggingface_hub.snapshot_download` and its cache (`HF_HOME` / `cache_dir`),
    fetching only `config.json`, the safetensors files and the model card.

    Args:
        repo_id: `"org/name"`.
        revision: branch, tag or commit; default the hub's `main`.
        cache_dir: hub cache folder (layout `models--org--name/{refs,snapshots,blobs}`).
        local_files_only: never touch the network. Default: the hub's own setting
            (`HF_HUB_OFFLINE=1` makes it offline).

    Returns:
        The snapshot folder, ready for `read_hf_folder`.

    Raises:
        CheckpointError: the repo cannot be resolved (offline and not cached, unknown repo, ...).
    """
    import huggingface_hub

    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir, "allow_patterns": list(HF_WEIGHT_PATTERNS)}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        folder = huggingface_hub.snapshot_download(repo_id, **kwargs)
    except Exception as e:  # hub errors (offline miss, 404, invalid id) become one clear line
        where = f"revision {revision!r} of " if revision else ""
        raise CheckpointError(
            f"hf://{repo_id}", f"cannot resolve {where}the Hugging Face repo ({type(e).__name__}: {e})"
        ) from None
    return Path(folder)
