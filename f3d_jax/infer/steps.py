"""The pure device steps of pair inference: the data mesh, param preparation, the jitted encoder and
decoder steps.

The steps are module-level `jax.jit` functions whose static arguments (config, attention
implementation, mesh, bucket shapes, sub-step size) select the compiled code: JAX's jit cache keeps
one executable per static configuration and argument shapes, so any number of engines with equal
settings share compiled code and a second run on images of the same sizes compiles nothing. Nothing
here holds device arrays: the prepared params belong to the `InferenceEngine` that made them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from f3d_jax.models.config import DUSt3RConfig
from f3d_jax.models.model import decode_pairs, encode_images


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """1-D `('data',)` mesh over `devices` (default: every device)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("inference: empty device list")
    return jax.sharding.Mesh(np.array(devs), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Every device of `mesh` holds the whole array (params)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The leading (batch) axis split over `mesh`'s 'data' axis (images, feature stores, pair batches, outputs)."""
    return NamedSharding(mesh, PartitionSpec("data"))


def rows_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Axis 1 split over 'data': output buffers `(n_batches, B, ...)` holding one decoded batch per row,
    each stored where the decode step produced it (placing a batch moves nothing between devices)."""
    return NamedSharding(mesh, PartitionSpec(None, "data"))


def cast_for_inference(params: Mapping, dtype: Any) -> dict:
    """Mixed precision: floating params to `dtype`, except the two heads (the official heads run in
    float32 under autocast, on float32 weights)."""
    dtype = jnp.dtype(dtype)

    def cast(path, a):
        top = getattr(path[0], "key", None)
        if str(top).startswith("downstream_head") or not jnp.issubdtype(a.dtype, jnp.floating):
            return a
        return a.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, dict(params))


def prepare_params(params: Mapping, dtype: Any, mesh: jax.sharding.Mesh) -> dict:
    """The params as the steps take them: cast to `dtype` (None: unchanged, see `cast_for_inference`) and
    replicated over `mesh`. A fresh pytree read from `params` now: later in-place edits of `params` do not
    reach it. Leaves already replicated on `mesh` in the right dtype are not copied."""
    p = dict(params) if dtype is None else cast_for_inference(params, dtype)
    return jax.device_put(p, replicated(mesh))


@functools.partial(jax.jit, static_argnames=("config", "impl", "mesh", "precision"), donate_argnums=(1, 2))
def encode_step(params: Mapping, store_f: jax.Array, store_p: jax.Array, img: jax.Array, ts: jax.Array,
                offset: jax.Array, *, config: DUSt3RConfig, impl: str | None,
                mesh: jax.sharding.Mesh, precision: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Encode a batch and write it into the stores at row `offset` (stores donated).

    The stores are split over the mesh on their image axis (each device holds C / n_devices images' features:
    several devices serving one graph hold it once, not once each); the decode step gathers the rows its pairs
    need (XLA inserts the collectives).

    Args:
      params: prepared params (`prepare_params`), replicated.
      store_f, store_p: (C, N, Ce) features and (C, N, 2) int32 positions of one image shape, sharded on 'data'.
      img: (B, H, W, 3) float32, ts: (B, 2) int32 true shapes, both sharded on 'data'.
      offset: int32 scalar, first store row of this batch.
      precision: matmul/conv precision of the encoder (`encode_images`).

    Returns:
      the updated (store_f, store_p), sharded on 'data'.
    """
    f, p = encode_images(config, params, img, ts, impl, precision)
    store_f = jax.lax.dynamic_update_slice(store_f, f.astype(store_f.dtype), (offset, 0, 0))
    store_p = jax.lax.dynamic_update_slice(store_p, p.astype(store_p.dtype), (offset, 0, 0))
    return jax.lax.with_sharding_constraint((store_f, store_p), batch_sharded(mesh))


@functools.partial(jax.jit, static_argnames=("config", "impl", "mesh", "hw1", "hw2", "pairs_per_step", "precision"))
def decode_step(params: Mapping, sf1: jax.Array, sp1: jax.Array, sf2: jax.Array, sp2: jax.Array, i1: jax.Array,
                i2: jax.Array, ts1: jax.Array, ts2: jax.Array, *, config: DUSt3RConfig, impl: str | None,
                mesh: jax.sharding.Mesh, hw1: tuple[int, int], hw2: tuple[int, int],
                pairs_per_step: int | None = None, precision: str | None = None) -> tuple[dict, dict]:
    """Gather a pair batch's features from the stores, run both decoders and heads (`decode_pairs`).

    Args:
      sf1, sp1 / sf2, sp2: the stores of view 1's shape `hw1` / view 2's shape `hw2` (sharded on 'data').
      i1, i2: (B,) int32 store rows of each pair's views; ts1, ts2: (B, 2) int32 true shapes; sharded on 'data'.
      pairs_per_step: decode the batch in sequential sub-steps of this many pairs (`in_steps`).
      precision: matmul/conv precision of decoders and heads (`decode_pairs`).

    Returns:
      (pred1, pred2) dicts of (B, H, W, ...) arrays sharded on 'data'.
    """
    out = decode_pairs(config, params, sf1[i1], sp1[i1], sf2[i2], sp2[i2], hw1, hw2, ts1, ts2, impl, pairs_per_step,
                       precision)
    return jax.lax.with_sharding_constraint(out, batch_sharded(mesh))


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnums=(0,))
def place_batch(buf: Any, out: Any, j: jax.Array, *, mesh: jax.sharding.Mesh) -> Any:
    """Write one decoded batch into row `j` of a bucket's output buffers (donated: updated in place).

    Args:
      buf: pytree of (n_batches, B, H, W, ...) arrays (`rows_sharded`).
      out: the same pytree of (B, H, W, ...) arrays, as `decode_step` returns it (sharded on 'data').
      j: int32 scalar, the batch's row.

    Returns:
      the updated `buf`.
    """
    buf = jax.tree.map(lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o.astype(b.dtype), j, 0), buf, out)
    return jax.lax.with_sharding_constraint(buf, rows_sharded(mesh))
