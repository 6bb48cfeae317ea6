"""Per-image files: the source images (for COLMAP and nerfstudio) and one `.npz` of arrays per view."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
from PIL.ImageOps import exif_transpose

from f3d_jax.export.reconstruction import Reconstruction
from f3d_jax.io.atomic import atomic_open

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def _source_ok(path: str, size: tuple[int, int]) -> bool:
    """The source file exists, has no EXIF rotation (COLMAP ignores EXIF) and the recorded size."""
    if not path or not os.path.isfile(path):
        return False
    try:
        with PIL.Image.open(path) as im:
            return im.getexif().get(0x0112, 1) == 1 and im.size == size
    except Exception:
        return False


def source_image(recon: Reconstruction, k: int) -> PIL.Image.Image:
    """View k at its SOURCE resolution: the source file (EXIF orientation applied) when it is readable and has the
    recorded size, else the working image resized and placed where `to_orig` puts it on a black canvas of the
    source size (an approximation to within half a source pixel, outside the crop black)."""
    W1, H1 = (int(x) for x in recon.orig_sizes[k])
    path = recon.paths[k] if recon.paths else ""
    if path and os.path.isfile(path):
        try:
            with PIL.Image.open(path) as im:
                im = exif_transpose(im).convert("RGB")
            if im.size == (W1, H1):
                return im
        except Exception:
            pass
    H, W = recon.hw
    A = recon.to_orig[k]
    left, top = A[0, 2] - 0.5 * A[0, 0] + 0.5, A[1, 2] - 0.5 * A[1, 1] + 0.5  # source position of the crop's edge
    size = (max(1, round(W * A[0, 0])), max(1, round(H * A[1, 1])))
    canvas = PIL.Image.new("RGB", (W1, H1))
    canvas.paste(PIL.Image.fromarray(recon.images[k]).resize(size, PIL.Image.Resampling.BICUBIC),
                 (round(left), round(top)))
    return canvas


def write_images(recon: Reconstruction, out_dir: str | os.PathLike) -> Path:
    """Writes every view's source-resolution image as `out_dir/<name>` (a byte copy of the source file when it
    can be used as is, see `source_image`), atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(recon.names):
        dst = out / name
        src = recon.paths[k] if recon.paths else ""
        if _source_ok(src, tuple(int(x) for x in recon.orig_sizes[k])):
            with open(src, "rb") as fi, atomic_open(dst, "wb") as fo:
                shutil.copyfileobj(fi, fo)
            continue
        fmt = _FORMATS.get(Path(name).suffix.lower(), "PNG")
        with atomic_open(dst, "wb") as fo:
            source_image(recon, k).save(fo, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out


def view_file_names(recon: Reconstruction) -> list[str]:
    """`<stem>.npz` per view (`<index>_<stem>.npz` when two names share a stem)."""
    stems = [Path(n).stem for n in recon.names]
    if len(set(stems)) == len(stems):
        return [f"{s}.npz" for s in stems]
    return [f"{k:03d}_{s}.npz" for k, s in enumerate(stems)]


def write_npz_views(recon: Reconstruction, out_dir: str | os.PathLike, mask: np.ndarray | None = None) -> Path:
    """One `.npz` per view in `out_dir`: image (H, W, 3) uint8, depth (H, W) float32, conf (H, W) float32,
    mask (H, W) bool, K (3, 3) working resolution, cam2world (4, 4) OpenCV axes, K_orig (3, 3) source resolution
    (pixel centres at integers), to_orig (2, 3), orig_size (2,) = (W1, H1), name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask = recon.mask if mask is None else mask
    K_orig = recon.orig_intrinsics()
    for k, fname in enumerate(view_file_names(recon)):
        with atomic_open(out / fname, "wb") as fh:
            np.savez(fh, image=recon.images[k], depth=recon.depth[k].astype(np.float32),
                     conf=recon.conf[k].astype(np.float32), mask=mask[k], K=recon.intrinsics[k],
                     cam2world=recon.cam2world[k], K_orig=K_orig[k], to_orig=recon.to_orig[k],
                     orig_size=recon.orig_sizes[k], name=np.array(recon.names[k]))
    return out
