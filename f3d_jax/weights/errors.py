"""Errors raised while reading or converting checkpoints."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint could not be read or converted.

    The message always names the file (or source) and the problem, so users see one clear line
    instead of a traceback from deep inside a reader.
    """

    def __init__(self, source: str | PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


def read_file_head(path: str | PathLike, nbytes: int) -> tuple[Path, int, bytes]:
    """(path, size, first `nbytes` bytes) of an existing, non-empty regular file, else a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file" if not path.exists() else "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    with open(path, "rb") as f:
        return path, size, f.read(nbytes)


def parse_json(raw: bytes, source: str | PathLike, *, allow_constants: bool = False, max_depth: int = 32) -> object:
    """Strict JSON for files read from checkpoints: one `CheckpointError` for anything off.

    Refuses invalid UTF-8 or JSON, duplicate object keys, integers of more than 30 digits,
    nesting deeper than `max_depth`, and (unless `allow_constants`, which `config.json` needs for
    the `Infinity` that `save_pretrained` writes) the `NaN`/`Infinity` tokens.
    """

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"duplicate key {k[:100]!r}")
            out[k] = v
        return out

    def parse_int(s: str) -> int:
        if len(s) > 31:
            raise ValueError(f"an integer of {len(s)} digits")
        return int(s)

    def parse_constant(s: str) -> float:
        if not allow_constants:
            raise ValueError(f"the non-standard token {s}")
        return float(s)

    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=pairs, parse_int=parse_int, parse_constant=parse_constant
        )
    except RecursionError:
        raise CheckpointError(source, "invalid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(source, f"invalid JSON ({str(e)[:200]})") from None
    todo = [(value, 0)]  # iterative depth check: callers may walk the value recursively
    while todo:
        v, depth = todo.pop()
        if depth > max_depth:
            raise CheckpointError(source, f"invalid JSON (nested more than {max_depth} levels deep)")
        if isinstance(v, dict):
            todo.extend((c, depth + 1) for c in v.values())
        elif isinstance(v, list):
            todo.extend((c, depth + 1) for c in v)
    return value


def read_capped(path: Path, cap: int) -> bytes:
    """The bytes of a small file (config, index), refused when it is larger than `cap`."""
    try:
        with open(path, "rb") as f:
            raw = f.read(cap + 1)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e})") from None
    if len(raw) > cap:
        raise CheckpointError(path, f"larger than the {cap} bytes allowed for this file")
    return raw
