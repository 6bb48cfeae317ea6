"""`Reconstruction`: everything the exporters need, as host numpy arrays, saved to and loaded from one `.npz`.

Conventions: see the package docstring (`f3d_jax.export`).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from f3d_jax.io.atomic import atomic_open

FORMAT_VERSION = 1
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".heic", ".heif")


class ReconstructionError(ValueError):
    """A Reconstruction (or the file holding it) is inconsistent; the message names the file or field."""


@dataclasses.dataclass(frozen=True)
class Tracks:
    """Sparse multi-view tracks: 3D points and the pixels that observe them.

    Attributes:
      xyz: (P, 3) float64 world points.
      rgb: (P, 3) uint8 colours.
      obs_point: (M,) int64 index into `xyz` of each observation.
      obs_view: (M,) int64 view (image) index of each observation.
      obs_uv: (M, 2) float64 WORKING-resolution pixel (u, v) of each observation (centres at integers).
    """

    xyz: np.ndarray
    rgb: np.ndarray
    obs_point: np.ndarray
    obs_view: np.ndarray
    obs_uv: np.ndarray

    @property
    def n_points(self) -> int:
        return len(self.xyz)

    def track_lengths(self) -> np.ndarray:
        """(P,) int number of observations of each point."""
        return np.bincount(self.obs_point, minlength=self.n_points)


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """A multi-view reconstruction (host numpy arrays; every per-view array at WORKING resolution).

    Attributes:
      images: (N, H, W, 3) uint8 RGB, the network's input images.
      cam2world: (N, 4, 4) float cam-to-world poses, OpenCV camera axes (x right, y down, z forward).
      intrinsics: (N, 3, 3) float working-resolution K (pixel centres at integers).
      depth: (N, H, W) float32 camera-frame z.
      pts3d: (N, H, W, 3) float32 world points of every pixel.
      conf: (N, H, W) float32 confidence.
      mask: (N, H, W) bool, the pixels to export (confidence threshold etc. applied).
      names: N unique image file names (basenames, no folder), used for the exported image files.
      orig_sizes: (N, 2) int (W1, H1) of the source images.
      to_orig: (N, 2, 3) float64 affine: [u1, v1] = to_orig[k] @ [u, v, 1] maps a working pixel of view k to a
        source pixel (centres at integers on both sides); see `f3d_jax.io.load_images`.
      paths: N source file paths ('' for in-memory images), or () when unknown.
      tracks: optional sparse tracks (e.g. from matching); None for dense results, whose tracks the COLMAP
        exporter builds from the pointmaps.
    """

    images: np.ndarray
    cam2world: np.ndarray
    intrinsics: np.ndarray
    depth: np.ndarray
    pts3d: np.ndarray
    conf: np.ndarray
    mask: np.ndarray
    names: tuple[str, ...]
    orig_sizes: np.ndarray
    to_orig: np.ndarray
    paths: tuple[str, ...] = ()
    tracks: Tracks | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        problems = _problems(self)
        if problems:
            raise ReconstructionError("Reconstruction: " + "; ".join(problems))

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def orig_intrinsics(self) -> np.ndarray:
        """(N, 3, 3) float64 K at the source images' resolution (pixel centres at integers): to_orig @ K."""
        A = np.zeros((self.n, 3, 3))
        A[:, :2] = self.to_orig
        A[:, 2, 2] = 1.0
        return A @ self.intrinsics.astype(np.float64)

    def replace(self, **changes: Any) -> Reconstruction:
        return dataclasses.replace(self, **changes)

    # ---- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Writes one `.npz` (uncompressed) atomically and returns its absolute path."""
        path = Path(os.path.abspath(os.fspath(path)))
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FORMAT_VERSION),
            "names": np.array(self.names, dtype=np.str_),
            "paths": np.array(self.paths, dtype=np.str_),
        }
        for f in _ARRAY_FIELDS:
            arrays[f] = getattr(self, f)
        if self.tracks is not None:
            for f in dataclasses.fields(Tracks):
                arrays[f"tracks_{f.name}"] = getattr(self.tracks, f.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reconstruction:
        """Reads a file written by `save`; raises ReconstructionError naming the file if it is missing or bad."""
        path = Path(path)
        if not path.is_file():
            raise ReconstructionError(f"{path}: no such file (expected a reconstruction .npz)")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise ReconstructionError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
        missing = [k for k in ("format_version", "names", *_ARRAY_FIELDS) if k not in data]
        if missing:
            raise ReconstructionError(f"{path}: not a reconstruction file (missing {', '.join(missing)})")
        version = int(data["format_version"])
        if version != FORMAT_VERSION:
            raise ReconstructionError(f"{path}: format version {version}, this f3d_jax reads {FORMAT_VERSION}")
        tracks = None
        if "tracks_xyz" in data:
            try:
                tracks = Tracks(**{f.name: data[f"tracks_{f.name}"] for f in dataclasses.fields(Tracks)})
            except KeyError as e:
                raise ReconstructionError(f"{path}: incomplete tracks (missing {e.args[0]})") from None
        try:
            return cls(
                names=tuple(data["names"].tolist()),
                paths=tuple(data["paths"].tolist()) if "paths" in data else (),
                tracks=tracks,
                **{f: data[f] for f in _ARRAY_FIELDS},
            )
        except ReconstructionError as e:
            raise ReconstructionError(f"{path}: {e}") from None


_ARRAY_FIELDS = ("images", "cam2world", "intrinsics", "depth", "pts3d", "conf", "mask", "orig_sizes", "to_orig")


def _problems(r: Reconstruction) -> list[str]:
    """Every inconsistency of the fields (empty list if none)."""
    out: list[str] = []
    for f in _ARRAY_FIELDS:
        if not isinstance(getattr(r, f), np.ndarray):
            out.append(f"{f} must be a numpy array, got {type(getattr(r, f)).__name__}")
    if out:
        return out
    im = r.images
    if im.ndim != 4 or im.shape[-1] != 3 or im.dtype != np.uint8:
        return [f"images must be (N, H, W, 3) uint8, got {im.shape} {im.dtype}"]
    N, H, W = im.shape[:3]
    want = {
        "cam2world": (N, 4, 4), "intrinsics": (N, 3, 3), "depth": (N, H, W), "pts3d": (N, H, W, 3),
        "conf": (N, H, W), "mask": (N, H, W), "orig_sizes": (N, 2), "to_orig": (N, 2, 3),
    }
    for f, shape in want.items():
        a = getattr(r, f)
        if a.shape != shape:
            out.append(f"{f} must have shape {shape} (images are {im.shape}), got {a.shape}")
        elif f == "mask" and a.dtype != np.bool_:
            out.append(f"mask must be bool, got {a.dtype}")
        elif f == "orig_sizes" and not np.issubdtype(a.dtype, np.integer):
            out.append(f"orig_sizes must be integers, got {a.dtype}")
        elif f not in ("mask", "orig_sizes") and not np.issubdtype(a.dtype, np.floating):
            out.append(f"{f} must be floating point, got {a.dtype}")
    if out:
        return out
    for f in ("cam2world", "intrinsics", "to_orig"):
        if not np.isfinite(getattr(r, f)).all():
            out.append(f"{f} has non-finite values")
    if (r.orig_sizes <= 0).any():
        out.append("orig_sizes must be positive")
    if len(r.names) != N:
        out.append(f"names: {len(r.names)} names for {N} images")
    elif len(set(r.names)) != N:
        out.append(f"names must be unique, got {list(r.names)}")
    else:
        for n in r.names:
            if not n or "/" in n or "\\" in n or any(c.isspace() for c in n) or n in (".", ".."):
                out.append(f"names: {n!r} is not a plain file name (no folders, no white space)")
    if r.paths and len(r.paths) != N:
        out.append(f"paths: {len(r.paths)} paths for {N} images")
    if r.tracks is not None:
        t = r.tracks
        P, M = len(t.xyz), len(t.obs_point)
        if t.xyz.shape != (P, 3) or t.rgb.shape != (P, 3) or t.obs_view.shape != (M,) or t.obs_uv.shape != (M, 2):
            out.append("tracks: inconsistent shapes")
        elif M and (t.obs_point.min() < 0 or t.obs_point.max() >= P or t.obs_view.min() < 0 or t.obs_view.max() >= N):
            out.append("tracks: observation indices out of range")
    return out


def unique_names(raw: Sequence[str]) -> tuple[str, ...]:
    """Plain, unique image file names: white space becomes '_', a missing image suffix becomes '.png', and
    duplicates get their index as a prefix (`003_a.jpg`)."""
    clean = []
    for k, n in enumerate(raw):
        n = "".join("_" if c.isspace() else c for c in os.path.basename(str(n).replace("\\", "/")))
        if not n or n in (".", ".."):
            n = f"image_{k:03d}.png"
        if not n.lower().endswith(_IMAGE_SUFFIXES):
            n += ".png"
        clean.append(n)
    counts: dict[str, int] = {}
    for n in clean:
        counts[n] = counts.get(n, 0) + 1
    return tuple(f"{k:03d}_{n}" if counts[n] > 1 else n for k, n in enumerate(clean))


def clean_confidence(conf: np.ndarray, K: np.ndarray, cam2world: np.ndarray, depth: np.ndarray,
                     pts3d: np.ndarray, tol: float = 0.001, bad_conf: float = 0.0) -> np.ndarray:
    """The official `clean_pointcloud` (DUSt3R's `clean_depth`): a point of view i that lies in front of view j's
    depth map (by more than `tol`, relative) where j is more confident gets confidence `bad_conf`.

    Views are visited in order and confidences updated in place, as upstream (the result depends on the order).

    Args:
      conf: (N, H, W) confidences. K: (N, 3, 3). cam2world: (N, 4, 4). depth: (N, H, W). pts3d: (N, H, W, 3).
    Returns:
      (N, H, W) float32 cleaned confidences (a copy).
    """
    res = np.array(conf, np.float32, copy=True)
    N, H, W = res.shape
    w2c = np.linalg.inv(cam2world.astype(np.float64))
    for i in range(N):
        X = pts3d[i].reshape(-1, 3).astype(np.float64)
        for j in range(N):
            if i == j:
                continue
            Xc = X @ w2c[j, :3, :3].T + w2c[j, :3, 3]
            z = Xc[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = (Xc @ K[j].T.astype(np.float64))[:, :2] / z[:, None]
            inside = (z > 0) & np.isfinite(uv).all(1)
            u = np.where(inside, np.round(uv[:, 0]), -1).astype(np.int64)
            v = np.where(inside, np.round(uv[:, 1]), -1).astype(np.int64)
            inside &= (u >= 0) & (u < W) & (v >= 0) & (v < H)
            idx = np.flatnonzero(inside)
            ci, cj = res[i].reshape(-1), res[j].reshape(-1)
            jpix = v[idx] * W + u[idx]
            bad = (z[idx] < (1 - tol) * depth[j].reshape(-1)[jpix]) & (ci[idx] < cj[jpix])
            ci[idx[bad]] = np.minimum(ci[idx[bad]], bad_conf)
    return res


def images_to_uint8(imgs: Sequence[dict]) -> np.ndarray:
    """load_images dicts -> (N, H, W, 3) uint8 (round((x * 0.5 + 0.5) * 255) of the [-1, 1] floats)."""
    arr = np.concatenate([np.asarray(d["img"]) for d in imgs], axis=0)
    return np.clip(np.round((arr * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)


def reconstruction_from_alignment(result: Any, imgs: Sequence[dict], min_conf_thr: float = 3.0,
                                  clean_depth: bool = False, names: Sequence[str] | None = None) -> Reconstruction:
    """A Reconstruction from a dense alignment result and the `load_images` dicts it was computed from.

    Args:
      result: an `f3d_jax.align.AlignResult` (cam2world, focals, principal_points, depthmaps, pts3d, conf).
      imgs: the N dicts of `f3d_jax.load_images` (their `img`; `to_orig`, `orig_shape` and `path` when present,
        else identity provenance at working resolution).
      min_conf_thr: export the pixels whose confidence (the per-image max over edges, `result.conf`) exceeds it.
      clean_depth: first lower the confidence of points hidden behind a more confident view (official
        `clean_pointcloud`).
      names: image file names (default: the basenames of the dicts' paths, `image_000.png` for in-memory ones).
    """
    images = images_to_uint8(imgs)
    N, H, W = images.shape[:3]
    cam2world = np.asarray(result.cam2world, np.float64)
    K = np.asarray(result.intrinsics(), np.float64)
    depth = np.asarray(result.depthmaps, np.float32)
    pts3d = np.asarray(result.pts3d, np.float32)
    conf = np.asarray(result.conf, np.float32)
    if depth.shape != (N, H, W):
        raise ReconstructionError(f"reconstruction_from_alignment: {N} images of {H}x{W} but depth maps {depth.shape}")
    if clean_depth:
        conf = clean_confidence(conf, K, cam2world, depth, pts3d)
    mask = (conf > min_conf_thr) & np.isfinite(pts3d).all(-1) & (depth > 0)
    paths = tuple(str(d.get("path", "")) for d in imgs)
    if names is None:
        names = [os.path.basename(p) if p else f"image_{k:03d}.png" for k, p in enumerate(paths)]
    elif len(names) != N:
        raise ReconstructionError(f"reconstruction_from_alignment: {len(names)} names for {N} images")
    to_orig = np.stack([np.asarray(d["to_orig"], np.float64).reshape(2, 3) if "to_orig" in d
                        else np.array([[1.0, 0, 0], [0, 1.0, 0]]) for d in imgs])
    orig_sizes = np.array([np.asarray(d["orig_shape"]).reshape(2)[::-1] if "orig_shape" in d else (W, H)
                           for d in imgs], np.int64)
    return Reconstruction(images=images, cam2world=cam2world, intrinsics=K, depth=depth, pts3d=pts3d, conf=conf,
                          mask=mask, names=unique_names(names), orig_sizes=orig_sizes, to_orig=to_orig, paths=paths)
