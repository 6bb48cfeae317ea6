"""Reads `torch.save` zip checkpoints into numpy without torch and without running pickle code.

Equivalent of `torch.load(path, map_location='cpu', weights_only=True)` with
`argparse.Namespace` allow-listed (what `dust3r.model.load_model` / `mast3r.model.load_model`
need), restricted further: the pickle may reference only the handful of globals that a
state-dict checkpoint contains, and everything is rebuilt as numpy arrays and plain Python
objects. Anything else is refused *before* it is called, with an error naming the file and the
offending global.

Zip layout (PyTorch's serialization format, every entry under one top folder, e.g.
`checkpoint/`): `data.pkl` (the pickle), `data/<key>` (raw storage bytes, one record per
storage), `byteorder` (`little`/`big`, absent in old files = little), `version`, ...
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from f3d_jax.weights.errors import CheckpointError, read_file_head

__all__ = ["Namespace", "read_pth"]


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

# Numpy scalars (e.g. a `best_so_far` metric saved next to the weights) are rebuilt only for
# plain numeric dtypes: an object dtype would let the pickle forge a pointer.
_NUMERIC_KINDS = frozenset("biufc")

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

    Rebuilt by pickle's NEWOBJ + BUILD (empty construction, then the attribute dict), exactly
    like the real class, but it has no behaviour beyond attribute access and `to_dict()`.
    """

    def __init__(self, **kwargs: Any):
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict_state, slot_state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"argparse.Namespace state must be a dict, got {type(state).__name__}")
        self.__dict__.update(state)

    def to_dict(self) -> dict[str, Any]:
        """The attributes as a plain dict (a copy)."""
        return dict(self.__dict__)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and vars(self) == vars(other)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Namespace({items})"


@dataclass(frozen=True)
class _StorageType:
    """Marker returned for `torch.<X>Storage`; only meaningful inside a persistent id."""

    name: str
    dtype: np.dtype


class _Storage:
    """A typed storage: the flat array of one `data/<key>` record.

    The first tensor that covers the whole storage contiguously takes the array itself (no copy:
    peak memory stays at one copy of the weights); any other view (a shared storage's second
    name, a slice, a transpose) gets its own contiguous copy.
    """

    def __init__(self, key: str, array: np.ndarray):
        self.key = key
        self.array = array  # (numel,) in the storage dtype, native byte order
        self.taken = False


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


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for `data.pkl` that resolves only allow-listed globals.

    Every other global (e.g. `posix.system`, `builtins.eval`) raises in `find_class`, i.e. while
    the opcode that names it is read, before any REDUCE could call it.
    """

    def __init__(self, file: io.BytesIO, *, source: Path, records: _Records):
        super().__init__(file)
        self._source = source
        self._records = records
        # Fresh objects per load, so a hostile BUILD on them cannot leak into later loads.
        self._namespace_cls = type("Namespace", (Namespace,), {"__module__": __name__})
        self._storage_types = {n: _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()}
        self._allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("argparse", "Namespace"): self._namespace_cls,
            # Protocol-2 pickles encode `bytes` as _codecs.encode(str, 'latin1'), sets via REDUCE.
            ("_codecs", "encode"): self._codecs_encode,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("numpy.core.multiarray", "scalar"): self._numpy_scalar,
            ("numpy._core.multiarray", "scalar"): self._numpy_scalar,
            ("numpy", "dtype"): self._numpy_dtype,
        }

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2 modules (`__builtin__`, `commands`); map them as the
        # standard unpickler does, so the allow-list and the error message use today's names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if module == "torch" and name in self._storage_types:
            return self._storage_types[name]
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise CheckpointError(
                self._source,
                f"refusing to load: the pickle references the global '{module}.{name}', which is not "
                "allowed in a weights checkpoint (only tensors, OrderedDict, argparse.Namespace and "
                "plain Python values are); nothing was executed",
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(self._source, f"unsupported persistent id {pid!r} in data.pkl")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CheckpointError(self._source, f"persistent id names {stype!r}, not a torch storage class")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(self._source, f"malformed storage id {pid!r} in data.pkl")
        return self._records.storage(key, stype.dtype, numel)

    # ---- allow-listed callables -------------------------------------------------------------

    def _rebuild_tensor_v2(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any = False,
        backward_hooks: Any = None,
        metadata: Any = None,
    ) -> np.ndarray:
        return self._rebuild_tensor(storage, storage_offset, size, stride)

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any) -> np.ndarray:
        if not isinstance(storage, _Storage):
            raise CheckpointError(self._source, "tensor rebuilt from something that is not a storage")
        ok = (
            isinstance(storage_offset, int)
            and storage_offset >= 0
            and isinstance(size, tuple | list)
            and isinstance(stride, tuple | list)
            and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))
        )
        if not ok:
            raise CheckpointError(
                self._source,
                f"malformed tensor in record data/{storage.key}: offset={storage_offset!r}, "
                f"size={size!r}, stride={stride!r}",
            )
        flat = storage.array
        count = math.prod(size)
        if count == 0:
            return np.zeros(tuple(size), dtype=flat.dtype)
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.size or count > flat.size:
            raise CheckpointError(
                self._source,
                f"tensor of shape {tuple(size)} (offset {storage_offset}, stride {tuple(stride)}) "
                f"does not fit in its storage data/{storage.key} of {flat.size} elements",
            )
        c_strides = [math.prod(size[i + 1 :]) for i in range(len(size))]
        whole = storage_offset == 0 and count == flat.size
        if whole and not storage.taken and all(n == 1 or s == c for n, s, c in zip(size, stride, c_strides)):
            storage.taken = True
            return flat.reshape(tuple(size))
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[storage_offset:],
            shape=tuple(size),
            strides=tuple(s * item for s in stride),
            writeable=False,
        )
        # An owned, contiguous copy: tensors sharing a storage on disk do not alias in memory.
        return np.array(view, order="C", copy=True)

    def _rebuild_parameter(self, data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
        if not isinstance(data, np.ndarray):
            raise CheckpointError(self._source, "nn.Parameter rebuilt from something that is not a tensor")
        return data

    def _codecs_encode(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
            raise CheckpointError(self._source, f"unexpected _codecs.encode({type(obj).__name__}, {encoding!r})")
        return obj.encode(encoding)

    def _numpy_dtype(self, obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(obj, str):
            raise CheckpointError(self._source, f"unexpected numpy.dtype({obj!r})")
        dtype = np.dtype(obj, copy=True)  # a private copy: BUILD then calls __setstate__ on it
        if dtype.kind not in _NUMERIC_KINDS:
            raise CheckpointError(self._source, f"refusing non-numeric numpy dtype {obj!r}")
        return dtype

    def _numpy_scalar(self, dtype: Any, data: Any = None) -> Any:
        if not (isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC_KINDS and isinstance(data, bytes)):
            raise CheckpointError(self._source, "refusing a numpy scalar that is not a plain number")
        if len(data) != dtype.itemsize:
            raise CheckpointError(self._source, f"numpy scalar of {dtype} holds {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype)[0]


class _Records:
    """Lazy access to the `<top>/data/<key>` records of the archive, one read per key."""

    def __init__(self, source: Path, zf: zipfile.ZipFile, prefix: str, big_endian: bool):
        self._source = source
        self._zf = zf
        self._prefix = prefix
        self._big_endian = big_endian
        self._cache: dict[tuple[str, str], _Storage] = {}

    def storage(self, key: str, dtype: np.dtype, numel: int) -> _Storage:
        cached = self._cache.get((key, dtype.str))
        if cached is not None:  # shared tensors reuse one record
            return cached
        name = f"{self._prefix}data/{key}"
        try:
            info = self._zf.getinfo(name)
        except KeyError:
            raise CheckpointError(self._source, f"record '{name}' is missing from the archive") from None
        need = numel * dtype.itemsize
        if info.file_size < need:
            raise CheckpointError(
                self._source,
                f"record '{name}' holds {info.file_size} bytes but its storage needs {need} ({numel} x {dtype.name})",
            )
        arr = np.empty(numel, dtype=dtype)
        try:
            with self._zf.open(info) as f:
                got = f.readinto(arr.view(np.uint8)) if need else 0
                if got == need and info.file_size == need:
                    f.read(1)  # reach EOF so that zipfile verifies the record's CRC-32
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise CheckpointError(self._source, f"record '{name}' cannot be read ({e}): file corrupt or truncated") from None
        if got != need:
            raise CheckpointError(self._source, f"record '{name}' ended after {got} of {need} bytes: file truncated")
        if self._big_endian and dtype.itemsize > 1:
            arr.byteswap(inplace=True)
        storage = _Storage(key, arr)
        self._cache[(key, dtype.str)] = storage
        return storage


def read_pth(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a `torch.save` checkpoint (zip format) without torch and without running its pickle.

    Args:
        path: the `.pth` file.

    Returns:
        The checkpoint's top-level dict with tensors as owned, C-contiguous numpy arrays in their
        stored dtype (float32 for every official file; bfloat16 as `ml_dtypes.bfloat16`),
        `OrderedDict`s kept, and `argparse.Namespace` rebuilt as `torch_pickle.Namespace`
        (an attribute bag with `to_dict()`). For the official files: `{'model': OrderedDict[str,
        ndarray], 'args': Namespace(model=<constructor string>, ...)}` (DUSt3R, MASt3R, CroCo
        pretraining runs), `{'model', 'croco_kwargs': dict}` (CroCo v2 releases) or `{'model'}`
        (CroCo v1 release). Shared tensors come back as equal, separate arrays under each name.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a torch zip, its pickle names a
            global outside the allow-list (nothing is executed), or a data record is missing/short.
    """
    path, size, head = read_file_head(path, 64)
    if not head.startswith(b"PK"):
        what = _sniff(head)
        raise CheckpointError(
            path, f"not a PyTorch checkpoint: this is {what}" if what else "not a PyTorch checkpoint (not a zip archive)"
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            path, f"truncated or corrupt zip archive ({e}); {size} bytes on disk - re-download the file"
        ) from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            what = "no data.pkl record" if not pkls else f"{len(pkls)} data.pkl records"
            raise CheckpointError(path, f"zip archive is not a torch.save checkpoint: {what}")
        prefix = pkls[0][: -len("data.pkl")]
        big_endian = False
        if f"{prefix}byteorder" in names:
            order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(path, f"unknown byteorder record {order!r}")
            big_endian = order == "big"
        try:
            data = zf.read(pkls[0])
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise CheckpointError(path, f"data.pkl cannot be read ({e}): file corrupt or truncated") from None
        records = _Records(path, zf, prefix, big_endian)
        unpickler = _RestrictedUnpickler(io.BytesIO(data), source=path, records=records)
        try:
            obj = unpickler.load()
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(path, "data.pkl is nested too deeply") from None
        except Exception as e:  # malformed pickle stream: one clear line, no deep traceback
            raise CheckpointError(path, f"data.pkl is not a valid checkpoint pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"the checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj
