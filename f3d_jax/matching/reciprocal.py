"""MASt3R's fast reciprocal matching (the official `mast3r/fast_nn.py`) in JAX.

Pixels are flat indices `x + W * y` inside the jitted iteration and `(x, y)` int32 columns in the results
(x = column, y = row). Descriptor maps are `(H, W, D)`, as MASt3R's `desc` output per view.

`fast_reciprocal_nns` runs the official fixed-point iteration: queries on a grid of stride `subsample`
(offset `subsample // 2`) walk image 1 -> image 2 -> image 1 by nearest neighbours until they stop moving
(mutual nearest neighbours), for at most 10 rounds; the returned image-1 pixel is the fixed point reached,
not necessarily the grid pixel. The iteration is one `lax.while_loop` over every query at once (fixed
shapes, exits as soon as all queries converged); only the final unique-and-sort runs on the host because
its output size depends on the data.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.matching.nearest import Dist, nearest_neighbours

MAX_ITER = 10


def grid_queries(h: int, w: int, subsample: int) -> np.ndarray:
    """Sorted unique flat indices `x + w * y` of the grid y, x = s//2, s//2 + s, ... (official query grid)."""
    ys, xs = np.mgrid[subsample // 2 : h : subsample, subsample // 2 : w : subsample].reshape(2, -1)
    return np.unique(xs + w * ys).astype(np.int32)


def default_query_chunk(n_queries: int, backend: str | None = None) -> int:
    """Queries searched per call of the brute force: small on a CPU (128: the cost per query is flat from
    about 16 queries up, so narrow calls waste little), the whole set (up to 4096) on GPU/TPU, where one wide
    call is cheaper than several narrow ones. The straggler rounds use chunks 8x narrower
    (`reciprocal_iteration`)."""
    backend = backend or jax.default_backend()
    return max(1, min(n_queries, 128 if backend == "cpu" else 4096))


@functools.partial(jax.jit, static_argnames=("dist", "block_size", "max_iter", "query_chunk"))
def reciprocal_iteration(
    desc1: jax.Array, desc2: jax.Array, xy1: jax.Array, dist: Dist = "dot", block_size: int | None = None,
    max_iter: int = MAX_ITER, query_chunk: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The official fixed-point loop on flat descriptors.

    Args:
        desc1: (N1, D), desc2: (N2, D) flattened descriptor maps. xy1: (Q,) int32 starting flat pixels in image 1.
        dist, block_size: the nearest-neighbour search (`f3d_jax.matching.nearest`).
        max_iter: rounds before unconverged queries are given up (official: 10; 1 for explicit queries).
        query_chunk: queries per brute-force call (None: `default_query_chunk`). Each search gathers the
            still-moving queries first and runs only as many full chunks as they fill, then the rest in chunks
            of `max(1, query_chunk // 8)` (loops with data-dependent trip counts), so late rounds with a few
            stragglers cost a few narrow searches, not a full chunk (on a CPU the cost is about linear in
            the number of queries searched; this halves the time of a typical call).

    Returns:
        xy1 (Q,), xy2 (Q,) int32 flat pixels after the loop and `converged` (Q,) bool (mutual nearest
        neighbours reached within `max_iter` rounds).
    """
    q = xy1.shape[0]
    chunk = query_chunk or default_query_chunk(q)
    tail = max(1, chunk // 8)
    qp = -(-q // chunk) * chunk
    real = jnp.arange(qp) < q
    xy1 = jnp.pad(xy1, (0, qp - q))  # padding queries: pixel 0, never active, dropped at the end

    def search(src: jax.Array, pix: jax.Array, db: jax.Array, active: jax.Array, out: jax.Array) -> jax.Array:
        """out[k] = nearest row of `db` to src[pix[k]] for every active k (other entries may change too;
        callers only read active ones)."""
        order = jnp.argsort(~active, stable=True).astype(jnp.int32)  # active queries first
        n_active = jnp.sum(active)
        n_full = n_active // chunk

        def run(size, start):
            def body(c, out):
                # a slice running past the end is moved back by dynamic_slice: it then recomputes some
                # entries (to the same values, or inactive ones nobody reads)
                sel = jax.lax.dynamic_slice(order, (start + c * size,), (size,))
                return out.at[sel].set(nearest_neighbours(src[pix[sel]], db, dist=dist, block_size=block_size))
            return body

        out = jax.lax.fori_loop(0, n_full, run(chunk, 0), out)
        n_tail = (n_active - n_full * chunk + tail - 1) // tail
        return jax.lax.fori_loop(0, n_tail, run(tail, n_full * chunk), out)

    def cond(state):
        _, _, _, _, notyet, it = state
        return jnp.logical_and(jnp.any(notyet), it < max_iter)

    def body(state):
        x1, x2, old1, old2, notyet, it = state
        x2 = jnp.where(notyet, search(desc1, x1, desc2, notyet, x2), x2)
        notyet = notyet & (old2 != x2)
        x1 = jnp.where(notyet, search(desc2, x2, desc1, notyet, x1), x1)
        notyet = notyet & (old1 != x1)
        return x1, x2, x1, x2, notyet, it + 1

    x2 = jnp.full_like(xy1, -1)  # no pixel index: nothing counts as converged in round 1
    state = (xy1, x2, xy1, x2, real, jnp.int32(0))
    x1, x2, _, _, notyet, _ = jax.lax.while_loop(cond, body, state)
    return x1[:q], x2[:q], (real & ~notyet)[:q]


def merge_corres(
    idx1: np.ndarray, idx2: np.ndarray, shape1: tuple[int, int], shape2: tuple[int, int], ret_xy: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (idx1, idx2) flat-index pairs sorted by idx1 then idx2 (the official `merge_corres`).

    Returns (xy1, xy2, first): (M, 2) int32 (x, y) pixels (or (M,) flat indices with `ret_xy=False`) and the
    position in the input of each kept pair's first occurrence.
    """
    idx1 = np.asarray(idx1, np.int64)
    idx2 = np.asarray(idx2, np.int64)
    _, first = np.unique(idx1 * (1 << 32) + idx2, return_index=True)
    a, b = idx1[first].astype(np.int32), idx2[first].astype(np.int32)
    if not ret_xy:
        return a, b, first
    (h1, w1), (h2, w2) = shape1, shape2
    xy1 = np.stack([a % w1, a // w1], axis=1).astype(np.int32)
    xy2 = np.stack([b % w2, b // w2], axis=1).astype(np.int32)
    return xy1, xy2, first


def _check_maps(desc1, desc2) -> None:
    for name, d in (("desc1", desc1), ("desc2", desc2)):
        if getattr(d, "ndim", None) != 3:
            raise ValueError(f"fast_reciprocal_nns: {name} must be (H, W, D), got shape {getattr(d, 'shape', None)}")
    if desc1.shape[2] != desc2.shape[2]:
        raise ValueError(f"fast_reciprocal_nns: descriptor sizes differ ({desc1.shape[2]} vs {desc2.shape[2]})")


def fast_reciprocal_nns(
    desc1: jax.Array | np.ndarray,
    desc2: jax.Array | np.ndarray,
    subsample: int = 8,
    dist: Dist = "dot",
    pixel_tol: float = 0,
    block_size: int | None = None,
    init_xy1: tuple[np.ndarray, np.ndarray] | None = None,
    ret_xy: bool = True,
    query_chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal nearest-neighbour matches between two descriptor maps (official `fast_reciprocal_NNs`).

    Args:
        desc1: (H1, W1, D), desc2: (H2, W2, D) descriptors (any float dtype; see `nearest` for scores).
        subsample: grid stride of the queries (ignored when `init_xy1` is given).
        dist: 'dot' (the sparse-GA setting) or 'l2' (the official CPU default, a KD-tree there).
        pixel_tol: > 0: one round, keep the queries whose back-match lands within `pixel_tol` pixels of the
            start; with explicit `init_xy1` the start pixels are returned (official behaviour).
        block_size: database rows per block of the brute-force search (memory only, never results).
        init_xy1: explicit queries `(x, y)` int arrays; then one round is done.
        ret_xy: (x, y) int32 columns (default) or flat indices.
        query_chunk: queries per brute-force call (`reciprocal_iteration`; speed only, never results).

    Returns:
        xy1 (M, 2), xy2 (M, 2) int32 (x, y) pixels of image 1 and image 2, unique pairs sorted by xy1's
        flat index `x + W1 y`, then xy2's.
    """
    _check_maps(desc1, desc2)
    h1, w1, d = desc1.shape
    h2, w2, _ = desc2.shape
    if init_xy1 is None and pixel_tol == 0:
        if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample <= 0:
            raise ValueError(f"fast_reciprocal_nns: subsample must be a positive int, got {subsample!r}")
        queries = grid_queries(h1, w1, int(subsample))
        max_iter = MAX_ITER
    else:
        if init_xy1 is None:
            ys, xs = np.mgrid[subsample // 2 : h1 : subsample, subsample // 2 : w1 : subsample].reshape(2, -1)
        else:
            xs, ys = (np.asarray(v).astype(np.int64) for v in init_xy1)
            if xs.size and (xs.min() < 0 or xs.max() >= w1 or ys.min() < 0 or ys.max() >= h1):
                raise ValueError(f"fast_reciprocal_nns: init_xy1 has pixels outside the {w1}x{h1} image")
        queries = np.unique(xs + w1 * ys).astype(np.int32)
        max_iter = 1
    f1 = jnp.asarray(desc1).reshape(h1 * w1, d)
    f2 = jnp.asarray(desc2).reshape(h2 * w2, d)
    x1, x2, converged = jax.device_get(
        reciprocal_iteration(f1, f2, jnp.asarray(queries), dist=dist, block_size=block_size, max_iter=max_iter,
                             query_chunk=query_chunk)
    )
    if pixel_tol > 0:
        start = np.stack(np.unravel_index(queries, (h1, w1)), axis=1).astype(np.float64)
        end = np.stack(np.unravel_index(x1, (h1, w1)), axis=1).astype(np.float64)
        converged = np.linalg.norm(start - end, axis=1) < pixel_tol
        if init_xy1 is not None:
            x1 = queries
    xy1, xy2, _ = merge_corres(x1[converged], x2[converged], (h1, w1), (h2, w2), ret_xy=ret_xy)
    return xy1, xy2


def extract_correspondences(
    feats: Sequence[jax.Array | np.ndarray],
    qonfs: Sequence[jax.Array | np.ndarray],
    subsample: int = 8,
    dist: Dist = "dot",
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric matches of one image pair from both network passes (official `sparse_ga.extract_correspondences`).

    Args:
        feats: (d11, d21, d22, d12): descriptors of image 1 and image 2 from the pass (1, 2), then of image 2
            and image 1 from the pass (2, 1); d11, d12 are (H1, W1, D), d21, d22 (H2, W2, D).
        qonfs: the matching descriptor confidences (q11, q21, q22, q12), (H, W) each.
        subsample, dist, block_size: as `fast_reciprocal_nns` (official: 8, 'dot', 2**13).

    Returns:
        xy1 (M, 2), xy2 (M, 2) int32 (x, y) pixels and conf (M,) float32 = sqrt(q1(xy1) q2(xy2)) of the maps
        that produced the first occurrence of each match. Pooling order (it decides which confidences a
        duplicate keeps): pass (d11, d21) then pass (d12, d22); inside each, the 1->2 matches then the 2->1
        matches.
    """
    if len(feats) != 4 or len(qonfs) != 4:
        raise ValueError("extract_correspondences: feats and qonfs must hold 4 maps each (11, 21, 22, 12)")
    f11, f21, f22, f12 = feats
    q11, q21, q22, q12 = (np.asarray(q, np.float32) for q in qonfs)
    if not (f11.shape[:2] == f12.shape[:2] == q11.shape == q12.shape):
        raise ValueError("extract_correspondences: d11, d12, q11, q12 must share image 1's (H1, W1)")
    if not (f21.shape[:2] == f22.shape[:2] == q21.shape == q22.shape):
        raise ValueError("extract_correspondences: d21, d22, q21, q22 must share image 2's (H2, W2)")
    h1, w1 = f11.shape[:2]
    h2, w2 = f22.shape[:2]
    idx1, idx2, c1, c2 = [], [], [], []
    for a, b, qa, qb in ((f11, f21, q11, q21), (f12, f22, q12, q22)):
        a12, b12 = fast_reciprocal_nns(a, b, subsample, dist=dist, block_size=block_size, ret_xy=False)
        b21, a21 = fast_reciprocal_nns(b, a, subsample, dist=dist, block_size=block_size, ret_xy=False)
        i1 = np.concatenate([a12, a21])
        i2 = np.concatenate([b12, b21])
        idx1.append(i1)
        idx2.append(i2)
        c1.append(qa.ravel()[i1])
        c2.append(qb.ravel()[i2])
    xy1, xy2, first = merge_corres(np.concatenate(idx1), np.concatenate(idx2), (h1, w1), (h2, w2))
    conf = np.sqrt(np.concatenate(c1)[first] * np.concatenate(c2)[first]).astype(np.float32)
    return xy1, xy2, conf
