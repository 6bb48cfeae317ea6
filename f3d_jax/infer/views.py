"""Pair-list validation and image identity for pair inference.

Image identity (the encoder-cache key of `InferenceEngine`): two views are the same image when their
pixels (`img`, as float32) and `true_shape` are equal, byte for byte (a 128-bit BLAKE2 digest, computed
once per distinct array object in a call). `idx` / `instance` are not trusted: two loads of different
scenes both number their images 0..N-1.

Views follow the official vocabulary, one image per view: `{'img': (1, H, W, 3) float in [-1, 1]
(NHWC), 'true_shape': (1, 2) int (height, width), 'idx', 'instance', ...}`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

View = dict[str, Any]
Pair = tuple[View, View]


class PairInputError(ValueError):
    """A pair list that cannot be run (empty, not pairs of image dicts, bad image arrays)."""


@dataclasses.dataclass(frozen=True)
class DistinctImage:
    """One distinct image of a call, on the host."""

    key: tuple  # (H, W, digest): equal keys <=> same pixels and true_shape
    img: np.ndarray  # (H, W, 3) float32
    true_shape: np.ndarray  # (2,) int32

    @property
    def hw(self) -> tuple[int, int]:
        return self.img.shape[0], self.img.shape[1]


def image_of(view: Any, where: str, memo: dict[int, DistinctImage]) -> DistinctImage:
    """Validate one view and return its `DistinctImage`.

    Args:
      view: an image dict with `img (1, H, W, 3)` float (host or device) and optional `true_shape (1, 2)`
        (default: the image's own (H, W)).
      where: the view's name in error messages, e.g. "inference: pair 3 view2".
      memo: `id(view['img']) -> DistinctImage` of this call, so that an image shared by many pairs is
        fetched and hashed once. Only valid while the arrays it was built from are alive (one call).

    Raises:
      PairInputError: not a dict, no `img`, `img` not one (1, H, W, 3) float image (the message says
        when it looks NCHW, batched or unbatched), `true_shape` not two numbers.
    """
    if not isinstance(view, Mapping):
        raise PairInputError(f"{where} must be an image dict (as returned by load_images), got {type(view).__name__}")
    if "img" not in view:
        raise PairInputError(f"{where} has no 'img' entry (expected (1, H, W, 3) float32 in [-1, 1])")
    raw = view["img"]
    hit = memo.get(id(raw))
    if hit is not None:
        return hit
    img = np.asarray(jax.device_get(raw))
    if img.ndim != 4 or img.shape[0] != 1 or img.shape[-1] != 3:
        hint = ""
        if img.ndim == 4 and img.shape[1] == 3 and img.shape[-1] != 3:
            hint = " (this looks like NCHW; f3d-jax images are NHWC)"
        elif img.ndim == 4 and img.shape[-1] == 3:
            hint = (" (one image per view: inference pairs single images as load_images returns them; "
                    "a view of batch > 1 is not supported)")
        elif img.ndim == 3:
            hint = " (add the batch dimension: img[None])"
        raise PairInputError(f"{where}['img'] must have shape (1, H, W, 3), got {tuple(img.shape)}{hint}")
    if not np.issubdtype(img.dtype, np.floating):
        raise PairInputError(f"{where}['img'] must be floating point in [-1, 1], got dtype {img.dtype}")
    img = np.ascontiguousarray(img[0], dtype=np.float32)
    ts = view.get("true_shape")
    if ts is None:
        ts = np.array(img.shape[:2], np.int32)
    else:
        ts = np.asarray(jax.device_get(ts))
        if ts.size != 2:
            raise PairInputError(f"{where}['true_shape'] must be (1, 2) (height, width), got shape {ts.shape}")
        ts = ts.reshape(2).astype(np.int32)
    digest = hashlib.blake2b(img.tobytes(), digest_size=16)
    digest.update(ts.tobytes())
    out = DistinctImage((img.shape[0], img.shape[1], digest.hexdigest()), img, ts)
    memo[id(raw)] = out
    return out


def check_pairs(pairs: Any, fn: str) -> list[Pair]:
    """`pairs` as a non-empty list of 2-tuples (the views themselves are checked by `image_of`).

    Raises:
      PairInputError: naming `fn`: not a list, empty, or an entry that is not a (view1, view2) pair.
    """
    if isinstance(pairs, Mapping) or not isinstance(pairs, Sequence) or isinstance(pairs, str):
        raise PairInputError(f"{fn}: pairs must be a list of (view1, view2) image-dict tuples "
                             f"(see make_pairs), got {type(pairs).__name__}")
    pairs = list(pairs)
    if not pairs:
        raise PairInputError(f"{fn}: empty pair list (make_pairs returns at least one pair per scene)")
    for k, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise PairInputError(f"{fn}: pair {k} must be a (view1, view2) tuple, got {type(p).__name__}"
                                 + (f" of length {len(p)}" if isinstance(p, (tuple, list)) else ""))
    return pairs


def distinct_images(pairs: Sequence[Pair], fn: str) -> tuple[list[tuple[DistinctImage, DistinctImage]],
                                                              list[DistinctImage]]:
    """Validate every view of `pairs` (already `check_pairs`-ed).

    Returns:
      (per pair: (view 1's image, view 2's image), the distinct images in first-seen order).
    """
    memo: dict[int, DistinctImage] = {}
    per_pair = [(image_of(v1, f"{fn}: pair {k} view1", memo), image_of(v2, f"{fn}: pair {k} view2", memo))
                for k, (v1, v2) in enumerate(pairs)]
    distinct = list({im.key: im for pp in per_pair for im in pp}.values())
    return per_pair, distinct
