"""Mesh and shardings of the train state and batches: a 2-D mesh ('data', 'fsdp'), param shardings from regex
rules over the params dict paths (never annotations in the modules).

Strategies (all from one rule table):
  - data parallel: mesh (D, 1): params and optimiser state replicated, batch split over the D devices.
  - FSDP (ZeRO-3 style): mesh (1, F): every large param (and its Adam moments) split over F devices along
    its largest axis divisible by F; the batch is split over all devices too; XLA gathers each weight for
    its layer and reduce-scatters its gradient.
  - mixed: mesh (D, F), D * F devices: FSDP inside groups of F devices, data parallel across the D groups.
The batch axis is always split over ('data', 'fsdp') together: every device sees different examples.

Rules: `(regex, spec)` pairs matched (`re.search`) against 'enc_blocks/3/attn/qkv/kernel'; the first match
wins. A spec is a tuple of mesh axis names / None per array axis (a PartitionSpec), or the string 'fsdp'
(split the largest axis divisible by the fsdp size, replicated if none is or if the array is smaller than
`min_fsdp_size` elements), or None (replicated). An axis that does not divide falls back to replication.

Multi-host (one process per host, each seeing its local devices; `jax.devices()` spans all hosts):

  jax.distributed.initialize()          # before any other JAX call: `f3d train` does it with --distributed
  mesh = make_mesh(data=-1, fsdp=8)     # -1: all remaining devices
  batch = host_local_batch(...)         # this host's 1/process_count of the global batch
  global_batch = shard_batch(batch, batch_sharding(mesh))   # jax.make_array_from_process_local_data

Exact commands (docs in docs/training.md repeat them):
  TPU pod slice (e.g. v5p-32: 4 hosts x 4 chips), from one machine:
    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \
      "cd f3d-jax && f3d train experiments/configs/croco_v2_pretrain.py --distributed --out gs://BUCKET/run"
    (on TPU, `jax.distributed.initialize()` finds the coordinator and the process ids by itself.)
  Several GPU hosts (e.g. 2 hosts x 8 GPUs), on each host i in 0..1:
    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
      f3d train experiments/configs/croco_v2_pretrain.py --distributed --out /shared/run
    (or with SLURM: `srun --nodes 2 --ntasks-per-node 1 f3d train ... --distributed`, detected by JAX.)
The data pipeline gives each host its own shard (grain `ShardByJaxProcess` / `ds[process_index::process_count]`)
and checkpoints go to a folder every host can reach (orbax writes each host's shards).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from f3d_jax.train.optim import path_str

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
Rule = tuple[str, Any]

# Default table: every large array FSDP-split along its largest divisible axis (a no-op on an fsdp=1 mesh).
DEFAULT_RULES: tuple[Rule, ...] = ((r".*", "fsdp"),)
MIN_FSDP_SIZE = 2**12  # smaller arrays (biases, norms, tiny tables) stay replicated: not worth a gather


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all of them); -1 in one axis takes the rest. Explicit
    sizes may use only the first data * fsdp devices (single-process runs; a multi-host mesh spans them all).

    Auto axis types (GSPMD propagation): the models carry no sharding annotations."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of data, fsdp may be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp > n or (data * fsdp < n and jax.process_count() > 1):
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not fit the {n} devices present")
    arr = np.asarray(devices[:data * fsdp], dtype=object).reshape(data, fsdp)
    return Mesh(arr, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _fsdp_spec(shape: tuple[int, ...], size: int, min_size: int) -> P:
    if size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for ax in sorted(range(len(shape)), key=lambda a: -shape[a]):  # largest first, first of ties
        if shape[ax] % size == 0:
            return P(*[("fsdp" if a == ax else None) for a in range(len(shape))])
    return P()


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The spec, with every axis whose mesh size does not divide the array dimension replicated."""
    out = []
    for dim, names in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if names is None:
            out.append(None)
            continue
        k = int(np.prod([mesh.shape[a] for a in ((names,) if isinstance(names, str) else names)]))
        out.append(names if dim % k == 0 else None)
    return P(*out)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES,
             min_fsdp_size: int = MIN_FSDP_SIZE) -> P:
    """PartitionSpec of the array at `path` by the first matching rule (module docstring)."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            if spec is None:
                return P()
            if spec == "fsdp":
                return _fsdp_spec(shape, mesh.shape["fsdp"], min_fsdp_size)
            return _fit(P(*spec), shape, mesh)
    return P()


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES,
                    min_fsdp_size: int = MIN_FSDP_SIZE) -> Any:
    """NamedSharding pytree like `params` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(path_str(path), tuple(x.shape), mesh, rules, min_fsdp_size)),
        params)


def state_shardings(abstract_state: Any, params_shardings: Any, params: Any, mesh: Mesh) -> Any:
    """Shardings of a pytree holding params-shaped subtrees (the optimiser state, the train state): a leaf
    whose path ends with a param's path and has that param's shape gets the param's sharding (Adam's mu, nu);
    everything else (counters, scalars) is replicated."""
    table = {}
    for (path, s), x in zip(jax.tree_util.tree_flatten_with_path(params_shardings)[0], jax.tree.leaves(params),
                            strict=True):
        table[path_str(path)] = (s, tuple(x.shape))
    rep = NamedSharding(mesh, P())

    def pick(path, x):
        keys = path_str(path).split("/")
        for k in range(len(keys)):
            hit = table.get("/".join(keys[k:]))
            if hit is not None and hit[1] == tuple(x.shape):
                return hit[0]
        return rep

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Batch arrays split along `batch_axis` over every device (('data', 'fsdp') together)."""
    return NamedSharding(mesh, P(*([None] * batch_axis), BATCH_AXES))


def shard_batch(batch: Mapping, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Host-local numpy batch (this process's share of the global batch, split along `batch_axis`) -> global
    jax arrays split over the mesh (`jax.make_array_from_process_local_data`; one process: a device_put)."""
    def put(x):
        x = np.asarray(x)
        spec = P(*([None] * batch_axis), BATCH_AXES) if x.ndim > batch_axis else P()
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

    return jax.tree.map(put, batch)


def describe(shardings: Any) -> dict[str, str]:
    """{'path': 'PartitionSpec(...)'} (logs, tests)."""
    return {path_str(p): str(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
