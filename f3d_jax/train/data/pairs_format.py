"""On-disk format of training pairs, its writer (`write_pairs_dataset`) and its grain source (`PairsSource`).

Layout of a dataset folder:

    ROOT/pairs.json                     the index (below), written last: a folder without it is not a dataset
    ROOT/<scene>/<k:04d>.png            RGB image, 8 bits per channel (any PIL-readable file is accepted)
    ROOT/<scene>/<k:04d>.depth.npy      (H, W) float32 z-depth in the camera frame (<= 0: invalid; < 0: sky)
    ROOT/<scene>/<k:04d>.mask.png       optional (H, W) 8-bit valid mask (0: invalid); absent: valid = depth > 0

`pairs.json`:

    {"format": "f3d-jax/pairs", "version": 1,
     "scenes": [{"name": "scene0000", "is_metric_scale": true,
                 "views": [{"image": "scene0000/0000.png", "depth": "scene0000/0000.depth.npy",
                            "mask": "scene0000/0000.mask.png" or null,
                            "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   (OpenCV: pixel centres at integers)
                            "cam2world": [[...4...], [...], [...], [0, 0, 0, 1]]}, ...],
                 "pairs": [[0, 1], [1, 2], ...]}, ...]}

Paths are relative to ROOT. A training sample is one pair (view i, view j) of one scene. Where the mask marks a pixel
invalid its depth is set to 0 (as the official loaders do with their masks). Intrinsics and poses are stored as
JSON numbers (a float32 value survives the round trip exactly) and loaded as float32, like the official datasets.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import PIL.Image

from f3d_jax.train.data.views import CorruptSample

INDEX_NAME = "pairs.json"
FORMAT = "f3d-jax/pairs"
VERSION = 1


def _atomic_write(path: Path, write) -> None:
    """Write through `write(file_object)` to a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"scene name must be a plain folder name, got {name!r}")
    return name


def write_pairs_dataset(out_dir: str | os.PathLike, scenes: Iterable[dict], overwrite: bool = False) -> Path:
    """Write scenes in the on-disk pair format (module docstring); returns the index path.

    Args:
        out_dir: dataset folder (created).
        scenes: dicts with 'name' (folder name), 'views' (list of dicts: 'img' (H, W, 3) uint8, 'depthmap' (H, W)
            float32, 'camera_intrinsics' (3, 3), 'camera_pose' (4, 4) cam2world, optional 'valid_mask' (H, W) bool),
            optional 'pairs' (list of (i, j); default every i < j) and optional 'is_metric_scale' (default False).
        overwrite: replace an existing index (else refuse).

    Every file goes to a temporary name and is renamed; the index is written last.
    """
    root = Path(out_dir)
    index_path = root / INDEX_NAME
    if index_path.exists() and not overwrite:
        raise FileExistsError(f"{index_path} exists (pass overwrite=True to replace the dataset)")
    entries = []
    names = set()
    for s, scene in enumerate(scenes):
        name = _check_name(scene.get("name", f"scene{s:04d}"))
        if name in names:
            raise ValueError(f"duplicate scene name {name!r}")
        names.add(name)
        views = list(scene["views"])
        if len(views) < 2:
            raise ValueError(f"scene {name!r}: needs at least 2 views, got {len(views)}")
        pairs = scene.get("pairs")
        pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))] if pairs is None else pairs
        pairs = [[int(i), int(j)] for i, j in pairs]
        for i, j in pairs:
            if not (0 <= i < len(views) and 0 <= j < len(views)) or i == j:
                raise ValueError(f"scene {name!r}: bad pair ({i}, {j}) for {len(views)} views")
        view_entries = []
        for k, v in enumerate(views):
            img = np.asarray(v["img"])
            depth = np.asarray(v["depthmap"], np.float32)
            K = np.asarray(v["camera_intrinsics"], np.float32)
            P = np.asarray(v["camera_pose"], np.float32)
            where = f"scene {name!r} view {k}"
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"{where}: 'img' must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
            if depth.shape != img.shape[:2]:
                raise ValueError(f"{where}: 'depthmap' shape {depth.shape} differs from the image's {img.shape[:2]}")
            if K.shape != (3, 3) or P.shape != (4, 4):
                raise ValueError(f"{where}: intrinsics must be (3, 3) and camera_pose (4, 4), got {K.shape} {P.shape}")
            stem = f"{name}/{k:04d}"
            _atomic_write(root / f"{stem}.png", lambda f, img=img: PIL.Image.fromarray(img).save(f, format="PNG"))
            _atomic_write(root / f"{stem}.depth.npy", lambda f, d=depth: np.save(f, d))
            mask_rel = None
            if v.get("valid_mask") is not None:
                mask = np.asarray(v["valid_mask"], bool)
                if mask.shape != img.shape[:2]:
                    raise ValueError(f"{where}: 'valid_mask' shape {mask.shape} differs from the image's")
                mask_rel = f"{stem}.mask.png"
                _atomic_write(root / mask_rel, lambda f, m=mask: PIL.Image.fromarray(m.astype(np.uint8) * 255)
                              .save(f, format="PNG"))
            view_entries.append({"image": f"{stem}.png", "depth": f"{stem}.depth.npy", "mask": mask_rel,
                                 "intrinsics": K.tolist(), "cam2world": P.tolist()})
        entries.append({"name": name, "is_metric_scale": bool(scene.get("is_metric_scale", False)),
                        "views": view_entries, "pairs": pairs})
    index = {"format": FORMAT, "version": VERSION, "scenes": entries}
    _atomic_write(index_path, lambda f: f.write(json.dumps(index, indent=1).encode()))
    return index_path


def _read_index(root: Path) -> dict:
    path = root / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pair index (is {root} a dataset written by write_pairs_dataset?)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path}: not an f3d-jax pair index (format {index.get('format')!r}, want {FORMAT!r})"
                         if isinstance(index, dict) else f"{path}: not an f3d-jax pair index")
    if index.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported version {index.get('version')!r} (this reader knows {VERSION})")
    for s, scene in enumerate(index.get("scenes", [])):
        for key in ("views", "pairs"):
            if not isinstance(scene.get(key), list):
                raise ValueError(f"{path}: scene {s} has no '{key}' list")
        for k, v in enumerate(scene["views"]):
            missing = {"image", "depth", "intrinsics", "cam2world"} - set(v)
            if missing:
                raise ValueError(f"{path}: scene {s} view {k} lacks {sorted(missing)}")
        for p in scene["pairs"]:
            if (len(p) != 2 or not all(isinstance(i, int) and 0 <= i < len(scene["views"]) for i in p)):
                raise ValueError(f"{path}: scene {s} has a bad pair {p!r}")
    return index


class PairsSource:
    """grain random-access source (`__len__`, `__getitem__`) of a dataset folder in the pair format.

    `source[i]` -> (raw view 1, raw view 2) (see `f3d_jax.train.data.views`); a file that cannot be read or has a wrong
    shape raises `CorruptSample` naming the file (the pipeline skips and counts it). Use it with
    `grain.MapDataset.source(PairsSource(root))` or `make_pair_dataset`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index = _read_index(self.root)
        self._scenes = index["scenes"]
        # flat (scene, i, j) table: picklable and small, so grain workers get it cheaply
        self._pairs = np.array([(s, i, j) for s, sc in enumerate(self._scenes) for i, j in sc["pairs"]],
                               np.int64).reshape(-1, 3)
        if len(self._pairs) == 0:
            raise ValueError(f"{self.root / INDEX_NAME}: the index lists no pairs")

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"PairsSource({str(self.root)!r}, {len(self)} pairs, {len(self._scenes)} scenes)"

    def _load_view(self, scene: dict, k: int, images_only: bool) -> dict:
        v = scene["views"][k]
        name = f"{scene.get('name', '?')}/{k}"
        img_path = self.root / v["image"]
        try:
            with PIL.Image.open(img_path) as im:
                img = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise CorruptSample(f"{img_path}: unreadable image ({e})") from None
        view = {"img": img, "name": name}
        if images_only:
            return view
        depth_path = self.root / v["depth"]
        try:
            depth = np.load(depth_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CorruptSample(f"{depth_path}: unreadable depth map ({e})") from None
        if depth.shape != img.shape[:2]:
            raise CorruptSample(f"{depth_path}: depth shape {depth.shape} differs from the image's {img.shape[:2]}")
        depth = depth.astype(np.float32)
        if v.get("mask"):
            mask_path = self.root / v["mask"]
            try:
                with PIL.Image.open(mask_path) as im:
                    mask = np.asarray(im) != 0
            except (OSError, ValueError) as e:
                raise CorruptSample(f"{mask_path}: unreadable mask ({e})") from None
            if mask.shape != depth.shape:
                raise CorruptSample(f"{mask_path}: mask shape {mask.shape} differs from the depth's {depth.shape}")
            depth = np.where(mask, depth, np.float32(0))
        try:
            K = np.array(v["intrinsics"], np.float32)
            P = np.array(v["cam2world"], np.float32)
        except (TypeError, ValueError) as e:
            raise CorruptSample(f"{self.root / INDEX_NAME}: camera of {name} is not numeric ({e})") from None
        view.update(depthmap=depth, camera_intrinsics=K, camera_pose=P,
                    is_metric_scale=bool(scene.get("is_metric_scale", False)))
        return view

    def load_pair(self, idx: int, images_only: bool = False) -> tuple[dict, dict]:
        """(raw view 1, raw view 2) of pair `idx`; `images_only` skips the depth/mask files (CroCo pretraining)."""
        s, i, j = (int(x) for x in self._pairs[idx])
        scene = self._scenes[s]
        return self._load_view(scene, i, images_only), self._load_view(scene, j, images_only)

    def __getitem__(self, idx: int) -> tuple[dict, dict]:
        return self.load_pair(idx)
