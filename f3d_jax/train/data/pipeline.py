"""The training-pair pipeline: grain `MapDataset` of static-shape batches, resolution buckets, deterministic and
resumable iteration, corrupt samples skipped and counted.

    source (PairsSource | SyntheticPairs | any object with __len__ and load_pair(i, images_only))
      -> MapDataset.range(N).shuffle(seed)          one permutation per epoch (grain reshuffles after repeat)
      -> [: per_epoch * shard_count][shard_index::shard_count]      per-host shard, equal lengths
      -> batch(B, drop_remainder=True) -> repeat(num_epochs)
      -> map_with_index(BatchMaker)                 batch i: resolution bucket drawn from (seed, i); views cropped

Batch i uses resolution `batch_resolution(config, i)` (W, H), drawn from `np.random.default_rng([seed, 1, i])`
among `config.resolutions` (the official BatchedRandomSampler draws one aspect ratio per batch too), so every array
of a batch has one static shape and a jit-compiled step sees at most len(resolutions) shapes. Every draw of a batch
(bucket, crop orientation, aug_crop, substitutes of corrupt samples) comes from generators seeded by (seed, batch
index, slot), so a batch depends only on the config and its index: iteration is deterministic, and resuming from
`PairIterator.get_state()` (a small JSON-serialisable dict: grain's position plus the skip counter) gives exactly the
same subsequent batches, whatever the number of reading threads.

A sample that fails (unreadable file, wrong shape, non-finite depth, impossible crop) is logged (warning on the
logger `f3d_jax.train.data`) and replaced by another sample drawn from the batch's seeded generator; the batch
carries the number of skipped samples in 'n_skipped', which `PairIterator` removes and adds to `stats`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import grain
import numpy as np

from f3d_jax.train.data.views import CROCO_ACOLOR, CorruptSample, color_jitter, imagenet_norm, make_view, random_crop

log = logging.getLogger("f3d_jax.train.data")

# the official DUSt3R/MASt3R 512 training resolutions (W, H) (dust3r README, train.py commands)
TRAIN_RESOLUTIONS_512: tuple[tuple[int, int], ...] = ((512, 384), (512, 336), (512, 288), (512, 256), (512, 160))

VIEW_KEYS = ("img", "depthmap", "camera_pose", "camera_intrinsics", "pts3d", "valid_mask", "sky_mask", "true_shape",
             "is_metric_scale")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How batches are made.

    Attributes:
        batch_size: pairs per batch (per host when sharded).
        resolutions: (W, H) buckets, W >= H (DUSt3R mode).
        seed: every random draw derives from it.
        aug_crop: the official `aug_crop` (the rescale target grows by rng.integers(0, aug_crop) pixels).
        color_jitter: apply the official `ColorJitter` transform (torchvision ColorJitter(0.5, 0.5, 0.5, 0.1) on each
            view's image, as the DUSt3R training commands' `transform=ColorJitter`; geometry unchanged).
        num_epochs: passes over the source; None repeats forever.
        mode: 'dust3r' (full views) or 'croco' (CroCo pretraining: two images per pair, ImageNet-normalised as
            croco/datasets/transforms.py).
        croco_trfs: the official CroCo pair-transform string (`--train_transform`, default 'crop224+acolor'): 'cropN'
            (an independent random N x N crop of each image, required: it gives the batch its static shape) and
            optionally 'acolor' (asymmetric colour jitter, brightness/contrast/saturation in [0.6, 1.4]).
        max_tries: consecutive corrupt samples tolerated for one slot before the batch fails.
        shard_index, shard_count: this host's shard (multi-host: jax.process_index(), jax.process_count()).
    """

    batch_size: int
    resolutions: tuple[tuple[int, int], ...] = TRAIN_RESOLUTIONS_512
    seed: int = 0
    aug_crop: int = 16
    color_jitter: bool = False
    num_epochs: int | None = None
    mode: Literal["dust3r", "croco"] = "dust3r"
    croco_trfs: str = "crop224+acolor"
    max_tries: int = 16
    shard_index: int = 0
    shard_count: int = 1

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.mode not in ("dust3r", "croco"):
            raise ValueError(f"mode must be 'dust3r' or 'croco', got {self.mode!r}")
        res = tuple(tuple(int(v) for v in r) for r in self.resolutions)
        if not res or any(len(r) != 2 or r[0] < r[1] or r[1] < 1 for r in res):
            raise ValueError(f"resolutions must be (W, H) pairs with W >= H >= 1, got {self.resolutions!r}")
        object.__setattr__(self, "resolutions", res)
        croco_transforms(self.croco_trfs)  # validates
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} not in [0, shard_count={self.shard_count})")


def croco_transforms(trfs: str) -> tuple[int, bool]:
    """(crop size, acolor) of an official CroCo transform string such as 'crop224+acolor'."""
    crop, acolor = None, False
    for tok in trfs.split("+"):
        if tok.startswith("crop") and tok[4:].isdigit() and int(tok[4:]) > 0:
            crop = int(tok[4:])
        elif tok == "acolor":
            acolor = True
        elif tok != "":
            raise ValueError(f"croco_trfs {trfs!r}: unknown augmentation {tok!r} (known: cropN, acolor)")
    if crop is None:
        raise ValueError(f"croco_trfs {trfs!r} has no 'cropN': batches need one static image size")
    return crop, acolor


def batch_resolution(config: DataConfig, batch_index: int) -> tuple[int, int]:
    """(W, H) of batch `batch_index` (the same on every host); CroCo mode: the crop of `croco_trfs`."""
    if config.mode == "croco":
        crop = croco_transforms(config.croco_trfs)[0]
        return crop, crop
    k = int(np.random.default_rng([config.seed, 1, batch_index]).integers(len(config.resolutions)))
    return config.resolutions[k]


def _stack(views: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([v[k] for v in views]) for k in views[0]}


class BatchMaker:
    """grain `map_with_index` transform: (batch index, pair indices) -> batch dict (picklable: grain workers)."""

    def __init__(self, source: Any, config: DataConfig):
        self.source, self.config = source, config

    def _pair(self, p: int, res: tuple[int, int], rng: np.random.Generator,
              jitter_rng: np.random.Generator) -> tuple[dict, dict]:
        cfg = self.config
        if cfg.mode == "croco":
            crop, acolor = croco_transforms(cfg.croco_trfs)
            imgs = [random_crop(r["img"], crop, rng, r.get("name", "?"))
                    for r in self.source.load_pair(p, images_only=True)]
            if acolor:  # assymetric_prob=1.0: each image draws its own jitter
                imgs = [color_jitter(im, jitter_rng, **CROCO_ACOLOR) for im in imgs]
            return tuple({"img": imagenet_norm(im)} for im in imgs)
        raws = self.source.load_pair(p)
        # one crop rng for both views, as the official _get_views; the jitter draws from its own stream
        views = tuple(make_view(r, res, rng, cfg.aug_crop, jitter_rng if cfg.color_jitter else None) for r in raws)
        want = (res[1], res[0], 3)
        for r, v in zip(raws, views):
            if v["img"].shape != want:
                raise CorruptSample(f"{r.get('name', '?')}: cropped to {v['img'].shape[:2]}, not {want[:2]}")
        return views

    def __call__(self, batch_index: int, pair_indices: np.ndarray) -> dict:
        cfg, n = self.config, len(self.source)
        res = batch_resolution(cfg, batch_index)
        v1s, v2s, skipped = [], [], 0
        for slot, p in enumerate(np.asarray(pair_indices).tolist()):
            substitutes = np.random.default_rng([cfg.seed, 3, batch_index, slot])
            for attempt in range(cfg.max_tries):
                try:
                    key = [batch_index, slot, attempt]  # streams: 1 bucket, 2 crop, 3 substitutes, 4 jitter
                    v1, v2 = self._pair(int(p), res, np.random.default_rng([cfg.seed, 2, *key]),
                                        np.random.default_rng([cfg.seed, 4, *key]))
                    break
                except Exception as e:  # noqa: BLE001 -- a bad sample must never stop a run; it is logged and counted
                    skipped += 1
                    log.warning("skipping corrupt training pair %d (batch %d): %s: %s", p, batch_index,
                                type(e).__name__, e)
                    p = int(substitutes.integers(n))
            else:
                raise RuntimeError(f"batch {batch_index}: {cfg.max_tries} corrupt samples in a row in {self.source!r}"
                                   " (see the warnings above); is the dataset readable?")
            v1s.append(v1)
            v2s.append(v2)
        return {"view1": _stack(v1s), "view2": _stack(v2s), "n_skipped": np.int64(skipped)}


def make_pair_dataset(source: Any, config: DataConfig) -> grain.MapDataset:
    """grain MapDataset whose element i is batch i (module docstring): {'view1': {...}, 'view2': {...},
    'n_skipped': int64}. Its length is batches per epoch x num_epochs (huge when num_epochs is None)."""
    n = len(source)
    B, count = config.batch_size, config.shard_count
    per_shard = n // (B * count) * B
    if per_shard == 0:
        raise ValueError(f"{source!r}: {n} pairs cannot fill one batch of {B} on each of {count} shard(s)")
    ds = grain.MapDataset.range(n).shuffle(seed=config.seed)
    ds = ds[: per_shard * count][config.shard_index::count]
    ds = ds.batch(B, drop_remainder=True).repeat(config.num_epochs)
    return ds.map_with_index(BatchMaker(source, config))


class PairIterator(grain.DatasetIterator):
    """Iterator over the batches of `make_pair_dataset`, with the skip counter in `stats` and in its state.

    `get_state()` is a JSON-serialisable dict (grain's `CheckpointHandler`/orbax save it as JSON); `set_state(state)`
    resumes exactly: the following batches equal those an uninterrupted run would have produced.
    """

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._skipped = 0
        self._batches = 0

    def __next__(self) -> dict:
        batch = next(self._parent)
        self._skipped += int(batch.pop("n_skipped"))
        self._batches += 1
        return batch

    @property
    def stats(self) -> dict[str, int]:
        """{'batches': batches returned, 'skipped_samples': corrupt samples skipped so far}."""
        return {"batches": self._batches, "skipped_samples": self._skipped}

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._parent.get_state(), "batches": self._batches, "skipped_samples": self._skipped}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "grain" not in state:
            raise ValueError(f"not a PairIterator state: {state!r:.200}")
        self._parent.set_state(state["grain"])
        self._batches = int(state["batches"])
        self._skipped = int(state["skipped_samples"])


def iterate(dataset: grain.MapDataset, state: dict | None = None, num_threads: int = 0,
            prefetch_buffer_size: int = 2) -> PairIterator:
    """A `PairIterator` over `dataset` (from `make_pair_dataset`), resumed from `state` when given.
    `num_threads` > 0 reads batches ahead on threads (order and content unchanged)."""
    opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size if num_threads else 0)
    it = PairIterator(iter(dataset.to_iter_dataset(opts)))
    if state is not None:
        it.set_state(state)
    return it


def make_batch_symmetric(batch: dict) -> dict:
    """Official `make_batch_symmetric` (dust3r/inference.py): batch 2B whose entry 2b of view1 is view1[b] and
    2b+1 is view2[b] (the reverse for view2)."""
    def interleave(a: dict, b: dict) -> dict:
        out = {}
        for k, x in a.items():
            y = b[k]
            out[k] = np.stack((x, y), axis=1).reshape((2 * len(x),) + x.shape[1:])
        return out
    v1, v2 = batch["view1"], batch["view2"]
    return {**batch, "view1": interleave(v1, v2), "view2": interleave(v2, v1)}
