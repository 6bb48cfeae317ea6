"""Training metrics: a JSONL file (the main log: one `{"step": ..., "name": value, ...}` object per line) and a
TensorBoard event file (`tensorboard --logdir OUT/tb` reads it) written by a tiny dependency-free writer.

Both are append-only logs, flushed after every record: a crash loses at most the record being written (a
half-written last line is ignored by `read_jsonl`), so they are appended in place, not written to a temporary
name and renamed as the package's result files.

Event file format (TFRecord of `tensorflow.Event` protos): per record, uint64 length, uint32 masked CRC-32C of
the length, the bytes, uint32 masked CRC-32C of the bytes; the first event holds `file_version`
'brain.Event:2', the others `wall_time`, `step` and a `Summary` of scalar `simple_value`s.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data` (crc32c(b'123456789') == 0xE3069283)."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int | None = None, *, file_version: str | None = None,
           scalars: Mapping[str, float] | None = None) -> bytes:
    msg = b"\x09" + struct.pack("<d", wall_time)
    if step is not None:
        msg += b"\x10" + _varint(step & 0xFFFFFFFFFFFFFFFF)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(_field_bytes(1, _field_bytes(1, k.encode()) + b"\x15" + struct.pack("<f", v))
                          for k, v in scalars.items())
        msg += _field_bytes(5, values)
    return msg


def _record(data: bytes) -> bytes:
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", _masked(crc32c(head))) + data + struct.pack("<I", _masked(crc32c(data)))


class EventWriter:
    """Scalars to `<logdir>/events.out.tfevents.<time>.<host>` (TensorBoard's format)."""

    def __init__(self, logdir: str | os.PathLike):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.path = Path(logdir) / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._f = open(self.path, "ab")
        self._f.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}
        self._f.write(_record(_event(time.time(), step, scalars=finite)))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_events(path: str | os.PathLike) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: value}) of every scalar event of an event file, checking both CRCs of every record."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos < len(data):
        head = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", head)
        if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked(crc32c(head)):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        body = data[pos + 12:pos + 12 + n]
        if struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] != _masked(crc32c(body)):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        pos += 16 + n
        out.append(_parse_event(body))
    return [e for e in out if e[1]]


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        n |= (c & 0x7F) << shift
        i += 1
        shift += 7
        if not c & 0x80:
            return n, i


def _fields(b: bytes):
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _read_varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            n, i = _read_varint(b, i)
            v, i = b[i:i + n], i + n
        yield num, v


def _parse_event(b: bytes) -> tuple[int, dict[str, float]]:
    step, scalars = 0, {}
    for num, v in _fields(b):
        if num == 2:
            step = v
        elif num == 5:
            for _, value in _fields(v):
                f = dict(_fields(value))
                scalars[f[1].decode()] = struct.unpack("<f", f[2])[0]
    return step, scalars


class MetricsLog:
    """`metrics.jsonl` + TensorBoard events under `out_dir` (only on process 0 in multi-host runs)."""

    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        if not enabled:
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")
        self._tb = EventWriter(Path(out_dir) / "tb") if tensorboard else None

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            self._tb.scalars(step, {k: v for k, v in row.items() if k != "step"})

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self._tb is not None:
                self._tb.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a metrics.jsonl (a torn last line, from a crash, is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
