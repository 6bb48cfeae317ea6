"""`train(config, out_dir)`: the training run behind `f3d train CONFIG` (init or resume, the jitted sharded
step, logs, checkpoints, progress bar).

Layout of `out_dir`: `checkpoints/<step>/` (orbax), `metrics.jsonl` (one line per logged step: loss, grad_norm,
lr, the criterion's details, pairs/s), `tb/` (TensorBoard events), `config.json` (the run's settings).

Per host (multi-host runs): every process runs this same function; each reads its own 1/process_count of
the global batch (`data_iterator`), `shard_batch` assembles the global arrays, only process 0 logs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from f3d_jax.io.atomic import atomic_write_text
from f3d_jax.train import loop, optim, sharding
from f3d_jax.train.checkpoint import Checkpointer, load_pretrained
from f3d_jax.train.config import TrainConfig
from f3d_jax.train.metrics import MetricsLog


@dataclasses.dataclass
class TrainResult:
    """What a run returns: the final state, the metrics of every logged step, the step it started from."""

    state: loop.TrainState
    history: list[dict[str, float]]
    start_step: int
    out_dir: Path
    batch_shardings: dict[str, str] = dataclasses.field(default_factory=dict)
    """{'view1/img': 'PartitionSpec(...)', ...} of the last batch."""


def data_iterator(cfg: TrainConfig) -> Iterator:
    """This host's micro-batch iterator (batch_size / process_count pairs per call; resumable)."""
    n = jax.process_count()
    if cfg.batch_size % n:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {n} processes")
    d = cfg.data
    if d.source == "synthetic":
        from f3d_jax.train.toy_data import SyntheticPairs

        size = cfg.model_config().img_size if not cfg.is_stereo else d.size
        return SyntheticPairs(cfg.batch_size // n, d.num_scenes, size, seed=d.seed * 1009 + jax.process_index())
    if d.source == "grain-synthetic" or d.source.startswith("pairs:"):
        import importlib

        data = importlib.import_module("f3d_jax.train.data")
        if d.source == "grain-synthetic":
            source = data.SyntheticPairs(d.num_scenes, size=(d.size[1], d.size[0]), seed=d.seed)
        else:
            source = data.PairsSource(d.source[len("pairs:"):])
        dcfg = data.DataConfig(batch_size=cfg.batch_size // n, resolutions=d.resolutions, seed=d.seed,
                               aug_crop=d.aug_crop, color_jitter=d.color_jitter and cfg.is_stereo,
                               mode="dust3r" if cfg.is_stereo else "croco", croco_trfs=d.croco_trfs,
                               shard_index=jax.process_index(), shard_count=n)
        return data.iterate(data.make_pair_dataset(source, dcfg))
    raise ValueError(f"data.source={d.source!r}: expected 'synthetic', 'grain-synthetic' or 'pairs:<folder>'")


def build_loss_fn(cfg: TrainConfig) -> loop.LossFn:
    model = cfg.model_config()
    if not cfg.is_stereo:
        return loop.croco_loss_fn(model, cfg.norm_pix_loss, cfg.precision, cfg.remat)
    import importlib

    losses = importlib.import_module("f3d_jax.train.losses")
    return loop.stereo_loss_fn(model, losses.build_criterion(cfg.criterion), precision=cfg.precision,
                               remat=cfg.remat)


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, data: Iterator | None = None,
          loss_fn: loop.LossFn | None = None, stop_at: int | None = None, quiet: bool = False,
          log: Callable[[str], None] = _log) -> TrainResult:
    """Train `cfg` into `out_dir`, resuming from its latest checkpoint when there is one.

    Args:
      data: micro-batch iterator with get_state/set_state (default: `data_iterator(cfg)`).
      loss_fn: override of the config's loss (tests).
      stop_at: stop (and checkpoint) after this many updates, before cfg.steps (the schedule still
        spans cfg.steps: `stop_at` simulates an interrupted run).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = cfg.model_config()
    mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
    data = data_iterator(cfg) if data is None else data
    loss_fn = build_loss_fn(cfg) if loss_fn is None else loss_fn

    from f3d_jax.models.model import abstract_params

    abstract = abstract_params(model_cfg)
    p_sh = sharding.param_shardings(abstract, mesh, min_fsdp_size=cfg.fsdp_min_size)
    trainable = loop.trainable_mask(model_cfg, cfg.freeze)
    schedule = optim.lr_schedule(cfg.optim, cfg.peak_lr(), cfg.iters_per_epoch, cfg.accum_iter)
    tx = optim.make_optimizer(cfg.optim, abstract, schedule, trainable)
    abstract_st = loop.abstract_state(abstract, tx)
    st_sh = sharding.state_shardings(abstract_st, p_sh, abstract, mesh)
    ckpt = Checkpointer(out / "checkpoints", keep=cfg.keep, async_save=cfg.async_save)
    state_cfg = cfg.state_defining()
    state_cfg = json.loads(json.dumps(state_cfg))  # tuples -> lists, as the JSON copy in the checkpoint

    if ckpt.latest_step() is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_st, st_sh)
        state, data_state = ckpt.restore(target, state_cfg)
        if data_state is not None:
            data.set_state(data_state)
        log(f"resumed from {ckpt.directory / str(int(state.step))}")
    else:
        params = loop.init_params(model_cfg, cfg.seed, p_sh)
        if cfg.pretrained:
            params, _ = load_pretrained(params, cfg.pretrained, log=log, landscape_only=True)
            params = jax.device_put(params, p_sh)
        state = loop.init_state(params, tx, st_sh)
        if jax.process_index() == 0:
            atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    start = int(jax.device_get(state.step))

    compute = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else None
    step_fn = loop.make_train_step(loss_fn, tx, trainable=trainable, accum_iter=cfg.accum_iter,
                                   compute_dtype=compute, schedule=schedule)
    batch_axis = 1 if cfg.accum_iter > 1 else 0
    jitted = None
    key = jax.random.key(cfg.seed)
    metrics_log = MetricsLog(out, enabled=jax.process_index() == 0)
    history: list[dict[str, float]] = []
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc=cfg.name, unit="step", disable=quiet or jax.process_index() != 0)
    pending: list[tuple[int, Any]] = []
    b_sh: Any = {}
    t_last, n_last = time.perf_counter(), start
    try:
        for step in range(start, end):
            host = loop.stack_micro_batches([loop.numeric(next(data)) for _ in range(cfg.accum_iter)])
            batch = sharding.shard_batch(host, mesh, batch_axis)
            if jitted is None:
                b_sh = jax.tree.map(lambda a: a.sharding, batch)
                jitted = loop.jit_train_step(step_fn, st_sh, b_sh, mesh)
            state, metrics = jitted(state, batch, key)
            pending.append((step + 1, metrics))
            done = step + 1
            if done % cfg.log_every == 0 or done == end:
                now = time.perf_counter()
                rate = (done - n_last) * cfg.effective_batch / max(now - t_last, 1e-9)
                t_last, n_last = now, done
                for s, m in pending:
                    row = {k: float(v) for k, v in jax.device_get(m).items()}
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(f"step {s}: the loss is {row['loss']} (the official training "
                                                 "stops here too)")
                    if s == done:
                        row["pairs_per_s"] = rate
                        if hasattr(data, "stats"):  # the grain pipeline counts the corrupt samples it skipped
                            row["skipped_samples"] = float(data.stats.get("skipped_samples", 0))
                    metrics_log.write(s, row)
                    history.append({"step": s, **row})
                pending = []
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", pairs_s=f"{rate:.1f}")
            bar.update(1)
            if done % cfg.save_every == 0 or done == end:
                ckpt.save(state, state_cfg, data.get_state())
    finally:
        bar.close()
        metrics_log.close()
        ckpt.close()
    return TrainResult(state, history, start, out, sharding.describe(b_sh) if b_sh else {})
