"""Static configuration of the dense global alignment (`DenseConfig`) and the allowed values of its options."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

from f3d_jax.align.losses import CONF_MODES, DISTS, PRECISIONS, ROBUST
from f3d_jax.align.parameterisation import PARAMETERISATIONS
from f3d_jax.align.schedules import DEFAULT_LR_MIN, SCHEDULES

STORAGE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """Static configuration of the dense GA loop (hashable: a jit static argument).

    Attributes:
      niter, schedule ('cosine'|'linear'), lr, lr_min: the official loop (lr_min 1e-6).
      param: 'official' (raw XYZW quaternions, signed-log1p translations) or 'manifold' (jaxlie SE3); see
        `parameterisation`.
      conf: confidence transform ('log' official). dist: 'l1' (Euclidean norm) or 'l2' (squared norm).
      robust, robust_scale: optional robust kernel on the distances (None = official).
      base_scale: geometric mean of the pairwise scales when the pairwise scales are normalised (official 0.5).
      norm_pw_scale: pin the pairwise scales' geometric mean to base_scale. None = the official rule: on unless
        >= 2 poses are preset (`global_align` resolves it; the core alone treats None as True).
      focal_break: focal parameter = focal_break * log f (official 20).
      optimize_pp: optimise principal points (official default False).
      min_conf_thr: threshold of `AlignResult.masks` (not used by the loss, as officially) and, in
        `global_align`, of the initialisation's PnP pixel pool and of the PairViewer.
      storage_dtype: 'float32' or 'bfloat16' storage of the predictions/confidences (math stays float32).
      chunk_pixels: edge-pixels per block of the loss (C edges x T pixels, `losses.plan_blocks`): bounds the
        loop's temporaries. None (default): chosen from the backend (`losses.default_chunk_pixels`): 24576 in
        blocks of <= 12 edges on a CPU (cache-sized), 32M in blocks of whole images on a GPU/TPU (one fused pass
        when the problem is smaller). The value is the same whatever the blocking, to float32 summation order.
      shard_edges: split the edges over all local devices (a 1-D mesh; E padded with zero-weight edges to a
        multiple of the device count). None (default): automatic, on with >= 2 local devices and at least
        `core.SHARD_MIN_EDGE_PIXELS` edge-pixels; True/False force it (True with one device does nothing).
      b1, b2, eps: Adam hyper-parameters (official (0.9, 0.9), 1e-8).
      precision: matmul precision of the optimisation (loss, gradients, pose algebra; `with_matmul_precision`):
        'highest' (exact float32 on every backend, default), 'high' (TF32 on GPU, bfloat16 x3 on TPU) or
        'default' (the backend's fastest). Independent of `storage_dtype`.
    """

    niter: int = 300
    schedule: str = "cosine"
    lr: float = 0.01
    lr_min: float = DEFAULT_LR_MIN
    param: str = "official"
    conf: str = "log"
    dist: str = "l1"
    robust: str | None = None
    robust_scale: float = 0.05
    base_scale: float = 0.5
    norm_pw_scale: bool | None = None
    focal_break: float = 20.0
    optimize_pp: bool = False
    min_conf_thr: float = 3.0
    storage_dtype: str = "float32"
    chunk_pixels: int | None = None
    shard_edges: bool | None = None
    b1: float = 0.9
    b2: float = 0.9
    eps: float = 1e-8
    precision: str = "highest"

    def __post_init__(self) -> None:
        checks = [
            ("schedule", self.schedule, SCHEDULES),
            ("param", self.param, tuple(PARAMETERISATIONS)),
            ("conf", self.conf, CONF_MODES),
            ("dist", self.dist, DISTS),
            ("robust", self.robust, ROBUST),
            ("storage_dtype", self.storage_dtype, STORAGE_DTYPES),
            ("precision", self.precision, PRECISIONS),
        ]
        for name, val, allowed in checks:
            if val not in allowed:
                raise ValueError(f"DenseConfig: {name} must be one of {allowed}, got {val!r}")
        if int(self.niter) < 1:
            raise ValueError(f"DenseConfig: niter must be >= 1, got {self.niter}")
        if self.chunk_pixels is not None and int(self.chunk_pixels) < 1:
            raise ValueError(f"DenseConfig: chunk_pixels must be None (backend default) or >= 1, got {self.chunk_pixels}")
        if self.shard_edges not in (None, True, False):
            raise ValueError(f"DenseConfig: shard_edges must be None (automatic), True or False, got {self.shard_edges!r}")


def with_matmul_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates `fn(problem, start, config, ...)`: it is traced with every matmul that names no precision of its own
    at `config.precision` (the parameterisations' rotation / SE3 algebra included), so that float32 means float32
    on GPU and TPU too (their default would be TF32 / one bfloat16 pass)."""

    @functools.wraps(fn)
    def wrapped(problem: Any, start: Any, config: DenseConfig, *args: Any, **kwargs: Any) -> Any:
        with jax.default_matmul_precision(config.precision):
            return fn(problem, start, config, *args, **kwargs)

    return wrapped
