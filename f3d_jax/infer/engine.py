"""Batched, sharded pair inference with an encoder cache. Equivalent of dust3r/inference.py:inference
and mast3r/cloud_opt/sparse_ga.py:symmetric_inference.

The official `inference` concatenates consecutive pairs into batches and runs the whole network on
each (the ViT encoder twice per pair, once per pair on symmetrized same-size batches). Here:

1. every distinct image is encoded once, in padded batches of a fixed size, into a per-shape
   feature store kept on the devices (capacity padded to a power of two number of encoder batches,
   so the store shape, hence the compiled code, only changes when the number of images crosses a
   power of two);
2. pairs are grouped by (view-1 shape, view-2 shape) bucket and decoded in batches of a fixed size
   (the last one padded) that gather their features from the store inside the jitted step (on CPU,
   a step runs large pairs one per device at a time, `lax.map`, so their activations stay in cache);
3. everything runs on a 1-D `('data',)` mesh over the chosen devices: params and the feature store
   replicated, every image / pair batch split on its batch axis (the batch is rounded up to a
   multiple of the device count);
4. each decoded batch is moved to the host (numpy) as soon as the next one is dispatched, so the
   device never holds more than two batches of pointmaps.

Image identity (the encoder-cache key): two views are the same image when their pixels
(`img`, as float32) and `true_shape` are equal, byte for byte (a 128-bit BLAKE2 digest, computed
once per distinct array object in a call). `idx` / `instance` are not trusted: two loads of
different scenes both number their images 0..N-1.

Output layout (exactly the official one, `dust3r.utils.device.collate_with_cat`):

* 'batched' when every view 1 has one shape and every view 2 has one shape: `view{1,2}` hold
  `img (P, H, W, 3)` float32 (NHWC; official NCHW), `true_shape (P, 2)` int32, `idx` and
  `instance` as flat lists, any other key of the image dicts collated the same way; `pred{1,2}`
  hold `(P, H, W, ...)` float32 numpy arrays in pair order.
* 'per-pair lists' otherwise (the official code then forces batch size 1 and collates with
  `lists=True`): every array entry becomes a list of P arrays *without* the batch dimension
  (`img[k] (H, W, 3)`, `true_shape[k] (2,)`, `pred1['pts3d'][k] (H, W, 3)`); `idx`/`instance`
  stay flat lists. Here the batch size is *not* forced to 1: pairs are still batched within each
  shape bucket; only the returned layout follows the official one.

The official result also carries `loss: None`; it is left out.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from f3d_jax.models.config import DUSt3RConfig
from f3d_jax.models.model import Model, decode_pairs, encode_images

# Number of times each jitted step has been traced (incremented at trace time only): a second
# call with images of the same sizes must leave these unchanged.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

View = dict[str, Any]
Pair = tuple[View, View]


class PairInputError(ValueError):
    """A pair list that cannot be run (empty, not pairs of image dicts, bad image arrays)."""


# ---------------------------------------------------------------------------------------------
# input validation


@dataclasses.dataclass(frozen=True)
class _Image:
    """One distinct image of a call."""

    key: tuple  # (H, W, digest)
    img: np.ndarray  # (H, W, 3) float32
    true_shape: np.ndarray  # (2,) int32

    @property
    def hw(self) -> tuple[int, int]:
        return self.img.shape[0], self.img.shape[1]


def _image_of(view: Any, where: str, memo: dict[int, _Image]) -> _Image:
    if not isinstance(view, Mapping):
        raise PairInputError(f"{where} must be an image dict (as returned by load_images), got {type(view).__name__}")
    if "img" not in view:
        raise PairInputError(f"{where} has no 'img' entry (expected (1, H, W, 3) float32 in [-1, 1])")
    raw = view["img"]
    hit = memo.get(id(raw))
    if hit is not None:
        return hit
    img = np.asarray(jax.device_get(raw))
    if img.ndim != 4 or img.shape[0] != 1 or img.shape[-1] != 3:
        hint = ""
        if img.ndim == 4 and img.shape[1] == 3 and img.shape[-1] != 3:
            hint = " (this looks like NCHW; f3d-jax images are NHWC)"
        elif img.ndim == 4 and img.shape[-1] == 3:
            hint = (" (one image per view: inference pairs single images as load_images returns them; "
                    "a view of batch > 1 is not supported)")
        elif img.ndim == 3:
            hint = " (add the batch dimension: img[None])"
        raise PairInputError(f"{where}['img'] must have shape (1, H, W, 3), got {tuple(img.shape)}{hint}")
    if not np.issubdtype(img.dtype, np.floating):
        raise PairInputError(f"{where}['img'] must be floating point in [-1, 1], got dtype {img.dtype}")
    img = np.ascontiguousarray(img[0], dtype=np.float32)
    ts = view.get("true_shape")
    if ts is None:
        ts = np.array(img.shape[:2], np.int32)
    else:
        ts = np.asarray(jax.device_get(ts))
        if ts.size != 2:
            raise PairInputError(f"{where}['true_shape'] must be (1, 2) (height, width), got shape {ts.shape}")
        ts = ts.reshape(2).astype(np.int32)
    digest = hashlib.blake2b(img.tobytes(), digest_size=16)
    digest.update(ts.tobytes())
    out = _Image((img.shape[0], img.shape[1], digest.hexdigest()), img, ts)
    memo[id(raw)] = out
    return out


def _check_pairs(pairs: Any, fn: str) -> list[Pair]:
    if isinstance(pairs, Mapping) or not isinstance(pairs, Sequence) or isinstance(pairs, str):
        raise PairInputError(f"{fn}: pairs must be a list of (view1, view2) image-dict tuples "
                             f"(see make_pairs), got {type(pairs).__name__}")
    pairs = list(pairs)
    if not pairs:
        raise PairInputError(f"{fn}: empty pair list (make_pairs returns at least one pair per scene)")
    for k, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise PairInputError(f"{fn}: pair {k} must be a (view1, view2) tuple, got {type(p).__name__}"
                                 + (f" of length {len(p)}" if isinstance(p, (tuple, list)) else ""))
    return pairs


# ---------------------------------------------------------------------------------------------
# jitted steps (one jit object per config / implementation / mesh / shapes: built once, reused)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """1-D `('data',)` mesh over `devices` (default: every device)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("inference: empty device list")
    return jax.sharding.Mesh(np.array(devs), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@functools.lru_cache(maxsize=64)
def _encode_step(config: DUSt3RConfig, impl: str | None, mesh: jax.sharding.Mesh) -> Callable:
    """jit: encode a batch and write it into the replicated store at `offset` (store donated)."""

    def step(params, store_f, store_p, img, ts, offset):
        TRACE_COUNTS["encode"] += 1
        f, p = encode_images(config, params, img, ts, impl)
        store_f = jax.lax.dynamic_update_slice(store_f, f.astype(store_f.dtype), (offset, 0, 0))
        store_p = jax.lax.dynamic_update_slice(store_p, p.astype(store_p.dtype), (offset, 0, 0))
        return store_f, store_p

    rep = NamedSharding(mesh, P())
    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=(1, 2))


@functools.lru_cache(maxsize=64)
def _decode_step(config: DUSt3RConfig, impl: str | None, mesh: jax.sharding.Mesh, hw1: tuple[int, int],
                 hw2: tuple[int, int], pairs_per_step: int | None = None) -> Callable:
    """jit: gather a pair batch's features from the stores, run both decoders and heads."""

    def step(params, sf1, sp1, sf2, sp2, i1, i2, ts1, ts2):
        TRACE_COUNTS["decode"] += 1
        return decode_pairs(config, params, sf1[i1], sp1[i1], sf2[i2], sp2[i2], hw1, hw2, ts1, ts2, impl,
                            pairs_per_step)

    return jax.jit(step, out_shardings=NamedSharding(mesh, P("data")))


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


_PREPARED: list[tuple[Any, Any, Any, Any]] = []  # [(params ref, dtype, mesh, prepared)], one entry


def _prepare_params(params: Mapping, dtype: Any, mesh: jax.sharding.Mesh) -> dict:
    """Cast and replicate the params over the mesh (cached for the last model used)."""
    for ref, dt, m, prepared in _PREPARED:
        if ref is params and dt == dtype and m == mesh:
            return prepared
    p = params if dtype is None else cast_for_inference(params, dtype)
    prepared = jax.device_put(p, NamedSharding(mesh, P()))
    _PREPARED[:] = [(params, dtype, mesh, prepared)]
    return prepared


# ---------------------------------------------------------------------------------------------
# the engine


@dataclasses.dataclass
class EngineStats:
    """What the last run did (for tests and benchmarks)."""

    n_pairs: int = 0
    n_images: int = 0  # distinct images
    encoder_images: int = 0  # images that went through the encoder (padding excluded)
    encoder_calls: int = 0
    decoder_pairs: int = 0
    decoder_calls: int = 0
    encode_s: float = 0.0  # wall time, dispatch + compile + run (blocked at the end of encoding)
    decode_s: float = 0.0  # iter_batches: dispatch only; predict / __call__: until the last batch is on the host
    buckets: dict = dataclasses.field(default_factory=dict)  # (hw1, hw2) -> number of pairs


@dataclasses.dataclass
class _Store:
    feat: jax.Array  # (C, N, Ce) replicated
    pos: jax.Array  # (C, N, 2) int32 replicated


# On CPU, pairs with at least this many tokens (both views) are decoded one per device at a time (measured on
# a 2-core EPYC: 512x384 DPT pairs (1536 tokens) 1.1-1.2x faster than in a batch of 4; 224x224 pairs (392)
# as fast or faster batched).
CPU_PAIR_TOKENS = 1024


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class InferenceEngine:
    """Pair inference for one model on one device mesh.

    Args:
      model: a DUSt3R / MASt3R `Model`.
      batch_size: pairs per decoder step; rounded up to a multiple of the device count.
      dtype: compute dtype of encoder and decoders (e.g. `jnp.bfloat16`); heads stay float32.
        None keeps the params' dtype.
      attention_impl: `implementation` of `jax.nn.dot_product_attention` ('cudnn' on GPU bf16,
        None for XLA).
      devices: devices of the 1-D data mesh (default: all).
      encoder_batch_size: images per encoder step (default `batch_size`); rounded up likewise.
      pairs_per_step: the decoder step runs its batch in sequential sub-steps of this many pairs (a
        multiple of the device count dividing the batch size; `decode_pairs`). None (default) picks: on CPU, one pair per device
        for pairs of at least `CPU_PAIR_TOKENS` tokens (512x384: 1536), whose decoder and DPT activations
        then stay in cache (1.1x to 1.2x faster); the whole batch otherwise.
    """

    def __init__(self, model: Model, batch_size: int = 8, *, dtype: Any = None, attention_impl: str | None = None,
                 devices: Sequence[jax.Device] | None = None, encoder_batch_size: int | None = None,
                 pairs_per_step: int | None = None):
        if not isinstance(model, Model) or not isinstance(model.config, DUSt3RConfig):
            raise TypeError(f"inference needs a DUSt3R / MASt3R f3d_jax Model, got {type(model).__name__}"
                            + (f" with config {type(model.config).__name__}" if isinstance(model, Model) else ""))
        if isinstance(batch_size, str):
            raise TypeError(f"batch_size must be an int, got {batch_size!r} (f3d_jax.inference has no `device` "
                            "argument: pass devices=[...] to choose devices)")
        for name, v in (("batch_size", batch_size), ("encoder_batch_size", encoder_batch_size),
                        ("pairs_per_step", pairs_per_step)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.model = model
        self.config: DUSt3RConfig = model.config
        self.mesh = make_mesh(devices)
        self.n_devices = self.mesh.devices.size
        self.batch_size = _round_up(int(batch_size), self.n_devices)
        self.encoder_batch_size = _round_up(int(encoder_batch_size or batch_size), self.n_devices)
        if pairs_per_step is not None and (pairs_per_step % self.n_devices or self.batch_size % pairs_per_step):
            raise ValueError(f"pairs_per_step ({pairs_per_step}) must be a multiple of the device count "
                             f"({self.n_devices}) that divides the batch size ({self.batch_size})")
        self.pairs_per_step = pairs_per_step
        self.dtype = None if dtype is None else jnp.dtype(dtype)
        self.attention_impl = attention_impl
        self.params = _prepare_params(model.params, self.dtype, self.mesh)
        self._data = NamedSharding(self.mesh, P("data"))
        self._rep = NamedSharding(self.mesh, P())
        self.stats = EngineStats()

    # -- encoder -----------------------------------------------------------------------------

    def _store_capacity(self, n: int) -> int:
        nb = -(-n // self.encoder_batch_size)
        return self.encoder_batch_size * (1 << max(0, math.ceil(math.log2(nb))))

    def empty_store(self, hw: tuple[int, int], n: int) -> tuple[jax.Array, jax.Array]:
        """Zeroed replicated feature / position stores for `n` images of size `hw`."""
        be = self.encoder_batch_size
        img_spec = jax.ShapeDtypeStruct((be, *hw, 3), jnp.float32)
        ts_spec = jax.ShapeDtypeStruct((be, 2), jnp.int32)
        f_spec, p_spec = jax.eval_shape(
            lambda p, i, t: encode_images(self.config, p, i, t, self.attention_impl), self.params, img_spec, ts_spec)
        cap = self._store_capacity(n)
        return (jnp.zeros((cap, *f_spec.shape[1:]), f_spec.dtype, device=self._rep),
                jnp.zeros((cap, *p_spec.shape[1:]), jnp.int32, device=self._rep))

    def encode(self, images: Sequence[_Image], verbose: bool = False) -> tuple[dict[tuple, tuple[tuple, int]],
                                                                            dict[tuple, _Store]]:
        """Encode distinct images (grouped by shape) into per-shape stores.

        Returns:
          slot: image key -> (shape (H, W), row in that shape's store); stores: shape -> _Store.
        """
        by_shape: dict[tuple[int, int], list[_Image]] = {}
        for im in images:
            by_shape.setdefault(im.hw, []).append(im)
        step = _encode_step(self.config, self.attention_impl, self.mesh)
        be = self.encoder_batch_size
        slot: dict[tuple, tuple[tuple, int]] = {}
        stores: dict[tuple, _Store] = {}
        bar = _progress(len(images), "encode", "img", verbose)
        for hw, ims in by_shape.items():
            sf, sp = self.empty_store(hw, len(ims))
            for start in range(0, len(ims), be):
                chunk = ims[start:start + be]
                img = np.zeros((be, *hw, 3), np.float32)
                ts = np.tile(np.array(hw, np.int32), (be, 1))
                for r, im in enumerate(chunk):
                    img[r], ts[r] = im.img, im.true_shape
                    slot[im.key] = (hw, start + r)
                sf, sp = step(self.params, sf, sp, jax.device_put(img, self._data), jax.device_put(ts, self._data),
                              np.int32(start))
                self.stats.encoder_calls += 1
                self.stats.encoder_images += len(chunk)
                bar.update(len(chunk))
            stores[hw] = _Store(sf, sp)
        jax.block_until_ready([(s.feat, s.pos) for s in stores.values()])
        bar.close()
        return slot, stores

    # -- decoder -----------------------------------------------------------------------------

    def _pairs_per_step(self, hw1: tuple[int, int], hw2: tuple[int, int]) -> int | None:
        if self.pairs_per_step is not None:
            return self.pairs_per_step
        tokens = (hw1[0] * hw1[1] + hw2[0] * hw2[1]) // self.config.patch_size**2
        on_cpu = all(d.platform == "cpu" for d in self.mesh.devices.flat)
        return self.n_devices if on_cpu and tokens >= CPU_PAIR_TOKENS else None

    def iter_batches(self, pairs: Sequence[Pair], verbose: bool = False) -> Iterator[tuple[list[int], tuple]]:
        """Encode every distinct image once, then yield decoded pair batches as they are dispatched.

        Yields:
          (pair indices of the batch's real rows, (pred1, pred2) device arrays of batch
          `self.batch_size` sharded on 'data' (rows past the real ones are padding)).
        """
        pairs = _check_pairs(pairs, "inference")
        memo: dict[int, _Image] = {}
        per_pair: list[tuple[_Image, _Image]] = []
        for k, (v1, v2) in enumerate(pairs):
            per_pair.append((_image_of(v1, f"inference: pair {k} view1", memo),
                             _image_of(v2, f"inference: pair {k} view2", memo)))
        distinct = list({im.key: im for pp in per_pair for im in pp}.values())
        st = self.stats = EngineStats(n_pairs=len(pairs), n_images=len(distinct))

        t0 = time.perf_counter()
        slot, stores = self.encode(distinct, verbose)
        st.encode_s = time.perf_counter() - t0

        t0 = self._decode_t0 = time.perf_counter()
        buckets: dict[tuple, list[int]] = {}
        for k, (a, b) in enumerate(per_pair):
            buckets.setdefault((a.hw, b.hw), []).append(k)
        st.buckets = {k: len(v) for k, v in buckets.items()}
        bs = self.batch_size
        bar = _progress(len(pairs), "decode", "pair", verbose)
        for (hw1, hw2), members in buckets.items():
            step = _decode_step(self.config, self.attention_impl, self.mesh, hw1, hw2, self._pairs_per_step(hw1, hw2))
            s1, s2 = stores[hw1], stores[hw2]
            for start in range(0, len(members), bs):
                chunk = members[start:start + bs]
                rows = chunk + [chunk[0]] * (bs - len(chunk))  # pad with a real pair: static batch shape
                i1 = np.array([slot[per_pair[k][0].key][1] for k in rows], np.int32)
                i2 = np.array([slot[per_pair[k][1].key][1] for k in rows], np.int32)
                ts1 = np.stack([per_pair[k][0].true_shape for k in rows])
                ts2 = np.stack([per_pair[k][1].true_shape for k in rows])
                put = functools.partial(jax.device_put, device=self._data)
                out = step(self.params, s1.feat, s1.pos, s2.feat, s2.pos, put(i1), put(i2), put(ts1), put(ts2))
                st.decoder_calls += 1
                st.decoder_pairs += len(chunk)
                yield chunk, out
                bar.update(len(chunk))
        bar.close()
        st.decode_s = time.perf_counter() - t0

    def predict(self, pairs: Sequence[Pair], verbose: bool = False) -> list[tuple[dict, dict]]:
        """Per-pair predictions on the host: [(pred1, pred2)] with (H, W, ...) numpy arrays (no batch dim).

        Batch k's results are fetched after batch k+1 is dispatched (one batch of overlap).
        """
        n = len(_check_pairs(pairs, "inference"))
        out: list[Any] = [None] * n
        pending: tuple[list[int], Any] | None = None

        def land(item):
            idx, preds = item
            host = jax.device_get(preds)
            for r, k in enumerate(idx):
                out[k] = tuple({name: arr[r] for name, arr in pr.items()} for pr in host)

        for item in self.iter_batches(pairs, verbose):
            if pending is not None:
                land(pending)
            pending = item
        if pending is not None:
            land(pending)
        self.stats.decode_s = time.perf_counter() - self._decode_t0  # up to the last batch on the host
        return out

    def __call__(self, pairs: Sequence[Pair], verbose: bool = False) -> dict[str, Any]:
        """The official `inference` result for `pairs` (see the module docstring for the layouts)."""
        pairs = _check_pairs(pairs, "inference")
        if verbose:
            print(f">> Inference with model on {len(pairs)} image pairs")
        preds = self.predict(pairs, verbose)
        lists = not same_size(pairs)
        return {
            "view1": collate_views([p[0] for p in pairs], lists),
            "view2": collate_views([p[1] for p in pairs], lists),
            "pred1": _collate_preds([p[0] for p in preds], lists),
            "pred2": _collate_preds([p[1] for p in preds], lists),
        }


def _progress(total: int, desc: str, unit: str, verbose: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not verbose, leave=False)


# ---------------------------------------------------------------------------------------------
# official collation


def same_size(pairs: Sequence[Pair]) -> bool:
    """The official `check_if_same_size`: all view-1 images share a shape, and all view-2 images do
    (view 1 and view 2 may differ from each other). False selects the per-pair list layout."""
    s1 = {tuple(np.shape(a["img"])[1:3]) for a, _ in pairs}
    s2 = {tuple(np.shape(b["img"])[1:3]) for _, b in pairs}
    return len(s1) == 1 and len(s2) == 1


def _to_numpy(v: Any) -> Any:
    return np.asarray(jax.device_get(v)) if isinstance(v, jax.Array) else v


def _collate_values(vals: list[Any], lists: bool) -> Any:
    """`collate_with_cat` over one key of the per-pair view dicts (each a batch of 1)."""
    elem = vals[0]
    if elem is None:
        return None
    if isinstance(elem, (bool, float, int, str)):
        return list(vals)
    if isinstance(elem, (np.ndarray, jax.Array)):
        arrs = [_to_numpy(v) for v in vals]
        return [x for a in arrs for x in a] if lists else np.concatenate(arrs)
    if isinstance(elem, list):
        return [x for v in vals for x in v]
    if isinstance(elem, Mapping):
        return {k: _collate_values([v[k] for v in vals], lists) for k in elem}
    return list(vals)


def collate_views(views: Sequence[View], lists: bool) -> dict[str, Any]:
    """Collate the view dicts of every pair like the official code (keys of the first view)."""
    out = {}
    for key in views[0]:
        vals = [v[key] for v in views]
        if key == "img":
            vals = [np.asarray(jax.device_get(v), np.float32) for v in vals]
        elif key == "true_shape":
            vals = [np.asarray(jax.device_get(v), np.int32).reshape(-1, 2) for v in vals]
        out[key] = _collate_values(vals, lists)
    return out


def _collate_preds(preds: Sequence[Mapping[str, np.ndarray]], lists: bool) -> dict[str, Any]:
    if lists:
        return {k: [p[k] for p in preds] for k in preds[0]}
    return {k: np.stack([p[k] for p in preds]) for k in preds[0]}


# ---------------------------------------------------------------------------------------------
# public functions


def inference(pairs: Sequence[Pair], model: Model, batch_size: int = 8, verbose: bool = True, *,
              dtype: Any = None, attention_impl: str | None = None, devices: Sequence[jax.Device] | None = None,
              encoder_batch_size: int | None = None, pairs_per_step: int | None = None) -> dict[str, Any]:
    """Pairwise predictions, the official `dust3r.inference.inference(pairs, model, device, batch_size)`.

    Each distinct image is encoded once; pairs are decoded in padded, fixed-size batches sharded
    over `devices` (a second call with images of the same sizes compiles nothing).

    Args:
      pairs: list of (view1, view2) image dicts (`make_pairs` output); each view holds
        `img (1, H, W, 3)` float32 in [-1, 1] (NHWC), optional `true_shape (1, 2)`, `idx`, `instance`.
      model: a DUSt3R / MASt3R `Model`.
      batch_size: pairs per decoder step (rounded up to a multiple of the device count).
      verbose: print the official header line and show progress bars (images/s, pairs/s).
      dtype: compute dtype, e.g. `jnp.bfloat16` (heads stay float32, as official autocast).
      attention_impl: `jax.nn.dot_product_attention` implementation ('cudnn' on GPU).
      devices: devices of the 1-D data mesh (default: all of `jax.devices()`).
      encoder_batch_size: images per encoder step (default `batch_size`).
      pairs_per_step: pairs decoded at a time within a step (`InferenceEngine`; default: automatic).

    Returns:
      `{'view1', 'view2', 'pred1', 'pred2'}` with numpy arrays on the host, in pair order. Batched
      layout (all view-1 shapes equal and all view-2 shapes equal): `pred1['pts3d'] (P, H, W, 3)`,
      `pred1['conf'] (P, H, W)`, `pred2['pts3d_in_other_view'] (P, H, W, 3)` in view 1's camera
      frame, `pred2['conf']` (+ `desc (P, H, W, D)`, `desc_conf` for MASt3R); `view{1,2}['img']
      (P, H, W, 3)`, `['true_shape'] (P, 2)`, `['idx']`, `['instance']` lists. Otherwise the
      official per-pair list layout: each array entry is a list of P arrays without batch dim.

    Raises:
      PairInputError: empty pair list, a pair that is not two image dicts, a view whose `img` is
        not one (1, H, W, 3) float image (NCHW or a batch > 1 included).
      TypeError: not a DUSt3R/MASt3R model, or a device string passed as `batch_size`.
    """
    engine = InferenceEngine(model, batch_size, dtype=dtype, attention_impl=attention_impl, devices=devices,
                             encoder_batch_size=encoder_batch_size, pairs_per_step=pairs_per_step)
    return engine(pairs, verbose)


def _rename_view2(res: Mapping[str, Any]) -> dict[str, Any]:
    return {("pts3d" if k == "pts3d_in_other_view" else k): v for k, v in res.items()}


def symmetric_inference(model: Model, img1: View, img2: View, *, dtype: Any = None,
                        attention_impl: str | None = None,
                        devices: Sequence[jax.Device] | None = None) -> tuple[dict, dict, dict, dict]:
    """MASt3R's `symmetric_inference`: encode the pair once, decode both ways.

    Runs through the engine (the two images encoded once, then the pairs (1, 2) and (2, 1) decoded
    as one batch), so it shares compiled code with `inference` on images of the same sizes. For a
    pure jittable version see `f3d_jax.models.model.symmetric_forward`.

    Args:
      model: a DUSt3R / MASt3R `Model`.
      img1, img2: image dicts with `img (1, H, W, 3)` (and optional `true_shape (1, 2)`).
      dtype, attention_impl: as `inference`.
      devices: default the first device only (two pairs gain nothing from a wider mesh).

    Returns:
      (res11, res21, res22, res12) of (1, H, W, ...) float32 numpy arrays: res11/res21 = view 1's
      and view 2's points in view 1's frame (`model(view1, view2)`), res22/res12 = view 2's and
      view 1's points in view 2's frame. Points are under `pts3d` in all four (official naming).
    """
    engine = InferenceEngine(model, 2, dtype=dtype, attention_impl=attention_impl,
                             devices=jax.devices()[:1] if devices is None else devices)
    (r11, r21), (r22, r12) = engine.predict([(img1, img2), (img2, img1)])
    return tuple({k: v[None] for k, v in _rename_view2(r).items()} for r in (r11, r21, r22, r12))


def symmetric_inference_pairs(pairs: Sequence[Pair], model: Model, batch_size: int = 8, verbose: bool = True,
                              **engine_kw: Any) -> dict[str, dict[str, Any]]:
    """`symmetric_inference` for many pairs through the batched engine (each image encoded once).

    Returns:
      {'res11', 'res21', 'res22', 'res12'}: dicts of per-pair results in the layout `inference`
      would use for `pairs` (stacked `(P, H, W, ...)` arrays, or per-pair lists), keys as
      `symmetric_inference` (`pts3d` everywhere).
    """
    pairs = _check_pairs(pairs, "symmetric_inference_pairs")
    engine = InferenceEngine(model, batch_size, **engine_kw)
    preds = engine.predict(list(pairs) + [(b, a) for a, b in pairs], verbose)
    n = len(pairs)
    lists = not same_size(pairs)
    fwd, bwd = preds[:n], preds[n:]
    return {
        "res11": _collate_preds([p[0] for p in fwd], lists),
        "res21": _collate_preds([_rename_view2(p[1]) for p in fwd], lists),
        "res22": _collate_preds([p[0] for p in bwd], lists),
        "res12": _collate_preds([_rename_view2(p[1]) for p in bwd], lists),
    }
