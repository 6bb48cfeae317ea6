"""Learning-rate schedules of the dense GA loop (equivalent of dust3r/cloud_opt/commons.py `cosine_schedule`,
`linear_schedule` as used by base_opt.py `global_alignment_iter`)."""

from __future__ import annotations

import numpy as np

SCHEDULES = ("cosine", "linear")
DEFAULT_LR_MIN = 1e-6  # official dense GA lr_min


def lr_curve(schedule: str, lr: float, niter: int, lr_min: float = DEFAULT_LR_MIN) -> np.ndarray:
    """Learning rate of each iteration k = 0..niter-1, with t = k / niter (never reaches lr_min exactly).

    Computed in float64 on the host (as the official Python floats) and rounded once to float32, so the
    schedule carries no float32 cosine error.

    Args:
      schedule: 'cosine' (lr_min + (lr - lr_min) (1 + cos(pi t)) / 2) or 'linear' (lr + (lr_min - lr) t).
      lr: base learning rate. niter: number of iterations (>= 1). lr_min: final learning rate.
    Returns:
      (niter,) float32.
    """
    if niter < 1:
        raise ValueError(f"niter must be >= 1, got {niter}")
    t = np.arange(niter, dtype=np.float64) / niter
    if schedule == "cosine":
        out = lr_min + (lr - lr_min) * (1.0 + np.cos(np.pi * t)) / 2.0
    elif schedule == "linear":
        out = lr + (lr_min - lr) * t
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return out.astype(np.float32)
