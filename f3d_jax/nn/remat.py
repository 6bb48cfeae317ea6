"""Rematerialisation (gradient checkpointing) of the model forwards used in training.

A training step keeps, for the backward pass, every intermediate of the forward that a derivative needs: for a
ViT-L encoder + base decoder at 512x384 that is tens of GB per pair. `remat` trades compute for that memory by
wrapping each unit (an encoder block, a decoder step = the two cross-attending decoder blocks, a pixel head)
in `jax.checkpoint`, so only what the policy names is kept and the rest is recomputed in the backward pass.

The block stacks run as a `lax.scan` over their stacked params (`scan_blocks`), not as an unrolled loop of
checkpointed calls: XLA:CPU drops the optimisation barriers of `jax.checkpoint` and its CSE then merges the
recomputation back into the forward (an unrolled 8-layer MLP kept exactly the same temp memory with and without
checkpointing; under scan it fell from 208 to 92 MB), while a scan's backward loop can only recompute. On
GPU/TPU both forms work; the scan also compiles one block instead of L.

- None / 'none': no checkpointing (the inference path; the default of every entry point).
- 'blocks': keep only each unit's inputs (`jax.checkpoint_policies.nothing_saveable`): the least memory, one
  extra forward of the blocks in the backward pass (about +1/3 of the step's FLOPs).
- 'dots': keep the outputs of the matmuls without batch dimensions (the Linear layers' outputs,
  `dots_with_no_batch_dims_saveable`); attention scores, softmax, norms, GELU are recomputed. Between 'none'
  and 'blocks' in memory and time.

Checkpointing changes what is stored, never what is computed: values and gradients are those of the plain
forward up to float32 reassociation (XLA may fuse the recomputed ops differently).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from f3d_jax.nn.compat import nnx

REMATS = ("none", "blocks", "dots")


def check_remat(remat: str | None, name: str = "remat") -> str | None:
    """`remat` in canonical form (None for 'none'), or a ValueError naming `name`."""
    if remat is None or remat == "none":
        return None
    if remat in REMATS:
        return remat
    raise ValueError(f"{name} must be None or one of {REMATS}, got {remat!r}")


def checkpointed(fn: Callable[..., Any], remat: str | None) -> Callable[..., Any]:
    """`fn` itself (remat None / 'none'), or `fn` under `jax.checkpoint` with the policy of `remat`.

    `fn` takes and returns arrays (pytrees); it may close over the module's (traced) params, which
    `jax.checkpoint` treats as inputs (kept, differentiated)."""
    remat = check_remat(remat)
    if remat is None:
        return fn
    policy = (jax.checkpoint_policies.nothing_saveable if remat == "blocks"
              else jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return jax.checkpoint(fn, policy=policy)


def scan_blocks(blocks: Sequence[Sequence[nnx.Module]], fn: Callable[..., tuple[Any, Any]], carry: Any,
                remat: str | None) -> tuple[Any, list[Any]]:
    """Run a stack of blocks: `carry, y_i = fn(carry, *blocks_i)` for i = 0..L-1, returning (carry, [y_i]).

    `blocks`: L tuples of modules (e.g. `[(enc_block_i,)]`, or `[(dec_block_i, dec_block2_i)]` for the two
    decoders), each tuple with the same structure as the others. With `remat` None / 'none', a plain Python loop
    (the inference path, unchanged). Otherwise one `lax.scan` over the stacked params of the L tuples whose body
    is `checkpointed(..., remat)`: only the carry of each step (and what the policy saves) is kept for the
    backward pass. `fn` may close over arrays that do not change between blocks (positions, a fixed memory).
    Returns the final carry and the list of the L per-block outputs y_i (None when `fn` returns None)."""
    if check_remat(remat) is None:
        ys = []
        for mods in blocks:
            carry, y = fn(carry, *mods)
            ys.append(y)
        return carry, ys
    graphdefs, states = zip(*[zip(*[nnx.split(m) for m in mods]) for mods in blocks])
    graphdef = graphdefs[0]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def body(c, st):
        return fn(c, *[nnx.merge(g, s) for g, s in zip(graphdef, st)])

    carry, ys = jax.lax.scan(checkpointed(body, remat), carry, stacked)
    return carry, [None if ys is None else jax.tree.map(lambda a, i=i: a[i], ys) for i in range(len(blocks))]
