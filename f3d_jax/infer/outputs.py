"""Decoded pair predictions kept on the devices, and cheap views of them in pair order.

The engine writes each decoded batch into its shape bucket's output buffers (`steps.place_batch`):
`(n_batches, B, H, W, ...)` arrays split over the mesh on the batch axis, each batch where the decode
step produced it; a large bucket is cut into segments of bounded size. Nothing reaches the host until
asked for, and then in one transfer per segment (`PairOutputs.host`); when the caller wants host arrays,
a segment's copy starts as soon as it is decoded (overlapping the decoding of the next) and its device
buffers are dropped once the next one is done, so device memory holds at most two segments. The per-pair
official layout is then a set of numpy views (rows) of those per-bucket arrays: no per-pair copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Preds = tuple[dict[str, Any], dict[str, Any]]  # (pred1, pred2)


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A run of consecutive pairs of one (view-1 shape, view-2 shape) bucket (a whole bucket, or one segment
    of a large one: see `InferenceEngine.decode`).

    Attributes:
      hw: ((H1, W1), (H2, W2)).
      members: pair indices in row order (row r of the flattened buffers is pair members[r]).
      preds: (pred1, pred2) dicts of (n_batches, B, H, W, ...) device arrays; rows past len(members) are
        padding. None once the segment was moved to the host (`PairOutputs.release`).
    """

    hw: tuple[tuple[int, int], tuple[int, int]]
    members: tuple[int, ...]
    preds: Preds | None


def _rows(a: Any, n: int) -> Any:
    """(n_batches, B, ...) -> the first n of the n_batches * B rows (a view for numpy arrays)."""
    return a.reshape(-1, *a.shape[2:])[:n]


class PairOutputs:
    """The predictions of one pair list, on the devices, one set of buffers per shape bucket (or per segment of a
    large bucket), until asked for.

    `host()` brings every segment to the host in one `jax.device_get` each and joins the segments of a bucket
    (the result is kept on this object: later calls and `pair` / iteration reuse it); `device()` gives each
    bucket's (n, H, W, ...) device arrays.
    """

    def __init__(self, n_pairs: int, segments: Sequence[Bucket] = ()):
        self.n_pairs = n_pairs
        self.segments: list[Bucket] = list(segments)
        self._fetched: dict[int, Preds] = {}  # segment -> (n, H, W, ...) read-only host arrays
        self._host: list[Preds] | None = None

    def add(self, seg: Bucket, start_transfer: bool = False) -> None:
        """Append a decoded segment; `start_transfer` starts its copy to the host without waiting."""
        self.segments.append(seg)
        if start_transfer:
            for a in jax.tree.leaves(seg.preds):
                a.copy_to_host_async()

    def release(self, i: int) -> None:
        """Move segment i to the host (one transfer) and drop its device buffers."""
        seg = self.segments[i]
        if seg.preds is not None:
            self._fetched[i] = jax.tree.map(lambda a, n=len(seg.members): _rows(a, n), jax.device_get(seg.preds))
            self.segments[i] = dataclasses.replace(seg, preds=None)

    def _groups(self) -> list[list[int]]:
        """Segment indices grouped by bucket, buckets in first-seen order."""
        groups: dict[tuple, list[int]] = {}
        for i, seg in enumerate(self.segments):
            groups.setdefault(seg.hw, []).append(i)
        return list(groups.values())

    @property
    def buckets(self) -> list[tuple[tuple, tuple[int, ...]]]:
        """Per bucket: (hw, pair indices in row order)."""
        return [(self.segments[g[0]].hw, tuple(k for i in g for k in self.segments[i].members))
                for g in self._groups()]

    def keys(self, which: int) -> list[str]:
        """The prediction keys of pred1 (which=0) / pred2 (which=1)."""
        if self._host is not None:
            return list(self._host[0][which])
        seg = self.segments[0]
        return list((self._fetched[0] if seg.preds is None else seg.preds)[which])

    def host(self) -> list[Preds]:
        """Per bucket, (pred1, pred2) dicts of (n, H, W, ...) writable numpy arrays, rows in `buckets` order:
        one device-to-host transfer per segment, then one copy joining a bucket's segments (callers may write
        into the official layout's arrays, as before)."""
        if self._host is None:
            for i in range(len(self.segments)):
                self.release(i)
            self._host = [jax.tree.map(lambda *xs: np.concatenate(xs), *(self._fetched[i] for i in g))
                          for g in self._groups()]
            self._fetched.clear()
            self._where = {k: (b, r) for b, (_, m) in enumerate(self.buckets) for r, k in enumerate(m)}
        return self._host

    def device(self) -> list[Preds]:
        """Per bucket, (pred1, pred2) dicts of (n, H, W, ...) device arrays (joined, sliced on the devices).

        Raises:
          ValueError: a segment was already moved to the host.
        """
        if any(s.preds is None for s in self.segments):
            raise ValueError("PairOutputs.device(): these outputs were moved to the host (use host())")
        out = []
        for g in self._groups():
            parts = [jax.tree.map(lambda a, n=len(self.segments[i].members): _rows(a, n), self.segments[i].preds)
                     for i in g]
            out.append(parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts))
        return out

    def pair(self, k: int) -> Preds:
        """Pair k's (pred1, pred2) as (H, W, ...) numpy views into the host arrays."""
        host = self.host()
        b, r = self._where[k]
        p1, p2 = host[b]
        return {n: a[r] for n, a in p1.items()}, {n: a[r] for n, a in p2.items()}

    def __len__(self) -> int:
        return self.n_pairs

    def __iter__(self) -> Iterator[Preds]:
        return (self.pair(k) for k in range(self.n_pairs))

    def stacked(self, to_host: bool = True) -> Preds:
        """The batched official layout (a single bucket whose members are the pairs in order): (P, H, W, ...)
        arrays, numpy (`to_host`) or device arrays."""
        b = self.buckets
        if len(b) != 1 or b[0][1] != tuple(range(self.n_pairs)):
            raise ValueError("stacked(): the pairs span several shape buckets (use the per-pair layout)")
        return (self.host() if to_host else self.device())[0]


class LazyRows(Sequence):
    """One prediction key of the per-pair list layout, left on the devices until an entry is read: then every
    bucket comes to the host in one transfer each (`PairOutputs.host`) and entries are numpy row views."""

    def __init__(self, outputs: PairOutputs, which: int, key: str):
        self._out, self._which, self._key = outputs, which, key

    def __len__(self) -> int:
        return self._out.n_pairs

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self._out.pair(k)[self._which][self._key]

    def __repr__(self) -> str:
        return f"LazyRows({self._key!r}, {len(self)} pairs)"
