"""Errors raised while reading or converting checkpoints."""

from __future__ import annotations

from os import PathLike


class CheckpointError(ValueError):
    """A checkpoint could not be read or converted.

    The message always names the file (or source) and the problem, so users see one clear line
    instead of a traceback from deep inside a reader.
    """

    def __init__(self, source: str | PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)
