"""JSON read from checkpoints (safetensors headers, `config.json`, indexes, `f3d_model.json`) with
bounded work and one error type.

`json.loads` alone recurses once per nesting level (a deeply nested file raises `RecursionError`),
converts integers of up to 4,300 digits (then raises `ValueError`), keeps the last of duplicate
keys and accepts `NaN`. Here: nesting is measured first, without recursion; integers have at most
`MAX_INT_DIGITS` digits; duplicate keys, `NaN` and (unless allowed) `Infinity` are refused; and
everything that goes wrong is a `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from f3d_jax.weights.errors import CheckpointError

__all__ = ["loads_bounded", "read_capped", "read_json_bounded"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_INT_DIGITS = 31
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _nesting(text: str) -> int:
    """Deepest bracket nesting outside strings (linear time, no recursion)."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_STRINGS.sub('""', text)):
        depth += 1 if b in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in items:
        if k in out:
            raise ValueError(f"duplicate key {k[:100]!r}")
        out[k] = v
    return out


def _int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(s)} digits")
    return int(s)


def loads_bounded(data: str | bytes, source: Any, *, max_depth: int = MAX_DEPTH, allow_infinity: bool = False) -> Any:
    """`json.loads(data)` refusing deep nesting, long integers, duplicate keys, `NaN`, and `Infinity`
    unless `allow_infinity` (`save_pretrained` and `json.dumps` write it for the infinite mode bounds).

    Raises:
        CheckpointError: naming `source`.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(source, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    depth = _nesting(data)
    if depth > max_depth:
        raise CheckpointError(source, f"JSON nested {depth} levels deep (at most {max_depth} accepted)")

    def constant(s: str) -> float:
        if s == "NaN":
            raise ValueError("NaN is not accepted")
        if not allow_infinity:
            raise ValueError(f"the non-standard token {s} is not accepted here")
        return float(s)

    try:
        return json.loads(data, object_pairs_hook=_pairs, parse_int=_int, parse_constant=constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(source, f"invalid JSON ({str(e)[:200]})") from None


def read_capped(path: str | os.PathLike, cap: int) -> bytes:
    """The bytes of a small regular file (config, index), refused when it is larger than `cap`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise CheckpointError(path, "no such file" if not path.exists() else "not a regular file")
        with open(path, "rb") as f:
            raw = f.read(cap + 1)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if len(raw) > cap:
        raise CheckpointError(path, f"larger than {cap} bytes (the most this file may hold)")
    return raw


def read_json_bounded(path: str | os.PathLike, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH, *,
                      allow_infinity: bool = True) -> Any:
    """Reads a small UTF-8 JSON file (at most `max_bytes`) with `loads_bounded`.

    Raises:
        CheckpointError: missing, not a regular file, too large, not UTF-8, or invalid JSON.
    """
    return loads_bounded(read_capped(path, max_bytes), Path(path), max_depth=max_depth, allow_infinity=allow_infinity)
