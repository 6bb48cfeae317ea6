"""Reads Hugging Face checkpoints (`config.json` + `model.safetensors`) into numpy.

Equivalent of `huggingface_hub.PyTorchModelHubMixin.from_pretrained` as used by
`dust3r.model.AsymmetricCroCo3DStereo.from_pretrained` / `mast3r.model.AsymmetricMASt3R`, minus
building the torch module: the config comes back as a dict and the weights as a state dict with
the same key set as the training `.pth` (shared DPT tensors restored under both names).

The safetensors format is parsed here (no mmap, no foreign parser): the header is capped and
strict JSON (no duplicate keys), dtypes come from a closed list, every tensor's byte span equals
its shape times its item size (exact integers) and the spans tile the data section exactly, in
order. Every file a folder or its index names must resolve inside that folder (or, for a Hugging
Face cache snapshot, into that repo's `blobs`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import ml_dtypes
import numpy as np

from f3d_jax.weights.errors import CheckpointError, read_file_head
from f3d_jax.weights.json_file import loads_bounded, read_json_bounded

__all__ = ["HF_WEIGHT_PATTERNS", "read_hf_folder", "read_safetensors", "resolve_hf_repo"]

# What `resolve_hf_repo` fetches: enough to build the model, never a pickle.
HF_WEIGHT_PATTERNS: tuple[str, ...] = ("config.json", "*.safetensors", "model.safetensors.index.json", "README.md")

MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
MAX_CONFIG_BYTES = 1 << 20
MAX_INDEX_BYTES = 16 << 20
MAX_DIMS = 16
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
_READ_CHUNK = 16 << 20


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads one `.safetensors` file.

    Args:
        path: the file.

    Returns:
        `(tensors, metadata)`: every stored tensor as a read-only numpy array in its stored dtype
        (bfloat16 as `ml_dtypes.bfloat16`), and the header's `__metadata__` (`{}` when absent). For
        files written by `save_pretrained` / `safetensors.torch.save_model` the metadata maps each
        dropped name of a shared tensor to the name that was kept, `{dropped_name: kept_name}`.

    Raises:
        CheckpointError: missing, empty, truncated, corrupt or malformed file, or not a safetensors
            file (also: a dtype outside bool, (u)int8-int64, float16/32/64, bfloat16).
    """
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
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(path, f"safetensors header of {header_len} bytes (at most {MAX_HEADER_BYTES})")
    data_start = 8 + header_len
    try:
        with open(path, "rb") as f:
            f.seek(8)
            header = loads_bounded(f.read(header_len), path, max_depth=3)
            metadata, spans = _parse_header(path, header, size - data_start)
            tensors = {}
            for name, dtype, shape, begin, end in spans:
                arr = np.empty(math.prod(shape), dtype=dtype)
                _read_exact(f, data_start + begin, memoryview(arr.view(np.uint8)), path)
                arr = arr.reshape(shape)
                arr.flags.writeable = False
                tensors[name] = arr
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e})") from None
    return tensors, metadata


def _parse_header(
    path: Path, header: Any, data_len: int
) -> tuple[dict[str, str], list[tuple[str, np.dtype, tuple[int, ...], int, int]]]:
    if not isinstance(header, dict):
        raise CheckpointError(path, "corrupt safetensors header: not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(path, "corrupt safetensors header: __metadata__ must map strings to strings")
    spans = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(spec, dict) and set(spec) == {"dtype", "shape", "data_offsets"}
        shape, offsets = (spec.get("shape"), spec.get("data_offsets")) if ok else (None, None)
        ok = (
            ok
            and isinstance(shape, list)
            and len(shape) <= MAX_DIMS
            and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
        )
        if not ok:
            raise CheckpointError(path, f"corrupt safetensors header: malformed entry for tensor {name[:100]!r}")
        dtype = _DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
        if dtype is None:
            raise CheckpointError(
                path, f"tensor {name[:100]!r} has dtype {str(spec['dtype'])[:20]!r}, not one of {', '.join(_DTYPES)}"
            )
        begin, end = offsets
        need = math.prod(shape) * dtype.itemsize  # exact integers
        if not 0 <= begin <= end <= data_len or end - begin != need:
            raise CheckpointError(
                path,
                f"tensor {name[:100]!r} of shape {tuple(shape)} x {spec['dtype']} ({need} bytes) does not match its "
                f"data_offsets [{begin}, {end}] (data section of {data_len} bytes): file corrupt or truncated",
            )
        if need == 0 and math.prod(max(n, 1) for n in shape) > 1 << 48:
            raise CheckpointError(path, f"tensor {name[:100]!r} has an absurd empty shape")
        spans.append((name, dtype, tuple(shape), begin, end))
    spans.sort(key=lambda s: (s[3], s[4]))
    at = 0
    for name, _, _, begin, end in spans:  # the tensors tile the data section exactly, like the format requires
        if begin != at:
            raise CheckpointError(path, f"corrupt safetensors file: tensor {name[:100]!r} starts at byte {begin}, "
                                        f"expected {at} (overlapping or gapped data)")
        at = end
    if at != data_len:
        raise CheckpointError(
            path, f"truncated or corrupt safetensors file: the tensors cover {at} bytes, the data section holds {data_len}"
        )
    return dict(metadata), spans


def _read_exact(f: Any, offset: int, out: memoryview, path: Path) -> None:
    f.seek(offset)
    pos = 0
    while pos < len(out):
        got = f.readinto(out[pos : pos + _READ_CHUNK])
        if not got:
            raise CheckpointError(path, "truncated safetensors file")
        pos += got


def _restore_shared(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> dict[str, np.ndarray]:
    """Adds back the names that safetensors dropped for shared tensors (`{dropped: kept}`)."""
    out = dict(tensors)
    for dropped, kept in metadata.items():
        # Other metadata entries (e.g. `format: pt`) do not name a stored tensor: skip them.
        if dropped not in out and isinstance(kept, str) and kept in tensors:
            out[dropped] = tensors[kept]
    return out


def _inside(folder: Path, name: str, what: str) -> Path:
    """`folder / name`, refused unless `name` is a plain relative path that resolves inside `folder`.

    A Hugging Face cache snapshot (`.../snapshots/<rev>/`) holds symlinks into its repo's `blobs/`
    folder: those are allowed, nothing else outside the folder is.
    """
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or ".." in PurePosixPath(name).parts
    ):
        raise CheckpointError(folder, f"{what} {name[:200]!r} is not a plain relative path inside the folder")
    path = folder / name
    try:
        root = folder.resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as e:  # symlink loops
        raise CheckpointError(folder, f"{what} {name[:200]!r} cannot be resolved ({e})") from None
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    if real.is_relative_to(root) or (blobs is not None and real.parent == blobs):
        return path
    raise CheckpointError(folder, f"{what} {name[:200]!r} resolves outside the folder (to {real})")


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = _inside(folder, "config.json", "config file")
    if not cfg_path.is_file():
        raise CheckpointError(folder, "no config.json in the Hugging Face folder")
    # Python's json accepts the `Infinity` / `-Infinity` tokens that save_pretrained writes.
    config = read_json_bounded(cfg_path, MAX_CONFIG_BYTES)
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
        appear as lists, infinities as `float('inf')`), and `{torch_key: ndarray}` (read-only) with
        every name of the training `.pth` state dict, shared tensors under each of their names.

    Raises:
        CheckpointError: folder, config or weights missing, unreadable or malformed, or a file named
            by the folder or its index that lies outside the folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(folder, "no such folder" if not folder.exists() else "not a folder")
    config = _read_config(folder)
    single = _inside(folder, "model.safetensors", "weights file")
    index = _inside(folder, "model.safetensors.index.json", "index file")
    if single.is_file():
        tensors, metadata = read_safetensors(single)
        return config, _restore_shared(tensors, metadata)
    if index.is_file():
        doc = read_json_bounded(index, MAX_INDEX_BYTES, max_depth=4, allow_infinity=False)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(index, "invalid safetensors index (no 'weight_map' of tensor name -> shard file)")
        shards = [_inside(folder, s, "shard") for s in sorted(set(weight_map.values()))]
        tensors: dict[str, np.ndarray] = {}
        metadata: dict[str, str] = {}
        for shard in shards:
            t, m = read_safetensors(shard)
            dup = next((k for k in t if k in tensors), None)
            if dup is not None:
                raise CheckpointError(shard, f"tensor {dup[:100]!r} is stored in more than one shard")
            tensors.update(t)
            metadata.update(m)
        return config, _restore_shared(tensors, metadata)
    legacy = _inside(folder, "pytorch_model.bin", "weights file")
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
