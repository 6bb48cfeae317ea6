"""Input normalisation and the benchmark file formats of stereo and optical flow.

* `img_to_tensor`: croco/stereoflow/datasets_stereo.py:img_to_tensor (ToTensor + ImageNet Normalize), NHWC.
* `.pfm` (disparity): `writePFM` of the official code (little-endian, negative scale, rows bottom-up),
  greyscale `Pf`.
* `.flo` (flow): the Middlebury format (`PIEH` tag = 202021.25, int32 width and height, then (H, W, 2)
  float32 x, y), as the official `writeFlowFile`.

Every writer goes through a temporary file renamed into place (`f3d_jax.io.atomic`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from f3d_jax.io.atomic import atomic_open

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FLO_TAG = b"PIEH"  # float32 202021.25
_FLO_MAX_SIDE = 1 << 16


def img_to_tensor(img: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB -> float32 (..., H, W, 3): x / 255, then (x - mean) / std (ImageNet), in float32
    as torchvision's ToTensor + Normalize."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.shape[-1:] != (3,):
        raise ValueError(f"img_to_tensor expects uint8 RGB images (..., H, W, 3), got {img.dtype} {img.shape}")
    x = img.astype(np.float32) / np.float32(255.0)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def write_pfm(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Writes a (H, W) or (H, W, 1) float32 map (disparity) as a greyscale little-endian PFM. Returns the path."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"{path}: a PFM disparity map should be (H, W), got shape {image.shape}")
    data = np.ascontiguousarray(np.flipud(image.astype("<f4")))
    with atomic_open(path, "wb") as f:
        f.write(b"Pf\n")
        f.write(b"%d %d\n" % (image.shape[1], image.shape[0]))
        f.write(b"%f\n" % -1.0)
        f.write(data.tobytes())
    return Path(path)


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    """Reads a PFM file: (H, W) float32 (greyscale) or (H, W, 3) (colour)."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.readline().rstrip()
        if header not in (b"PF", b"Pf"):
            raise ValueError(f"{path}: not a PFM file (header {header[:8]!r})")
        dims = f.readline().split()
        try:
            w, h = int(dims[0]), int(dims[1])
            scale = float(f.readline().strip())
        except (ValueError, IndexError):
            raise ValueError(f"{path}: malformed PFM header") from None
        ch = 3 if header == b"PF" else 1
        dtype = "<f4" if scale < 0 else ">f4"
        data = np.frombuffer(f.read(), dtype=dtype)
    if w <= 0 or h <= 0 or data.size != w * h * ch:
        raise ValueError(f"{path}: PFM of {w}x{h}x{ch} holds {data.size} values")
    data = data.reshape((h, w, ch) if ch == 3 else (h, w))
    return np.flipud(data).astype(np.float32)


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> Path:
    """Writes a (H, W, 2) flow (x, y) as a Middlebury `.flo` file. Returns the path."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"{path}: a .flo flow should be (H, W, 2), got shape {flow.shape}")
    with atomic_open(path, "wb") as f:
        f.write(FLO_TAG)
        f.write(np.array([flow.shape[1], flow.shape[0]], "<i4").tobytes())
        f.write(np.ascontiguousarray(flow.astype("<f4")).tobytes())
    return Path(path)


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Reads a Middlebury `.flo` file: (H, W, 2) float32."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:4] != FLO_TAG or len(raw) < 12:
        raise ValueError(f"{path}: not a .flo file (no PIEH tag)")
    w, h = (int(v) for v in np.frombuffer(raw[4:12], "<i4"))
    if not (0 < w < _FLO_MAX_SIDE and 0 < h < _FLO_MAX_SIDE) or len(raw) != 12 + 8 * w * h:
        raise ValueError(f"{path}: .flo header says {w}x{h}, the file holds {len(raw) - 12} bytes of data")
    return np.frombuffer(raw[12:], "<f4").reshape(h, w, 2).astype(np.float32)
