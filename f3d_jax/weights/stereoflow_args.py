"""The `args` of CroCo-Stereo / CroCo-Flow checkpoints (`{'model': state_dict, 'args': Namespace}`).

croco/stereoflow/train.py stores its whole argument Namespace; test.py's `_load_model_and_criterion`
reads `args.task`, `args.crop`, `args.criterion` (only for its `with_conf`), `args.tile_conf_mode` and
`args.croco_args` (the CroCo kwargs, `img_size` = the crop). Everything is checked here before any
model is built: the criterion string is matched by name (never `eval`-ed), the croco kwargs go through
the same validation as every other constructor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from f3d_jax.models.binocular import TASKS, CroCoDownstreamConfig, crop_problem
from f3d_jax.models.config import brief
from f3d_jax.weights.constructor import ConstructorError, _plain, validate_kwargs
from f3d_jax.weights.errors import CheckpointError

# criterion class -> with_conf (croco/stereoflow/criterion.py)
CRITERIA = {"LaplacianLoss": True, "LaplacianLossBounded": True, "LaplacianLossBounded2": True, "L1Loss": False}
_CRITERION_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\(.{0,200}\)\s*", re.S)
_CONF_MODE_RE = re.compile(r"conf_expsigmoid_([0-9.eE+-]{1,20})_([0-9.eE+-]{1,20})|conf_expbeta([0-9.eE+-]{1,20})")
DEFAULT_TILE_CONF_MODE = {"stereo": "conf_expsigmoid_15_3", "flow": "conf_expsigmoid_10_5"}  # train.py defaults


def parse_conf_mode(mode: Any) -> tuple[str, float, float]:
    """('expsigmoid', beta, beta_sigmoid) or ('expbeta', beta, 0.0) from `conf_expsigmoid_<b>_<bs>` / `conf_expbeta<b>`.

    Raises:
      ValueError: any other string (the official tiled_pred raises NotImplementedError).
    """
    m = _CONF_MODE_RE.fullmatch(mode) if isinstance(mode, str) else None
    try:
        if m and m.group(3) is not None:
            return "expbeta", float(m.group(3)), 0.0
        if m:
            return "expsigmoid", float(m.group(1)), float(m.group(2))
    except ValueError:
        pass
    raise ValueError(f"conf_mode={brief(mode)} should be 'conf_expsigmoid_<beta>_<betasigmoid>' "
                     "(e.g. conf_expsigmoid_15_3) or 'conf_expbeta<beta>' (e.g. conf_expbeta3)")


def criterion_with_conf(criterion: Any) -> bool:
    """Whether the training criterion string (e.g. `'LaplacianLossBounded2()'`) has a confidence channel."""
    m = _CRITERION_RE.fullmatch(criterion) if isinstance(criterion, str) else None
    if not m or m.group(1) not in CRITERIA:
        raise ValueError(f"criterion={brief(criterion)} is not one of the official criteria "
                         f"({', '.join(f'{c}()' for c in CRITERIA)})")
    return CRITERIA[m.group(1)]


def _get(args: Any, key: str) -> Any:
    if isinstance(args, Mapping):
        return args.get(key)
    return getattr(args, key, None)


def is_stereoflow_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """The stereoflow layout: `args` with `croco_args` or `task`, or a state dict with a `head.dpt.` head."""
    args = ckpt.get("args")
    if args is not None and (_get(args, "croco_args") is not None or _get(args, "task") is not None):
        return True
    state = ckpt.get("model")
    return isinstance(state, Mapping) and any(isinstance(k, str) and k.startswith("head.dpt.") for k in state)


def stereoflow_settings(ckpt: Mapping[str, Any], source: Any = None) -> tuple[CroCoDownstreamConfig, str, str]:
    """(config, tile_conf_mode, criterion) of a stereoflow checkpoint, as test.py reads them.

    Raises:
      CheckpointError: no `args`, or args lacking the task / crop / croco_args, or a bad value (naming it).
    """
    args = ckpt.get("args")
    if args is None:
        raise CheckpointError(source, "a CroCo-Stereo/-Flow state dict without 'args': its task, crop and "
                                      "croco_args are unknown")
    task = _get(args, "task")
    if task is None:
        raise CheckpointError(source, "the checkpoint's args lack the task (args.task: 'stereo' or 'flow')")
    if task not in TASKS:
        raise CheckpointError(source, f"args.task={brief(task)} should be 'stereo' or 'flow'")
    crop = _get(args, "crop")
    if crop is None:
        raise CheckpointError(source, "the checkpoint's args lack the crop (args.crop: [height, width])")
    crop = tuple(crop) if isinstance(crop, list | tuple) else crop
    problem = crop_problem(crop)
    if problem:
        raise CheckpointError(source, f"args.{problem}")
    criterion = _get(args, "criterion")
    if criterion is None:
        raise CheckpointError(source, "the checkpoint's args lack the criterion (it says whether the head has a "
                                      "confidence channel)")
    tile_conf_mode = _get(args, "tile_conf_mode")
    if tile_conf_mode is None:
        tile_conf_mode = DEFAULT_TILE_CONF_MODE[task]
    try:
        with_conf = criterion_with_conf(criterion)
        parse_conf_mode(tile_conf_mode)
    except ValueError as e:
        raise CheckpointError(source, f"args.{e}") from None
    croco_args = _get(args, "croco_args")
    if croco_args is None:
        raise CheckpointError(source, "the checkpoint's args lack croco_args (the CroCo backbone's kwargs)")
    if not isinstance(croco_args, Mapping) or not all(isinstance(k, str) for k in croco_args):
        raise CheckpointError(source, f"args.croco_args should be a dict of keyword arguments, got "
                                      f"{type(croco_args).__name__}")
    try:
        kwargs = {k: _plain(v, "args.croco_args", k) for k, v in croco_args.items()}
        validate_kwargs("CroCoNet", kwargs, what="args.croco_args")
    except ConstructorError as e:
        raise CheckpointError(source, e.problem) from None
    # test.py builds CroCoDownstreamBinocular(head, **croco_args); train.py set croco_args['img_size'] = crop
    kwargs.setdefault("img_size", crop)
    img_size = kwargs["img_size"]
    try:
        config = CroCoDownstreamConfig(**kwargs, task=task, with_conf=with_conf)
    except (TypeError, ValueError) as e:
        raise CheckpointError(source, f"unsupported CroCo-Stereo/-Flow configuration: {e}") from None
    if tuple(config.img_size) != crop:
        raise CheckpointError(source, f"args.crop={list(crop)} differs from args.croco_args img_size={brief(img_size)}")
    return config, tile_conf_mode, criterion
