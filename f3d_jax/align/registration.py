"""Batched, jitted per-edge work of the initialisation: weighted Sim(3) moments and Weiszfeld focals of many
pointmaps in one device call (the MST initialisation's heavy part; `f3d_jax.align.initialise`).

Only the pixel-long reductions run on the device, in float32; what they produce is tiny ((B, 3, 3) moments,
(B,) focals) and is finished on the host in float64 (3x3 SVDs). Every K-long sum is a blocked (hierarchical)
sum, `blocked_sum`: sums of `BLOCK` values, then sums of those, ... so that its rounding error grows with
log(K) rather than K, whatever the backend's reduction order (XLA:CPU accumulates long rows almost
sequentially): float32 results stay within ~1e-6 relative of the float64 host reference (tested at 70 000
points per row).

Inputs are cut into batches of `batch_rows(K)` rows (whole pointmaps) of one padded static shape, so a
graph of any size compiles each function once and the device holds only a few hundred MB of pointmaps at a
time; the host gathers the next batch while the device reduces the current one (asynchronous dispatch).

That is the GPU / TPU path. On CPU (`on_device`) the same task lists run as a host float64 loop
(`register_sim3`, `geometry.focal.estimate_focal_weiszfeld`): there it is faster than gathering the pointmaps
into batches, and it keeps float64 numbers. `backend=` forces either path (tests run both).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from f3d_jax.geometry.cameras import pixel_grid
from f3d_jax.geometry.focal import estimate_focal_weiszfeld

BLOCK = 256
BATCH_BYTES = 256 << 20  # host -> device bytes per batch of the gathered pointmaps


def blocked_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis in blocks of `BLOCK` (zero padded), level by level: (..., K) -> (...)."""
    while x.shape[-1] > BLOCK:
        pad = (-x.shape[-1]) % BLOCK
        if pad:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
        x = x.reshape(x.shape[:-1] + (x.shape[-1] // BLOCK, BLOCK)).sum(-1)
    return x.sum(-1)


@jax.jit
def sim3_moments(x: jax.Array, y: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Weighted first and centred second moments of B point-set pairs (float32), in two passes (means, then
    centred products: no cancellation).

    Args:
        x: (B, 3, K) source points (planar: coordinate-major, the K-long reductions run over contiguous rows);
        y: (B, 3, K) target points; w: (B, K) non-negative weights (not all 0).
    Returns:
        xmean (B, 3), ymean (B, 3) (weights normalised to sum 1), cov (B, 3, 3) = sum_k w_k (y_k - ym)(x_k - xm)^T
        (target x source), var_x (B,) = sum_k w_k ||x_k - xm||^2.
    """
    x, y, w = (a.astype(jnp.float32) for a in (x, y, w))
    w = w / blocked_sum(w)[:, None]
    xm = blocked_sum(w[:, None] * x)
    ym = blocked_sum(w[:, None] * y)
    xc = x - xm[..., None]
    wyc = w[:, None] * (y - ym[..., None])
    cov = jnp.stack([blocked_sum(wyc * xc[:, b:b + 1]) for b in range(3)], axis=-1)
    var = blocked_sum(w * jnp.sum(xc * xc, axis=1))
    return xm, ym, cov, var


def sim3_from_moments(xm, ym, cov, var) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Umeyama's closed form (float64, host) from `sim3_moments`: (B,) s, (B, 3, 3) R, (B, 3) t minimising
    sum_k w_k ||s R x_k + t - y_k||^2 (R a proper rotation)."""
    xm, ym, cov, var = (np.asarray(a, np.float64) for a in (xm, ym, cov, var))
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones(S.shape)
    D[:, 2] = np.where(d == 0, 1.0, d)
    R = (U * D[:, None, :]) @ Vt
    s = np.sum(S * D, axis=1) / var
    t = ym - s[:, None] * np.einsum("bij,bj->bi", R, xm)
    return s, R, t


@functools.partial(jax.jit, static_argnames=("n_iter",))
def weiszfeld_focals(pts: jax.Array, pp: jax.Array, n_iter: int = 10) -> jax.Array:
    """Unclipped robust focals of B camera-frame pointmaps (float32): `geometry.focal.estimate_focal_weiszfeld`
    with blocked sums. pts: (B, H, W, 3); pp: (2,) principal point. Returns (B,)."""
    B, H, W, _ = pts.shape
    pts = pts.astype(jnp.float32).reshape(B, H * W, 3)
    pix = pixel_grid(H, W, dtype=jnp.float32, xnp=jnp).reshape(H * W, 2) - pp.astype(jnp.float32)
    r = pts[..., :2] / pts[..., 2:3]
    r = jnp.where(jnp.isfinite(r), r, 0.0)
    rx, ry = r[..., 0], r[..., 1]
    px, py = pix[:, 0], pix[:, 1]
    dot_rc = rx * px + ry * py
    dot_rr = rx * rx + ry * ry
    f = blocked_sum(dot_rc) / blocked_sum(dot_rr)
    for _ in range(n_iter):
        dx = px - f[:, None] * rx
        dy = py - f[:, None] * ry
        w = 1.0 / jnp.maximum(jnp.sqrt(dx * dx + dy * dy), 1e-8)
        f = blocked_sum(w * dot_rc) / blocked_sum(w * dot_rr)
    return f


def batch_rows(row_bytes: int, total: int) -> int:
    """Rows per device batch: `total` rounded up to a power of two (graphs of similar sizes share one
    compilation), at most as many as fit `BATCH_BYTES` (at least 1)."""
    cap = max(1, BATCH_BYTES // max(1, row_bytes))
    return min(cap, 1 << max(0, total - 1).bit_length())


def batched(fn: Callable, gather: Callable[[np.ndarray], tuple], n: int, rows: int) -> list[np.ndarray]:
    """Run `fn(*gather(idx))` over index batches of `rows` (the last one padded with index 0 to the same
    static shape) and concatenate each output's first `n` rows on the host.

    Args:
        fn: jitted function of the gathered (rows, ...) arrays; returns a tuple of (rows, ...) arrays.
        gather: host function, int index array (rows,) -> the arrays of those rows.
        n: number of rows in all.
    """
    outs = []
    for start in range(0, n, rows):
        idx = np.arange(start, start + rows)
        idx[idx >= n] = 0
        res = fn(*gather(idx))  # dispatched asynchronously: the next gather overlaps this batch
        outs.append(res if isinstance(res, tuple) else (res,))
    return [np.concatenate([np.asarray(o[k]) for o in outs])[:n] for k in range(len(outs[0]))]


def register_sim3(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Sim(3) (s, R, t) minimising sum_k w_k ||s R src_k + t - dst_k||^2: `procrustes.umeyama` in
    float64, with the K-long sums done as BLAS matrix products on the raw points (one (3, K) x (K, 3) product for
    the cross-covariance instead of an einsum over centred copies): ~3-5x faster at K = 512 x 384 and equal to
    `umeyama` to ~1e-13 relative.

    Args:
        src, dst: (K, 3) points (any float dtype; math in float64). w: (K,) non-negative weights.
    Returns:
        s (float), R (3, 3), t (3,) float64.
    """
    x = np.asarray(src)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    y = np.asarray(dst, np.float64)
    w = np.asarray(w, np.float64)
    w = w / w.sum()
    wx = x * w[:, None]  # float64 (exact promotion of float32 points: no separate float64 copy of x)
    xmean = wx.sum(axis=0)
    ymean = w @ y
    # centred moments from raw ones (no centred (K, 3) copies): float64 keeps the cancellation far below float32
    # rounding for scene-scale points
    M = y.T @ wx - np.outer(ymean, xmean)  # sum_k w_k (y_k - ym)(x_k - xm)^T: cross-covariance, target x source
    var_x = float(np.sum(wx * x) - xmean @ xmean)
    U, S, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.array([1.0, 1.0, 1.0 if d == 0 else d])
    R = (U * D[None, :]) @ Vt
    s = float(np.sum(S * D) / var_x)
    t = ymean - s * (R @ xmean)
    return s, R, t


def on_device(backend: str | None) -> bool:
    """Whether the per-edge reductions run as batched jitted calls (`backend` None: JAX's default backend):
    on GPU / TPU they do; on CPU the host's float64 BLAS loop is as fast (no gather copies, no transposes) and
    keeps the float64 numbers."""
    return (jax.default_backend() if backend is None else backend) != "cpu"


def register_many(points: Sequence[np.ndarray], conf: Sequence[np.ndarray], src, dst, wts,
                  backend: str | None = None) -> tuple[np.ndarray, ...]:
    """Weighted Sim(3) registrations of many pointmap pairs: batched device calls, or the host loop on CPU
    (`on_device`).

    Args:
        points: pointmap arrays (E, H, W, 3) (e.g. (pred1_pts3d, pred2_pts3d)); conf: weight arrays (E, H, W).
        src, dst: (B, 2) int (array index, row) of each task's source / target pointmap in `points`.
        wts: (B, 2) int (array index, row) of each task's weights in `conf`.
        backend: 'cpu' for the host loop, anything else for the device path; None: JAX's default backend.
    Returns:
        s (B,), R (B, 3, 3), t (B, 3) float64 with s R src + t ~ dst (`sim3_from_moments`).
    """
    src, dst, wts = (np.asarray(a, np.int64).reshape(-1, 2) for a in (src, dst, wts))
    K = int(np.prod(conf[0].shape[1:]))
    if not on_device(backend):
        res = [register_sim3(points[a][e].reshape(K, 3), points[b][f].reshape(K, 3), conf[c][g].reshape(K))
               for (a, e), (b, f), (c, g) in zip(src, dst, wts)]
        return np.array([r[0] for r in res]), np.stack([r[1] for r in res]), np.stack([r[2] for r in res])

    def gather(idx):
        def take(arrs, sel, planar):
            out = np.empty((len(idx),) + ((3, K) if planar else (K,)), np.float32)
            for r, (a, e) in enumerate(sel[idx]):
                out[r] = arrs[a][e].reshape(K, 3).T if planar else arrs[a][e].reshape(K)
            return out
        return take(points, src, True), take(points, dst, True), take(conf, wts, False)

    xm, ym, cov, var = batched(sim3_moments, gather, len(src), batch_rows(7 * 4 * K, len(src)))
    return sim3_from_moments(xm, ym, cov, var)


def focals_many(points: np.ndarray, rows: Sequence[int], pp, n_iter: int = 10,
                backend: str | None = None) -> np.ndarray:
    """(B,) float64 unclipped Weiszfeld focals of `points[rows]` ((E, H, W, 3) camera-frame pointmaps): batched
    device calls, or the host float64 loop on CPU (`on_device`)."""
    rows = np.asarray(rows, np.int64)
    H, W = points.shape[1:3]
    if not on_device(backend):
        return np.array([float(estimate_focal_weiszfeld(points[e].astype(np.float64), np.asarray(pp, np.float64),
                                                        n_iter, None, None)) for e in rows], np.float64)
    ppj = jnp.asarray(np.asarray(pp, np.float32))
    fn = functools.partial(weiszfeld_focals, pp=ppj, n_iter=n_iter)
    (f,) = batched(lambda p: (fn(p),), lambda idx: (points[rows[idx]],), len(rows),
                   batch_rows(3 * 4 * H * W, len(rows)))
    return f.astype(np.float64)
