"""Reads an ASMK codebook (the visual-word centroids) without executing pickle code.

The official `*_codebook.pkl` is `asmk.codebook.Codebook.state_dict()` written by `pickle.dump`:
`{'type': 'Codebook', 'params': {'size': K or '64k'}, 'state': {'centroids': ndarray (K, D) float32}}`. It runs
here on the project's bounded pickle machine (`f3d_jax.weights.pickle_machine`) with a closed table of numpy
globals mapped to pure functions of this module: `numpy.(_)core.multiarray._reconstruct` + `numpy.ndarray` +
BUILD (protocols 2-4), `numpy.(_)core.numeric._frombuffer` (protocol 5), `numpy.dtype` of float16/32/64 only.
No real class is constructed, nothing else is resolved. A bare pickled array, or a `.npy` file (read with
`allow_pickle=False`), is accepted too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from f3d_jax.weights.errors import CheckpointError, read_file_head
from f3d_jax.weights.pickle_machine import PLAIN_GLOBALS, Global, Limits, unpickle

__all__ = ["read_codebook"]

MAX_CODEBOOK_BYTES = 4 << 30  # 1M words x 1024 float32 dims; the released codebook is 64k x 1024 (256 MiB)
_DTYPES = {"f2": np.dtype("<f2"), "f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
_SIZE = re.compile(r"([0-9]{1,7})([kM]?)")


@dataclass(eq=False)
class _ArrayStub:
    """`_reconstruct(ndarray, (0,), b'b')`: an empty array that BUILD fills in (then replaced by `array`)."""

    array: np.ndarray | None = None


class _NdarrayType:
    """Marker for the global `numpy.ndarray` (only meaningful as `_reconstruct`'s first argument)."""


def _fail(source: Path, problem: str) -> Any:
    raise CheckpointError(source, problem)


def _array_from(source: Path, raw: Any, dtype: Any, shape: Any, fortran: bool) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype not in _DTYPES.values():
        _fail(source, "codebook pickle: an array whose dtype is not float16/32/64")
    if type(shape) is not tuple or not 1 <= len(shape) <= 2 or not all(type(n) is int and n >= 0 for n in shape):
        _fail(source, f"codebook pickle: an array of shape {shape!r} (expected 1 or 2 non-negative dimensions)")
    if type(raw) is not bytes or len(raw) != math.prod(shape) * dtype.itemsize:
        got = len(raw) if type(raw) is bytes else type(raw).__name__
        _fail(source, f"codebook pickle: an array of shape {shape} {dtype.name} holds {got} bytes of data")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


class _CodebookLoader:
    def __init__(self, source: Path):
        self.source = source
        self.ndarray = _NdarrayType()
        reconstruct = Global("numpy.core.multiarray._reconstruct", reduce=self._reconstruct)
        frombuffer = Global("numpy.core.numeric._frombuffer", reduce=self._frombuffer)
        self.globals: dict[tuple[str, str], Any] = {
            **PLAIN_GLOBALS,
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy.core.numeric", "_frombuffer"): frombuffer,
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("numpy", "ndarray"): self.ndarray,
            ("numpy", "dtype"): Global("numpy.dtype", reduce=self._dtype),
        }
        self.builders = {_ArrayStub: self._build_array, **{type(d): self._build_dtype for d in _DTYPES.values()}}

    def resolve(self, module: str, name: str) -> Any:
        found = self.globals.get((module, name))
        if found is None:
            _fail(self.source, f"refusing to load: the codebook pickle references the global '{module}.{name}' "
                               "(only numpy float arrays and plain Python values are allowed); nothing was executed")
        return found

    def _reconstruct(self, args: tuple, ctx: Any) -> _ArrayStub:
        if len(args) != 3 or args[0] is not self.ndarray or args[1] != (0,) or args[2] != b"b":
            _fail(self.source, "codebook pickle: numpy _reconstruct with unexpected arguments")
        return _ArrayStub()

    def _frombuffer(self, args: tuple, ctx: Any) -> np.ndarray:
        if len(args) != 4 or args[3] not in ("C", "F"):
            _fail(self.source, "codebook pickle: numpy _frombuffer with unexpected arguments")
        return _array_from(self.source, args[0], args[1], args[2], args[3] == "F")

    def _dtype(self, args: tuple, ctx: Any) -> np.dtype:
        flags_ok = len(args) == 1 or (len(args) == 3 and all(type(a) is bool for a in args[1:]))
        if not args or type(args[0]) is not str or args[0] not in _DTYPES or not flags_ok:
            _fail(self.source, "codebook pickle: refusing a numpy dtype other than float16/32/64")
        return _DTYPES[args[0]]

    def _build_dtype(self, target: np.dtype, state: Any, ctx: Any) -> None:
        if state != target.__reduce__()[2]:  # only the genuine state of that dtype; not applied
            _fail(self.source, f"codebook pickle: refusing a numpy dtype state that changes {target.name}")

    def _build_array(self, target: _ArrayStub, state: Any, ctx: Any) -> None:
        # ndarray.__reduce__ state: (version 1, shape, dtype, is_fortran, raw bytes)
        if target.array is not None or type(state) is not tuple or len(state) != 5 or state[0] != 1:
            _fail(self.source, "codebook pickle: malformed numpy array state")
        _, shape, dtype, fortran, raw = state
        target.array = _array_from(self.source, raw, dtype, shape, bool(fortran))


def _resolve_stubs(obj: Any, source: Path) -> Any:
    """The unpickled value with every filled `_ArrayStub` replaced by its array (plain containers only, depth <=
    4: the codebook state dict is 3 levels deep)."""
    def fix(v: Any, depth: int) -> Any:
        if isinstance(v, _ArrayStub):
            if v.array is None:
                _fail(source, "codebook pickle: a numpy array without data")
            return v.array
        if isinstance(v, dict) and depth < 4:
            return {k: fix(x, depth + 1) for k, x in v.items()}
        return v

    return fix(obj, 0)


def codebook_size(size: str) -> int | None:
    """asmk's size spelling: '65536', '64k' (x 1024) or '1M' (x 1024^2); None when it is none of these."""
    m = _SIZE.fullmatch(size)
    return int(m.group(1)) * {"": 1, "k": 1024, "M": 1024**2}[m.group(2)] if m else None


def _centroids_of(obj: Any, source: Path) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return obj
    if not isinstance(obj, dict) or obj.get("type") != "Codebook" or not isinstance(obj.get("state"), dict):
        _fail(source, "not an ASMK codebook: expected the pickled Codebook state dict "
                      "{'type': 'Codebook', 'params': {...}, 'state': {'centroids': (K, D) array}} or a bare array, "
                      f"got {type(obj).__name__}" + (f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict)
                                                     else ""))
    cent = obj["state"].get("centroids")
    if not isinstance(cent, np.ndarray):
        _fail(source, "the codebook holds no trained centroids (state['centroids'] is "
                      f"{type(cent).__name__})")
    size = obj.get("params", {}).get("size") if isinstance(obj.get("params"), dict) else None
    if size is not None:
        k = codebook_size(size) if isinstance(size, str) else size
        if k != cent.shape[0]:
            _fail(source, f"the codebook's params say size {size!r} but it holds {cent.shape[0]} centroids")
    return cent


def read_codebook(path: str | os.PathLike) -> np.ndarray:
    """The centroids of an ASMK codebook file, without running any pickle code.

    Args:
      path: the official `*_codebook.pkl` (asmk `Codebook.state_dict()` pickled), a pickled bare array, or a
        `.npy` file.

    Returns:
      (K, D) float32 centroids (C-contiguous; possibly a read-only view of the bytes read, never a copy more).

    Raises:
      CheckpointError (a ValueError): naming the file: missing, empty, not a pickle / .npy, a global outside the
        numpy-array allow-list, malformed, not 2-D, empty or non-finite centroids.
    """
    path, size, head = read_file_head(path, 16)
    if size > MAX_CODEBOOK_BYTES:
        _fail(path, f"the codebook file is {size} bytes, more than the {MAX_CODEBOOK_BYTES} accepted")
    if head.startswith(b"\x93NUMPY"):
        try:
            cent = np.load(path, allow_pickle=False)
        except Exception as e:  # a corrupt .npy: one clear line
            _fail(path, f"unreadable .npy codebook ({type(e).__name__}: {str(e)[:200]})")
    elif head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        data = path.read_bytes()
        loader = _CodebookLoader(path)
        limits = Limits(max_weight=max(Limits.max_weight, 2 * size), max_derived_bytes=2 * size + (1 << 20))
        try:
            obj = unpickle(data, source=path, resolve_global=loader.resolve, builders=loader.builders, limits=limits)
        except CheckpointError as e:
            raise CheckpointError(path, e.problem.replace("data.pkl: ", "codebook pickle: ", 1)) from None
        cent = _centroids_of(_resolve_stubs(obj, path), path)
    else:
        _fail(path, "not an ASMK codebook: neither a pickle (protocol 2-5) nor a .npy file")
    if cent.ndim != 2 or cent.shape[0] < 1 or cent.shape[1] < 1:
        _fail(path, f"the codebook centroids must be a non-empty (K, D) array, got shape {cent.shape}")
    if not np.issubdtype(cent.dtype, np.floating):
        _fail(path, f"the codebook centroids must be floating point, got {cent.dtype}")
    cent = np.ascontiguousarray(cent, dtype=np.float32)  # read-only when it is a view of the pickle's bytes
    if not np.isfinite(cent).all():
        _fail(path, "the codebook centroids hold NaN or infinite values")
    return cent
