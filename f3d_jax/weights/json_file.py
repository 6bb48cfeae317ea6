"""Small JSON files read with bounded work: size cap, nesting cap, short integers, no NaN.

`json.loads` recurses once per nesting level (a deeply nested file raises `RecursionError`),
converts integers of up to 4,300 digits (then raises `ValueError`) and accepts `NaN`. The model
configuration files f3d-jax reads are a few hundred bytes with two levels of nesting.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from f3d_jax.weights.errors import CheckpointError

__all__ = ["loads_bounded", "read_json_bounded"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_INT_DIGITS = 32
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _nesting(text: str) -> int:
    """Deepest bracket nesting outside strings (linear time, no recursion)."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_STRINGS.sub('""', text)):
        depth += 1 if b in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(s)} digits")
    return int(s)


def _constant(s: str) -> float:
    if s == "NaN":
        raise ValueError("NaN is not accepted")
    return float(s)  # Infinity, -Infinity (written by json.dumps for the infinite mode bounds)


def loads_bounded(text: str, source: Any, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(text)` refusing deep nesting, long integers and NaN.

    Raises:
        CheckpointError: naming `source`.
    """
    depth = _nesting(text)
    if depth > max_depth:
        raise CheckpointError(source, f"JSON nested {depth} levels deep (at most {max_depth} accepted)")
    try:
        return json.loads(text, parse_int=_int, parse_constant=_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(source, f"invalid JSON ({str(e)[:200]})") from None


def read_json_bounded(path: str | os.PathLike, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Reads a small UTF-8 JSON file (at most `max_bytes`) with `loads_bounded`.

    Raises:
        CheckpointError: missing, not a regular file, too large, not UTF-8, or invalid JSON.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise CheckpointError(path, "no such file" if not path.exists() else "not a regular file")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise CheckpointError(path, f"cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise CheckpointError(path, f"larger than {max_bytes} bytes: not a model configuration file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    return loads_bounded(text, path, max_depth)
