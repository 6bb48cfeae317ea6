"""`TrainConfig`: every setting of a training run, and the config files of `f3d train CONFIG`.

A config file is a Python file defining `CONFIG = TrainConfig(...)` (experiments/configs/ holds the official
recipes and `tiny` ones); `load_config(path)` runs it and returns `CONFIG`. Command-line overrides replace
fields with `dataclasses.replace` (`f3d train CONFIG --steps 10 --out runs/x`).

The model is the **official constructor string** (`"CroCoNet(enc_embed_dim=1024, ...)"`,
`"AsymmetricCroCo3DStereo(pos_embed='RoPE100', ...)"`), parsed with `ast` (never `eval`) by
`f3d_jax.weights.parse_constructor`. The batch size is the **global** batch of one micro-step (the official
`--batch_size` times the number of GPUs); `accum_iter` micro-steps make one optimiser update, as officially.
"""

from __future__ import annotations

import dataclasses
import os
import runpy
from pathlib import Path
from typing import Any, Literal

from f3d_jax.models.config import CroCoConfig, DUSt3RConfig, config_from_official
from f3d_jax.train.optim import OptimConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training pairs come from."""

    source: str = "synthetic"
    """'synthetic': a few rendered rooms cycled (`f3d_jax.train.toy_data`, no download); 'pairs:<folder>': a
    dataset in the on-disk pair format through the grain pipeline of `f3d_jax.train.data` (official crops,
    resolution buckets, corrupt samples skipped and counted); 'grain-synthetic': the same pipeline over
    `f3d_jax.train.data.SyntheticPairs` (num_scenes pairs rendered on demand)."""
    num_scenes: int = 8
    """synthetic sources: number of distinct pairs."""
    size: tuple[int, int] = (64, 64)
    """'synthetic': (height, width) of the images (CroCo: the model's img_size); 'grain-synthetic': render size."""
    seed: int = 0
    resolutions: tuple[tuple[int, int], ...] = ((512, 384), (512, 336), (512, 288), (512, 256), (512, 160))
    """grain sources, DUSt3R/MASt3R: the (W, H) buckets, one drawn per batch (the official 512 training set)."""
    aug_crop: int = 16
    """grain sources: the official aug_crop."""
    color_jitter: bool = True
    """grain sources, DUSt3R/MASt3R: the official transform=ColorJitter."""
    croco_trfs: str = "crop224+acolor"
    """grain sources, CroCo: the official --train_transform."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run (field docs = `f3d train --help`)."""

    model: str
    """official constructor string of the model to train."""
    name: str = "run"
    steps: int = 100
    """optimiser updates to run in total (a resumed run continues up to this count)."""
    batch_size: int = 8
    """global batch of one micro-step (official --batch_size x number of devices)."""
    accum_iter: int = 1
    """micro-steps per optimiser update (gradient accumulation)."""
    iters_per_epoch: int = 1000
    """micro-batches per epoch, for the per-iteration schedule (the official len(data_loader))."""
    optim: OptimConfig = OptimConfig()
    criterion: str | None = None
    """stereo models: the official criterion string (f3d_jax.train.losses.build_criterion)."""
    norm_pix_loss: bool = True
    """CroCo: normalise each target patch (the official --norm_pix_loss 1)."""
    pretrained: str | None = None
    """initial weights (partial load, printed): .pth, HF folder or repo id, released name, f3d convert folder."""
    freeze: str | None = None
    """stereo models: override the model's freeze mode ('none', 'mask', 'encoder')."""
    data: DataConfig = DataConfig()
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """forward/backward dtype; the master weights and AdamW stay float32."""
    precision: Literal[None, "highest", "high", "default"] = None
    """float32 matmul precision (None: exact float32 for float32 compute, the backend default for bfloat16)."""
    remat: Literal["none", "blocks", "dots"] = "none"
    """rematerialisation of the training forward (`f3d_jax.nn.remat`): 'blocks' keeps only the inputs of each
    encoder block, decoder step and pixel head for the backward pass and recomputes the rest (least memory,
    about +1/3 compute); 'dots' also keeps the Linear layers' outputs; 'none' keeps everything (fastest when
    it fits). Same loss and gradients either way."""
    mesh_data: int = -1
    """data-parallel axis of the device mesh (-1: the devices left by mesh_fsdp)."""
    mesh_fsdp: int = 1
    """FSDP axis (params and optimiser state split over it)."""
    fsdp_min_size: int = 4096
    """arrays with fewer elements stay replicated under FSDP (biases, norms: not worth a gather)."""
    seed: int = 0
    """init and per-step PRNG seed (masks, sampled correspondences)."""
    log_every: int = 10
    save_every: int = 500
    keep: int = 3
    """checkpoints kept (the last ones)."""
    async_save: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "accum_iter", "iters_per_epoch", "log_every", "save_every", "keep"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name}={v!r} should be an int >= 1")
        if self.remat not in ("none", "blocks", "dots"):
            raise ValueError(f"remat={self.remat!r} should be 'none', 'blocks' or 'dots'")
        self.model_config()  # a bad constructor string is a clear error now, not at step 0
        if self.is_stereo and not self.criterion:
            raise ValueError("a stereo model (DUSt3R / MASt3R) needs criterion='...' (the official string)")

    def model_config(self) -> CroCoConfig:
        from f3d_jax.weights.constructor import parse_constructor, with_defaults

        class_name, kwargs = parse_constructor(self.model)
        cfg = config_from_official(class_name, with_defaults(class_name, kwargs))
        return cfg

    @property
    def is_stereo(self) -> bool:
        return isinstance(self.model_config(), DUSt3RConfig)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accum_iter

    def peak_lr(self) -> float:
        return self.optim.peak_lr(self.effective_batch)

    def state_defining(self) -> dict[str, Any]:
        """The settings a checkpoint must share with a run that resumes it (module docstring of checkpoint):
        everything but the length of the run, logging, checkpointing and the mesh (a restore may reshard)."""
        d = dataclasses.asdict(self)
        for k in ("name", "steps", "log_every", "save_every", "keep", "async_save", "mesh_data", "mesh_fsdp",
                  "fsdp_min_size", "pretrained", "remat"):
            d.pop(k)
        return d

    def replace(self, **kw: Any) -> "TrainConfig":
        return dataclasses.replace(self, **kw)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """The `CONFIG` of a config file (a Python file: `CONFIG = TrainConfig(...)`).

    Raises:
      ValueError: a missing file, or a file without a `TrainConfig` named CONFIG (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such config file (see experiments/configs/)")
    ns = runpy.run_path(str(p))
    cfg = ns.get("CONFIG")
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"{p}: should define CONFIG = TrainConfig(...), found {type(cfg).__name__}")
    return cfg
