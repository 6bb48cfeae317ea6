"""ASMK (aggregated selective match kernel) image similarity, as MASt3R's `Retriever` computes it with the
`asmk` library (github.com/jenicek/asmk), in `jnp` on the device and numpy index bookkeeping on the host.

Per image (`local_step`, one jitted step per padded batch of images, on the output of the model's jitted encoder;
first the retrieval head of `f3d_jax.retrieval.head`):

1. quantisation (`asmk.codebook.Codebook.quantize`, faiss `IndexFlatL2`): each local feature's `ma` nearest
   centroids in squared L2, computed as faiss does, `(|x|^2 + |c|^2) - 2 x.c`;
2. aggregation (`ASMKKernel.aggregate_image`): for every distinct visual word w of the image, the residual
   r_w = sum over the features assigned to w of (x - c_w);
3. binarisation (`hamming.binarize_and_pack_2D`): the bits r_w > 0, packed into uint32 words (first dimension in
   the most significant bit, the last word zero-padded).

Query side: `ma = query_assignments` (official 5); database side: `ma = database_assignments` (official 1).

Similarity (`IVF.search` + `ASMKKernel.similarity` + `functional.asmk_kernel`, idf off as official), for a query
image q and a database image d sharing visual words W:

  s_w = 1 - 2 * hamming(b_qw, b_dw) / B          (B = 32 * ceil(D / 32) bits)
  S[q, d] = (1 / sqrt(n_q)) * sum_{w in W, s_w >= threshold} s_w ** alpha / sqrt(n_d)

with n_q, n_d the numbers of distinct words of q (query side) and d (database side); alpha = 3, threshold = 0 in
the official `Retriever`. The pairs (query word, database entry of the same word) are the inverted file's lists,
found by sorting on the host; the kernel runs in fixed-size chunks on the device (`jax.lax.population_count`).

Parity with the official code (which needs faiss and the Cython `asmk` build): same formulas and parameters, the
same float32 arithmetic for the kernel and the normalisation (float64 accumulation over words, as the official
`scores` array). Measured against the real asmk 0.1.1 + faiss-cpu (`experiments/retrieval_parity.py`, clustered
synthetic features, D = 128 / 1024, K = 1024 / 4096): max |difference| 2.5e-8, the same ranking in every row.
Differences: the whitening runs in float32 at HIGHEST precision (official: float64); XLA's
float32 dot products and sums round differently from faiss' sgemm and numpy's, so a centroid at a near-tie
distance can be assigned differently and a residual component within rounding of 0 can flip its bit. Both change
scores by one visual word's contribution at most; the ranking of clearly different images does not change.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.models.model import Model, encode_images
from f3d_jax.nn.precision import check_precision
from f3d_jax.retrieval.encode import check_images, map_encoded
from f3d_jax.retrieval.head import RetrievalModel, local_features

# (query word, database entry) pairs per kernel step: a static shape (2 x 8 MiB of gathered bits at D = 1024)
KERNEL_CHUNK = 1 << 16


def quantize(x: jax.Array, codebook: jax.Array, cnorm: jax.Array, ma: int) -> jax.Array:
    """(k, D) features -> (k, ma) int32 ids of their `ma` nearest centroids, nearest first (faiss IndexFlatL2)."""
    hi = jax.lax.Precision.HIGHEST
    xn = jnp.sum(x * x, axis=-1, keepdims=True)
    d = (xn + cnorm[None, :]) - 2.0 * jnp.matmul(x, codebook.T, precision=hi)
    _, idx = jax.lax.top_k(-jnp.maximum(d, 0.0), ma)
    return idx.astype(jnp.int32)


def pack_bits(bits: jax.Array) -> jax.Array:
    """(U, D) bool -> (U, ceil(D / 32)) uint32, first dimension in the most significant bit, the last word padded
    with zeros (the Cython `binarize_and_pack_2D`)."""
    u, d = bits.shape
    nw = -(-d // 32)
    bits = jnp.pad(bits, ((0, 0), (0, nw * 32 - d))).reshape(u, nw, 32).astype(jnp.uint32)
    shifts = jnp.arange(31, -1, -1, dtype=jnp.uint32)
    return jnp.sum(bits << shifts, axis=-1, dtype=jnp.uint32)


def aggregate(x: jax.Array, words: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One image's binarised ASMK aggregation (`ASMKKernel.aggregate_image` with `binary=True`).

    Args:
      x: (k, D) local features; words: (k, ma) their visual words; codebook: (K, D).

    Returns:
      ids (k*ma,) int32: the image's distinct words in increasing order, then -1 padding;
      packed (k*ma, ceil(D/32)) uint32: the bits r_w > 0 of each word's residual sum (padding rows: 0).
    """
    k, ma = words.shape
    m = k * ma
    flat = words.reshape(-1)
    src = jnp.repeat(jnp.arange(k, dtype=jnp.int32), ma)
    # distinct words by one sort (cheaper to compile than jnp.unique + searchsorted): slot = rank of the word
    w_sorted, src_sorted = jax.lax.sort((flat, src), num_keys=1)
    first = jnp.concatenate([jnp.ones(1, bool), w_sorted[1:] != w_sorted[:-1]])
    slot = jnp.cumsum(first) - 1
    resid = jax.ops.segment_sum(x[src_sorted] - codebook[w_sorted], slot, num_segments=m)
    ids = jnp.full(m, -1, jnp.int32).at[jnp.where(first, slot, m)].set(w_sorted, mode="drop")
    packed = jnp.where((ids >= 0)[:, None], pack_bits(resid > 0), jnp.uint32(0))
    return ids, packed


@functools.partial(jax.jit, static_argnames=("nfeat", "ma_q", "ma_d"))
def local_step(rm: RetrievalModel, cnorm: jax.Array, feat: jax.Array, nfeat: int, ma_q: int, ma_d: int):
    """Retrieval head + quantisation + aggregation of a batch of encoded images (`feat (B, N, Ce)`, the encoder's
    output; `cnorm (K,)` the centroids' squared norms).

    Returns:
      (ids_q (B, nfeat*ma_q) int32, bits_q (B, nfeat*ma_q, W) uint32, ids_d (B, nfeat*ma_d), bits_d): the query-side
      and database-side aggregations (`aggregate`).
    """
    x, _ = local_features(rm, feat, nfeat)
    cb = rm.codebook

    def one(xi):  # one image at a time: the (nfeat, K) distance matrix is the largest temporary
        # the barrier keeps XLA from re-deriving the database side's words[:, :1] from the (nfeat, K) distances
        # (measured on CPU: 5x slower per image without it)
        words = jax.lax.optimization_barrier(quantize(xi, cb, cnorm, max(ma_q, ma_d)))
        return (*aggregate(xi, words[:, :ma_q], cb), *aggregate(xi, words[:, :ma_d], cb))

    return jax.lax.map(one, x)


@functools.partial(jax.jit, static_argnames=("nbits", "alpha", "threshold"))
def kernel_chunk(bits_q: jax.Array, bits_d: jax.Array, qi: jax.Array, di: jax.Array, *, nbits: int, alpha: float,
                 threshold: float) -> jax.Array:
    """The selective match kernel on a chunk of (query entry, database entry) pairs of the same visual word.

    Returns:
      (C,) float32: s ** alpha where s = 1 - 2 * hamming / nbits >= threshold, else 0 (`asmk_kernel`).
    """
    ham = jnp.sum(jax.lax.population_count(bits_q[qi] ^ bits_d[di]), axis=-1).astype(jnp.float32)
    sim = -2.0 * (ham / jnp.float32(nbits)) + 1.0
    return jnp.where(sim >= threshold, jnp.power(sim, jnp.float32(alpha)), 0.0)


def _entries(ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image padded word lists -> (words, image, row in the stacked arrays) of the valid entries, and the
    number of words per image."""
    stacked = np.stack(ids)  # (N, U)
    img, col = np.nonzero(stacked >= 0)
    rows = img * stacked.shape[1] + col
    return stacked[img, col], img, rows, np.count_nonzero(stacked >= 0, axis=1)


def ivf_scores(ids_q: list[np.ndarray], bits_q: np.ndarray, ids_d: list[np.ndarray], bits_d: np.ndarray, *,
               nbits: int, alpha: float, threshold: float) -> np.ndarray:
    """The official query-vs-database score matrix from the aggregations (`IVF.search` for every query image).

    Args:
      ids_q, ids_d: per image, its (U,) padded word ids (-1 = none) on the query / database side.
      bits_q, bits_d: (N * U, W) uint32 packed bits, rows in the order of the stacked `ids`.

    Returns:
      (N, N) float32, row = query image, column = database image.
    """
    wq, iq, rq, nq = _entries(ids_q)
    wd, idb, rd, nd = _entries(ids_d)
    n = len(ids_q)
    order = np.argsort(wd, kind="stable")
    wd_s, idb_s, rd_s = wd[order], idb[order], rd[order]
    lo = np.searchsorted(wd_s, wq, "left")
    cnt = np.searchsorted(wd_s, wq, "right") - lo
    total = int(cnt.sum())
    scores = np.zeros((n, n), np.float64)
    if total:
        qe = np.repeat(np.arange(len(wq)), cnt)  # query entry of every inverted-file hit
        de = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(total)  # its database entry (sorted order)
        bq, bd = jax.device_put(bits_q), jax.device_put(bits_d)
        sqrt_nd = np.sqrt(nd.astype(np.float64))
        for start in range(0, total, KERNEL_CHUNK):
            sl = slice(start, start + KERNEL_CHUNK)
            q_rows, d_rows = rq[qe[sl]], rd_s[de[sl]]
            pad = KERNEL_CHUNK - len(q_rows)  # static chunk shape: pad with row 0 pairs, dropped below
            kq = np.pad(q_rows, (0, pad)).astype(np.int32)
            kd = np.pad(d_rows, (0, pad)).astype(np.int32)
            val = np.asarray(kernel_chunk(bq, bd, kq, kd, nbits=nbits, alpha=alpha, threshold=threshold))
            val = val[:len(q_rows)]
            dimg = idb_s[de[sl]]
            # official: `sim /= np.sqrt(norm_factor[ids])` in place (float32 result), accumulated in float64 scores
            contrib = (val.astype(np.float64) / sqrt_nd[dimg]).astype(np.float32)
            scores += np.bincount(iq[qe[sl]] * n + dimg, contrib.astype(np.float64), n * n).reshape(n, n)
    return (scores / np.sqrt(np.maximum(nq, 1).astype(np.float64))[:, None]).astype(np.float32)


def asmk_similarity(model: Model, imgs: Sequence[dict], rm: RetrievalModel, *, batch_size: int = 8,
                    precision: str | None = None) -> np.ndarray:
    """The official MASt3R retrieval score matrix (`Retriever.__call__`): every image queried against all.

    Returns:
      (N, N) float32, row = query (asymmetric: queries use `rm.query_assignments` words per feature, the
      database `rm.database_assignments`). `similarity_matrix` symmetrises it by default.
    """
    if not isinstance(rm, RetrievalModel):
        raise TypeError(f"similarity_matrix: retrieval must be None or a RetrievalModel (load_retrieval), "
                        f"got {type(rm).__name__}")
    images = check_images(model, imgs, "similarity_matrix")
    precision = check_precision(precision)
    rm.check_backbone(model.config.enc_embed_dim)
    dev = jax.device_put(rm)  # the codebook goes to the device once per call
    cnorm = jnp.sum(jnp.square(dev.codebook), axis=-1)
    ma_q, ma_d = rm.query_assignments, rm.database_assignments

    def step(img, ts):
        feat, _ = encode_images(model.config, model.params, img, ts, None, precision)
        return local_step(dev, cnorm, feat, rm.n_local(feat.shape[1]), ma_q, ma_d)

    per_image = map_encoded(step, images, batch_size)

    def padded(k: int) -> tuple[list[np.ndarray], np.ndarray]:
        # images of different sizes keep different numbers of words: pad every list to one width
        ids, bits = [], []
        width = max(len(r[2 * k]) for r in per_image)
        for r in per_image:
            extra = width - len(r[2 * k])
            ids.append(np.pad(r[2 * k], (0, extra), constant_values=-1))
            bits.append(np.pad(r[2 * k + 1], ((0, extra), (0, 0))))
        return ids, np.concatenate(bits)

    ids_q, bits_q = padded(0)
    ids_d, bits_d = padded(1)
    nbits = 32 * bits_q.shape[1]
    return ivf_scores(ids_q, bits_q, ids_d, bits_d, nbits=nbits, alpha=rm.alpha, threshold=rm.similarity_threshold)
