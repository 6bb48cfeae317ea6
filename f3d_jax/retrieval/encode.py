"""Runs the model's encoder over a list of images in padded, fixed-size batches, reducing each batch on the
device (pooling, retrieval head) so only small per-image results come back to the host.

Images are grouped by shape (`load_images` at 512 gives several aspect ratios); each group runs in batches
of one static size (the last one padded with copies of a real image), so a call compiles one step per
(shape, batch size) and a second call with the same shapes compiles nothing. Never batch 1: a group of
n < `batch_size` images runs at the smallest power of two >= max(n, 2), which bounds the number of compiled
variants to log2(batch_size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from f3d_jax.infer.views import DistinctImage, PairInputError, image_of
from f3d_jax.models.model import Model


def check_images(model: Any, imgs: Any, fn: str) -> list[DistinctImage]:
    """Validate `model` (a DUSt3R / MASt3R `Model`) and `imgs` (`load_images` output, >= 1 image).

    Raises:
      TypeError: `model` is not a stereo `Model`.
      PairInputError (a ValueError): `imgs` not a non-empty list of image dicts with `img (1, H, W, 3)`.
    """
    if not isinstance(model, Model) or not model.is_stereo:
        raise TypeError(f"{fn}: model must be a loaded DUSt3R / MASt3R f3d_jax Model (f3d_jax.load_model), "
                        f"got {type(model).__name__}" + (" (a CroCo pretraining model)" if isinstance(model, Model)
                                                          else ""))
    if isinstance(imgs, dict) or not isinstance(imgs, Sequence) or isinstance(imgs, str):
        raise PairInputError(f"{fn}: imgs must be the list of image dicts load_images returns, "
                             f"got {type(imgs).__name__}")
    if len(imgs) == 0:
        raise PairInputError(f"{fn}: imgs is empty")
    memo: dict[int, DistinctImage] = {}
    return [image_of(v, f"{fn}: imgs[{k}]", memo) for k, v in enumerate(imgs)]


def static_batch(n: int, batch_size: int) -> int:
    """The batch size a group of `n` images runs at: `batch_size`, or for a smaller group the smallest power of
    two >= max(n, 2) (never 1)."""
    if n >= batch_size:
        return max(batch_size, 2)
    b = 2
    while b < n:
        b *= 2
    return min(b, max(batch_size, 2))


def map_encoded(step: Callable[[np.ndarray, np.ndarray], Any], images: Sequence[DistinctImage],
                batch_size: int) -> list[Any]:
    """`step(img (B, H, W, 3) float32, true_shape (B, 2) int32) -> pytree of (B, ...) arrays` over every image.

    Returns:
      one pytree of numpy arrays (batch axis removed) per image, in the order of `images`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    groups: dict[tuple[int, int], list[int]] = {}
    for k, im in enumerate(images):
        groups.setdefault(im.hw, []).append(k)
    out: list[Any] = [None] * len(images)
    for members in groups.values():
        bs = static_batch(len(members), int(batch_size))
        pending = []
        for start in range(0, len(members), bs):
            chunk = members[start:start + bs]
            rows = chunk + [chunk[0]] * (bs - len(chunk))  # padding: a real image, static batch shape
            img = np.stack([images[k].img for k in rows])
            ts = np.stack([images[k].true_shape for k in rows])
            pending.append((chunk, step(img, ts)))  # dispatched asynchronously; fetched below
        for chunk, res in pending:
            host = jax.device_get(res)
            for j, k in enumerate(chunk):
                out[k] = jax.tree.map(lambda a, j=j: np.asarray(a[j]), host)
    return out
