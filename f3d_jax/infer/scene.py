"""Images in, pairwise predictions out: `load_images` -> `make_pairs` -> `inference` in one call.

The official demos chain `dust3r.utils.image.load_images`, `dust3r.image_pairs.make_pairs` and
`dust3r.inference.inference`; `infer_scene` does exactly that and returns every intermediate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from f3d_jax.infer.engine import inference
from f3d_jax.infer.pairs import make_pairs, pairs_from_edges, pairs_to_edges
from f3d_jax.io.images import load_images
from f3d_jax.models.model import Model


def default_image_size(model: Model) -> int:
    """The `load_images` size a model was trained for: 224 for the 224 models, 512 otherwise."""
    return 224 if max(model.config.img_size) <= 224 else 512


def _is_image_dicts(images: Any) -> bool:
    return (isinstance(images, Sequence) and not isinstance(images, str) and len(images) > 0
            and all(isinstance(x, Mapping) for x in images))


def infer_scene(images: Any, model: Model, scene_graph: str = "complete", batch_size: int = 8,
                symmetrize: bool = True, verbose: bool = True, size: int | None = None, *,
                edges: np.ndarray | Sequence[Sequence[int]] | None = None, prefilter: str | None = None,
                sim_mat: np.ndarray | None = None, square_ok: bool = False, dtype: Any = None,
                attention_impl: str | None = None, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Load images, build the pair graph and run pair inference.

    Args:
      images: a folder, a path, a list of paths / uint8 arrays / PIL images (read with
        `load_images(images, size, square_ok)`), or a list of already loaded image dicts (used as
        they are).
      model: a DUSt3R / MASt3R `Model`.
      scene_graph: `make_pairs` graph ('complete', 'swin-K[-noncyclic]', 'logwin-K[-noncyclic]',
        'oneref-I', 'retrieval-Na-k' with `sim_mat`). Ignored when `edges` is given.
      batch_size, verbose, dtype, attention_impl, devices: passed to `inference`.
      symmetrize, prefilter, sim_mat: passed to `make_pairs`.
      size: `load_images` size; None picks 224 for a 224 model and 512 otherwise.
      edges: explicit (E, 2) pairs of image positions instead of a graph (an index outside the
        image list is an error naming the edge).
      square_ok: passed to `load_images`.

    Returns:
      The `inference` result (`view1`, `view2`, `pred1`, `pred2`, official layout) plus
      `images` (the image dicts) and `edges` ((P, 2) int32 `idx` of view 1 and view 2 per pair).
      A single image is paired with itself, as the official demos do.
    """
    if _is_image_dicts(images):
        imgs = list(images)
    else:
        imgs = load_images(images, size if size is not None else default_image_size(model), square_ok=square_ok,
                           verbose=verbose)
    if edges is not None:
        pairs = pairs_from_edges(imgs, edges)
        if not pairs:
            raise ValueError("infer_scene: `edges` is empty")
        if symmetrize:
            pairs = pairs + [(b, a) for a, b in pairs]
    else:
        pairs = make_pairs(imgs, scene_graph=scene_graph, prefilter=prefilter, symmetrize=symmetrize,
                           sim_mat=sim_mat)
    out = inference(pairs, model, batch_size, verbose, dtype=dtype, attention_impl=attention_impl, devices=devices)
    out["images"] = imgs
    out["edges"] = pairs_to_edges(pairs)
    return out
