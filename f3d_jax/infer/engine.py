"""Batched, sharded pair inference with an encoder cache. Equivalent of dust3r/inference.py:inference
and mast3r/cloud_opt/sparse_ga.py:symmetric_inference.

The official `inference` concatenates consecutive pairs into batches and runs the whole network on
each (the ViT encoder twice per pair, once per pair on symmetrized same-size batches). Here:

1. every distinct image (`f3d_jax.infer.views`: identity is the pixels) is encoded once, in padded
   batches of a fixed size, into a per-shape feature store kept on the devices (capacity padded to a
   power of two number of encoder batches, so the store shape, hence the compiled code, only changes
   when the number of images crosses a power of two);
2. pairs are grouped by (view-1 shape, view-2 shape) bucket and decoded in batches of a fixed size
   (the last one padded) that gather their features from the store inside the jitted step (on CPU,
   a step runs large pairs one per device at a time, `lax.map`, so their activations stay in cache);
3. everything runs on a 1-D `('data',)` mesh over the chosen devices: params replicated, the feature
   stores split on their image axis (the decode step gathers the rows its pairs need), every image /
   pair batch split on its batch axis (the batch is rounded up to a
   multiple of the device count);
4. each decoded batch is written, where it was produced, into its shape bucket's output buffers
   (`f3d_jax.infer.outputs`): predictions stay on the devices until asked for, then come to the host in
   one transfer per bucket (started as soon as the bucket is decoded), and the official layout is made
   of views of those arrays, not per-pair copies. Peak device memory: the stores, one bucket's outputs
   and the step's temporaries.

State: an `InferenceEngine` prepares (casts, replicates) the model's params once, when it is built,
and owns that copy; nothing is kept at module level but JAX's cache of compiled steps
(`f3d_jax.infer.steps`). `inference()` builds a fresh engine per call, so it always runs the model's
current weights (in-place edits included); to reuse the prepared params across calls, keep an engine.

The output layout is exactly the official one (`f3d_jax.infer.collate`). Here the batch size is *not*
forced to 1 for mixed image sizes: pairs are still batched within each shape bucket; only the
returned layout follows the official one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.infer.collate import collate_preds, collate_views, rename_view2, same_size
from f3d_jax.infer.outputs import Bucket, LazyRows, PairOutputs
from f3d_jax.infer.steps import (batch_sharded, cast_for_inference, decode_step, encode_step, make_mesh,
                                 place_batch, prepare_params, replicated, rows_sharded)
from f3d_jax.infer.views import DistinctImage, Pair, PairInputError, View, check_pairs, distinct_images
from f3d_jax.models.config import DUSt3RConfig
from f3d_jax.models.model import Model, encode_images
from f3d_jax.nn.precision import check_precision

# The public names of the engine, with those now defined in views / steps / collate (importable from here as before).
__all__ = ["CPU_PAIR_TOKENS", "DECODE_TEMP_BYTES", "auto_pairs_per_step", "EngineStats", "InferenceEngine", "Pair", "PairInputError", "View", "cast_for_inference",
           "collate_preds", "collate_views", "inference", "make_mesh", "same_size", "symmetric_inference",
           "symmetric_inference_pairs"]


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
    decode_s: float = 0.0  # iter_batches: dispatch only; decode / predict / __call__: until the last batch is decoded
    fetch_s: float = 0.0  # predict / __call__: device-to-host transfer after decoding (one per shape bucket)
    collate_s: float = 0.0  # __call__: building the official layout (views of the fetched arrays, input views)
    buckets: dict = dataclasses.field(default_factory=dict)  # (hw1, hw2) -> number of pairs


@dataclasses.dataclass
class _Store:
    feat: jax.Array  # (C, N, Ce) sharded on 'data' (image axis)
    pos: jax.Array  # (C, N, 2) int32 sharded on 'data' 


# On CPU, pairs with at least this many tokens (both views) are decoded one per device at a time (measured on
# a 2-core EPYC: 512x384 DPT pairs (1536 tokens) 1.1-1.2x faster than in a batch of 4; 224x224 pairs (392)
# as fast or faster batched).
CPU_PAIR_TOKENS = 1024

# With host outputs, predictions are decoded into segments of about this many bytes, each moved to the host
# while the next is decoded (`InferenceEngine.decode`): large transfers, bounded device memory.
OUTPUT_SEGMENT_BYTES = 1 << 30


# Off the CPU, the decode step's temporaries are kept under this many bytes by decoding a batch in sequential
# sub-steps (`auto_pairs_per_step`), so that batch 8 of 512x384 DPT pairs fits a 16 GB GPU next to the weights,
# the feature stores and the outputs (the whole batch at once: 4.1 GiB of temporaries, XLA memory analysis).
DECODE_TEMP_BYTES = 3 << 29  # 1.5 GiB

# Temporaries of the DPT heads per output pixel of a pair (both views summed), by XLA's memory analysis of the
# decode step (CPU, float32 heads, 512x384, full-size and tiny trunks alike: 528 MiB per pair, i.e. about
# 1.4 kB per pixel of each view): the DPT heads' full-resolution feature maps dominate the step's memory.
DPT_TEMP_BYTES_PER_PIXEL = 1408


def decode_temp_bytes(config: DUSt3RConfig, hw1: tuple[int, int], hw2: tuple[int, int], pairs: int) -> int:
    """Estimated temporaries of a decode step running `pairs` pairs at once (DPT heads; 0 for linear heads,
    whose maps are token-sized)."""
    if "dpt" not in str(config.head_type):
        return 0
    return pairs * DPT_TEMP_BYTES_PER_PIXEL * (hw1[0] * hw1[1] + hw2[0] * hw2[1])


def auto_pairs_per_step(config: DUSt3RConfig, hw1: tuple[int, int], hw2: tuple[int, int], batch: int,
                        n_devices: int, platform: str, temp_bytes: int | None = None) -> int | None:
    """The decoder's sub-step size (`InferenceEngine` `pairs_per_step`) chosen from the backend.

    * CPU: one pair per device for pairs of at least `CPU_PAIR_TOKENS` tokens (activations stay in cache);
      the whole batch otherwise.
    * GPU / TPU ('accelerator'): the whole batch when its estimated temporaries (`decode_temp_bytes`, per
      device) fit `temp_bytes` (default `DECODE_TEMP_BYTES`); otherwise the largest sub-step (a multiple of
      `n_devices` dividing `batch`) that fits, at least one pair per device.

    Returns:
      pairs per sub-step, or None for the whole batch in one step.
    """
    if platform == "cpu":
        tokens = (hw1[0] * hw1[1] + hw2[0] * hw2[1]) // config.patch_size**2
        return n_devices if tokens >= CPU_PAIR_TOKENS else None
    budget = DECODE_TEMP_BYTES if temp_bytes is None else temp_bytes
    if decode_temp_bytes(config, hw1, hw2, batch // n_devices) <= budget:
        return None
    fits = [k for k in range(n_devices, batch, n_devices)
            if batch % k == 0 and decode_temp_bytes(config, hw1, hw2, k // n_devices) <= budget]
    return max(fits, default=n_devices)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class InferenceEngine:
    """Pair inference for one model on one device mesh.

    The engine prepares the model's params when it is built (cast to `dtype`, replicated over the mesh)
    and owns that copy (`self.params`) for its lifetime: keep the engine to run many pair lists without
    preparing the params again, and drop it to free the copy. It runs the weights as they were when it
    was built: after editing `model.params`, build a new engine (`inference()` always does). Compiled
    steps are shared by every engine with the same config, settings, mesh and shapes.

    Args:
      model: a DUSt3R / MASt3R `Model`.
      batch_size: pairs per decoder step; rounded up to a multiple of the device count.
      dtype: compute dtype of encoder and decoders (e.g. `jnp.bfloat16`); None keeps the params' dtype.
        The heads stay float32 (their params are not cast: the official autocast runs them in float32), the
        documented default. Heads in bf16 too (less memory and time on GPU/TPU) is the choice of passing a
        model whose params are all bf16 with `dtype=None`. `experiments/bench_inference.py --accuracy`
        measures both against float32 (full-size DUSt3R-224-linear, random weights, CPU: max relative error
        3.4e-2 with float32 heads, 3.5e-2 with bf16 heads: the bf16 trunk dominates).
      attention_impl: None (default: portable XLA attention, every backend), or the `implementation` of
        `jax.nn.dot_product_attention` ('xla'; 'cudnn': NVIDIA GPU with a bfloat16/float16 `dtype` only).
      precision: matmul/convolution precision of float32 compute: None (default) = 'highest' (exact float32,
        `Precision.HIGHEST`) unless `dtype` is bfloat16/float16, then 'default' (the backend's fastest, heads
        included); or 'highest' | 'high' (TF32 on GPU) | 'default'. See `f3d_jax.nn.precision`.
      devices: devices of the 1-D data mesh (default: all).
      encoder_batch_size: images per encoder step (default `batch_size`); rounded up likewise.
      pairs_per_step: the decoder step runs its batch in sequential sub-steps of this many pairs (a
        multiple of the device count dividing the batch size; `decode_pairs`). None (default) picks
        (`auto_pairs_per_step`): on CPU, one pair per device for pairs of at least `CPU_PAIR_TOKENS` tokens
        (512x384: 1536), whose decoder and DPT activations then stay in cache (1.1x to 1.2x faster), the
        whole batch otherwise; on GPU / TPU, the largest sub-step whose temporaries fit `DECODE_TEMP_BYTES`
        (batch 8 of 512x384 DPT pairs: 2 pairs at a time, about 1.1 GiB instead of 4.1 GiB).
    """

    def __init__(self, model: Model, batch_size: int = 8, *, dtype: Any = None, attention_impl: str | None = None,
                 devices: Sequence[jax.Device] | None = None, encoder_batch_size: int | None = None,
                 pairs_per_step: int | None = None, precision: str | None = None):
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
        self.precision = check_precision(precision)
        self.params = prepare_params(model.params, self.dtype, self.mesh)  # owned: see the class docstring
        self._data = batch_sharded(self.mesh)
        self._rep = replicated(self.mesh)
        self._rows = rows_sharded(self.mesh)
        self.stats = EngineStats()

    # -- encoder -----------------------------------------------------------------------------

    def _store_capacity(self, n: int) -> int:
        nb = -(-n // self.encoder_batch_size)
        return self.encoder_batch_size * (1 << max(0, math.ceil(math.log2(nb))))

    def empty_store(self, hw: tuple[int, int], n: int) -> tuple[jax.Array, jax.Array]:
        """Zeroed feature / position stores for `n` images of size `hw`, split over the mesh on the image axis
        (the capacity is a multiple of the encoder batch, itself a multiple of the device count)."""
        be = self.encoder_batch_size
        img_spec = jax.ShapeDtypeStruct((be, *hw, 3), jnp.float32)
        ts_spec = jax.ShapeDtypeStruct((be, 2), jnp.int32)
        f_spec, p_spec = jax.eval_shape(
            lambda p, i, t: encode_images(self.config, p, i, t, self.attention_impl), self.params, img_spec, ts_spec)
        cap = self._store_capacity(n)
        return (jnp.zeros((cap, *f_spec.shape[1:]), f_spec.dtype, device=self._data),
                jnp.zeros((cap, *p_spec.shape[1:]), jnp.int32, device=self._data))

    def encode(self, images: Sequence[DistinctImage],
               verbose: bool = False) -> tuple[dict[tuple, tuple[tuple, int]], dict[tuple, _Store]]:
        """Encode distinct images (grouped by shape) into per-shape stores.

        Returns:
          slot: image key -> (shape (H, W), row in that shape's store); stores: shape -> _Store.
        """
        by_shape: dict[tuple[int, int], list[DistinctImage]] = {}
        for im in images:
            by_shape.setdefault(im.hw, []).append(im)
        step = functools.partial(encode_step, config=self.config, impl=self.attention_impl, mesh=self.mesh,
                                 precision=self.precision)
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
        platforms = {d.platform for d in self.mesh.devices.flat}
        return auto_pairs_per_step(self.config, hw1, hw2, self.batch_size, self.n_devices,
                                   "cpu" if platforms == {"cpu"} else "accelerator")

    def _batches(self, pairs: Sequence[Pair], verbose: bool) -> Iterator[tuple[tuple, list[int], int, list[int], tuple]]:
        """Encode, then yield (bucket shapes, bucket members, batch row j, pair indices of the batch's real rows,
        (pred1, pred2)) per decoded batch, as dispatched."""
        pairs = check_pairs(pairs, "inference")
        per_pair, distinct = distinct_images(pairs, "inference")
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
        put = functools.partial(jax.device_put, device=self._data)
        for (hw1, hw2), members in buckets.items():
            step = functools.partial(decode_step, config=self.config, impl=self.attention_impl, mesh=self.mesh,
                                     hw1=hw1, hw2=hw2, pairs_per_step=self._pairs_per_step(hw1, hw2),
                                     precision=self.precision)
            s1, s2 = stores[hw1], stores[hw2]
            for start in range(0, len(members), bs):
                chunk = members[start:start + bs]
                rows = chunk + [chunk[0]] * (bs - len(chunk))  # pad with a real pair: static batch shape
                i1 = np.array([slot[per_pair[k][0].key][1] for k in rows], np.int32)
                i2 = np.array([slot[per_pair[k][1].key][1] for k in rows], np.int32)
                ts1 = np.stack([per_pair[k][0].true_shape for k in rows])
                ts2 = np.stack([per_pair[k][1].true_shape for k in rows])
                out = step(self.params, s1.feat, s1.pos, s2.feat, s2.pos, put(i1), put(i2), put(ts1), put(ts2))
                st.decoder_calls += 1
                st.decoder_pairs += len(chunk)
                yield (hw1, hw2), members, start // bs, chunk, out
                bar.update(len(chunk))
        bar.close()
        st.decode_s = time.perf_counter() - t0

    def iter_batches(self, pairs: Sequence[Pair], verbose: bool = False) -> Iterator[tuple[list[int], tuple]]:
        """Encode every distinct image once, then yield decoded pair batches as they are dispatched.

        Yields:
          (pair indices of the batch's real rows, (pred1, pred2) device arrays of batch
          `self.batch_size` sharded on 'data' (rows past the real ones are padding)).
        """
        for _, _, _, chunk, out in self._batches(pairs, verbose):
            yield chunk, out

    def decode(self, pairs: Sequence[Pair], verbose: bool = False, *, to_host: bool = False,
               segment_bytes: int = OUTPUT_SEGMENT_BYTES) -> PairOutputs:
        """Encode and decode `pairs`; the predictions stay on the devices (`PairOutputs`: per shape bucket,
        buffers that each batch is written into where it was decoded).

        Args:
          to_host: the caller will want host arrays: a bucket is cut into segments of at most `segment_bytes`
            of predictions (at least one batch); each segment's copy to the host starts as soon as it is
            decoded, and it is moved to the host (device buffers dropped) once the next one is decoded, so
            the devices never hold more than two segments of predictions, however large the graph.
            False: one segment per bucket, all kept on the devices.

        `stats.decode_s` runs until the last batch is decoded (blocked on it).
        """
        out = PairOutputs(0)
        buf: Any = None
        seg0 = seg_end = 0
        for key, members, j, _, pred in self._batches(pairs, verbose):
            if j == 0 or j == seg_end:  # a new segment
                per_batch = sum(a.nbytes for a in jax.tree.leaves(pred))
                nb_bucket = -(-len(members) // self.batch_size)
                seg_nb = nb_bucket if not to_host else max(1, min(nb_bucket, segment_bytes // max(1, per_batch)))
                seg0, seg_end = j, min(j + seg_nb, nb_bucket)
                buf = jax.tree.map(lambda o, nb=seg_end - seg0: jnp.zeros((nb, *o.shape), o.dtype, device=self._rows),
                                   pred)
            buf = place_batch(buf, pred, np.int32(j - seg0), mesh=self.mesh)
            if j == seg_end - 1:
                rows = members[seg0 * self.batch_size:seg_end * self.batch_size]
                out.add(Bucket(key, tuple(rows), buf), start_transfer=to_host)
                buf = None
                if to_host and len(out.segments) > 1:
                    out.release(len(out.segments) - 2)
        out.n_pairs = self.stats.n_pairs
        jax.block_until_ready([s.preds for s in out.segments if s.preds is not None])
        self.stats.decode_s = time.perf_counter() - self._decode_t0
        return out

    def predict(self, pairs: Sequence[Pair], verbose: bool = False) -> PairOutputs:
        """Per-pair predictions on the host: a sequence of (pred1, pred2) with (H, W, ...) numpy arrays (no
        batch dim; row views of one host array per shape bucket, fetched in one transfer per bucket)."""
        out = self.decode(pairs, verbose, to_host=True)
        t0 = time.perf_counter()
        out.host()
        self.stats.fetch_s = time.perf_counter() - t0
        return out

    def __call__(self, pairs: Sequence[Pair], verbose: bool = False, *, to_host: bool = True) -> dict[str, Any]:
        """The official `inference` result for `pairs` (layouts: `f3d_jax.infer.collate`).

        `to_host=False` leaves the predictions on the devices: `pred{1,2}` then hold (P, H, W, ...) device
        arrays in the batched layout, and `LazyRows` (one host transfer per bucket on first read) in the
        per-pair list layout."""
        pairs = check_pairs(pairs, "inference")
        if verbose:
            print(f">> Inference with model on {len(pairs)} image pairs")
        out = self.predict(pairs, verbose) if to_host else self.decode(pairs, verbose)
        t0 = time.perf_counter()
        lists = not same_size(pairs)
        if lists:
            if to_host:
                rows = list(out)  # numpy row views of the per-bucket host arrays
                preds = tuple(collate_preds([r[w] for r in rows], True) for w in (0, 1))
            else:
                preds = tuple({k: LazyRows(out, w, k) for k in out.keys(w)} for w in (0, 1))
        else:
            preds = out.stacked(to_host)
        res = {"view1": collate_views([p[0] for p in pairs], lists),
               "view2": collate_views([p[1] for p in pairs], lists),
               "pred1": preds[0], "pred2": preds[1]}
        self.stats.collate_s = time.perf_counter() - t0
        return res




def _progress(total: int, desc: str, unit: str, verbose: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not verbose, leave=False)


# ---------------------------------------------------------------------------------------------
# public functions


def inference(pairs: Sequence[Pair], model: Model, batch_size: int = 8, verbose: bool = True, *,
              dtype: Any = None, attention_impl: str | None = None, devices: Sequence[jax.Device] | None = None,
              encoder_batch_size: int | None = None, pairs_per_step: int | None = None,
              to_host: bool = True, precision: str | None = None) -> dict[str, Any]:
    """Pairwise predictions, the official `dust3r.inference.inference(pairs, model, device, batch_size)`.

    Each distinct image is encoded once; pairs are decoded in padded, fixed-size batches sharded
    over `devices` (a second call with images of the same sizes compiles nothing).

    Every call builds a fresh `InferenceEngine`, which prepares (casts / replicates) `model.params` as
    they are now, so the result always follows the model's current weights, exactly as `model(v1, v2)`
    does, and nothing of the model stays on the devices after the call. To run many pair lists on
    unchanged weights without preparing them each time, build one `InferenceEngine` and call it.

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
      to_host: True (default): predictions as numpy arrays, fetched in one transfer per shape bucket.
        False: they stay on the devices: (P, H, W, ...) `jax.Array`s in the batched layout, `LazyRows`
        (numpy rows, fetched per bucket on first read) in the per-pair list layout.
      precision: float32 matmul/conv precision (`InferenceEngine`; default: exact float32 for float32 compute).

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
                             encoder_batch_size=encoder_batch_size, pairs_per_step=pairs_per_step, precision=precision)
    return engine(pairs, verbose, to_host=to_host)


def symmetric_inference(model: Model, img1: View, img2: View, *, dtype: Any = None,
                        attention_impl: str | None = None, devices: Sequence[jax.Device] | None = None,
                        precision: str | None = None) -> tuple[dict, dict, dict, dict]:
    """MASt3R's `symmetric_inference`: encode the pair once, decode both ways.

    Runs through a fresh engine (the two images encoded once, then the pairs (1, 2) and (2, 1) decoded
    as one batch), so it shares compiled code with `inference` on images of the same sizes and runs the
    model's current weights. For a pure jittable version see `f3d_jax.models.model.symmetric_forward`.

    Args:
      model: a DUSt3R / MASt3R `Model`.
      img1, img2: image dicts with `img (1, H, W, 3)` (and optional `true_shape (1, 2)`).
      dtype, attention_impl, precision: as `inference`.
      devices: default the first device only (two pairs gain nothing from a wider mesh).

    Returns:
      (res11, res21, res22, res12) of (1, H, W, ...) float32 numpy arrays: res11/res21 = view 1's
      and view 2's points in view 1's frame (`model(view1, view2)`), res22/res12 = view 2's and
      view 1's points in view 2's frame. Points are under `pts3d` in all four (official naming).
    """
    engine = InferenceEngine(model, 2, dtype=dtype, attention_impl=attention_impl, precision=precision,
                             devices=jax.devices()[:1] if devices is None else devices)
    (r11, r21), (r22, r12) = engine.predict([(img1, img2), (img2, img1)])
    return tuple({k: v[None] for k, v in rename_view2(r).items()} for r in (r11, r21, r22, r12))


def symmetric_inference_pairs(pairs: Sequence[Pair], model: Model, batch_size: int = 8, verbose: bool = True,
                              **engine_kw: Any) -> dict[str, dict[str, Any]]:
    """`symmetric_inference` for many pairs through a fresh batched engine (each image encoded once;
    `engine_kw` as `InferenceEngine`).

    Returns:
      {'res11', 'res21', 'res22', 'res12'}: dicts of per-pair results in the layout `inference`
      would use for `pairs` (stacked `(P, H, W, ...)` arrays, or per-pair lists), keys as
      `symmetric_inference` (`pts3d` everywhere).
    """
    pairs = check_pairs(pairs, "symmetric_inference_pairs")
    engine = InferenceEngine(model, batch_size, **engine_kw)
    out = engine.predict(list(pairs) + [(b, a) for a, b in pairs], verbose)
    n = len(pairs)
    lists = not same_size(pairs)
    if not lists:  # one bucket (both directions, equal shapes) or two (forward, backward): views, no per-pair copy
        host = out.host()
        if len(host) == 1:
            h1, h2 = host[0]
            (f1, f2), (b1, b2) = [tuple({k: v[sl] for k, v in h.items()} for h in (h1, h2))
                                  for sl in (slice(None, n), slice(n, None))]
        else:
            (f1, f2), (b1, b2) = host
        return {"res11": dict(f1), "res21": rename_view2(f2), "res22": dict(b1), "res12": rename_view2(b2)}
    preds = list(out)
    fwd, bwd = preds[:n], preds[n:]
    return {
        "res11": collate_preds([p[0] for p in fwd], lists),
        "res21": collate_preds([rename_view2(p[1]) for p in fwd], lists),
        "res22": collate_preds([p[0] for p in bwd], lists),
        "res12": collate_preds([rename_view2(p[1]) for p in bwd], lists),
    }
