"""Writes tiny retrieval checkpoints in the `torch.save` zip format (protocol-2 opcodes by hand: no torch), with
the official layout `{'model': OrderedDict(name -> tensor), 'args': argparse.Namespace(...)}`."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

_STORAGE = {np.dtype("<f4"): "FloatStorage", np.dtype("<f8"): "DoubleStorage"}


class _P:
    def __init__(self) -> None:
        self.b = bytearray(b"\x80\x02")

    def raw(self, s: bytes) -> _P:
        self.b += s
        return self

    def glob(self, module: str, name: str) -> _P:
        return self.raw(b"c" + f"{module}\n{name}\n".encode())

    def value(self, v) -> _P:
        if v is None:
            return self.raw(b"N")
        if isinstance(v, bool):
            return self.raw(b"\x88" if v else b"\x89")
        if isinstance(v, int):
            return self.raw(b"J" + struct.pack("<i", v))
        if isinstance(v, float):
            return self.raw(b"G" + struct.pack(">d", v))
        if isinstance(v, str):
            e = v.encode()
            return self.raw(b"X" + struct.pack("<I", len(e)) + e)
        if isinstance(v, tuple):
            self.raw(b"(")
            for x in v:
                self.value(x)
            return self.raw(b"t")
        raise TypeError(type(v))

    def tensor(self, storage: str, key: str, shape: tuple[int, ...]) -> _P:
        numel = int(np.prod(shape)) if shape else 1
        stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        self.glob("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        self.raw(b"(").value("storage").glob("torch", storage).value(key).value("cpu").value(numel).raw(b"tQ")
        self.value(0).value(tuple(shape)).value(stride).raw(b"\x89")
        self.glob("collections", "OrderedDict").raw(b")R")
        return self.raw(b"tR")


def write_pth(path: Path, state: dict[str, np.ndarray], args: dict | None) -> Path:
    """`torch.save({'model': state, 'args': Namespace(**args)})` (no 'args' when None)."""
    p = _P().raw(b"}(").value("model").glob("collections", "OrderedDict").raw(b")R(")
    records = {}
    for k, (name, arr) in enumerate(state.items()):
        arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
        p.value(name).tensor(_STORAGE[arr.dtype], str(k), arr.shape)
        records[str(k)] = arr.tobytes()
    p.raw(b"u")
    if args is not None:
        p.value("args").glob("argparse", "Namespace").raw(b")\x81}(")
        for k, v in args.items():
            p.value(k).value(v)
        p.raw(b"ub")
    p.raw(b"u.")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", bytes(p.b))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def write_codebook(path: Path, centroids: np.ndarray, size=None, protocol: int = 4) -> Path:
    """The asmk `Codebook.state_dict()` pickled as `asmk.io_helpers.save_pickle` does."""
    state = {"type": "Codebook", "params": {"size": centroids.shape[0] if size is None else size},
             "state": {"centroids": centroids}}
    path.write_bytes(pickle.dumps(state, protocol=protocol))
    return path
