"""Official state dict <-> f3d-jax params: a mechanical, strict mapping.

Param paths mirror the torch module names (`enc_blocks.3.attn.qkv.weight` ->
`params['enc_blocks'][3]['attn']['qkv']['kernel']`). Layout changes happen here only:
Linear `weight (out, in)` -> `kernel (in, out)`; LayerNorm `weight` -> `scale`;
Conv2d `weight (out, in, kh, kw)` -> `kernel (kh, kw, in, out)`; ConvTranspose2d
`weight (in, out, kh, kw)` -> `kernel (kh, kw, in, out)`. Nothing is ever skipped silently: missing,
unexpected and mis-shaped keys are reported together in one error.
"""

from __future__ import annotations

import collections

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.models.config import CroCoConfig, brief
from f3d_jax.models.model import abstract_module
from f3d_jax.nn.compat import nnx
from f3d_jax.nn.layers import Conv, ConvTranspose
from f3d_jax.weights.errors import CheckpointError

Path = tuple[str | int, ...]

# The DPT scratch convs are registered twice by the official code: `layer{k+1}_rn` is `layer_rn.{k}`.
_ALIAS = re.compile(r"^(.*\.scratch\.)layer([1-4])_rn\.weight$")
# CroCo's own DPT adapter (CroCo-Stereo / -Flow) also keeps `act_{k+1}_postprocess` beside `act_postprocess.{k}`
# (DUSt3R's `DPTOutputAdapter_fix` deletes them).
_ACT_ALIAS = re.compile(r"^(.*\.dpt\.)act_([1-4])_postprocess\.([0-9])\.(weight|bias)$")
_ACT_TWIN = re.compile(r"^(.*\.dpt\.)act_postprocess\.([0-3])\.([0-9])\.(weight|bias)$")


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
# The same permutations on shapes alone (jax layout -> torch layout), so that expected shapes
# never need an array.
_TORCH_AXES = {"linear": (1, 0), "conv": (3, 2, 0, 1), "convT": (2, 3, 0, 1)}
_TWIN = re.compile(r"^(.*\.scratch\.)layer_rn\.([0-3])\.weight$")
_BLOCK = re.compile(r"^(enc_blocks|dec_blocks|dec_blocks2)\.([0-9]{1,9})\.")


def _keeps_act_aliases(config: CroCoConfig) -> bool:
    from f3d_jax.models.binocular import CroCoDownstreamConfig

    return isinstance(config, CroCoDownstreamConfig)


def _aliases(config: CroCoConfig, key: str) -> list[str]:
    """The other names the official state dict stores the tensor of the canonical `key` under."""
    m = _TWIN.match(key)
    if m:
        return [f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight"]
    m = _ACT_TWIN.match(key)
    if m and _keeps_act_aliases(config):
        return [f"{m.group(1)}act_{int(m.group(2)) + 1}_postprocess.{m.group(3)}.{m.group(4)}"]
    return []


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    axes = _TORCH_AXES.get(kind)
    return tuple(shape) if axes is None else tuple(shape[i] for i in axes)


def expected_torch_shapes(config: CroCoConfig) -> dict[str, tuple[int, ...]]:
    """Torch key -> shape that the official state dict of this config holds (aliases included).

    Computed from the abstract model: nothing is allocated, whatever the sizes.
    """
    _, abstract, table = abstract_model(config)
    leaves = dict(_flatten(abstract))
    out = {}
    for key, (path, kind) in table.items():
        out[key] = _torch_shape(leaves[path].shape, kind)
        for alias in _aliases(config, key):
            out[alias] = out[key]
    return out


def structure_problems(config: CroCoConfig, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """A cheap first check of a checkpoint against a config, before the model is built abstractly.

    Compares the block counts and the widths of the final norms that the config claims with those
    of the checkpoint, so that a constructor claiming a huge model fails in microseconds instead
    of building thousands of abstract layers first.

    Args:
      config: the model configuration.
      shapes: checkpoint key -> shape. Keys are dotted paths (`enc_blocks.3.attn.qkv.weight` or the
        flax `enc_blocks.3.attn.qkv.kernel`); only the block indices and `enc_norm.*` /
        `dec_norm.*` are read.

    Returns:
      One line per mismatch (empty: plausible, go on with the full check).
    """
    blocks: dict[str, set[int]] = {"enc_blocks": set(), "dec_blocks": set(), "dec_blocks2": set()}
    norms: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        if not isinstance(key, str):
            continue
        m = _BLOCK.match(key)
        if m:
            blocks[m.group(1)].add(int(m.group(2)))
        elif key.startswith(("enc_norm.", "dec_norm.")):
            norms[key.split(".", 1)[0]] = tuple(shape)
    want = {"enc_blocks": config.enc_depth, "dec_blocks": config.dec_depth,
            "dec_blocks2": config.dec_depth if hasattr(config, "head_type") else 0}
    problems = []
    for name, depth in want.items():
        got = blocks[name]
        if got != set(range(depth)):
            desc = f"{len(got)} (indices {min(got)}..{max(got)})" if got else "none"
            problems.append(f"{name}: the constructor says {depth} block(s), the checkpoint has {desc}")
    for name, dim in (("enc_norm", config.enc_embed_dim), ("dec_norm", config.dec_embed_dim)):
        if name in norms and norms[name] != (dim,):
            problems.append(f"{name}: the constructor says width {dim}, the checkpoint has shape {norms[name]}")
    return problems


def reduced_config(config: CroCoConfig) -> CroCoConfig:
    """The config with the fewest blocks that has every distinct parameter shape of `config`.

    All blocks of a stack have the same shapes, and the heads' shapes do not depend on the depth,
    so one encoder block and one decoder block (10 for the DPT heads, which need dec_depth > 9)
    cover them. Building it abstractly is cheap whatever the claimed depth.
    """
    if hasattr(config, "reduced"):  # CroCo-Stereo / -Flow: the decoder depth picks the DPT hooks
        return config.reduced()
    dec = 10 if getattr(config, "head_type", "linear") != "linear" else 1
    return config.replace(enc_depth=1, dec_depth=min(config.dec_depth, dec))


# Building a model abstractly costs about 40-80 ms per block: up to this many blocks (the released
# ViT-Large models have 48) the full build is as cheap as the check it would save.
_SAMPLE_ABOVE_BLOCKS = 64


def needs_sampled_check(config: CroCoConfig) -> bool:
    """Whether the config has enough blocks that `sample_shape_problems` should run before the
    full abstract build."""
    stacks = 2 if hasattr(config, "head_type") else 1
    return config.enc_depth + stacks * config.dec_depth > _SAMPLE_ABOVE_BLOCKS


def canonical_block_key(key: str) -> str:
    """`enc_blocks.7.attn.qkv.weight` -> `enc_blocks.0.attn.qkv.weight` (same for the decoders)."""
    return _BLOCK.sub(lambda m: f"{m.group(1)}.0.", key, count=1)


def sample_shape_problems(reduced_shapes: Mapping[str, tuple[int, ...]],
                          shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Shapes of `shapes` (checkpoint key -> shape) that differ from those of the reduced model
    (`reduced_config`; every block compared with block 0). Unknown keys are left to the full check."""
    problems = []
    for key, shape in shapes.items():
        if not isinstance(key, str):
            continue
        want = reduced_shapes.get(canonical_block_key(key))
        if want is not None and tuple(shape) != tuple(want):
            problems.append(f"{key}: checkpoint {tuple(shape)}, model expects {tuple(want)}")
    return problems


def _is_float_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and jnp.issubdtype(value.dtype, jnp.floating)


def _mismatch_error(config: CroCoConfig, source: Any, missing: list, unexpected: list, misshaped: list):
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:20])
                     + (" ..." if len(unexpected) > 20 else ""))
    if misshaped:
        lines.append(f"{len(misshaped)} mis-shaped key(s): " + "; ".join(misshaped[:20])
                     + (" ..." if len(misshaped) > 20 else ""))
    return CheckpointError(source, f"checkpoint does not match {config.official_class} "
                                   f"({_short(config)}):\n  " + "\n  ".join(lines))


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 200 else brief(key)


def check_state_dict(config: CroCoConfig, state_dict: Mapping[str, Any], source: Any = None) -> None:
    """Checks every key, shape and dtype of an official state dict against a config, converting nothing.

    First the cheap `structure_problems`, then every shape against the reduced model
    (`sample_shape_problems`), then the full comparison with the shapes of the abstract
    model (`expected_torch_shapes`: no allocation). Values must be floating-point numpy arrays.

    Raises:
      CheckpointError: listing every missing, unexpected and mis-shaped key at once (or, when the
        block counts or the sampled shapes already differ, those).
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(source, f"the state dict should be a mapping, got {type(state_dict).__name__}")
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}
    quick = structure_problems(config, shapes)
    if quick:
        raise CheckpointError(source, f"checkpoint does not match {config.official_class} ({_short(config)}):\n  "
                                      + "\n  ".join(quick))
    # every shape against a model of one block per stack, before the whole model is built
    # abstractly (a constructor claiming 64 blocks of width 8192 with tiny tensors stops here)
    if needs_sampled_check(config):
        sampled = sample_shape_problems(expected_torch_shapes(reduced_config(config)), shapes)
        if sampled:
            raise _mismatch_error(config, source, [], [], sampled)
    want = expected_torch_shapes(config)
    unexpected, misshaped = [], []
    for key, value in state_dict.items():
        if not isinstance(key, str) or key not in want:
            unexpected.append(_key_text(key))
        elif not _is_float_array(value):
            what = f"a {value.dtype} array" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
            misshaped.append(f"{key}: {what}, not a floating-point tensor")
        elif value.shape != want[key]:
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)}, model expects {want[key]}")
    missing = sorted(set(want) - set(state_dict))
    # a DPT scratch conv is stored under one of its two names (safetensors drops the alias)
    # (CroCo's DPT also stores its act_postprocess convs twice)
    missing = [k for k in missing if not any(n in state_dict for n in [_canonical(k), *_aliases(config, _canonical(k))])]
    if missing or unexpected or misshaped:
        raise _mismatch_error(config, source, missing, unexpected, misshaped)


def _canonical(key: str) -> str:
    alias = _ALIAS.match(key)
    if alias:
        return f"{alias.group(1)}layer_rn.{int(alias.group(2)) - 1}.weight"
    act = _ACT_ALIAS.match(key)
    if act:
        return f"{act.group(1)}act_postprocess.{int(act.group(2)) - 1}.{act.group(3)}.{act.group(4)}"
    return key


def convert_state_dict(config: CroCoConfig, state_dict: Mapping[str, np.ndarray], source: Any = None,
                       dtype: Any = None, *, consume: bool = False) -> dict:
    """Official state dict -> f3d-jax params (nested dict of jax arrays).

    Every key, shape and dtype is checked first (`check_state_dict`); only then is any tensor
    converted. With `consume=True` (a dict the caller no longer needs, e.g. just read from a file)
    each entry is removed once converted, so the numpy copy of the weights is freed tensor by tensor
    and the peak stays near one copy of the weights instead of two.

    Raises:
      CheckpointError: listing every missing, unexpected and mis-shaped key at once.
    """
    check_state_dict(config, state_dict, source)
    _, abstract, table = abstract_model(config)
    leaves = dict(_flatten(abstract))
    canon_of = {key: _canonical(key) for key in state_dict}
    counts = collections.Counter(canon_of.values())
    params: dict = {}
    twin_of: dict[str, np.ndarray] = {}  # only the canonical keys stored under two names (DPT's shared convs)
    twins = []
    for key in list(state_dict):
        canon = canon_of[key]
        path, kind = table[canon]
        value = state_dict.pop(key) if consume else state_dict[key]
        arr = _TO_JAX[kind](value)
        del value
        if canon in twin_of:
            if not np.array_equal(twin_of[canon], arr):
                twins.append(f"{key}: differs from its shared twin {canon}")
            continue
        if counts[canon] > 1:
            twin_of[canon] = arr
        target = jnp.dtype(dtype) if dtype is not None else leaves[path].dtype
        _set(params, path, jnp.asarray(arr, dtype=target))
        del arr
    if twins:
        raise _mismatch_error(config, source, [], [], twins)
    return params


def params_to_state_dict(config: CroCoConfig, params: Mapping) -> dict[str, np.ndarray]:
    """f3d-jax params -> official state dict (numpy, torch layouts; both names of shared DPT tensors)."""
    _, _, table = abstract_model(config)
    leaves = dict(_flatten(params))
    out = {}
    for key, (path, kind) in table.items():
        out[key] = _TO_TORCH[kind](np.asarray(leaves[path]))
        for alias in _aliases(config, key):
            out[alias] = out[key]
    return out


def _short(config: CroCoConfig) -> str:
    d = dataclasses.asdict(config)
    keys = ("enc_embed_dim", "enc_depth", "dec_embed_dim", "dec_depth", "head_type", "output_mode", "patch_size")
    return ", ".join(f"{k}={d[k]}" for k in keys if k in d)


def cast_params(params: Any, dtype: Any) -> Any:
    """Cast every floating leaf to `dtype` (e.g. bf16 serving from an fp32 checkpoint)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
