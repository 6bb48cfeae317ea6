"""Matmul / convolution precision of the model forwards: one documented choice, the same on every backend.

`precision` names how float32 dots and convolutions are computed (bfloat16 / float16 operands are always
multiplied in their own format, whatever the precision):

- 'highest' (alias 'float32'): exact float32 products (`jax.lax.Precision.HIGHEST`). What XLA:CPU always
  does; on GPU it turns TF32 off, on TPU it uses the multi-pass bfloat16 emulation of float32.
- 'high' (alias 'tensorfloat32'): reduced-precision float32 products (TF32 tensor cores on GPU, three
  bfloat16 passes on TPU).
- 'default' (alias 'bfloat16'): the backend's fastest float32 mode (TF32 on GPU, one bfloat16 pass on TPU).
  Issue 12 measured float32 DUSt3R-512-DPT pair inference on an H200 at 11.1 ms/pair this way, with outputs
  9.2e-3 (max relative) away from the official float32 ones, against 28.8 ms/pair with 'highest'.
- None (the default of every entry point): 'highest' when the model computes in float32, 'default' when it
  computes in a lower-precision dtype (bfloat16 / float16 params, e.g. `InferenceEngine(dtype=jnp.bfloat16)`);
  the float32 heads of a mixed-precision model then run at the backend's default too (pass
  precision='highest' to keep them exact).

The entry points trace the whole module under `jax.default_matmul_precision(resolved)`, which sets the
precision of every `dot_general` and `conv_general_dilated` in the trace (flax `nnx.Linear`, `jnp.einsum`,
`jnp.matmul`, `lax.conv_general_dilated`, and `jax.nn.dot_product_attention(implementation='xla')` alike).
cuDNN attention (`implementation='cudnn'`) is a fused GPU kernel on bfloat16 / float16 operands that no
precision setting reaches: it is an option for low-precision inference on NVIDIA GPUs, never the default, and
never needed on CPU or TPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = ("highest", "high", "default")
_ALIASES = {"float32": "highest", "tensorfloat32": "high", "bfloat16": "default"}


def check_precision(precision: str | None, name: str = "precision") -> str | None:
    """`precision` in canonical form ('highest' | 'high' | 'default', None kept), or a ValueError naming `name`."""
    if precision is None:
        return None
    if isinstance(precision, str):
        p = _ALIASES.get(precision.lower(), precision.lower())
        if p in PRECISIONS:
            return p
    raise ValueError(f"{name} must be None or one of {PRECISIONS} (aliases {tuple(_ALIASES)}), got {precision!r}")


def resolve_precision(precision: str | None, dtype: Any) -> str:
    """The precision an entry point traces under: `precision` (canonical), or for None 'highest' when the
    compute dtype is float32 (or wider) and 'default' for bfloat16 / float16."""
    p = check_precision(precision)
    if p is not None:
        return p
    return "highest" if jnp.finfo(jnp.dtype(dtype)).bits >= 32 else "default"


@contextlib.contextmanager
def matmul_precision(precision: str | None, dtype: Any) -> Iterator[str]:
    """Context for tracing a forward: every dot / convolution traced inside gets `resolve_precision(precision,
    dtype)` unless it names its own. Yields the resolved value. Use it inside the traced function (the setting is
    part of JAX's trace context, so it is read when the function is traced, and keys the jit cache)."""
    p = resolve_precision(precision, dtype)
    with jax.default_matmul_precision(p):
        yield p
