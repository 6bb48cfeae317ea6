"""Constructor strings and keyword arguments of the official models, parsed without `eval`.

Equivalent of the `eval(ckpt['args'].model)` in `dust3r.model.load_model` /
`mast3r.model.load_model` (with their string rewrite), of
`croco.models.croco_downstream.croco_args_from_ckpt`, and of `cls(**config)` in
`PyTorchModelHubMixin.from_pretrained`: here the string is parsed with `ast`, only the three
official classes and literal keyword values are accepted, and keyword names are checked against
the official `__init__` signatures.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

from f3d_jax.weights.errors import CheckpointError

__all__ = [
    "CLASS_NAMES",
    "CONSTRUCTOR_DEFAULTS",
    "ConstructorError",
    "checkpoint_constructor",
    "format_constructor",
    "hf_config_constructor",
    "official_load_model_rewrite",
    "parse_constructor",
    "validate_kwargs",
    "with_defaults",
]

inf = math.inf

# Official `__init__` keyword defaults (croco/models/croco.py, dust3r/model.py, mast3r/model.py).
# `norm_layer` (a callable, LayerNorm eps 1e-6) is not a literal and is not accepted.
_CROCO_DEFAULTS: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 16,
    "mask_ratio": 0.9,
    "enc_embed_dim": 768,
    "enc_depth": 12,
    "enc_num_heads": 12,
    "dec_embed_dim": 512,
    "dec_depth": 8,
    "dec_num_heads": 16,
    "mlp_ratio": 4,
    "norm_im2_in_dec": True,
    "pos_embed": "cosine",
}
_DUST3R_DEFAULTS: dict[str, Any] = {
    "output_mode": "pts3d",
    "head_type": "linear",
    "depth_mode": ("exp", -inf, inf),
    "conf_mode": ("exp", 1, inf),
    "freeze": "none",
    "landscape_only": True,
    "patch_embed_cls": "PatchEmbedDust3R",
    **_CROCO_DEFAULTS,
}
_MAST3R_DEFAULTS: dict[str, Any] = {
    "desc_mode": "norm",
    "two_confs": False,
    "desc_conf_mode": None,  # None: the official code then uses conf_mode
    **_DUST3R_DEFAULTS,
}
CONSTRUCTOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "CroCoNet": _CROCO_DEFAULTS,
    "AsymmetricCroCo3DStereo": _DUST3R_DEFAULTS,
    "AsymmetricMASt3R": _MAST3R_DEFAULTS,
}
CLASS_NAMES: tuple[str, ...] = tuple(CONSTRUCTOR_DEFAULTS)

# Accepted spellings of an infinity besides the bare `inf` of the official module namespace.
_INF_STRINGS = {"inf": inf, "+inf": inf, "-inf": -inf, "infinity": inf, "+infinity": inf, "-infinity": -inf}
_INF_MODULES = {"math", "np", "numpy", "torch"}
_MAX_LEN = 20_000


class ConstructorError(CheckpointError):
    """A constructor string or keyword set is not one f3d-jax can build."""

    def __init__(self, what: str, problem: str):
        super().__init__(None, f"model constructor {what}: {problem}")


# ---- parsing -----------------------------------------------------------------------------------


def _literal(node: ast.expr, s: str) -> Any:
    """Value of a literal keyword argument (tuples and lists become tuples)."""
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None or isinstance(v, bool | int | float | str):
            return v
        raise ConstructorError(repr(s), f"unsupported constant {v!r}")
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_literal(e, s) for e in node.elts)
    if isinstance(node, ast.Name) and node.id == "inf":
        return inf
    if isinstance(node, ast.Attribute) and node.attr == "inf":
        if isinstance(node.value, ast.Name) and node.value.id in _INF_MODULES:
            return inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _literal(node.operand, s)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "float"
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and node.args[0].value.strip().lower() in _INF_STRINGS
    ):
        return _INF_STRINGS[node.args[0].value.strip().lower()]
    raise ConstructorError(repr(s), f"non-literal value `{ast.unparse(node)}` (only numbers, strings, bools, "
                           "None, tuples/lists and inf are accepted; nothing is evaluated)")


def parse_constructor(s: str, *, validate: bool = True) -> tuple[str, dict[str, Any]]:
    """Parses an official constructor string without evaluating it.

    Args:
        s: e.g. `"AsymmetricMASt3R(enc_depth=24, depth_mode=('exp', -inf, inf), ...)"`, as stored
            in `ckpt['args'].model`.
        validate: check keyword names (and basic types) against the official signature.

    Returns:
        `(class_name, kwargs)` with kwargs in the string's order; tuples and lists as tuples,
        `inf` / `float('inf')` as `math.inf`.

    Raises:
        ConstructorError: not a single call, unknown class, positional or `**` arguments, a
            repeated or unknown keyword, or a non-literal value.
    """
    if not isinstance(s, str):
        raise ConstructorError(repr(s), f"expected a string, got {type(s).__name__}")
    if len(s) > _MAX_LEN:
        raise ConstructorError(repr(s[:80] + "..."), f"string of {len(s)} characters is too long")
    try:
        tree = ast.parse(s.strip(), mode="eval")
    except SyntaxError as e:
        raise ConstructorError(repr(s), f"not valid Python syntax ({e.msg})") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ConstructorError(repr(s), "expected a single call `ClassName(keyword=value, ...)`")
    name = call.func.id
    if name not in CONSTRUCTOR_DEFAULTS:
        raise ConstructorError(repr(s), f"unknown class {name!r} (known: {', '.join(CLASS_NAMES)})")
    if call.args:
        raise ConstructorError(repr(s), "positional arguments are not accepted, only keywords")
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ConstructorError(repr(s), "`**kwargs` expansion is not accepted")
        if kw.arg in kwargs:
            raise ConstructorError(repr(s), f"keyword {kw.arg!r} given twice")
        kwargs[kw.arg] = _literal(kw.value, s)
    if validate:
        validate_kwargs(name, kwargs, what=repr(s))
    return name, kwargs


# ---- validation --------------------------------------------------------------------------------

_INT_KEYS = {"patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads"}
_NUM_KEYS = {"mask_ratio", "mlp_ratio"}
_BOOL_KEYS = {"norm_im2_in_dec", "landscape_only", "two_confs"}
_STR_KEYS = {"pos_embed", "output_mode", "head_type", "freeze", "patch_embed_cls", "desc_mode"}
_MODE_KEYS = {"depth_mode", "conf_mode", "desc_conf_mode"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _type_problem(key: str, v: Any) -> str | None:
    if key in _INT_KEYS and not (_is_int(v) and v > 0):
        return "a positive int"
    if key in _NUM_KEYS and not _is_num(v):
        return "a number"
    if key in _BOOL_KEYS and not isinstance(v, bool):
        return "a bool"
    if key in _STR_KEYS and not isinstance(v, str):
        return "a string"
    if key == "img_size" and not (_is_int(v) or (isinstance(v, tuple) and len(v) == 2 and all(map(_is_int, v)))):
        return "an int or a (height, width) pair of ints"
    if key in _MODE_KEYS and v is not None and not (
        isinstance(v, tuple) and len(v) == 3 and isinstance(v[0], str) and _is_num(v[1]) and _is_num(v[2])
    ):
        return "a (name, min, max) triple or None"
    return None


def validate_kwargs(class_name: str, kwargs: Mapping[str, Any], *, what: str | None = None) -> None:
    """Checks keyword names and basic types against the official `__init__` of `class_name`.

    Raises:
        ConstructorError: unknown class, unknown keyword(s) (all listed) or a value of the wrong type.
    """
    what = what or f"{class_name}(...)"
    if class_name not in CONSTRUCTOR_DEFAULTS:
        raise ConstructorError(what, f"unknown class {class_name!r} (known: {', '.join(CLASS_NAMES)})")
    allowed = CONSTRUCTOR_DEFAULTS[class_name]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ConstructorError(
            what,
            f"unknown keyword argument(s) {', '.join(map(repr, unknown))} for {class_name} "
            f"(accepted: {', '.join(sorted(allowed))})",
        )
    for k, v in kwargs.items():
        expected = _type_problem(k, v)
        if expected:
            raise ConstructorError(what, f"{k}={v!r} should be {expected}")


def with_defaults(class_name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """All constructor arguments of `class_name`: the official defaults overridden by `kwargs`."""
    validate_kwargs(class_name, kwargs)
    return {**CONSTRUCTOR_DEFAULTS[class_name], **kwargs}


# ---- official rewrites ---------------------------------------------------------------------------


def official_load_model_rewrite(
    class_name: str, kwargs: Mapping[str, Any], *, keep_training_settings: bool = False
) -> dict[str, Any]:
    """The rewrite `load_model` applies to `args.model` before building the model.

    `ManyAR_PatchEmbed` becomes `PatchEmbedDust3R` and `landscape_only` becomes False (appended
    when absent), so portrait inputs are handled per orientation at inference. CroCoNet kwargs
    are returned unchanged.

    Args:
        class_name: from `parse_constructor`.
        kwargs: from `parse_constructor`.
        keep_training_settings: return the kwargs unchanged (the training-time model:
            `ManyAR_PatchEmbed`, `landscape_only=True`, portrait entries stored transposed).

    Returns:
        A new kwargs dict (the input is not modified).
    """
    out = dict(kwargs)
    if keep_training_settings or class_name == "CroCoNet":
        return out
    if out.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        out["patch_embed_cls"] = "PatchEmbedDust3R"
    out["landscape_only"] = False
    return out


def _format_value(v: Any) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, tuple | list):
        inner = ", ".join(_format_value(e) for e in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    return repr(v)


def format_constructor(class_name: str, kwargs: Mapping[str, Any]) -> str:
    """The official-style constructor string, e.g. `"CroCoNet(pos_embed='RoPE100')"`."""
    args = ", ".join(f"{k}={_format_value(v)}" for k, v in kwargs.items())
    return f"{class_name}({args})"


# ---- from checkpoints ----------------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _to_tuples(v: Any) -> Any:
    return tuple(_to_tuples(e) for e in v) if isinstance(v, list | tuple) else v


def checkpoint_constructor(ckpt: Mapping[str, Any], source: Any = None) -> tuple[str, dict[str, Any]]:
    """Class and training-time kwargs of a checkpoint read by `read_pth`.

    Covers the official layouts: `{'model', 'args': Namespace(model='<Class>(...)')}` (DUSt3R,
    MASt3R, CroCo pretraining runs), `{'model', 'croco_kwargs': {...}}` (CroCo v2 releases) and
    `{'model'}` alone (CroCo v1 release: `CroCoNet()` defaults), like `croco_args_from_ckpt` and
    `load_model` do. Apply `official_load_model_rewrite` for the inference-time model.

    Args:
        ckpt: the checkpoint dict.
        source: file name used in error messages.

    Raises:
        CheckpointError: no usable constructor, or one that does not parse/validate.
    """
    try:
        if "croco_kwargs" in ckpt:
            kw = ckpt["croco_kwargs"]
            if not isinstance(kw, Mapping) or not all(isinstance(k, str) for k in kw):
                raise ConstructorError("croco_kwargs", f"expected a dict of keyword arguments, got {type(kw).__name__}")
            kwargs = {k: _to_tuples(v) for k, v in kw.items()}
            validate_kwargs("CroCoNet", kwargs, what=f"croco_kwargs {dict(kw)!r}")
            return "CroCoNet", kwargs
        args = ckpt.get("args")
        model_str = _get(args, "model") if args is not None else None
        if isinstance(model_str, str):
            return parse_constructor(model_str)
        if "mast3r_model_str" in ckpt or "dune_backbone_name" in ckpt:
            raise ConstructorError("(DUNE)", "MASt3R checkpoints with a DUNE backbone are not supported")
        state = ckpt.get("model")
        if isinstance(state, Mapping) and state:
            if any(k.startswith(("dec_blocks2.", "downstream_head")) for k in state):
                raise ConstructorError(
                    "(missing)", "a DUSt3R/MASt3R state dict without args.model: its constructor is unknown"
                )
            return "CroCoNet", {}  # CroCo v1 release: the official code uses CroCoNet() defaults
        raise ConstructorError("(missing)", "the checkpoint has neither 'croco_kwargs', 'args.model' nor a 'model' state dict")
    except ConstructorError as e:
        if source is None:
            raise
        raise CheckpointError(source, e.problem) from None


def hf_config_constructor(config: Mapping[str, Any], source: Any = None) -> tuple[str, dict[str, Any]]:
    """Class and kwargs of a Hugging Face `config.json` written by `PyTorchModelHubMixin`.

    The config does not name the class: MASt3R's own keys (`desc_mode`, `two_confs`,
    `desc_conf_mode`) or a `catmlp` head mean `AsymmetricMASt3R`, otherwise
    `AsymmetricCroCo3DStereo`. JSON lists become tuples.

    Raises:
        CheckpointError: unknown keys or wrong types (naming `source`).
    """
    try:
        if not isinstance(config, Mapping):
            raise ConstructorError("config.json", f"expected a JSON object, got {type(config).__name__}")
        kwargs = {k: _to_tuples(v) for k, v in config.items()}
        mast3r_keys = {"desc_mode", "two_confs", "desc_conf_mode"}
        head = kwargs.get("head_type")
        if mast3r_keys & kwargs.keys() or (isinstance(head, str) and head.startswith("catmlp")):
            name = "AsymmetricMASt3R"
        else:
            name = "AsymmetricCroCo3DStereo"
        validate_kwargs(name, kwargs, what="config.json")
        return name, kwargs
    except ConstructorError as e:
        if source is None:
            raise
        raise CheckpointError(source, e.problem) from None
