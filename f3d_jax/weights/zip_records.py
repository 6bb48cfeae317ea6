"""Bounded, exact reading of the records of a zip archive (the container of `torch.save` files).

`zipfile` parses the central directory; the records themselves are read here, so that:

- every record's bytes lie in their own part of the file: the local header matches the central
  entry, and the data ends before the next record starts (no two names share bytes, so no record
  can be read twice under two names);
- only `stored` and `deflate` records are accepted (the others inflate without bounds in `zipfile`),
  a deflated record never inflates past its declared size (each step of the decompressor is capped),
  and all deflated records together inflate to at most `4 x` their compressed bytes + 256 MiB;
- every record's CRC-32 is checked;
- the caller says how many bytes it needs and gets exactly those, in one buffer allocated once.

Errors are `CheckpointError`s naming the archive and the record.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from f3d_jax.weights.errors import CheckpointError

__all__ = ["ZipRecords"]

_STORED, _DEFLATED = 0, 8
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
_CHUNK = 16 << 20  # read / inflate step: bounds the temporary buffers
_FREE_INFLATION = 256 << 20  # deflated records may exceed 4x their compressed size by this much


class ZipRecords:
    """The records of one zip archive; use as a context manager."""

    def __init__(self, path: Path, size: int):
        self.path = path
        self._size = size
        try:
            self._zf = zipfile.ZipFile(path)
        except Exception as e:  # zipfile raises BadZipFile, OSError, EOFError, ValueError, struct.error, ...
            raise CheckpointError(
                path, f"truncated or corrupt zip archive ({type(e).__name__}: {_short(e)}); {size} bytes on disk - "
                "re-download the file"
            ) from None
        infos = self._zf.infolist()
        self.names = [i.filename for i in infos]
        self._infos = {i.filename: i for i in infos}
        if len(self._infos) != len(infos):
            dup = next(n for n in self.names if self.names.count(n) > 1)
            self._zf.close()
            raise CheckpointError(path, f"zip archive holds the record '{dup}' more than once")
        offsets = sorted(i.header_offset for i in infos)
        if len(set(offsets)) != len(offsets):
            self._zf.close()
            raise CheckpointError(path, "two zip records share the same data")
        end = min(getattr(self._zf, "start_dir", size), size)
        # Where each record's data must end: the next local header (or the central directory).
        self._limit = {o: n for o, n in zip(offsets, [*offsets[1:], end], strict=True)}
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._inflated = 0
        self._deflated = 0

    def __enter__(self) -> ZipRecords:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._zf.close()

    def size_of(self, name: str) -> int | None:
        """Declared (uncompressed) size of a record, or None when the archive has no such record."""
        info = self._infos.get(name)
        return None if info is None else info.file_size

    def read_bytes(self, name: str, cap: int) -> bytes:
        """The whole record `name`, refused when it declares more than `cap` bytes."""
        info = self._info(name)
        if info.file_size > cap:
            self._fail(name, f"declares {info.file_size} bytes, more than the {cap} allowed")
        self._admit(info)
        buf = bytearray(info.file_size)
        self._read_into(info, memoryview(buf))
        return bytes(buf)

    def read_array(self, name: str, dtype: np.dtype, count: int) -> np.ndarray:
        """Record `name` as a `(count,)` array of `dtype`; its declared size must be exactly `count` items."""
        info = self._info(name)
        need = count * dtype.itemsize
        if info.file_size != need:
            self._fail(name, f"holds {info.file_size} bytes but its storage needs {need} ({count} x {dtype.name})")
        self._admit(info)
        arr = np.empty(count, dtype=dtype)
        self._read_into(info, memoryview(arr.view(np.uint8)))
        return arr

    # ---- internals ------------------------------------------------------------------------------

    def _info(self, name: str) -> zipfile.ZipInfo:
        info = self._infos.get(name)
        if info is None:
            raise CheckpointError(self.path, f"record '{name}' is missing from the archive")
        return info

    def _admit(self, info: zipfile.ZipInfo) -> None:
        """Refuses a record before any buffer is allocated for it."""
        name = info.filename
        if info.flag_bits & 0x1:
            self._fail(name, "is encrypted")
        if info.compress_type not in (_STORED, _DEFLATED):
            self._fail(name, f"uses zip compression method {info.compress_type} (only stored and deflate are read)")
        if info.compress_type == _STORED and info.compress_size != info.file_size:
            self._fail(name, "is stored with a compressed size different from its size: file corrupt")
        if info.compress_type == _STORED and info.file_size > self._size:
            self._fail(name, f"declares {info.file_size} bytes, more than the whole file: file corrupt")
        if info.compress_type == _DEFLATED:
            self._inflated += info.file_size
            self._deflated += info.compress_size
            if self._inflated > 4 * self._deflated + _FREE_INFLATION:
                self._fail(name, f"would inflate to {info.file_size} bytes from {info.compress_size}: a zip bomb?")

    def _fail(self, name: str, problem: str) -> Any:
        raise CheckpointError(self.path, f"record '{name}' {problem}")

    def _read_into(self, info: zipfile.ZipInfo, out: memoryview) -> None:
        name = info.filename
        f = self._file
        try:
            f.seek(info.header_offset)
            head = f.read(_LOCAL.size)
            if len(head) != _LOCAL.size:
                self._fail(name, "cannot be read: file truncated")
            sig, _, flags, method, _, _, _, _, _, nlen, xlen = _LOCAL.unpack(head)
            raw_name = f.read(nlen)
            if sig != b"PK\x03\x04" or method != info.compress_type or len(raw_name) != nlen:
                self._fail(name, "cannot be read: its local header is corrupt")
            if raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace") != info.orig_filename:
                self._fail(name, "cannot be read: its local header names another file")
            start = info.header_offset + _LOCAL.size + nlen + xlen
            if start + info.compress_size > self._limit[info.header_offset]:
                self._fail(name, "cannot be read: its data overlaps the next record or runs past the end (truncated?)")
            f.seek(start)
            crc = self._copy(f, info, out) if info.compress_type == _STORED else self._inflate(f, info, out)
        except OSError as e:
            self._fail(name, f"cannot be read ({e})")
        if crc != info.CRC:
            self._fail(name, "cannot be read: CRC-32 mismatch, file corrupt")

    def _copy(self, f: Any, info: zipfile.ZipInfo, out: memoryview) -> int:
        crc, pos, n = 0, 0, info.file_size
        while pos < n:
            got = f.readinto(out[pos : min(n, pos + _CHUNK)])
            if not got:
                self._fail(info.filename, f"ended after {pos} of {n} bytes: file truncated")
            crc = zlib.crc32(out[pos : pos + got], crc)
            pos += got
        return crc

    def _inflate(self, f: Any, info: zipfile.ZipInfo, out: memoryview) -> int:
        d = zlib.decompressobj(-15)
        crc, pos, n, left = 0, 0, info.file_size, info.compress_size
        try:
            while not d.eof:
                chunk = d.unconsumed_tail
                if not chunk:
                    if left == 0:
                        break
                    chunk = f.read(min(left, _CHUNK))
                    if not chunk:
                        self._fail(info.filename, "cannot be read: file truncated")
                    left -= len(chunk)
                # At most one byte past the declared size (max_length 0 would mean unlimited).
                piece = d.decompress(chunk, min(n - pos, _CHUNK) + 1)
                if pos + len(piece) > n:
                    self._fail(info.filename, f"inflates past its declared size of {n} bytes: a zip bomb?")
                out[pos : pos + len(piece)] = piece
                crc = zlib.crc32(piece, crc)
                pos += len(piece)
        except zlib.error as e:
            self._fail(info.filename, f"cannot be read (corrupt deflate data: {e})")
        if pos != n or not d.eof:
            self._fail(info.filename, f"inflated to {pos} of its declared {n} bytes: file corrupt or truncated")
        return crc


def _short(e: BaseException) -> str:
    s = str(e)
    return s if len(s) <= 200 else s[:200] + "..."
