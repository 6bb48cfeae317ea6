"""Collation of per-pair results into the official `inference` output layout
(`dust3r.utils.device.collate_with_cat`).

* 'batched' when every view 1 has one shape and every view 2 has one shape: `view{1,2}` hold
  `img (P, H, W, 3)` float32 (NHWC; official NCHW), `true_shape (P, 2)` int32, `idx` and
  `instance` as flat lists, any other key of the image dicts collated the same way; `pred{1,2}`
  hold `(P, H, W, ...)` float32 numpy arrays in pair order.
* 'per-pair lists' otherwise (the official code then forces batch size 1 and collates with
  `lists=True`): every array entry becomes a list of P arrays *without* the batch dimension
  (`img[k] (H, W, 3)`, `true_shape[k] (2,)`, `pred1['pts3d'][k] (H, W, 3)`); `idx`/`instance`
  stay flat lists.

The official result also carries `loss: None`; it is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from f3d_jax.infer.views import Pair, View


def same_size(pairs: Sequence[Pair]) -> bool:
    """The official `check_if_same_size`: all view-1 images share a shape, and all view-2 images do
    (view 1 and view 2 may differ from each other). False selects the per-pair list layout."""
    s1 = {tuple(np.shape(a["img"])[1:3]) for a, _ in pairs}
    s2 = {tuple(np.shape(b["img"])[1:3]) for _, b in pairs}
    return len(s1) == 1 and len(s2) == 1


def _to_numpy(v: Any) -> Any:
    return np.asarray(jax.device_get(v)) if isinstance(v, jax.Array) else v


def _collate_values(vals: list[Any], lists: bool) -> Any:
    """`collate_with_cat` over one key of the per-pair view dicts (each a batch of 1)."""
    elem = vals[0]
    if elem is None:
        return None
    if isinstance(elem, (bool, float, int, str)):
        return list(vals)
    if isinstance(elem, (np.ndarray, jax.Array)):
        arrs = [_to_numpy(v) for v in vals]
        return [x for a in arrs for x in a] if lists else np.concatenate(arrs)
    if isinstance(elem, list):
        return [x for v in vals for x in v]
    if isinstance(elem, Mapping):
        return {k: _collate_values([v[k] for v in vals], lists) for k in elem}
    return list(vals)


def collate_views(views: Sequence[View], lists: bool) -> dict[str, Any]:
    """Collate the view dicts of every pair like the official code (keys of the first view)."""
    out = {}
    for key in views[0]:
        vals = [v[key] for v in views]
        if key == "img":
            vals = [np.asarray(jax.device_get(v), np.float32) for v in vals]
        elif key == "true_shape":
            vals = [np.asarray(jax.device_get(v), np.int32).reshape(-1, 2) for v in vals]
        out[key] = _collate_values(vals, lists)
    return out


def collate_preds(preds: Sequence[Mapping[str, np.ndarray]], lists: bool) -> dict[str, Any]:
    """Per-pair prediction dicts of `(H, W, ...)` arrays -> one dict of `(P, H, W, ...)` arrays, or of
    lists of P arrays when `lists`."""
    if lists:
        return {k: [p[k] for p in preds] for k in preds[0]}
    return {k: np.stack([p[k] for p in preds]) for k in preds[0]}


def rename_view2(res: Mapping[str, Any]) -> dict[str, Any]:
    """View 2's prediction with `pts3d_in_other_view` renamed `pts3d` (MASt3R's symmetric naming)."""
    return {("pts3d" if k == "pts3d_in_other_view" else k): v for k, v in res.items()}


def inference_result(pairs: Sequence[Pair], preds: Sequence[tuple[Mapping, Mapping]]) -> dict[str, Any]:
    """The official `inference` result: `{'view1', 'view2', 'pred1', 'pred2'}` in the layout `pairs` select.

    Args:
      pairs: the (view1, view2) image dicts, in pair order.
      preds: per pair, (pred1, pred2) dicts of `(H, W, ...)` host arrays (no batch dim).
    """
    lists = not same_size(pairs)
    return {
        "view1": collate_views([p[0] for p in pairs], lists),
        "view2": collate_views([p[1] for p in pairs], lists),
        "pred1": collate_preds([p[0] for p in preds], lists),
        "pred2": collate_preds([p[1] for p in preds], lists),
    }
