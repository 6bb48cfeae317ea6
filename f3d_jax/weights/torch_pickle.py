"""Reads `torch.save` zip checkpoints into numpy without torch and without running pickle code.

Equivalent of `torch.load(path, map_location='cpu', weights_only=True)` with
`argparse.Namespace` allow-listed (what `dust3r.model.load_model` / `mast3r.model.load_model`
need), restricted further and memory-safe by construction:

- `data.pkl` runs on our own bounded pickle machine (`pickle_machine`), never `pickle.Unpickler`;
  its globals come from a closed table mapped to pure functions of this module (tensors, empty
  `OrderedDict`s, a fresh `Namespace` bag, plain numpy scalars), so no real class is constructed
  and nothing shared between loads can be mutated;
- dtypes come from a closed list (bool, uint8, int8-int64, float16, bfloat16, float32, float64);
  numpy scalars only of those, with exactly their item size in bytes;
- every tensor lies inside its storage record (exact integer bounds); views of one storage are
  read-only numpy views of one buffer, so reading costs the size of the storages once;
- zip records are read exactly (`zip_records`): duplicate names, overlapping records and zip
  bombs are refused, CRCs checked, `data.pkl` capped at 64 MiB.

Every malformed or hostile file raises `CheckpointError` (one line naming the file and the problem).

Zip layout (PyTorch's serialization format, every entry under one top folder, e.g.
`checkpoint/`): `data.pkl` (the pickle), `data/<key>` (raw storage bytes, one record per
storage), `byteorder` (`little`/`big`, absent in old files = little), `version`, ...
"""

from __future__ import annotations

import collections
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from f3d_jax.weights.errors import CheckpointError, read_file_head
from f3d_jax.weights.pickle_machine import PLAIN_GLOBALS, Global, unpickle
from f3d_jax.weights.zip_records import ZipRecords

__all__ = ["Namespace", "read_pth"]

MAX_DATA_PKL_BYTES = 64 << 20
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 48  # per storage / tensor (a 1 PiB float32 tensor: far beyond any checkpoint)

# Storage class name -> element dtype (little-endian; swapped for `byteorder == big`).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# `numpy.dtype(<name>, False, True)` arguments (as numpy pickles them) -> the dtype: the closed list.
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "b1": np.dtype("?"),
    "u1": np.dtype("u1"),
    "i1": np.dtype("i1"),
    "i2": np.dtype("<i2"),
    "i4": np.dtype("<i4"),
    "i8": np.dtype("<i8"),
    "f2": np.dtype("<f2"),
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
}
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\xfd7zXZ\x00": "an xz-compressed file (decompress it first)",
    b"\x1f\x8b": "a gzip-compressed file (decompress it first)",
    b"BZh": "a bzip2-compressed file (decompress it first)",
    b"\x93NUMPY": "a numpy .npy file",
    b"\x89HDF\r\n\x1a\n": "an HDF5 file",
    b"GIF8": "a GIF image",
    b"<!DOCTYPE": "an HTML page (a failed download?)",
    b"<html": "an HTML page (a failed download?)",
    b"version https://git-lfs": "a Git LFS pointer, not the weights (run `git lfs pull`)",
}




class Namespace:
    """Stand-in for `argparse.Namespace` in checkpoints: a plain bag of attributes.

    Rebuilt by pickle's NEWOBJ + BUILD (a fresh, empty bag per object, then the attribute dict),
    but it has no behaviour beyond attribute access and `to_dict()`.
    """

    def __init__(self, **kwargs: Any):
        self.__dict__.update(kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The attributes as a plain dict (a copy)."""
        return dict(self.__dict__)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and vars(self) == vars(other)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Namespace({items})"


@dataclass(frozen=True)
class _StorageType:
    """Marker returned for `torch.<X>Storage`; only meaningful inside a persistent id."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True, eq=False)
class _Storage:
    """A typed storage: the read-only flat array of one `data/<key>` record (native byte order)."""

    key: str
    array: np.ndarray  # (numel,)


@dataclass(frozen=True, eq=False)
class _DTypeRef:
    """`ml_dtypes.bfloat16` named as a numpy.dtype argument (never called itself)."""

    dtype: np.dtype


def _sniff(head: bytes) -> str | None:
    """Names the format of a file that is not a zip, from its first bytes."""
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    if head.startswith(b"\x80\x02\x8a\x0a"):  # the LONG1 magic number of torch's legacy format
        return "a legacy (pre-1.6, non-zip) torch.save file; re-save it with a recent torch"
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return "a safetensors file (use the safetensors reader)"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return "a bare pickle (not a torch.save zip)"
    return None


class _Loader:
    """The globals, persistent ids and BUILD rules of one `read_pth` call (fresh objects per load)."""

    def __init__(self, source: Path, records: ZipRecords, prefix: str, big_endian: bool):
        self._source = source
        self._records = records
        self._prefix = prefix
        self._big_endian = big_endian
        self._storages: dict[str, tuple[np.dtype, _Storage]] = {}
        self._storage_types = {n: _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()}
        scalar = Global("numpy.core.multiarray.scalar", reduce=self._numpy_scalar)
        namespace = Global("argparse.Namespace", reduce=self._namespace, newobj=self._namespace)
        self._globals: dict[tuple[str, str], Any] = {
            **PLAIN_GLOBALS,
            ("torch._utils", "_rebuild_tensor_v2"): Global("torch._utils._rebuild_tensor_v2", reduce=self._tensor_v2),
            ("torch._utils", "_rebuild_tensor"): Global("torch._utils._rebuild_tensor", reduce=self._tensor),
            ("torch._utils", "_rebuild_parameter"): Global("torch._utils._rebuild_parameter", reduce=self._parameter),
            ("argparse", "Namespace"): namespace,
            ("numpy.core.multiarray", "scalar"): scalar,
            ("numpy._core.multiarray", "scalar"): scalar,
            ("numpy", "dtype"): Global("numpy.dtype", reduce=self._numpy_dtype),
            ("ml_dtypes", "bfloat16"): _DTypeRef(np.dtype(ml_dtypes.bfloat16)),
        }
        self._scalar_dtypes = (*_NUMPY_DTYPES.values(), np.dtype(ml_dtypes.bfloat16))
        self.builders: dict[type, Any] = {
            Namespace: self._build_namespace,
            collections.OrderedDict: self._build_ordered_dict,
            **{type(d): self._build_dtype for d in self._scalar_dtypes},
        }

    def _fail(self, problem: str) -> Any:
        raise CheckpointError(self._source, problem)

    def resolve(self, module: str, name: str) -> Any:
        if module == "torch" and name in self._storage_types:
            return self._storage_types[name]
        found = self._globals.get((module, name))
        if found is None:
            self._fail(
                f"refusing to load: the pickle references the global '{module}.{name}', which is not "
                "allowed in a weights checkpoint (only tensors, OrderedDict, argparse.Namespace and "
                "plain Python values are); nothing was executed"
            )
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            self._fail(f"unsupported persistent id in data.pkl (a {type(pid).__name__}, not a storage id)")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _StorageType):
            self._fail(f"persistent id names a {type(stype).__name__}, not a torch storage class")
        if not (type(key) is str and _KEY.fullmatch(key) and type(location) is str and type(numel) is int):
            self._fail("malformed storage id in data.pkl")
        if not 0 <= numel <= MAX_ELEMENTS:
            self._fail(f"storage data/{key} declares {numel} elements")
        known = self._storages.get(key)
        if known is not None:
            dtype, storage = known
            if dtype != stype.dtype or storage.array.size != numel:
                self._fail(f"storage data/{key} is used both as {dtype.name} x {storage.array.size} and as "
                           f"{stype.dtype.name} x {numel}")
            return storage
        arr = self._records.read_array(f"{self._prefix}data/{key}", stype.dtype, numel)
        if self._big_endian and stype.dtype.itemsize > 1:
            arr.byteswap(inplace=True)
        arr.flags.writeable = False  # every tensor is a read-only view of this one buffer
        storage = _Storage(key, arr)
        self._storages[key] = (stype.dtype, storage)
        return storage

    # ---- allow-listed callables (pure functions of their arguments) ---------------------------

    def _tensor_v2(self, args: tuple, ctx: Any) -> np.ndarray:
        # (storage, offset, size, stride, requires_grad, backward_hooks[, metadata]): the tail is ignored.
        if not 4 <= len(args) <= 7:
            self._fail(f"_rebuild_tensor_v2 called with {len(args)} arguments")
        return self._view(*args[:4])

    def _tensor(self, args: tuple, ctx: Any) -> np.ndarray:
        if len(args) != 4:
            self._fail(f"_rebuild_tensor called with {len(args)} arguments")
        return self._view(*args)

    def _parameter(self, args: tuple, ctx: Any) -> np.ndarray:
        if not 1 <= len(args) <= 3 or not isinstance(args[0], np.ndarray):
            self._fail("nn.Parameter rebuilt from something that is not a tensor")
        return args[0]

    def _view(self, storage: Any, offset: Any, size: Any, stride: Any) -> np.ndarray:
        if not isinstance(storage, _Storage):
            self._fail("tensor rebuilt from something that is not a storage")
        ok = (
            type(offset) is int
            and type(size) in (tuple, list)
            and type(stride) in (tuple, list)
            and len(size) == len(stride) <= MAX_DIMS
            and 0 <= offset <= MAX_ELEMENTS
            and all(type(v) is int and 0 <= v <= MAX_ELEMENTS for v in (*size, *stride))
        )
        if not ok:
            self._fail(f"malformed tensor in record data/{storage.key}: offset, size or stride out of range "
                       f"(at most {MAX_DIMS} non-negative integer dimensions)")
        flat = storage.array
        size, stride = tuple(size), tuple(stride)
        count = math.prod(size)  # exact Python integers: no overflow
        if count == 0:
            if math.prod(max(n, 1) for n in size) > MAX_ELEMENTS or offset > flat.size:
                self._fail(f"malformed empty tensor of shape {size} in record data/{storage.key}")
            empty = np.empty(size, dtype=flat.dtype)
            empty.flags.writeable = False
            return empty
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.size or count > flat.size:
            self._fail(
                f"tensor of shape {size} (offset {offset}, stride {stride}) does not fit in its storage "
                f"data/{storage.key} of {flat.size} elements"
            )
        item = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
        )

    def _namespace(self, args: tuple, ctx: Any) -> Namespace:
        if args != ():
            self._fail("argparse.Namespace called with arguments (pickle only ever creates it empty)")
        return Namespace()

    def _numpy_dtype(self, args: tuple, ctx: Any) -> np.dtype:
        name = args[0] if args else None
        flags_ok = len(args) == 1 or (len(args) == 3 and all(type(a) is bool for a in args[1:]))
        if isinstance(name, _DTypeRef) and flags_ok:
            return name.dtype
        if type(name) is not str or name not in _NUMPY_DTYPES or not flags_ok:
            self._fail("refusing a numpy dtype outside bool, (u)int8-int64, float16/32/64, bfloat16")
        return _NUMPY_DTYPES[name]

    def _numpy_scalar(self, args: tuple, ctx: Any) -> Any:
        dtype, data = args if len(args) == 2 else (None, None)
        if not any(dtype is d for d in self._scalar_dtypes) or type(data) is not bytes:
            self._fail("refusing a numpy scalar that is not a plain number of an allowed dtype")
        if len(data) != dtype.itemsize:
            self._fail(f"numpy scalar of {dtype.name} holds {len(data)} bytes, not {dtype.itemsize}")
        return np.frombuffer(data, dtype=dtype)[0]

    # ---- BUILD: only where a pickled object of the closed list needs it -----------------------

    def _build_namespace(self, target: Namespace, state: Any, ctx: Any) -> None:
        if type(state) is tuple and len(state) == 2 and state[1] is None:  # (dict_state, slot_state)
            state = state[0]
        if type(state) is not dict or not all(type(k) is str for k in state):
            self._fail("argparse.Namespace state must be a dict of attribute names")
        clash = [k for k in state if hasattr(Namespace, k)]
        if clash:
            self._fail(f"argparse.Namespace attribute {clash[0]!r} is not allowed")
        ctx.grow(target, [*state, *state.values()])
        target.__dict__.update(state)

    def _build_ordered_dict(self, target: collections.OrderedDict, state: Any, ctx: Any) -> None:
        # A state dict's `_metadata` (module versions): checked to be plain attribute data, then dropped.
        if type(state) is not dict or not all(type(k) is str for k in state):
            self._fail("OrderedDict state must be a dict of attribute names")

    def _build_dtype(self, target: np.dtype, state: Any, ctx: Any) -> None:
        # numpy pickles dtypes as dtype(name) + BUILD(state); only the genuine state of that exact
        # dtype is accepted, and it is not applied (the dtype is already complete).
        if not any(target is d for d in self._scalar_dtypes) or state != target.__reduce__()[2]:
            self._fail(f"refusing a numpy dtype state that changes {target.name}")


def read_pth(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a `torch.save` checkpoint (zip format) without torch and without running its pickle.

    Args:
        path: the `.pth` file.

    Returns:
        The checkpoint's top-level dict with tensors as read-only numpy arrays in their stored dtype
        (float32 for every official file; bfloat16 as `ml_dtypes.bfloat16`): each is a view of its
        storage's one buffer (names sharing a storage share memory; nothing is copied per view).
        `OrderedDict`s are kept, and `argparse.Namespace` is rebuilt as `torch_pickle.Namespace`
        (an attribute bag with `to_dict()`). For the official files: `{'model': OrderedDict[str,
        ndarray], 'args': Namespace(model=<constructor string>, ...)}` (DUSt3R, MASt3R, CroCo
        pretraining runs), `{'model', 'croco_kwargs': dict}` (CroCo v2 releases) or `{'model'}`
        (CroCo v1 release).

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a torch zip, its pickle names a
            global outside the allow-list (nothing is executed), it is malformed or hostile in any way
            (out-of-bounds tensor, forbidden dtype or state, zip bomb, duplicate records, too deep or
            too large), or a data record is missing/short/corrupt.
    """
    path, size, head = read_file_head(path, 64)
    if not head.startswith(b"PK"):
        what = _sniff(head)
        raise CheckpointError(
            path, f"not a PyTorch checkpoint: this is {what}" if what else "not a PyTorch checkpoint (not a zip archive)"
        )
    try:
        obj = _read_zip(path, size)
    except CheckpointError:
        raise
    except Exception as e:  # belt and braces: nothing but CheckpointError leaves the reader
        msg = str(e)[:200]
        raise CheckpointError(path, f"unreadable checkpoint ({type(e).__name__}: {msg})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"the checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj


def _read_zip(path: Path, size: int) -> Any:
    with ZipRecords(path, size) as records:
        names = records.names
        pkls = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            what = "no data.pkl record" if not pkls else f"{len(pkls)} data.pkl records"
            raise CheckpointError(path, f"zip archive is not a torch.save checkpoint: {what}")
        prefix = pkls[0][: -len("data.pkl")]
        big_endian = False
        if records.size_of(f"{prefix}byteorder") is not None:
            order = records.read_bytes(f"{prefix}byteorder", 16).decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(path, f"unknown byteorder record {order!r}")
            big_endian = order == "big"
        data = records.read_bytes(pkls[0], MAX_DATA_PKL_BYTES)
        loader = _Loader(path, records, prefix, big_endian)
        return unpickle(
            data,
            source=path,
            resolve_global=loader.resolve,
            persistent_load=loader.persistent_load,
            builders=loader.builders,
        )
