"""Training checkpoints (orbax `CheckpointManager`) and initialisation from a converted checkpoint.

One checkpoint step folder `<dir>/<step>/` holds:
  state/  the TrainState (fp32 params, optimiser state, step), orbax `StandardSave` (each host writes its shards)
  meta/   JSON: {'step', 'config' (the run's state-defining settings), 'data' (the data iterator's state)}
Saves are asynchronous (the arrays are copied to host memory, then written while training goes on; `wait()`
or `close()` before exiting), the manager keeps the last `keep` steps, and a restore lays the arrays out
directly with the target shardings (a run may resume on another mesh).

Exact resume: the state, the data iterator's state and the step (which seeds the step's PRNG key) are all
restored, so k steps + restore + k steps equals 2k steps bit for bit (tests/train/test_checkpoint.py).

A checkpoint written with other state-defining settings (`TrainConfig.state_defining()`: model, losses, data,
batch, accumulation, optimiser, dtype, seed) is refused before any array is read, with the list of differences.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from f3d_jax.train.optim import path_str
from f3d_jax.weights.errors import CheckpointError


class ConfigMismatchError(CheckpointError):
    """The checkpoint was written by a run with other state-defining settings."""


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim.lr': ..., 'model': ...}: nested dicts to dotted keys (lists kept as values)."""
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(stored: Mapping, current: Mapping) -> list[str]:
    """Lines 'key: checkpoint X, this run Y' for every differing setting (tuples and lists compare equal)."""
    a, b = flatten_config(stored), flatten_config(current)

    def norm(v):
        return [norm(e) for e in v] if isinstance(v, list | tuple) else v

    lines = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if norm(va) != norm(vb):
            lines.append(f"{k}: checkpoint {va!r}, this run {vb!r}")
    return lines


class Checkpointer:
    """Thin wrapper over `orbax.checkpoint.CheckpointManager` (module docstring)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: Any, config: Mapping, data_state: Mapping | None = None, force: bool = True) -> None:
        """Save the TrainState at its step (asynchronously), with the run's config and the data state (JSON)."""
        ocp = self._ocp
        step = int(jax.device_get(state.step))
        if isinstance(data_state, bytes):  # some grain iterators serialise their state to bytes
            data_state = {"__bytes__": base64.b64encode(data_state).decode()}
        meta = {"step": step, "config": dict(config), "data": data_state}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=force)

    def read_meta(self, step: int | None = None) -> dict:
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(self.directory, "no checkpoint to restore")
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, target: Any, config: Mapping, step: int | None = None) -> tuple[Any, Any]:
        """(TrainState laid out as `target` (a pytree of ShapeDtypeStruct with shardings), data state).

        Raises:
          ConfigMismatchError: the checkpoint's config differs from `config` (every difference listed).
          CheckpointError: no checkpoint in the folder.
        """
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        meta = self.read_meta(step)
        diff = config_diff(meta.get("config", {}), config)
        if diff:
            raise ConfigMismatchError(
                self.directory / str(step),
                "this checkpoint was written by a run with other settings (use another --out folder, or the "
                "checkpoint's settings): " + "; ".join(diff))
        state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        data = meta.get("data")
        if isinstance(data, dict) and set(data) == {"__bytes__"}:
            data = base64.b64decode(data["__bytes__"])
        return state, data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ---------------------------------------------------------------------------------------------
# initialisation from a converted / official checkpoint


def _flat(params: Mapping) -> dict[str, Any]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def partial_load(target: Mapping, source: Mapping, *, source_name: str = "checkpoint") -> tuple[dict, dict]:
    """Copy every source param whose path and shape match into `target` (the official `load_state_dict(ckpt,
    strict=False)`), DUSt3R's rule included: a CroCo checkpoint (no `dec_blocks2`) initialises `dec_blocks2`
    from `dec_blocks` (`AsymmetricCroCo3DStereo.load_state_dict`).

    Returns:
      (params, report) with report = {'loaded': [...], 'missing': [...] (kept from `target`),
      'unexpected': [...] (source only)} of param paths.

    Raises:
      CheckpointError: a path present in both with different shapes (listed), as PyTorch's load_state_dict.
    """
    src = _flat(source)
    tgt = _flat(target)
    if any(k.startswith("dec_blocks2/") for k in tgt) and not any(k.startswith("dec_blocks2/") for k in src):
        src.update({"dec_blocks2/" + k[len("dec_blocks/"):]: v for k, v in list(src.items())
                    if k.startswith("dec_blocks/")})
    mismatched = [f"{k}: checkpoint {tuple(src[k].shape)}, model {tuple(tgt[k].shape)}"
                  for k in tgt if k in src and tuple(src[k].shape) != tuple(tgt[k].shape)]
    if mismatched:
        raise CheckpointError(source_name, "shapes differ from the model's: " + "; ".join(mismatched))
    loaded = [k for k in tgt if k in src]
    report = {"loaded": loaded, "missing": [k for k in tgt if k not in src],
              "unexpected": sorted(k for k in src if k not in tgt)}

    def pick(path, x):
        k = path_str(path)
        return np.asarray(src[k]).astype(x.dtype) if k in src else x

    return jax.tree_util.tree_map_with_path(pick, target), report


def load_pretrained(target: Mapping, src: str | os.PathLike, *, log: Callable[[str], None] = print,
                    landscape_only: bool = True) -> tuple[dict, dict]:
    """`--pretrained`: read any checkpoint `f3d_jax.weights.loading.load_model` reads (official .pth, Hugging
    Face folder or repo id, released name, `f3d convert` folder), then `partial_load` into `target` and log
    what was loaded, what is missing (left at its initial value) and what was unexpected."""
    from f3d_jax.weights.loading import load_model

    model = load_model(src, landscape_only=landscape_only)
    params, report = partial_load(target, model.params, source_name=os.fspath(src))
    log(f"pretrained {os.fspath(src)}: loaded {len(report['loaded'])} arrays, "
        f"missing {len(report['missing'])}, unexpected {len(report['unexpected'])}")
    for kind in ("missing", "unexpected"):
        if report[kind]:
            log(f"  {kind}: " + ", ".join(_compress(report[kind])))
    return params, report


def _compress(paths: list[str]) -> list[str]:
    """'dec_blocks2/{0..11}/...' style grouping: one entry per path with block indices folded."""
    import re

    groups: dict[str, list[str]] = {}
    for p in paths:
        m = re.match(r"^([^/]+)/(\d+)/(.*)$", p)
        key = f"{m.group(1)}/*/{m.group(3)}" if m else p
        groups.setdefault(key, []).append(p)
    return [k if len(v) == 1 else f"{k} (x{len(v)})" for k, v in groups.items()]
