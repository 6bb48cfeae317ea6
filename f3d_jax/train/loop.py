"""The train state, the jit-compiled train step and the pure loss functions of the CroCo and stereo steps.

One optimiser update = one call of the jitted step on a batch of `accum_iter` micro-batches (leaves
(accum_iter, B, ...); (B, ...) when accum_iter == 1). The micro-batches run one after the other in a
`lax.scan` whose carry sums the fp32 gradients; the update uses their mean (the official `loss /= accum_iter`
then summed backward passes), then clipping and AdamW. Doing the accumulation inside one compiled step (not
optax.MultiSteps over several calls) keeps the optimiser state free of an accumulator, makes one checkpoint
step one update, and lets XLA overlap the micro-batches' collectives.

Mixed precision (`compute_dtype=bfloat16`): the fp32 master params are cast to bf16 inside the loss (the
forward and backward run in bf16; the models pick their dtype from the params), the loss is fp32, and the
gradient comes back to the fp32 params through the cast; AdamW updates the fp32 params.

Randomness: the step's key is `fold_in(key(seed), step)`, so a run restored at step k draws exactly the keys
of an uninterrupted one (bit-exact resume with the data iterator's state).

Loss function contract: `loss_fn(params, batch, rng) -> (loss () float32, aux dict[str, () float])`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from f3d_jax.models.config import CroCoConfig, DUSt3RConfig, MASt3RConfig
from f3d_jax.models.croco import masked_mse, random_mask
from f3d_jax.models.model import abstract_module, croco_forward, symmetric_forward
from f3d_jax.nn.compat import nnx
from f3d_jax.train.optim import path_str

LossFn = Callable[[Mapping, Mapping, jax.Array], tuple[jax.Array, dict]]


@struct.dataclass
class TrainState:
    """step: () int32, optimiser updates done; params: fp32 master params (plain nested dict); opt_state."""

    step: jax.Array
    params: dict
    opt_state: Any


# ---------------------------------------------------------------------------------------------
# params


def init_params(config: CroCoConfig, seed: int = 0, shardings: Any = None) -> dict:
    """The official random initialisation as a plain params dict (`shardings`: place each array directly with its
    sharding; seeded per leaf, so every host computes the same values and places only its shards).

    CroCoNet.initialize_weights: every Linear of the backbone (and CroCo's prediction head) xavier_uniform with zero
    bias, the patch-embedding conv xavier_uniform on its (out, in*kh*kw) view, LayerNorms (1, 0), `mask_token`
    normal(0, 0.02). DUSt3R/MASt3R heads are created after that call, so they keep PyTorch's default
    (kaiming_uniform(a=sqrt(5)): weights and biases U(+-1/sqrt(fan_in))). CroCo v1's cosine position tables are
    the fixed sincos values.
    """
    from f3d_jax.models.model import abstract_params
    from f3d_jax.nn.pos_embed import sincos_2d

    abstract = abstract_params(config)
    flat = [(path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]]
    has_scale = {k.rsplit("/", 1)[0] for k, _ in flat if k.endswith("/scale")}
    hw = (config.img_size[0] // config.patch_size, config.img_size[1] // config.patch_size)
    tables = {name: np.asarray(sincos_2d(x.shape[-1], *hw), np.float32) for name, x in flat
              if name in ("enc_pos_embed", "dec_pos_embed")}

    abstract_kernel = {name.rsplit("/", 1)[0]: x for name, x in flat if name.endswith("/kernel")}

    def uniform(rng, shape, bound):
        return ((rng.random(shape, dtype=np.float32) * 2 - 1) * np.float32(bound)).astype(np.float32)

    def leaf(i, name, x):
        # numpy on the host, one generator per leaf: no compile (XLA takes minutes on hundreds of threefry calls
        # for a DPT model), and the same values on every host of a multi-host run
        rng = np.random.default_rng([seed, i])
        shape, parent, last = tuple(x.shape), name.rsplit("/", 1)[0], name.rsplit("/", 1)[-1]
        if name in tables:
            return tables[name].reshape(shape)
        if name == "mask_token":
            return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        if last == "scale":
            return np.ones(shape, np.float32)
        kernel = abstract_kernel.get(parent)
        fan_in = int(np.prod(kernel.shape[:-1])) if kernel is not None else 1
        if name.startswith("downstream_head"):  # PyTorch's default init of Linear / Conv layers
            if last == "bias" and parent in has_scale:
                return np.zeros(shape, np.float32)
            return uniform(rng, shape, 1.0 / np.sqrt(max(fan_in, 1)))
        if last == "bias":
            return np.zeros(shape, np.float32)
        return uniform(rng, shape, np.sqrt(6.0 / (fan_in + shape[-1])))  # xavier_uniform ((out, in*kh*kw) view)

    leaves = []
    shard_leaves = jax.tree.leaves(shardings) if shardings is not None else [None] * len(flat)
    for i, ((name, x), sh) in enumerate(zip(flat, shard_leaves, strict=True)):
        value = leaf(i, name, x)
        if sh is None:
            leaves.append(jnp.asarray(value))
        else:  # each process places only its own shards
            leaves.append(jax.make_array_from_callback(value.shape, sh, lambda idx, v=value: v[idx]))
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)

def trainable_mask(config: CroCoConfig, freeze: str | None = None) -> dict:
    """Bool pytree like the params: False for what the official training never updates.

    - buffers (CroCo v1's cosine position tables: `register_buffer` officially);
    - DUSt3R / MASt3R: `mask_token` (unused by the stereo forward: no gradient, so AdamW skips it and its
      weight decay), MASt3R's `refinenet4.resConfUnit1` (the first DPT fusion block has one input and never
      calls it), and the `freeze` groups of `set_freeze` ('mask': mask_token; 'encoder': mask_token,
      patch_embed, enc_blocks). `freeze` defaults to the config's.
    """
    _, param_state, _ = nnx.split(abstract_module(config), nnx.Param, ...)
    is_param = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(param_state))[0]}
    frozen_prefixes: tuple[str, ...] = ()
    if isinstance(config, DUSt3RConfig):
        freeze = config.freeze if freeze is None else freeze
        groups = {"none": (), "mask": (), "encoder": ("patch_embed/", "enc_blocks/")}
        if freeze not in groups:
            raise ValueError(f"freeze={freeze!r}: the official DUSt3R set_freeze modes are {sorted(groups)}")
        frozen_prefixes = ("mask_token",) + groups[freeze]
        if isinstance(config, MASt3RConfig):
            frozen_prefixes += tuple(f"downstream_head{i}/dpt/scratch/refinenet4/resConfUnit1/" for i in (1, 2))

    from f3d_jax.models.model import abstract_params

    def rule(path, _):
        s = path_str(path)
        return s in is_param and not s.startswith(frozen_prefixes)

    return jax.tree_util.tree_map_with_path(rule, abstract_params(config))


def cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


# ---------------------------------------------------------------------------------------------
# loss functions


def croco_loss_fn(config: CroCoConfig, norm_pix_loss: bool = True, precision: str | None = None,
                  remat: str | None = None) -> LossFn:
    """CroCo pretraining: `out, mask, target = model(img1, img2)`; `MaskedMSE(norm_pix_loss)`.

    `remat` (None | 'none' | 'blocks' | 'dots'): checkpoint every block (`f3d_jax.nn.remat`).

    batch: {'view1': {'img': (B, S, S, 3)}, 'view2': {'img': ...}} (or {'img1', 'img2'}); the mask is drawn
    from `rng` (the official `RandomMask`: exactly int(mask_ratio * N) hidden tokens per row)."""
    def loss_fn(params, batch, rng):
        img1 = batch["view1"]["img"] if "view1" in batch else batch["img1"]
        img2 = batch["view2"]["img"] if "view2" in batch else batch["img2"]
        mask = random_mask(rng, img1.shape[0], config.num_patches, config.mask_ratio)
        out, mask, target = croco_forward(config, params, img1, img2, mask, precision=precision, remat=remat)
        loss = masked_mse(out.astype(jnp.float32), mask, target.astype(jnp.float32), norm_pix_loss)
        return loss, {}

    return loss_fn


def interleave(a: jax.Array, b: jax.Array) -> jax.Array:
    """(B, ...), (B, ...) -> (2B, ...) with a[i] at 2i and b[i] at 2i+1 (dust3r's `_interleave_imgs`)."""
    return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def symmetrize(view1: Mapping, view2: Mapping) -> tuple[dict, dict]:
    """dust3r's `make_batch_symmetric`: (interleave(v1, v2), interleave(v2, v1)) key by key."""
    return ({k: interleave(view1[k], view2[k]) for k in view1}, {k: interleave(view2[k], view1[k]) for k in view1})


def stereo_loss_fn(config: DUSt3RConfig, criterion: Callable, symmetrize_batch: bool = True,
                   precision: str | None = None, remat: str | None = None) -> LossFn:
    """DUSt3R / MASt3R: `loss_of_one_batch(batch, model, criterion, symmetrize_batch=True)`.

    With `symmetrize_batch` the criterion sees the official interleaved batch (pair b at 2b, its swap at 2b+1);
    each image is encoded once (as the official model does on a symmetrized batch) through
    `symmetric_forward`, whose two directions are interleaved into (pred1, pred2).
    `criterion(gt1, gt2, pred1, pred2) -> (loss, details)` (`f3d_jax.train.losses.build_criterion`).
    `remat` (None | 'none' | 'blocks' | 'dots'): checkpoint the encoder and decoder blocks and the heads
    (`f3d_jax.nn.remat`)."""
    def loss_fn(params, batch, rng):
        v1, v2 = dict(batch["view1"]), dict(batch["view2"])
        for v in (v1, v2):
            if "true_shape" not in v:
                v["true_shape"] = jnp.tile(jnp.array(v["img"].shape[1:3], jnp.int32), (v["img"].shape[0], 1))
        if symmetrize_batch:
            r11, r21, r22, r12 = symmetric_forward(config, params, v1["img"], v2["img"], v1["true_shape"],
                                                   v2["true_shape"], precision=precision, remat=remat)
            pred1 = {k: interleave(r11[k], r22[k]) for k in r11}
            pred2 = {k: interleave(r21[k], r12[k]) for k in r21}
            pred2["pts3d_in_other_view"] = pred2.pop("pts3d")
            v1, v2 = symmetrize(v1, v2)
        else:
            from f3d_jax.models.model import stereo_forward
            pred1, pred2 = stereo_forward(config, params, v1["img"], v2["img"], v1["true_shape"], v2["true_shape"],
                                          precision=precision, remat=remat)
        pred1 = cast_floats(pred1, jnp.float32)
        pred2 = cast_floats(pred2, jnp.float32)
        loss, details = criterion(v1, v2, pred1, pred2)
        return loss, dict(details)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# the step


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, trainable: Any = None,
                    accum_iter: int = 1, compute_dtype: Any = None,
                    schedule: Callable | None = None) -> Callable[[TrainState, Any, jax.Array], tuple]:
    """The pure step `step(state, batch, key) -> (state, metrics)` (jit it with `jit_train_step`).

    metrics: 'loss' (mean over micro-batches), 'grad_norm' (global norm of the mean gradient, before
    clipping), 'lr' (when `schedule` is given) and the mean of the loss function's aux values."""
    if accum_iter < 1:
        raise ValueError(f"accum_iter={accum_iter} should be >= 1")

    def grads_of(params, batch, rng):
        def f(p):
            if compute_dtype is not None:
                p = cast_floats(p, compute_dtype)
            loss, aux = loss_fn(p, batch, rng)
            return loss.astype(jnp.float32), jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), aux)

        (loss, aux), g = jax.value_and_grad(f, has_aux=True)(params)
        return loss, aux, g

    def step(state: TrainState, batch: Any, key: jax.Array):
        rng = jax.random.fold_in(key, state.step)
        if accum_iter == 1:
            loss, aux, grads = grads_of(state.params, batch, rng)
        else:
            def body(carry, xs):
                gsum, lsum = carry
                mb, r = xs
                loss, aux, g = grads_of(state.params, mb, r)
                return (jax.tree.map(jnp.add, gsum, g), lsum + loss), aux

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            (gsum, lsum), auxs = jax.lax.scan(body, (zeros, jnp.float32(0)),
                                              (batch, jax.random.split(rng, accum_iter)))
            grads = jax.tree.map(lambda g: g / accum_iter, gsum)
            loss, aux = lsum / accum_iter, jax.tree.map(lambda a: a.mean(0), auxs)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        if trainable is not None:
            grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def jit_train_step(step: Callable, state_shardings: Any, batch_shardings: Any, mesh: jax.sharding.Mesh,
                   donate: bool = True) -> Callable:
    """`jax.jit` with the state and batch shardings in, the same state shardings out, metrics replicated."""
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(step, in_shardings=(state_shardings, batch_shardings, rep), out_shardings=(state_shardings, rep),
                   donate_argnums=(0,) if donate else ())


def init_state(params: dict, optimizer: optax.GradientTransformation, state_shardings: Any = None) -> TrainState:
    """TrainState at step 0 (the optimiser state built under jit, laid out as `state_shardings`)."""
    def make(p):
        return TrainState(jnp.int32(0), p, optimizer.init(p))

    if state_shardings is None:
        return make(params)
    return jax.jit(make, in_shardings=(state_shardings.params,), out_shardings=state_shardings)(params)


def abstract_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStruct pytree of the TrainState (no memory)."""
    return jax.eval_shape(lambda p: TrainState(jnp.int32(0), p, optimizer.init(p)), params)


def stack_micro_batches(batches: list[Mapping]) -> Any:
    """[micro-batch (B, ...)] * accum -> leaves (accum, B, ...) (one update's input); one batch is returned as is."""
    if len(batches) == 1:
        return batches[0]
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def numeric(batch: Mapping) -> Any:
    """The batch without its non-numeric entries (dataset names, instance strings: never sent to devices)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, Mapping):
            out[k] = numeric(v)
        else:
            a = np.asarray(v)
            if a.dtype.kind in "biuf":
                out[k] = a
    return out
