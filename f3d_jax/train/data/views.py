"""One training view, from a raw sample to the official view dict (`BaseStereoViewDataset.__getitem__`).

A *raw view* (what a source returns) is a dict:
    'img': (H, W, 3) uint8 RGB; 'depthmap': (H, W) float32 z-depth (<= 0: invalid, < 0 also means sky);
    'camera_intrinsics': (3, 3) float32, OpenCV convention; 'camera_pose': (4, 4) float32 cam2world;
    'is_metric_scale': bool; 'name': str (for messages).
A *view* (what a batch stacks, NHWC, the official keys):
    'img': (H, W, 3) float32 `ImgNorm` ((x/255 - 0.5)/0.5, in [-1, 1]); 'depthmap' (H, W) float32;
    'camera_pose' (4, 4) float32; 'camera_intrinsics' (3, 3) float32; 'pts3d' (H, W, 3) float32 world points;
    'valid_mask' (H, W) bool; 'sky_mask' (H, W) bool (depth < 0, MASt3R's convention); 'true_shape' (2,) int32
    (H, W) before the landscape transposition; 'is_metric_scale' () bool.
Portrait views are transposed to landscape exactly as the official `transpose_to_landscape` (image, masks, depth and
points swap their H and W axes, the intrinsics swap their first two rows, `true_shape` keeps the portrait (H, W)), so
every view of a batch has the bucket's landscape shape.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageEnhance

from f3d_jax.train.data.crop import crop_resize_if_necessary

# CroCo pretraining normalises with the ImageNet statistics (croco/datasets/transforms.py); DUSt3R uses ImgNorm.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class CorruptSample(ValueError):
    """A sample that cannot be used (unreadable file, wrong shape, non-finite values); the pipeline skips it."""


def img_norm(img: np.ndarray) -> np.ndarray:
    """Official `ImgNorm` (ToTensor + Normalize(0.5, 0.5)) in float32, NHWC: (H, W, 3) uint8 -> float32."""
    x = np.asarray(img, np.uint8).astype(np.float32) / np.float32(255)
    return (x - np.float32(0.5)) / np.float32(0.5)


def imagenet_norm(img: np.ndarray) -> np.ndarray:
    """CroCo's ToTensor + Normalize(ImageNet mean, std) in float32: (H, W, 3) uint8 -> float32."""
    x = np.asarray(img, np.uint8).astype(np.float32) / np.float32(255)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def depthmap_to_camera_coordinates(depthmap: np.ndarray, camera_intrinsics: np.ndarray):
    """Official `depthmap_to_camera_coordinates`: ((H, W, 3) float32 camera-frame points, (H, W) bool depth > 0).
    No skew allowed."""
    camera_intrinsics = np.float32(camera_intrinsics)
    H, W = depthmap.shape
    if camera_intrinsics[0, 1] != 0.0 or camera_intrinsics[1, 0] != 0.0:
        raise CorruptSample("intrinsics with skew are not supported")
    fu, fv = camera_intrinsics[0, 0], camera_intrinsics[1, 1]
    cu, cv = camera_intrinsics[0, 2], camera_intrinsics[1, 2]
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    z_cam = depthmap
    x_cam = (u - cu) * z_cam / fu  # int64 - float32 scalar: float64, as in the official code
    y_cam = (v - cv) * z_cam / fv
    X_cam = np.stack((x_cam, y_cam, z_cam), axis=-1).astype(np.float32)
    return X_cam, depthmap > 0.0


def depthmap_to_absolute_camera_coordinates(depthmap: np.ndarray, camera_intrinsics: np.ndarray,
                                            camera_pose: np.ndarray):
    """Official `depthmap_to_absolute_camera_coordinates`: ((H, W, 3) world points, (H, W) bool depth > 0);
    `camera_pose` (4, 4) cam2world."""
    X_cam, valid = depthmap_to_camera_coordinates(depthmap, camera_intrinsics)
    R, t = camera_pose[:3, :3], camera_pose[:3, 3]
    X_world = np.einsum("ik, vuk -> vui", R, X_cam) + t[None, None, :]
    return X_world, valid


def check_raw_view(view: dict) -> None:
    """Raise CorruptSample naming the view when a raw view has a wrong shape, dtype or non-finite values."""
    name = view.get("name", "?")
    img, depth = view["img"], view["depthmap"]
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise CorruptSample(f"{name}: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if depth.shape != img.shape[:2]:
        raise CorruptSample(f"{name}: depth map shape {depth.shape} differs from the image's {img.shape[:2]}")
    if not np.isfinite(depth).all():
        raise CorruptSample(f"{name}: non-finite depth ({int((~np.isfinite(depth)).sum())} pixels)")
    K, P = view["camera_intrinsics"], view["camera_pose"]
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise CorruptSample(f"{name}: intrinsics must be a finite (3, 3) matrix, got {K.shape}")
    if P.shape != (4, 4) or not np.isfinite(P).all():
        raise CorruptSample(f"{name}: camera pose must be a finite (4, 4) matrix, got {P.shape}")


def transpose_to_landscape(view: dict) -> dict:
    """Official `transpose_to_landscape` (NHWC): a portrait view (true_shape W < H) gets its H and W axes swapped
    and the first two rows of its intrinsics swapped."""
    height, width = view["true_shape"]
    if width >= height:
        return view
    out = dict(view)
    for key in ("img", "depthmap", "valid_mask", "sky_mask", "pts3d"):
        out[key] = np.ascontiguousarray(np.swapaxes(view[key], 0, 1))
    out["camera_intrinsics"] = view["camera_intrinsics"][[1, 0, 2]]
    return out


# torchvision ColorJitter ranges: DUSt3R's `ColorJitter` transform (dust3r/datasets/utils/transforms.py) and CroCo's
# 'acolor' pair transform (croco/datasets/transforms.py, no hue)
DUST3R_JITTER = dict(brightness=(0.5, 1.5), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.1, 0.1))
CROCO_ACOLOR = dict(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=None)


def adjust_hue(img: PIL.Image.Image, hue_factor: float) -> PIL.Image.Image:
    """torchvision's PIL `adjust_hue`: shift the HSV hue channel by hue_factor * 255 (uint8 wrap-around)."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += np.int32(hue_factor * 255).astype(np.uint8)  # over/underflows on purpose, as torchvision
    return PIL.Image.merge("HSV", (PIL.Image.fromarray(np_h, "L"), s, v)).convert(img.mode)


def color_jitter(img, rng: np.random.Generator, brightness=(0.5, 1.5), contrast=(0.5, 1.5), saturation=(0.5, 1.5),
                 hue=(-0.1, 0.1)) -> np.ndarray:
    """torchvision `ColorJitter` on a PIL/uint8 image (its PIL code path: ImageEnhance Brightness, Contrast, Color
    and the HSV hue shift), the four operations in a random order with factors uniform in the given ranges (None:
    skipped). The draws come from `rng` (torch's generator cannot be reproduced); returns (H, W, 3) uint8."""
    img = img if isinstance(img, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(img))
    order = rng.permutation(4)
    factors = [None if r is None else float(rng.uniform(r[0], r[1])) for r in (brightness, contrast, saturation, hue)]
    ops = (PIL.ImageEnhance.Brightness, PIL.ImageEnhance.Contrast, PIL.ImageEnhance.Color)
    for k in order:
        if factors[k] is None:
            continue
        img = adjust_hue(img, factors[k]) if k == 3 else ops[k](img).enhance(factors[k])
    return np.asarray(img)


def make_view(raw: dict, resolution: tuple[int, int], rng: np.random.Generator, aug_crop: int = 0,
              jitter_rng: np.random.Generator | None = None) -> dict:
    """Raw view -> official training view (crop/resize to `resolution` (W, H), ImgNorm, pts3d, landscape).

    Draws from `rng` exactly what the official `_crop_resize_if_necessary` draws. With `jitter_rng`, applies the
    official `ColorJitter` transform (image only) with factors from that generator (a separate stream, as the
    official transform draws from torch's generator, not the dataset's). Raises CorruptSample on bad input.
    """
    check_raw_view(raw)
    image, depthmap, K = crop_resize_if_necessary(raw["img"], np.asarray(raw["depthmap"], np.float32),
                                                  np.asarray(raw["camera_intrinsics"], np.float32), resolution,
                                                  rng, aug_crop)
    image = np.asarray(image) if jitter_rng is None else color_jitter(image, jitter_rng, **DUST3R_JITTER)
    pose = np.asarray(raw["camera_pose"], np.float32)
    pts3d, valid = depthmap_to_absolute_camera_coordinates(depthmap, K, pose)
    view = {
        "img": img_norm(image),
        "depthmap": np.asarray(depthmap, np.float32),
        "camera_pose": pose,
        "camera_intrinsics": np.asarray(K, np.float32),
        "pts3d": pts3d.astype(np.float32),
        "valid_mask": valid & np.isfinite(pts3d).all(axis=-1),
        "sky_mask": depthmap < 0,
        "true_shape": np.int32(image.shape[:2]),
        "is_metric_scale": np.bool_(raw.get("is_metric_scale", False)),
    }
    return transpose_to_landscape(view)


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator, name: str = "?") -> np.ndarray:
    """torchvision `RandomCrop(size)` (CroCo's `RandomCropPair`, one independent crop per image): top-left corner
    uniform over the valid positions."""
    H, W = img.shape[:2]
    if H < size or W < size:
        raise CorruptSample(f"{name}: image {H}x{W} is smaller than the CroCo crop {size}")
    i = int(rng.integers(0, H - size + 1))
    j = int(rng.integers(0, W - size + 1))
    return img[i:i + size, j:j + size]
