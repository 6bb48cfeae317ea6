"""A Reconstruction with exact geometry from `f3d_jax.eval.synthetic` (no model), and non-trivial provenance:
the working images are a 2.5x downscale of a source image, cropped (3 columns and 2 rows on each side)."""

from __future__ import annotations

import numpy as np

from f3d_jax.eval.synthetic import make_scene, world_points
from f3d_jax.export import Reconstruction

SCALE = 2.5
CROP = (3, 2)  # (left, top) crop in resized pixels, as the loader's centred crop leaves it


def loader_to_orig(scale_x: float, scale_y: float, left: int, top: int) -> np.ndarray:
    """The affine `load_images` reports for a resize by 1/scale then a crop at (left, top)."""
    return np.array([[scale_x, 0, (left + 0.5) * scale_x - 0.5], [0, scale_y, (top + 0.5) * scale_y - 0.5]])


def synthetic_reconstruction(n: int = 4, H: int = 48, W: int = 64, seed: int = 0) -> Reconstruction:
    sc = make_scene(n=n, H=H, W=W, seed=seed, focal_jitter=0.1)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    v, u = np.mgrid[:H, :W]
    # surface colours with a checker so that neighbouring pixels differ (colours are exported, not matched)
    images = (palette[sc.surface_id].astype(np.int32) + 40 * (((u // 4) + (v // 4)) % 2)[None, ..., None]) % 256
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = sc.focals
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = W / 2, H / 2, 1.0
    conf = (1.0 + 5.0 * rng.random((n, H, W))).astype(np.float32)
    A = loader_to_orig(SCALE, SCALE, *CROP)
    W1, H1 = round((W + 2 * CROP[0]) * SCALE), round((H + 2 * CROP[1]) * SCALE)
    return Reconstruction(
        images=images.astype(np.uint8), cam2world=sc.cam2world, intrinsics=K,
        depth=sc.depth.astype(np.float32), pts3d=world_points(sc).astype(np.float32), conf=conf,
        mask=np.ones((n, H, W), bool), names=tuple(f"view_{k}.png" for k in range(n)),
        orig_sizes=np.tile([W1, H1], (n, 1)), to_orig=np.tile(A, (n, 1, 1)))
