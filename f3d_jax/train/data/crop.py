"""The official DUSt3R dataset crop/resize (`dust3r/datasets/utils/cropping.py` and
`BaseStereoViewDataset._crop_resize_if_necessary`), numpy + PIL + OpenCV, bit-exact with the official code.

Conventions: images are PIL images or (H, W, 3) uint8 arrays; depth maps (H, W) float32; intrinsics (3, 3) float32,
OpenCV convention (the centre of the top-left pixel is (0, 0)); resolutions are (W, H) as in the official code.
The arithmetic deliberately mirrors the official numpy expressions, dtypes included (float32 matrices updated in
place by float64 scalars), so that the intrinsics match to the last bit.
"""

from __future__ import annotations

import cv2
import numpy as np
import PIL.Image

LANCZOS = PIL.Image.Resampling.LANCZOS
BICUBIC = PIL.Image.Resampling.BICUBIC


def opencv_to_colmap_intrinsics(K: np.ndarray) -> np.ndarray:
    """Copy of K with the principal point shifted by +0.5 (top-left pixel centre at (0.5, 0.5))."""
    K = K.copy()
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def colmap_to_opencv_intrinsics(K: np.ndarray) -> np.ndarray:
    """Copy of K with the principal point shifted by -0.5 (top-left pixel centre at (0, 0))."""
    K = K.copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def _as_pil(image) -> PIL.Image.Image:
    return image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image))


def camera_matrix_of_crop(input_camera_matrix: np.ndarray, input_resolution, output_resolution, scaling: float = 1,
                          offset_factor: float = 0.5, offset=None) -> np.ndarray:
    """Intrinsics after scaling the image by `scaling` and cropping `output_resolution` (W, H) out of it, the crop
    placed at `offset` (default: `offset_factor` of the margins, i.e. centred)."""
    margins = np.asarray(input_resolution) * scaling - output_resolution
    if not np.all(margins >= 0.0):
        raise ValueError(f"crop {tuple(np.asarray(output_resolution))} is larger than the scaled image "
                         f"{tuple(np.asarray(input_resolution) * scaling)}")
    if offset is None:
        offset = offset_factor * margins
    out = opencv_to_colmap_intrinsics(input_camera_matrix)
    out[:2, :] *= scaling
    out[:2, 2] -= offset
    return colmap_to_opencv_intrinsics(out)


def bbox_from_intrinsics_in_out(input_camera_matrix: np.ndarray, output_camera_matrix: np.ndarray,
                                output_resolution) -> tuple[int, int, int, int]:
    """(l, t, r, b) crop box that turns the first intrinsics into the second (pure translation)."""
    out_width, out_height = output_resolution
    l, t = np.int32(np.round(input_camera_matrix[:2, 2] - output_camera_matrix[:2, 2]))
    return int(l), int(t), int(l + out_width), int(t + out_height)


def crop_image_depthmap(image, depthmap: np.ndarray, camera_intrinsics: np.ndarray, crop_bbox):
    """Crop (l, t, r, b) of the image (PIL), the depth map and the intrinsics (principal point shifted)."""
    image = _as_pil(image)
    l, t, r, b = crop_bbox
    image = image.crop((l, t, r, b))
    depthmap = depthmap[t:b, l:r]
    camera_intrinsics = camera_intrinsics.copy()
    camera_intrinsics[0, 2] -= l
    camera_intrinsics[1, 2] -= t
    return image, depthmap, camera_intrinsics


def rescale_image_depthmap(image, depthmap: np.ndarray | None, camera_intrinsics: np.ndarray, output_resolution,
                           force: bool = True):
    """Rescale (aspect ratio kept) so that the image covers `output_resolution` (W, H): LANCZOS when shrinking,
    BICUBIC when growing; depth by nearest neighbour (OpenCV); intrinsics scaled about the pixel corners."""
    image = _as_pil(image)
    input_resolution = np.array(image.size)  # (W, H)
    output_resolution = np.array(output_resolution)
    if depthmap is not None and tuple(depthmap.shape[:2]) != image.size[::-1]:
        raise ValueError(f"depth map shape {depthmap.shape[:2]} does not match the image (H, W) {image.size[::-1]}")
    if output_resolution.shape != (2,):
        raise ValueError(f"output_resolution must be (W, H), got {output_resolution!r}")
    scale_final = max(output_resolution / image.size) + 1e-8
    if scale_final >= 1 and not force:
        return image, depthmap, camera_intrinsics
    output_resolution = np.floor(input_resolution * scale_final).astype(int)
    image = image.resize(tuple(int(v) for v in output_resolution), resample=LANCZOS if scale_final < 1 else BICUBIC)
    if depthmap is not None:
        depthmap = cv2.resize(depthmap, tuple(int(v) for v in output_resolution), fx=scale_final, fy=scale_final,
                              interpolation=cv2.INTER_NEAREST)
    camera_intrinsics = camera_matrix_of_crop(camera_intrinsics, input_resolution, output_resolution,
                                              scaling=scale_final)
    return image, depthmap, camera_intrinsics


def crop_resize_if_necessary(image, depthmap: np.ndarray, intrinsics: np.ndarray, resolution,
                             rng: np.random.Generator, aug_crop: int = 0):
    """The official training crop (`BaseStereoViewDataset._crop_resize_if_necessary`).

    1. Crop the largest window centred on the (rounded) principal point.
    2. Pick the orientation: a portrait image (H > 1.1 W) takes the transposed resolution; a near-square one
       (0.9 < H/W < 1.1) draws it from `rng` (one `rng.integers(2)`) unless the resolution is square.
    3. With `aug_crop > 1` the rescale target grows by `rng.integers(0, aug_crop)` pixels (both sides) before
    4. the aspect-preserving rescale (`rescale_image_depthmap`) and
    5. the centred crop to the resolution, with the intrinsics updated.

    Args:
        image: PIL image or (H, W, 3) uint8.
        depthmap: (H, W) float32.
        intrinsics: (3, 3) float32, OpenCV convention.
        resolution: (W, H) with W >= H (landscape); the output is (H, W) or, for portrait images, (W, H).
        rng: numpy Generator (draws exactly what the official code draws, in the same order).
        aug_crop: the official `aug_crop` (0/False: none).

    Returns:
        (PIL image, (h, w) float32 depth map, (3, 3) intrinsics).
    """
    image = _as_pil(image)
    W, H = image.size
    cx, cy = intrinsics[:2, 2].round().astype(int)
    min_margin_x = min(cx, W - cx)
    min_margin_y = min(cy, H - cy)
    l, t = cx - min_margin_x, cy - min_margin_y
    r, b = cx + min_margin_x, cy + min_margin_y
    image, depthmap, intrinsics = crop_image_depthmap(image, depthmap, intrinsics, (l, t, r, b))

    W, H = image.size
    if not resolution[0] >= resolution[1]:
        raise ValueError(f"resolution must be landscape (W, H) with W >= H, got {tuple(resolution)}")
    if H > 1.1 * W:  # portrait
        resolution = resolution[::-1]
    elif 0.9 < H / W < 1.1 and resolution[0] != resolution[1]:  # near-square: the orientation is random
        if rng.integers(2):
            resolution = resolution[::-1]

    target_resolution = np.array(resolution)
    if aug_crop > 1:
        target_resolution += rng.integers(0, aug_crop)
    image, depthmap, intrinsics = rescale_image_depthmap(image, depthmap, intrinsics, target_resolution)

    intrinsics2 = camera_matrix_of_crop(intrinsics, image.size, resolution, offset_factor=0.5)
    crop_bbox = bbox_from_intrinsics_in_out(intrinsics, intrinsics2, resolution)
    image, depthmap, intrinsics2 = crop_image_depthmap(image, depthmap, intrinsics, crop_bbox)
    return image, depthmap, intrinsics2
