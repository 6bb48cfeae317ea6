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
import contextlib
import io
import keyword
import math
import tokenize
from collections.abc import Iterator, Mapping
from typing import Any

from f3d_jax.models.config import argument_problem, arguments_problem, brief
from f3d_jax.weights.errors import CheckpointError

__all__ = [
    "CLASS_NAMES",
    "CONSTRUCTOR_DEFAULTS",
    "ConstructorError",
    "checkpoint_constructor",
    "f3d_config_constructor",
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
# Bounds checked on the tokens, before `ast.parse`: the parser recurses on nesting and on chains of
# operators (`-----1`, `1+1+...`, `not not ...`), and Python converts integer literals up to 4,300
# digits. An official string has 2 levels of brackets, a few `-` and numbers of a few digits.
_MAX_NESTING = 4
_MAX_OPERATORS = 256  # operator tokens other than `,` and `=` (brackets, `-`, `.`)
_MAX_KEYWORDS = 8  # Python keywords (`not`, `lambda`, ...; True/False/None excluded)
_MAX_NUMBER_CHARS = 32
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # Python >= 3.12 tokenizes f-strings apart
# Values from a dict (`croco_kwargs`, `config.json`): at most this deep and this long.
_MAX_VALUE_DEPTH = 3
_MAX_VALUE_LEN = 16


def _what(s: str) -> str:
    """`repr` of a constructor string for messages (long ones shortened)."""
    return repr(s) if len(s) <= 300 else repr(s[:200]) + f"... ({len(s)} characters)"


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
        raise ConstructorError(_what(s), f"unsupported constant {brief(v)}")
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
    text = ast.unparse(node)
    text = text if len(text) <= 80 else text[:80] + "..."
    raise ConstructorError(_what(s), f"non-literal value `{text}` (only numbers, strings, bools, "
                           "None, tuples/lists and inf are accepted; nothing is evaluated)")


def _check_tokens(s: str) -> None:
    """Refuses, from the tokens alone, what would make `ast.parse` recurse deeply or convert huge
    integers: deep nesting, long chains of operators or keywords, long number literals, f-strings
    (parsed as nested expressions). Linear in the string length."""
    depth = operators = keywords = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(s).readline):
            if tok.type == tokenize.NUMBER and len(tok.string) > _MAX_NUMBER_CHARS:
                raise ConstructorError(_what(s), f"number literal of {len(tok.string)} characters is too long")
            if tok.type == _FSTRING_START or tok.type == tokenize.STRING and any(c in "fF" for c in tok.string[:tok.string.index(tok.string[-1])]):
                raise ConstructorError(_what(s), "non-literal value (f-strings are not accepted)")
            if tok.type == tokenize.NAME and keyword.iskeyword(tok.string) and tok.string not in ("True", "False", "None"):
                keywords += 1
                if keywords > _MAX_KEYWORDS:
                    raise ConstructorError(_what(s), "too many Python keywords (not a constructor call)")
            if tok.type == tokenize.OP and tok.string not in (",", "="):
                operators += 1
                if operators > _MAX_OPERATORS:
                    raise ConstructorError(_what(s), f"more than {_MAX_OPERATORS} operators and brackets")
                if tok.string in "([{":
                    depth += 1
                    if depth > _MAX_NESTING:
                        raise ConstructorError(_what(s), f"brackets nested deeper than {_MAX_NESTING} levels")
                elif tok.string in ")]}":
                    depth -= 1
    except (tokenize.TokenError, SyntaxError) as e:  # unterminated string or bracket, bad indent
        msg = e.args[0] if e.args else type(e).__name__
        raise ConstructorError(_what(s), f"not valid Python syntax ({msg})") from None


def _plain(v: Any, what: str, key: str, depth: int = 0) -> Any:
    """A value from a dict source as a constructor literal: lists become tuples; nesting, lengths
    and types are bounded (a deeply nested or huge value is refused, not recursed into)."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list | tuple):
        if depth >= _MAX_VALUE_DEPTH or len(v) > _MAX_VALUE_LEN:
            raise ConstructorError(what, f"{key}: a list nested deeper than {_MAX_VALUE_DEPTH} levels or longer "
                                         f"than {_MAX_VALUE_LEN} items is not a constructor argument")
        return tuple(_plain(e, what, key, depth + 1) for e in v)
    raise ConstructorError(what, f"{key}: unsupported value of type {type(v).__name__}")


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
        raise ConstructorError(f"<{type(s).__name__}>", f"expected a string, got {type(s).__name__}")
    if len(s) > _MAX_LEN:
        raise ConstructorError(_what(s), f"string of {len(s)} characters is too long")
    _check_tokens(s.strip())
    try:
        tree = ast.parse(s.strip(), mode="eval")
    except SyntaxError as e:
        raise ConstructorError(_what(s), f"not valid Python syntax ({e.msg})") from None
    except (RecursionError, MemoryError, ValueError):  # not reached after _check_tokens; kept as a net
        raise ConstructorError(_what(s), "too deeply nested or too large to parse") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ConstructorError(_what(s), "expected a single call `ClassName(keyword=value, ...)`")
    name = call.func.id
    if name not in CONSTRUCTOR_DEFAULTS:
        raise ConstructorError(_what(s), f"unknown class {brief(name)} (known: {', '.join(CLASS_NAMES)})")
    if call.args:
        raise ConstructorError(_what(s), "positional arguments are not accepted, only keywords")
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ConstructorError(_what(s), "`**kwargs` expansion is not accepted")
        if kw.arg in kwargs:
            raise ConstructorError(_what(s), f"keyword {kw.arg!r} given twice")
        kwargs[kw.arg] = _literal(kw.value, s)
    if validate:
        validate_kwargs(name, kwargs, what=_what(s))
    return name, kwargs


# ---- validation --------------------------------------------------------------------------------

def validate_kwargs(class_name: str, kwargs: Mapping[str, Any], *, what: str | None = None) -> None:
    """Checks keyword names and values against the official `__init__` of `class_name`.

    Each value is checked alone (type, range, finiteness, closed set of names:
    `f3d_jax.models.config.argument_problem`), then all arguments together, defaults included
    (embedding divisible by heads, image a multiple of the patch: `arguments_problem`).

    Raises:
        ConstructorError: unknown class, unknown keyword(s) (listed), or a bad value.
    """
    what = what or f"{brief(class_name)}(...)"
    if not isinstance(class_name, str) or class_name not in CONSTRUCTOR_DEFAULTS:
        raise ConstructorError(what, f"unknown class {brief(class_name)} (known: {', '.join(CLASS_NAMES)})")
    allowed = CONSTRUCTOR_DEFAULTS[class_name]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        shown = ", ".join(brief(k) for k in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ConstructorError(
            what, f"unknown keyword argument(s) {shown} for {class_name} (accepted: {', '.join(sorted(allowed))})"
        )
    for k, v in kwargs.items():
        expected = argument_problem(k, v)
        if expected:
            raise ConstructorError(what, f"{k}={brief(v)} {expected}")
    problem = arguments_problem({**allowed, **kwargs})
    if problem:
        raise ConstructorError(what, problem)


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



@contextlib.contextmanager
def _naming(source: Any) -> Iterator[None]:
    """A `ConstructorError` raised inside becomes a `CheckpointError` naming `source` (kept as is without one)."""
    try:
        yield
    except ConstructorError as e:
        if source is None:
            raise
        raise CheckpointError(source, e.problem) from None


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
    with _naming(source):
        if "croco_kwargs" in ckpt:
            kw = ckpt["croco_kwargs"]
            if not isinstance(kw, Mapping) or not all(isinstance(k, str) for k in kw):
                raise ConstructorError("croco_kwargs", f"expected a dict of keyword arguments, got {type(kw).__name__}")
            kwargs = {k: _plain(v, "croco_kwargs", k) for k, v in kw.items()}
            shown = ", ".join(f"{brief(k)}: {brief(v)}" for k, v in list(kwargs.items())[:20])
            validate_kwargs("CroCoNet", kwargs, what=f"croco_kwargs {{{shown}}}")
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


def hf_config_constructor(config: Mapping[str, Any], source: Any = None) -> tuple[str, dict[str, Any]]:
    """Class and kwargs of a Hugging Face `config.json` written by `PyTorchModelHubMixin`.

    The config does not name the class: MASt3R's own keys (`desc_mode`, `two_confs`,
    `desc_conf_mode`) or a `catmlp` head mean `AsymmetricMASt3R`, otherwise
    `AsymmetricCroCo3DStereo`. JSON lists become tuples.

    Raises:
        CheckpointError: unknown keys or wrong types (naming `source`).
    """
    with _naming(source):
        if not isinstance(config, Mapping):
            raise ConstructorError("config.json", f"expected a JSON object, got {type(config).__name__}")
        if not all(isinstance(k, str) for k in config):
            raise ConstructorError("config.json", "every key should be a string")
        kwargs = {k: _plain(v, "config.json", k) for k, v in config.items()}
        mast3r_keys = {"desc_mode", "two_confs", "desc_conf_mode"}
        head = kwargs.get("head_type")
        if mast3r_keys & kwargs.keys() or (isinstance(head, str) and head.startswith("catmlp")):
            name = "AsymmetricMASt3R"
        else:
            name = "AsymmetricCroCo3DStereo"
        validate_kwargs(name, kwargs, what="config.json")
        return name, kwargs


F3D_FORMAT = 1  # version of the `f3d_model.json` written by `save_model`


def f3d_config_constructor(meta: Any, source: Any = None) -> tuple[str, dict[str, Any]]:
    """Class and kwargs of an `f3d_model.json` written by `save_model`.

    Expects `{"class": <official class name>, "kwargs": {...all constructor arguments...},
    "format": 1}`; the kwargs are validated like any other constructor's.

    Raises:
        CheckpointError: another layout or format, an unknown class, or bad kwargs (naming `source`).
    """
    with _naming(source):
        if not isinstance(meta, Mapping):
            raise ConstructorError("f3d_model.json", f"expected a JSON object, got {type(meta).__name__}")
        keys = set(meta)
        if keys != {"class", "kwargs", "format"}:
            raise ConstructorError("f3d_model.json", "expected exactly the keys 'class', 'kwargs' and 'format', got "
                                   + ", ".join(brief(k) for k in list(meta)[:10]))
        fmt = meta["format"]
        if type(fmt) is not int or fmt != F3D_FORMAT:
            raise ConstructorError("f3d_model.json", f"unsupported format {brief(fmt)} (this version reads {F3D_FORMAT})")
        name, kw = meta["class"], meta["kwargs"]
        if not isinstance(name, str) or name not in CONSTRUCTOR_DEFAULTS:
            raise ConstructorError("f3d_model.json", f"unknown class {brief(name)} (known: {', '.join(CLASS_NAMES)})")
        if not isinstance(kw, Mapping) or not all(isinstance(k, str) for k in kw):
            raise ConstructorError("f3d_model.json", "'kwargs' should be an object of keyword arguments")
        kwargs = {k: _plain(v, "f3d_model.json", k) for k, v in kw.items()}
        validate_kwargs(name, kwargs, what="f3d_model.json")
        return name, kwargs
