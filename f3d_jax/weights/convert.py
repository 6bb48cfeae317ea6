"""Official state dict <-> f3d-jax params: a mechanical, strict mapping.

Param paths mirror the torch module names (`enc_blocks.3.attn.qkv.weight` ->
`params['enc_blocks'][3]['attn']['qkv']['kernel']`). Layout changes happen here only:
Linear `weight (out, in)` -> `kernel (in, out)`; LayerNorm `weight` -> `scale`;
Conv2d `weight (out, in, kh, kw)` -> `kernel (kh, kw, in, out)`; ConvTranspose2d
`weight (in, out, kh, kw)` -> `kernel (kh, kw, in, out)`. Nothing is ever skipped silently: missing,
unexpected and mis-shaped keys are reported together in one error.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from f3d_jax.models.config import CroCoConfig
from f3d_jax.models.model import abstract_module
from f3d_jax.nn.layers import Conv, ConvTranspose
from f3d_jax.weights.errors import CheckpointError

Path = tuple[str | int, ...]

# The DPT scratch convs are registered twice by the official code: `layer{k+1}_rn` is `layer_rn.{k}`.
_ALIAS = re.compile(r"^(.*\.scratch\.)layer([1-4])_rn\.weight$")


def abstract_model(config: CroCoConfig) -> tuple[nnx.GraphDef, dict, dict[str, tuple[Path, str]]]:
    """Build a config abstractly (no memory, no random init).

    Returns:
      graphdef: static structure for `nnx.merge(graphdef, params)`.
      abstract: nested dict of `jax.ShapeDtypeStruct` with the params layout.
      table: torch key -> (param path, transform) for every tensor of the official state dict.
    """
    return _abstract(config)


@functools.lru_cache(maxsize=32)
def _abstract(config: CroCoConfig):
    module = abstract_module(config)
    graphdef, state = nnx.split(module)
    abstract = nnx.to_pure_dict(state)
    owners: dict[Path, Any] = {tuple(p): node for p, node in nnx.iter_graph(module)}
    table: dict[str, tuple[Path, str]] = {}
    for path, _ in _flatten(abstract):
        leaf, parent = path[-1], owners.get(tuple(path[:-1]))
        prefix = ".".join(str(p) for p in path[:-1])
        if isinstance(parent, nnx.Linear):
            kind = "linear" if leaf == "kernel" else "copy"
        elif isinstance(parent, ConvTranspose):
            kind = "convT" if leaf == "kernel" else "copy"
        elif isinstance(parent, (Conv, nnx.Conv)):
            kind = "conv" if leaf == "kernel" else "copy"
        else:
            kind = "copy"
        torch_leaf = {"kernel": "weight", "scale": "weight"}.get(str(leaf), str(leaf))
        key = f"{prefix}.{torch_leaf}" if prefix else torch_leaf
        table[key] = (path, kind)
    return graphdef, abstract, table


def _flatten(tree: Mapping, prefix: Path = ()) -> list[tuple[Path, Any]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.extend(_flatten(v, prefix + (k,)))
        else:
            out.append((prefix + (k,), v))
    return out


def _set(tree: dict, path: Path, value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


_TO_JAX = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 1, 0),
    "convT": lambda a: a.transpose(2, 3, 0, 1),
}
_TO_TORCH = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "convT": lambda a: a.transpose(2, 3, 0, 1),
}


def expected_torch_shapes(config: CroCoConfig) -> dict[str, tuple[int, ...]]:
    """Torch key -> shape that the official state dict of this config holds (aliases included)."""
    _, abstract, table = abstract_model(config)
    leaves = dict(_flatten(abstract))
    out = {}
    for key, (path, kind) in table.items():
        shape = np.empty(leaves[path].shape, dtype=np.bool_)
        out[key] = _TO_TORCH[kind](shape).shape
        m = re.match(r"^(.*\.scratch\.)layer_rn\.([0-3])\.weight$", key)
        if m:
            out[f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight"] = out[key]
    return out


def convert_state_dict(config: CroCoConfig, state_dict: Mapping[str, np.ndarray], source: Any = None,
                       dtype: Any = None) -> dict:
    """Official state dict -> f3d-jax params (nested dict of jax arrays).

    Raises:
      CheckpointError: listing every missing, unexpected and mis-shaped key at once.
    """
    _, abstract, table = abstract_model(config)
    leaves = dict(_flatten(abstract))
    params: dict = {}
    unexpected, misshaped, filled, seen = [], [], {}, set()
    for key, value in state_dict.items():
        alias = _ALIAS.match(key)
        canon = f"{alias.group(1)}layer_rn.{int(alias.group(2)) - 1}.weight" if alias else key
        if canon not in table:
            unexpected.append(key)
            continue
        path, kind = table[canon]
        seen.add(canon)
        arr = _TO_JAX[kind](np.asarray(value))
        want = leaves[path].shape
        if arr.shape != tuple(want):
            misshaped.append(f"{key}: checkpoint {tuple(np.shape(value))}, model expects "
                             f"{_TO_TORCH[kind](np.empty(want, np.bool_)).shape}")
            continue
        if canon in filled:
            if not np.array_equal(filled[canon], arr):
                misshaped.append(f"{key}: differs from its shared twin {canon}")
            continue
        filled[canon] = arr
        target = jnp.dtype(dtype) if dtype is not None else leaves[path].dtype
        _set(params, path, jnp.asarray(arr, dtype=target))
    missing = sorted(set(table) - seen)
    if missing or unexpected or misshaped:
        lines = []
        if missing:
            lines.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:20])
                         + (" ..." if len(unexpected) > 20 else ""))
        if misshaped:
            lines.append(f"{len(misshaped)} mis-shaped key(s): " + "; ".join(misshaped[:20]))
        raise CheckpointError(source, f"checkpoint does not match {config.official_class} "
                                      f"({_short(config)}):\n  " + "\n  ".join(lines))
    return params


def params_to_state_dict(config: CroCoConfig, params: Mapping) -> dict[str, np.ndarray]:
    """f3d-jax params -> official state dict (numpy, torch layouts; both names of shared DPT tensors)."""
    _, _, table = abstract_model(config)
    leaves = dict(_flatten(params))
    out = {}
    for key, (path, kind) in table.items():
        out[key] = _TO_TORCH[kind](np.asarray(leaves[path]))
        m = re.match(r"^(.*\.scratch\.)layer_rn\.([0-3])\.weight$", key)
        if m:
            out[f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight"] = out[key]
    return out


def _short(config: CroCoConfig) -> str:
    d = dataclasses.asdict(config)
    keys = ("enc_embed_dim", "enc_depth", "dec_embed_dim", "dec_depth", "head_type", "output_mode", "patch_size")
    return ", ".join(f"{k}={d[k]}" for k in keys if k in d)


def cast_params(params: Any, dtype: Any) -> Any:
    """Cast every floating leaf to `dtype` (e.g. bf16 serving from an fp32 checkpoint)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
