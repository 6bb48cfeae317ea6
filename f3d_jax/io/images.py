"""Image loading for DUSt3R/MASt3R: the equivalent of `dust3r.utils.image.load_images`.

Every decision that changes pixels follows the official loader: PIL decoding, EXIF orientation,
RGB conversion (alpha dropped, not composited), the resize rule (short side to 224 then a centre
square at `size == 224`; long side to `size` then a crop to patch multiples otherwise), PIL's
LANCZOS filter when shrinking and BICUBIC otherwise, and the 4:3 crop of square images. The output
is channel-last (NHWC), unlike the official NCHW tensors, and stays in host memory (numpy): the
inference engine decides when to move it to a device.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import PIL.Image
from PIL.ImageOps import exif_transpose

try:  # same optional HEIC support as the official loader
    from pillow_heif import register_heif_opener  # type: ignore[import-not-found]

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:
    HEIF_SUPPORTED = False

# Lower-case suffixes the official loader accepts; anything else is skipped (with a warning here).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png") + (
    (".heic", ".heif") if HEIF_SUPPORTED else ()
)

ImageSource: TypeAlias = str | PathLike | np.ndarray | PIL.Image.Image
ImageDict: TypeAlias = dict[str, Any]


class ImageLoadError(ValueError):
    """An image could not be found, decoded or converted.

    The message names the image (its path, or `images[k]` for an in-memory entry) and the problem.
    """

    def __init__(self, source: str | PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class SkippedImageWarning(UserWarning):
    """A file was skipped because its extension is not one the official loader reads."""


class ShapeWarning(UserWarning):
    """A crop produced a side that is not a multiple of the patch size (official behaviour)."""


def resize_long_edge(img: PIL.Image.Image, long_edge_size: int) -> PIL.Image.Image:
    """Resize so that the longer side becomes `long_edge_size` (official `_resize_pil_image`).

    Each side becomes `round(side * long_edge_size / max(W, H))` (Python's round, half to even).
    LANCZOS when the image shrinks, BICUBIC when it grows or keeps its size.
    """
    longest = max(img.size)
    resample = PIL.Image.Resampling.LANCZOS if longest > long_edge_size else PIL.Image.Resampling.BICUBIC
    new_size = tuple(int(round(side * long_edge_size / longest)) for side in img.size)
    return img.resize(new_size, resample)


def _crop_box(w: int, h: int, size: int, square_ok: bool, patch_size: int) -> tuple:
    """The crop box (left, top, right, bottom) of the official rule on a resized (w, h) image."""
    cx, cy = w // 2, h // 2
    if size == 224:
        half = min(cx, cy)
        return (cx - half, cy - half, cx + half, cy + half)
    # The official code hard-codes p = 16 (`((2 * cx) // 16) * 8`). For an odd p the halves can
    # be fractional; PIL's crop rounds each box coordinate (half to even), as it would upstream.
    halfw = ((2 * cx) // patch_size) * patch_size / 2
    halfh = ((2 * cy) // patch_size) * patch_size / 2
    if patch_size % 2 == 0:
        halfw, halfh = int(halfw), int(halfh)
    if not square_ok and w == h:
        halfh = 3 * halfw / 4
        if halfh == int(halfh):
            halfh = int(halfh)
    return (cx - halfw, cy - halfh, cx + halfw, cy + halfh)


def _resize_crop_affine(
    img: PIL.Image.Image, size: int, square_ok: bool, patch_size: int
) -> tuple[PIL.Image.Image, np.ndarray]:
    """`resize_and_crop` plus the (2, 3) float64 affine mapping output pixels to input pixels.

    Pixel centres at integers on both sides. PIL's resize maps output pixel edges onto input edges
    (output centre `u + 0.5` sits at input `(u + 0.5) * w1 / w`), and the crop shifts by its
    rounded left/top corner `(l, t)`: `u1 = (u + l + 0.5) * w1 / w - 0.5`, likewise for rows.
    """
    w1, h1 = img.size
    if size == 224:
        img = resize_long_edge(img, round(size * max(w1 / h1, h1 / w1)))
    else:
        img = resize_long_edge(img, size)
    w, h = img.size
    box = _crop_box(w, h, size, square_ok, patch_size)
    left, top = round(box[0]), round(box[1])  # what PIL's crop does with a fractional box
    sx, sy = w1 / w, h1 / h
    to_orig = np.array([[sx, 0.0, (left + 0.5) * sx - 0.5], [0.0, sy, (top + 0.5) * sy - 0.5]], np.float64)
    return img.crop(box), to_orig


def resize_and_crop(
    img: PIL.Image.Image, size: int, square_ok: bool = False, patch_size: int = 16
) -> PIL.Image.Image:
    """Apply the official resize-then-crop rule to an RGB PIL image.

    * `size == 224`: the short side becomes 224 (long side `round(224 * aspect)`), then a centred
      square of side `2 * min(W // 2, H // 2)` is kept.
    * otherwise: the long side becomes `size`, then a crop centred on `(cx, cy) = (W // 2, H // 2)`
      keeps `((2 * cx) // p) * p` columns and `((2 * cy) // p) * p` rows (p = `patch_size`). A
      square resized image with `square_ok=False` keeps `3/4` of that width as its height (4:3).

    Pitfall kept from the official code: for square inputs with `square_ok=False`, the height is a
    multiple of `patch_size` only when `size` is a multiple of `4 * patch_size` (64 for p = 16);
    otherwise a `ShapeWarning` is emitted and the numbers are left as the official loader makes
    them (the network will reject that shape).

    Args:
        img: an RGB image, EXIF orientation already applied.
        size: 224 (short-side rule) or the long-side target in pixels.
        square_ok: keep square images square instead of cropping them to 4:3.
        patch_size: the crop makes width and height multiples of it (official: 16).

    Returns:
        The cropped PIL image.
    """
    return _resize_crop_affine(img, size, square_ok, patch_size)[0]


def _to_array(img: PIL.Image.Image) -> np.ndarray:
    """RGB PIL image -> (1, H, W, 3) float32 in [-1, 1], bit-identical to ToTensor + Normalize(0.5, 0.5)."""
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(0.5)) / np.float32(0.5))[None]


def _open_path(path: Path) -> PIL.Image.Image:
    """Decode a file fully (EXIF orientation applied, RGB), or raise ImageLoadError naming it."""
    if not path.exists():
        raise ImageLoadError(path, "no such file")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes), not an image")
    try:
        with PIL.Image.open(path) as raw:
            raw.load()  # PIL decodes lazily: force it so corrupt data fails here, naming the file
            return exif_transpose(raw).convert("RGB")
    except PIL.UnidentifiedImageError:
        raise ImageLoadError(path, "not an image PIL can identify (corrupt or wrong format)") from None
    except Exception as e:  # truncated data, bad EXIF, decompression bomb, ...
        raise ImageLoadError(path, f"could not decode image ({type(e).__name__}: {e})") from e


def _from_memory(obj: np.ndarray | PIL.Image.Image, name: str) -> PIL.Image.Image:
    """In-memory image -> RGB PIL image. Arrays: (H, W), (H, W, 1|3|4) uint8, RGB(A) order."""
    if isinstance(obj, PIL.Image.Image):
        try:
            return exif_transpose(obj).convert("RGB")
        except Exception as e:
            raise ImageLoadError(name, f"could not convert PIL image to RGB ({type(e).__name__}: {e})") from e
    arr = obj
    if arr.dtype != np.uint8:
        raise ImageLoadError(name, f"array images must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ImageLoadError(name, f"array images must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(name, f"empty image of shape {arr.shape}")
    return PIL.Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _entries(paths_or_folder: Any, verbose: bool) -> list[tuple[str, Any]]:
    """Normalise the input to a list of (display name, source) in the order they are loaded."""
    if isinstance(paths_or_folder, (str, PathLike)):
        p = Path(paths_or_folder)
        if p.is_dir():
            if verbose:
                print(f">> Loading images from {paths_or_folder}")
            # Plain sorted names, like the official `sorted(os.listdir(folder))`.
            return [(name, p / name) for name in sorted(os.listdir(p))]
        if not p.exists():
            raise ImageLoadError(p, "no such file or folder")
        items: list[Any] = [paths_or_folder]
    elif isinstance(paths_or_folder, np.ndarray) and paths_or_folder.ndim == 4:
        items = list(paths_or_folder)  # a stack (N, H, W, C) of images
    elif isinstance(paths_or_folder, (np.ndarray, PIL.Image.Image)):
        items = [paths_or_folder]
    elif isinstance(paths_or_folder, Sequence):
        items = list(paths_or_folder)
    else:
        raise ImageLoadError(
            None,
            f"load_images expects a folder, a path, an image or a list of them; got {type(paths_or_folder).__name__}",
        )
    if verbose:
        print(f">> Loading a list of {len(items)} images")
    out: list[tuple[str, Any]] = []
    for k, item in enumerate(items):
        if isinstance(item, (str, PathLike)):
            out.append((str(item), Path(item)))
        elif isinstance(item, (np.ndarray, PIL.Image.Image)):
            out.append((f"images[{k}]", item))
        else:
            raise ImageLoadError(
                f"images[{k}]", f"expected a path, a uint8 array or a PIL image, got {type(item).__name__}"
            )
    return out


def load_images(
    paths_or_folder: ImageSource | Sequence[ImageSource],
    size: int,
    square_ok: bool = False,
    patch_size: int = 16,
    verbose: bool = True,
) -> list[ImageDict]:
    """Open and convert images to DUSt3R/MASt3R inputs, like the official `load_images`.

    Args:
        paths_or_folder: a folder (its files read in sorted name order), one path, or a list of
            paths, uint8 arrays `(H, W[, 3|4])` (RGB(A)) and PIL images, freely mixed. Files whose
            extension is not jpg/jpeg/png (heic/heif with pillow-heif installed) are skipped with a
            `SkippedImageWarning`, like the official loader skips them (silently there).
        size: 224 (short side to 224, centre square crop) or the long-side size (e.g. 512).
        square_ok: keep square images square; by default they are cropped to 4:3.
        patch_size: crops keep width and height multiples of it (16 for every released model).
        verbose: print the official progress lines.

    Returns:
        One dict per loaded image, in order:
          `img`: (1, H, W, 3) float32 in [-1, 1], NHWC (official: NCHW);
          `true_shape`: (1, 2) int32, (H, W);
          `idx`: int, position in the returned list;
          `instance`: str(idx);
          `orig_shape`: (1, 2) int32, (H1, W1) of the source after EXIF orientation;
          `to_orig`: (1, 2, 3) float64 affine A with `[u1, v1] = A @ [u, v, 1]`: a pixel (u, v) of
              `img` (centres at integers) in the source image's pixels (centres at integers),
              undoing the resize (per-axis factors W1 / w, H1 / h of the resized image) and the crop;
          `path`: str, the file path ('' for in-memory images).

    Raises:
        ImageLoadError: a missing path, a file that cannot be decoded (zero bytes, corrupt, not an
            image), a bad in-memory array, or no image at all. The message names the file.
        ValueError: `size` or `patch_size` is not a positive integer.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"load_images: size must be a positive int, got {size!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size <= 0:
        raise ValueError(f"load_images: patch_size must be a positive int, got {patch_size!r}")
    size, patch_size = int(size), int(patch_size)

    entries = _entries(paths_or_folder, verbose)
    imgs: list[ImageDict] = []
    for name, src in entries:
        if isinstance(src, Path):
            if not src.exists():
                raise ImageLoadError(src, "no such file")
            if not src.name.lower().endswith(SUPPORTED_EXTENSIONS):
                what = "folder" if src.is_dir() else "file"
                warnings.warn(
                    f"load_images: skipping {what} {src} (supported extensions: {', '.join(SUPPORTED_EXTENSIONS)})",
                    SkippedImageWarning,
                    stacklevel=2,
                )
                continue
            pil = _open_path(src)
        else:
            pil = _from_memory(src, name)
        w1, h1 = pil.size
        out, to_orig = _resize_crop_affine(pil, size, square_ok, patch_size)
        w2, h2 = out.size
        if w2 == 0 or h2 == 0:
            raise ImageLoadError(name, f"size={size} with patch_size={patch_size} leaves an empty crop ({w1}x{h1} input)")
        if w2 % patch_size or h2 % patch_size:
            warnings.warn(
                f"load_images: {name} becomes {w2}x{h2}, not a multiple of patch_size={patch_size} "
                f"(official behaviour for square inputs when size is not a multiple of {4 * patch_size}; "
                "pass square_ok=True or another size)",
                ShapeWarning,
                stacklevel=2,
            )
        if verbose:
            print(f" - adding {name} with resolution {w1}x{h1} --> {w2}x{h2}")
        k = len(imgs)
        imgs.append(
            dict(
                img=_to_array(out),
                true_shape=np.array([[h2, w2]], dtype=np.int32),
                idx=k,
                instance=str(k),
                orig_shape=np.array([[h1, w1]], dtype=np.int32),
                to_orig=to_orig[None],
                path=str(src) if isinstance(src, Path) else "",
            )
        )
    if not imgs:
        where = str(paths_or_folder) if isinstance(paths_or_folder, (str, PathLike)) else "the given list"
        raise ImageLoadError(where, f"no images found (supported extensions: {', '.join(SUPPORTED_EXTENSIONS)})")
    if verbose:
        print(f" (Found {len(imgs)} images)")
    return imgs
