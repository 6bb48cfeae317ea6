"""A tiny random DUSt3R model and images for the retrieval tests (2 x 2 or 2 x 3 tokens, one encoder block)."""

from __future__ import annotations

import jax
import numpy as np

from f3d_jax.models.config import DUSt3RConfig
from f3d_jax.models.model import Model, abstract_params

HW = (32, 32)
CONFIG = DUSt3RConfig(img_size=HW, patch_size=16, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32,
                      dec_depth=1, dec_num_heads=2, pos_embed="RoPE100", landscape_only=False)


def tiny_model(seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), abstract_params(CONFIG))
    return Model(CONFIG, params)


def tiny_images(shapes: list[tuple[int, int]], seed: int = 1) -> list[dict]:
    """`load_images`-style dicts of random images of the given (H, W)."""
    rng = np.random.default_rng(seed)
    return [dict(img=rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32), true_shape=np.array([[h, w]], np.int32),
                 idx=k, instance=str(k)) for k, (h, w) in enumerate(shapes)]


# the batch each image size runs at in the tests (`static_batch`): reference encodings use the same compiled encoder
REF_BATCH = {(64, 64): 4, (64, 96): 2}


def encoder_tokens(model: Model, views: list[dict]) -> list[np.ndarray]:
    """Each image's encoder output (N, Ce) float64, encoded on its own (the other rows of its batch are noise)."""
    from f3d_jax.models.model import encode_images

    rng = np.random.default_rng(99)
    out = []
    for v in views:
        h, w = v["img"].shape[1:3]
        b = REF_BATCH[(h, w)]
        img = np.concatenate([v["img"], rng.uniform(-1, 1, (b - 1, h, w, 3)).astype(np.float32)])
        ts = np.repeat(np.asarray(v["true_shape"], np.int32).reshape(1, 2), b, 0)
        out.append(np.asarray(encode_images(model.config, model.params, img, ts)[0], np.float64)[0])
    return out
