"""Errors raised while reading or converting checkpoints."""

from __future__ import annotations

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
