"""MASt3R matching of two photos (`f3d match IMG1 IMG2`): both network passes in one batch, the sparse
alignment's symmetric reciprocal matching, and a side-by-side drawing of the matches (PIL)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np

from f3d_jax.export.reconstruction import images_to_uint8
from f3d_jax.infer.collate import rename_view2
from f3d_jax.infer.engine import InferenceEngine
from f3d_jax.matching import extract_correspondences
from f3d_jax.sparse.data import BLOCK_SIZE


@dataclasses.dataclass(frozen=True)
class PairMatches:
    """Matches of two images: `xy1`, `xy2` (M, 2) int (x, y) working-resolution pixels (centres at integers),
    `conf` (M,) float32 match confidences (sorted, most confident first), `images` the two (H, W, 3) uint8
    working images, `to_orig` the two (2, 3) working-to-source pixel maps, `names` the two file names."""

    xy1: np.ndarray
    xy2: np.ndarray
    conf: np.ndarray
    images: tuple[np.ndarray, np.ndarray]
    to_orig: tuple[np.ndarray, np.ndarray]
    names: tuple[str, str] = ("", "")

    def __len__(self) -> int:
        return len(self.conf)

    def source_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(xy1, xy2) in the source images' pixels (float64, centres at integers)."""
        return tuple(np.asarray(xy, np.float64) @ A[:, :2].T + A[:, 2] for xy, A in zip((self.xy1, self.xy2),
                                                                                      self.to_orig))


def _is_mast3r(model: Any) -> bool:
    return "desc" in str(getattr(getattr(model, "config", None), "output_mode", ""))


def match_images(model: Any, image1: Any, image2: Any, *, size: int = 512, subsample: int = 8, border: int = 3,
                 dtype: Any = None) -> PairMatches:
    """Reciprocal descriptor matches of two images.

    Args:
      model: a MASt3R `f3d_jax.Model` (or a name / path `load_model` reads).
      image1, image2: image paths, uint8 arrays or PIL images (`load_images` sources).
      size: `load_images` size. subsample: matching grid stride (8: the sparse alignment's).
      border: matches within this many pixels of an image border are dropped (the MASt3R demo drops 3).
      dtype: network compute dtype.

    Returns:
      `PairMatches`, most confident first.
    """
    from f3d_jax.io.images import load_images
    from f3d_jax.models.model import Model

    if not isinstance(model, Model):
        from f3d_jax.weights.loading import load_model

        model = load_model(model)
    if not _is_mast3r(model):
        raise ValueError(f"match: the model must be a MASt3R model (it has no descriptors: "
                         f"{model.config.official_class})")
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample < 1:
        raise ValueError(f"match: subsample must be a positive int, got {subsample!r}")
    if border < 0:
        raise ValueError(f"match: border must be >= 0, got {border}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imgs = load_images([image1, image2], size, verbose=False)
    if len(imgs) != 2:
        raise ValueError(f"match: needs two images, got {len(imgs)}")
    v1, v2 = imgs
    # both passes in one decoder batch (the engine pads it to its batch size): each image encoded once
    engine = InferenceEngine(model, 2, dtype=dtype)
    (r11, r21), (r22, r12) = engine.predict([(v1, v2), (v2, v1)])
    r21, r12 = rename_view2(r21), rename_view2(r12)
    feats = [np.asarray(r["desc"], np.float32) for r in (r11, r21, r22, r12)]
    qonfs = [np.asarray(r["desc_conf"], np.float32) for r in (r11, r21, r22, r12)]
    # the sparse alignment's matcher settings (and compiled code)
    xy1, xy2, conf = extract_correspondences(feats, qonfs, subsample=int(subsample), dist="dot", block_size=BLOCK_SIZE)
    xy1, xy2, conf = np.asarray(xy1), np.asarray(xy2), np.asarray(conf, np.float32)
    keep = np.ones(len(conf), bool)
    for xy, r in ((xy1, r11), (xy2, r22)):
        H, W = np.asarray(r["desc"]).shape[:2]
        keep &= (xy[:, 0] >= border) & (xy[:, 0] < W - border) & (xy[:, 1] >= border) & (xy[:, 1] < H - border)
    order = np.argsort(-conf[keep], kind="stable")
    ims = images_to_uint8([v1]), images_to_uint8([v2])
    names = tuple(os.path.basename(str(v.get("path", ""))) for v in imgs)
    return PairMatches(xy1=xy1[keep][order], xy2=xy2[keep][order], conf=conf[keep][order],
                       images=(ims[0][0], ims[1][0]),
                       to_orig=tuple(np.asarray(v["to_orig"], np.float64).reshape(2, 3) for v in imgs),
                       names=names)


def draw_matches(matches: PairMatches, max_draw: int = 200) -> Any:
    """A PIL image: the two working images side by side (top-aligned) with lines joining at most `max_draw`
    matches, spread evenly over the matches sorted by confidence (as the MASt3R demo draws them), coloured by
    their position in image 1."""
    import colorsys

    import PIL.Image
    import PIL.ImageDraw

    if max_draw < 0:
        raise ValueError(f"draw_matches: max_draw must be >= 0, got {max_draw}")
    a, b = matches.images
    H = max(a.shape[0], b.shape[0])
    canvas = np.zeros((H, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1]:] = b
    im = PIL.Image.fromarray(canvas)
    n = len(matches)
    if n and max_draw:
        pick = np.unique(np.round(np.linspace(0, n - 1, min(n, max_draw))).astype(np.int64))
        draw = PIL.ImageDraw.Draw(im)
        hsv = np.stack([matches.xy1[pick, 0] / max(a.shape[1] - 1, 1), np.full(len(pick), 0.9),
                        np.full(len(pick), 1.0)], 1)
        for k, (p, q) in enumerate(zip(matches.xy1[pick].tolist(), matches.xy2[pick].tolist())):
            color = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(*hsv[k]))
            q = (q[0] + a.shape[1], q[1])
            draw.line([tuple(p), q], fill=color, width=1)
            for c in (p, q):
                draw.ellipse([c[0] - 2, c[1] - 2, c[0] + 2, c[1] + 2], outline=color)
    return im


def save_matches_png(matches: PairMatches, path: str | os.PathLike, max_draw: int = 200) -> str:
    """`draw_matches` written to `path` as PNG (atomically). Returns the absolute path."""
    from f3d_jax.io.atomic import atomic_open

    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path, "wb") as f:
        draw_matches(matches, max_draw).save(f, format="PNG")
    return path
