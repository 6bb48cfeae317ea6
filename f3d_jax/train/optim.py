"""The official optimiser: AdamW with CroCo's parameter groups, the warmup + half-cycle cosine learning rate,
optional gradient clipping, as optax transformations over the plain params dict.

Official recipe (croco/pretrain.py, dust3r/training.py, mast3r's train.py):
  param_groups = get_parameter_groups(model, weight_decay)   # croco/utils/misc.py
  optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.95))     # eps 1e-8
  lr = blr * eff_batch_size / 256 unless --lr is given (eff_batch_size = batch_size * accum_iter * world_size)
  per iteration, at the first micro-batch of each accumulation window:
      adjust_learning_rate(optimizer, epoch + data_iter_step / len(data_loader), args)

Parameter groups (`get_parameter_groups` with layer_decay=1, the only value the official trainings use):
a parameter gets no weight decay when it is 1-d (LayerNorm scale/bias, biases) or its name ends in `.bias`;
every other trainable parameter (kernels, `mask_token`, the conv kernels of the heads) decays. Frozen
parameters (requires_grad=False: the cosine position tables of CroCo v1, `freeze=` of DUSt3R) are left out.

Learning rate: `official_lr(epoch_f)`, with the fractional epoch `epoch_f = update * accum_iter /
iters_per_epoch` for the optimiser update `update` (0-based) and `iters_per_epoch` micro-batches per epoch
(`len(data_loader)` of the official code). This is the official formula at the first micro-batch of the
update's accumulation window whenever `iters_per_epoch` is a multiple of `accum_iter`.

AdamW: optax's `adamw` computes `p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)`, PyTorch's
`p * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps)`: the same update (tests/train: one official step).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings, named as the official command-line arguments."""

    lr: float | None = None
    """absolute peak learning rate; None: blr * effective batch / 256 (the official rule)."""
    blr: float = 1.5e-4
    """base learning rate (used when lr is None)."""
    min_lr: float = 0.0
    """final learning rate of the cosine."""
    warmup_epochs: float = 40.0
    """linear warm-up length, in epochs."""
    epochs: float = 800.0
    """length of the schedule (warm-up + cosine), in epochs."""
    weight_decay: float = 0.05
    """decoupled weight decay of the 'decay' group."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float | None = None
    """clip the global gradient norm to this (None: no clipping, as the official trainings)."""

    def __post_init__(self):
        for name in ("blr", "min_lr", "weight_decay", "eps", "warmup_epochs"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"optim.{name}={v!r} should be a finite number >= 0")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"optim.lr={self.lr!r} should be a finite number >= 0 (or None)")
        if not self.epochs > self.warmup_epochs:
            raise ValueError(f"optim.epochs={self.epochs} should be larger than warmup_epochs={self.warmup_epochs}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas!r} should be two numbers in [0, 1)")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"optim.clip_grad={self.clip_grad!r} should be > 0 (or None)")

    def peak_lr(self, effective_batch: int) -> float:
        """The official absolute learning rate for an effective batch (batch * accum_iter * world size)."""
        return self.lr if self.lr is not None else self.blr * effective_batch / 256


def official_lr(epoch: float | jax.Array, lr: float, min_lr: float, warmup_epochs: float, epochs: float):
    """`croco/utils/misc.py: adjust_learning_rate` at the fractional epoch `epoch` (works on arrays)."""
    warm = lr * epoch / warmup_epochs if warmup_epochs > 0 else lr
    cos = min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
    return jnp.where(epoch < warmup_epochs, warm, cos)


def lr_schedule(cfg: OptimConfig, peak_lr: float, iters_per_epoch: int, accum_iter: int = 1) -> optax.Schedule:
    """optax schedule of the optimiser update count -> learning rate (module docstring)."""
    if iters_per_epoch < 1 or accum_iter < 1:
        raise ValueError(f"iters_per_epoch={iters_per_epoch} and accum_iter={accum_iter} should be >= 1")

    def schedule(count):
        epoch = jnp.asarray(count, jnp.float32) * (accum_iter / iters_per_epoch)
        return official_lr(epoch, peak_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)

    return schedule


def path_str(path: tuple) -> str:
    """'enc_blocks/3/attn/qkv/kernel' for a key path of the params dict."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def decay_mask(params: Mapping, trainable: Any = None) -> Any:
    """Bool pytree like `params`: True for the official 'decay' group (module docstring).

    `trainable`: optional bool pytree like `params` (False = frozen, never decayed)."""
    def rule(path, p):
        return not (len(p.shape) <= 1 or path_str(path).split("/")[-1] == "bias")

    mask = jax.tree_util.tree_map_with_path(rule, params)
    if trainable is not None:
        mask = jax.tree.map(lambda a, b: a and b, mask, trainable)
    return mask


def param_groups(params: Mapping, trainable: Any = None) -> dict[str, list[str]]:
    """{'decay': [...], 'no_decay': [...]} of the trainable param paths (for logs and tests)."""
    mask = decay_mask(params, trainable)
    keep = trainable if trainable is not None else jax.tree.map(lambda _: True, params)
    out: dict[str, list[str]] = {"decay": [], "no_decay": []}
    for (path, d), k in zip(jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(keep), strict=True):
        if k:
            out["decay" if d else "no_decay"].append(path_str(path))
    return out


def make_optimizer(cfg: OptimConfig, params: Mapping, learning_rate: float | Callable,
                   trainable: Any = None) -> optax.GradientTransformation:
    """clip (optional) -> AdamW with the official groups. `learning_rate`: a float or an optax schedule of the
    update count. Frozen params must get zero gradients (the train step zeroes them): Adam then moves them by
    exactly 0 and the decay mask leaves them out."""
    mask = decay_mask(params, trainable)
    parts = []
    if cfg.clip_grad is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad))
    parts.append(optax.adamw(learning_rate, b1=cfg.betas[0], b2=cfg.betas[1], eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=mask))
    return optax.chain(*parts)
