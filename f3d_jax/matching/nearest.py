"""Exact nearest neighbours of descriptor rows by blocked brute force, jit-compiled.

`nearest_neighbours(queries (Q, D), database (N, D), dist)` returns, for every query row, the index of the
database row with the largest dot product (`dist='dot'`) or the smallest Euclidean distance (`dist='l2'`).

Tie rule (the official `bruteforce_reciprocal_nns`): inside a block the first index wins, and a later block
replaces the running winner only with a strictly better score, so the first index of the whole database wins
every exact tie, whatever the block size. Blocking changes memory, never results.

Scores: float32 products (`Precision.HIGHEST`) of the descriptors upcast to float32, whatever their storage
dtype (float16 descriptors give the official match sets exactly this way, for 'dot' and 'l2' alike; rounding
the scores back to float16 would create ties the official run does not have).

For 'l2' the squared distance is ranked as `|b|^2 - 2 a.b` (the query's own norm is constant per row).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

Dist = Literal["dot", "l2"]
_HIGHEST = jax.lax.Precision.HIGHEST


def default_block_size(n_queries: int, backend: str | None = None) -> int:
    """Database rows per block: about 4 MiB of float32 scores on a CPU, 1 GiB on GPU/TPU.

    On a CPU the scores of a block are written by the matmul and read back by the argmax: a block that stays in
    cache is faster (a 128x192 sparse-GA pair, 2-core EPYC: 99 ms with 4 MiB, 130 with 2 MiB, 140-160 with 8 or
    16 MiB; the official setting, 2**13 rows, is the 4 MiB block for 128 queries)."""
    backend = backend or jax.default_backend()
    budget = (4 << 20) if backend == "cpu" else (1 << 30)
    return int(max(256, min(1 << 20, budget // (4 * max(1, n_queries)))))


def _block_scores(q: jax.Array, db: jax.Array, db_sqnorm: jax.Array, dist: str) -> jax.Array:
    """(Q, B) float32 scores, larger is better."""
    dots = jnp.dot(q.astype(jnp.float32), db.astype(jnp.float32).T, precision=_HIGHEST)
    if dist == "dot":
        s = dots
    else:
        s = 2.0 * dots - db_sqnorm[None, :]  # -(|b|^2 - 2ab): larger is nearer
    return s


_GROUP = 128  # columns per group of `first_argmax`


def first_argmax(s: jax.Array) -> jax.Array:
    """`jnp.argmax(s, axis=1)` (first index of the row maximum) of a (Q, B) score block, computed as the first
    group of 128 columns holding the row maximum (a plain max reduction, which XLA vectorises), then the first
    maximum inside that group, read from the same scores (bit-identical to argmax: no recomputation). XLA's CPU
    argmax is a two-operand reduction that does not vectorise: this is about 1.6x faster per search."""
    q, b = s.shape
    if b <= _GROUP:
        return jnp.argmax(s, axis=1).astype(jnp.int32)
    g = -(-b // _GROUP)
    s = jnp.pad(s, ((0, 0), (0, g * _GROUP - b)), constant_values=-jnp.inf).reshape(q, g, _GROUP)
    grp = jnp.argmax(jnp.max(s, axis=2), axis=1)  # first group reaching the row maximum
    inside = jnp.take_along_axis(s, grp[:, None, None], axis=1)[:, 0]
    return (grp * _GROUP + jnp.argmax(inside, axis=1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("dist", "block_size"))
def nearest_neighbours(queries: jax.Array, database: jax.Array, dist: Dist = "dot", block_size: int | None = None) -> jax.Array:
    """Index (Q,) int32 of each query's nearest database row (see the module docstring for ties and scores).

    Args:
        queries: (Q, D) descriptors. database: (N, D) descriptors of the same dtype.
        dist: 'dot' (largest dot product) or 'l2' (smallest Euclidean distance).
        block_size: database rows per block (None: `default_block_size`).
    """
    if dist not in ("dot", "l2"):
        raise ValueError(f"dist must be 'dot' or 'l2', got {dist!r}")
    n, d = database.shape
    score_dtype = jnp.float32
    bs = min(n, block_size or default_block_size(queries.shape[0]))
    nblocks = -(-n // bs)
    pad = nblocks * bs - n
    db = jnp.pad(database, ((0, pad), (0, 0)))
    sq = jnp.sum(jnp.square(db.astype(jnp.float32)), axis=1)
    valid = jnp.arange(nblocks * bs) < n
    db = db.reshape(nblocks, bs, d)
    sq = sq.reshape(nblocks, bs)
    valid = valid.reshape(nblocks, bs)
    neg_inf = jnp.array(-jnp.inf, score_dtype)

    def step(carry, blk):
        best, arg = carry
        b, s2, ok, k = blk
        s = _block_scores(queries, b, s2, dist)
        s = jnp.where(ok[None, :], s, neg_inf)
        j = first_argmax(s)  # first index on ties
        v = jnp.take_along_axis(s, j[:, None], axis=1)[:, 0]
        better = v > best  # strictly better: earlier blocks keep exact ties
        return (jnp.where(better, v, best), jnp.where(better, (j + k * bs).astype(jnp.int32), arg)), None

    q = queries.shape[0]
    init = (jnp.full((q,), -jnp.inf, score_dtype), jnp.zeros((q,), jnp.int32))
    if nblocks == 1:
        (_, arg), _ = step(init, (db[0], sq[0], valid[0], 0))
        return arg
    (_, arg), _ = jax.lax.scan(step, init, (db, sq, valid, jnp.arange(nblocks)))
    return arg
