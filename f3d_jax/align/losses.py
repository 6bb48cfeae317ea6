"""Dense GA loss (equivalent of dust3r/cloud_opt/optimizer.py `PointCloudOptimizer.forward` and commons.py
`get_conf_trf`, `l1_dist`, `l2_dist`), plus optional robust kernels.

The official loss, with w = conf_trf(conf) and P1/P2 the pairwise predictions of edge e = (i, j):

    L = sum_e sum_p w1 ||X_i(p) - s_e (R_e P1_e(p) + T_e)|| / (E HW)
      + sum_e sum_p w2 ||X_j(p) - s_e (R_e P2_e(p) + T_e)|| / (E HW)

Layout choice (why it is fast and lean): the residual is evaluated in camera i's frame,
``R_i^T (X_i - s_e (R_e P + T_e)) = d_i ray_i + R_i^T (T_i - s_e T_e) - (s_e R_i^T R_e) P``, so each edge only
needs one 3x3 matrix and one 3-vector computed once per iteration, the camera-frame points ``d * ray`` of each
image are shared by all its edges, and no world-frame (E, HW, 3) copies are built. The norm is invariant to the
rotation, so the value is the official one. The predictions are stored planar, (E, 3, HW) (contiguous x, y, z
planes: XLA:CPU vectorises plane arithmetic, not stride-3 reads), in float32 or bfloat16; the value and the
parameter gradients come from one blocked pass over them (`_fused_term`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

CONF_MODES = ("log", "sqrt", "m1", "id", "none")
DISTS = ("l1", "l2")
EDGE_AXIS = "edges"  # name of the mesh axis the edges are split over (`alignment_loss(mesh=...)`)
ROBUST = (None, "huber", "cauchy", "geman_mcclure")


def conf_transform(conf: jax.Array, mode: str) -> jax.Array:
    """Pixel weights from confidences: 'log' (official default; conf = 1 gives weight 0), 'sqrt', 'm1' (conf - 1),
    'id'/'none'."""
    if mode == "log":
        return jnp.log(conf)
    if mode == "sqrt":
        return jnp.sqrt(conf)
    if mode == "m1":
        return conf - 1
    if mode in ("id", "none"):
        return conf
    raise ValueError(f"conf must be one of {CONF_MODES}, got {mode!r}")


def robust_kernel_and_slope(d: jax.Array, kind: str | None, scale: float) -> tuple[jax.Array, jax.Array]:
    """(rho(d), rho'(d)) for a non-negative distance d (the 'l1' norm or the 'l2' squared norm).

    - None: d (official), slope 1.
    - 'huber': d^2 / (2c) for d < c, else d - c/2 (quadratic near 0, the official L1 tail).
    - 'cauchy': (c/2) log(1 + (d/c)^2) (grows like log d: far outliers barely pull).
    - 'geman_mcclure': (c/2) (d/c)^2 / (1 + (d/c)^2) (bounded: far outliers do not pull at all).
    c = `scale`, in world units of the normalised scene (pairwise scales have geometric mean 0.5).
    """
    if kind is None or kind == "none":
        return d, jnp.ones_like(d)
    c = jnp.asarray(scale, d.dtype)
    if kind == "huber":
        small = d < c
        return jnp.where(small, 0.5 * d * d / c, d - 0.5 * c), jnp.where(small, d / c, 1.0)
    r2 = jnp.square(d / c)
    if kind == "cauchy":
        return 0.5 * c * jnp.log1p(r2), (d / c) / (1.0 + r2)
    if kind == "geman_mcclure":
        return 0.5 * c * r2 / (1.0 + r2), (d / c) / jnp.square(1.0 + r2)
    raise ValueError(f"robust must be one of {ROBUST}, got {kind!r}")


def apply_3x3(M: jax.Array, pts: jax.Array, *, transpose: bool = False) -> jax.Array:
    """(..., 3, 3) matrices (or their transposes) applied to (..., 3, P) planar points -> (..., 3, P).

    out[a] = sum_b M[a, b] pts[b] (M^T: sum_b M[b, a] pts[b]), as explicit multiply-adds over whole planes.
    Deliberately not an einsum: XLA:CPU (jax 0.10.2) miscompiles a batched dot whose operand is a fused
    (E, P, 3) -> (E, 3, P) transpose (errors ~1e-3 relative on this loss, whatever the matmul precision), and a
    3x3 'dot' gains nothing over fused multiply-adds anyway.
    """
    if transpose:
        M = jnp.swapaxes(M, -1, -2)
    return (
        M[..., :, 0, None] * pts[..., None, 0, :]
        + M[..., :, 1, None] * pts[..., None, 1, :]
        + M[..., :, 2, None] * pts[..., None, 2, :]
    )


def _residuals(cam: jax.Array, t: jax.Array, M: jax.Array, pred: jax.Array, idx: jax.Array) -> jax.Array:
    """Residuals (E, 3, P) float32 in camera idx[e]'s frame: cam[idx] + t - M pred.

    cam: (N, 3, P); t: (E, 3); M: (E, 3, 3); pred: (E, 3, P) planar (any float dtype, math in float32).
    """
    return cam[idx] + t[:, :, None] - apply_3x3(M, pred.astype(jnp.float32))


def pixel_weights(conf: jax.Array, keep: jax.Array, edge_w: jax.Array, idx: jax.Array, mode: str) -> jax.Array:
    """(E, P) loss weights: conf_transform(conf) x keep[idx] (user masks) x edge_w (per-edge weights)."""
    return conf_transform(conf.astype(jnp.float32), mode) * keep[idx] * edge_w[:, None]


# Matmul precision of the loss (`jax.default_matmul_precision` names): exact float32 ('highest') by default on
# every backend; 'high' (TF32 on GPU) and 'default' trade the 1e-7 relative accuracy of the gradients for speed.
PRECISIONS = ("highest", "high", "default")

# Edge-pixels processed per block of the loss on a CPU: C edges x T pixels small enough that the dozen passes XLA
# makes over a block stay in the L2 cache (bench_dense_ga: ~2.5x faster than 128k-epx chunks at 512x384).
DEFAULT_CHUNK_PIXELS = 24576
CPU_CHUNK_PIXELS = DEFAULT_CHUNK_PIXELS
# On a GPU/TPU the loop is bound by kernel launches and memory bandwidth, not by a cache: a few large fused blocks
# (H200, N=16 at 512x384: 60-118 ms/iter with 24k-epx blocks, 8 ms/iter with 12-edge x whole-image blocks). 32M
# edge-pixels (~170 whole 512x384 images per block, a few hundred MB of float32 temporaries per block) makes N=16
# two blocks and bounds the temporaries of N=100 (2G edge-pixels) to the same size whatever E.
ACCELERATOR_CHUNK_PIXELS = 1 << 25
_EDGES_PER_BLOCK = 12  # CPU: edges per block (a block then spans a few pixel tiles of every edge)


def default_chunk_pixels(backend: str) -> int:
    """Edge-pixels per loss block for a backend ('cpu': cache-sized; 'gpu'/'cuda'/'rocm'/'tpu'/other: large)."""
    return CPU_CHUNK_PIXELS if backend == "cpu" else ACCELERATOR_CHUNK_PIXELS


def block_plan(E: int, P: int, chunk_pixels: int, max_edges: int | None = _EDGES_PER_BLOCK) -> tuple[int, int, int, int]:
    """(C, nE, T, nT): E edges in nE blocks of C, P pixels in nT tiles of T (the last block/tile of each axis
    overlaps its predecessor when the sizes do not divide; the repeated entries are masked out).

    C <= max_edges (12 on CPU: cache-sized blocks); max_edges None (accelerators): as many whole images as
    `chunk_pixels` holds."""
    chunk_pixels = max(1, int(chunk_pixels))
    if max_edges is None:  # no edge cap: as many whole images as the chunk holds (at least one edge)
        C = max(1, min(E, chunk_pixels // max(P, 1)))
    else:
        C = max(1, min(E, int(max_edges), chunk_pixels))
    nE = -(-E // C)
    C = -(-E // nE)
    T = max(1, min(P, chunk_pixels // C))
    nT = -(-P // T)
    T = -(-P // nT)
    return C, nE, T, nT


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """How the loss walks the (E, P) edge-pixels: nE blocks of C edges x nT tiles of T pixels, in a sequential
    `lax.scan` (always on a CPU), or one fused pass with no loop when a GPU/TPU plan has a single block."""

    C: int
    nE: int
    T: int
    nT: int
    chunk_pixels: int
    backend: str

    @property
    def n_blocks(self) -> int:
        return self.nE * self.nT

    @property
    def fused(self) -> bool:
        """One pass over all edge-pixels, no `lax.scan` (accelerators only: on a CPU a single block still runs as
        a one-step scan, the compiled loop the CPU figures and fixture tests were established with)."""
        return self.n_blocks == 1 and self.backend != "cpu"


def plan_blocks(E: int, P: int, chunk_pixels: int | None = None, backend: str | None = None) -> BlockPlan:
    """The loss blocking for E edges of P pixels on `backend` (default: `jax.default_backend()`).

    chunk_pixels None: `default_chunk_pixels(backend)`; an explicit value overrides it (any backend). On 'cpu'
    blocks hold at most 12 edges (cache-sized, the tuned CPU plan); elsewhere a block holds as many whole images as
    fit in chunk_pixels, and a problem of at most chunk_pixels edge-pixels is one fused pass (no loop).
    """
    backend = jax.default_backend() if backend is None else str(backend)
    chunk = default_chunk_pixels(backend) if chunk_pixels is None else int(chunk_pixels)
    max_edges = _EDGES_PER_BLOCK if backend == "cpu" else None
    C, nE, T, nT = block_plan(E, P, chunk, max_edges)
    return BlockPlan(C=C, nE=nE, T=T, nT=nT, chunk_pixels=chunk, backend=backend)


@functools.lru_cache(maxsize=None)
def _fused_term(dist: str, robust: str | None, robust_scale: float, conf_mode: str, chunk_pixels: int | None,
                backend: str, mesh: Mesh | None = None, precision: str = "highest"):
    """sum_{e,p} w rho(dist(r)) with a hand-written gradient computed in the same pass as the value.

    Why: autodiff of the loss keeps (E, 3, P) residuals alive for the backward pass and walks the data twice;
    here the forward pass already produces the (small) gradients w.r.t. the camera points (N, 3, P), the
    per-edge t (E, 3) and M (E, 3, 3), so each iteration reads every edge-pixel once and keeps no per-edge-pixel
    residuals. The work is cut into blocks of C edges x T pixels (`block_plan`), one `lax.scan` step each, so
    that the temporaries of a block stay in cache and are bounded whatever E and P; weights are recomputed from
    the confidences inside each block (no (E, P) copy). Gradients w.r.t. the predictions and confidences (only
    needed to differentiate through the whole optimisation) are recomputed in the backward pass; everything
    stays differentiable to any order because both passes are plain jnp code.

    The blocking is `plan_blocks(E, P, chunk_pixels, backend)`: cache-sized blocks in a `lax.scan` on a CPU, a
    few large blocks (or one fused pass, no loop) on a GPU/TPU. With `mesh` (1-D, axis EDGE_AXIS), the edge axis
    of t, M, pred, conf, ew and idx is split over its devices (`shard_map`): each device walks its own edges and
    the loss and the camera-point gradient are summed over the devices (`psum`); E must divide by the mesh size.
    """

    def pieces(cam, t, M, pred, conf, keep, ew, idx):
        w = pixel_weights(conf, keep, ew, idx, conf_mode)
        r = _residuals(cam, t, M, pred, idx)
        sq = r[:, 0] * r[:, 0] + r[:, 1] * r[:, 1] + r[:, 2] * r[:, 2]
        if dist == "l1":
            pos = sq > 0
            d = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
            rho, slope = robust_kernel_and_slope(d, robust, robust_scale)
            coef = jnp.where(pos, w * slope / jnp.where(pos, d, 1.0), 0.0)  # torch.norm's 0 subgradient at 0
        else:
            rho, slope = robust_kernel_and_slope(sq, robust, robust_scale)
            coef = 2.0 * w * slope
        return w, rho, coef[:, None, :] * r  # dL/dr: (E, 3, P)

    def block_grads(cam, t, M, pred, conf, keep, ew, idx):
        w, rho, g = pieces(cam, t, M, pred, conf, keep, ew, idx)
        g_cam = jax.ops.segment_sum(g, idx, num_segments=cam.shape[0])
        g_M = -jnp.einsum("eat,ebt->eab", g, pred.astype(jnp.float32), precision=precision)
        return jnp.sum(w * rho), g_cam, jnp.sum(g, axis=-1), g_M

    def value_and_grads(cam, t, M, pred, conf, keep, ew, idx):
        E, _, Pn = pred.shape
        N = cam.shape[0]
        plan = plan_blocks(E, Pn, chunk_pixels, backend)
        if plan.fused:  # one pass over everything: no loop, no slicing (accelerators, small problems)
            return block_grads(cam, t, M, pred, conf, keep, ew, idx)
        C, nE, T, nT = plan.C, plan.nE, plan.T, plan.nT
        low = pred.dtype != jnp.float32 or conf.dtype != jnp.float32
        ds, dus = jax.lax.dynamic_slice, jax.lax.dynamic_update_slice

        def body(carry, k):
            loss, g_cam, g_t, g_M = carry
            if low:
                # tie the low-precision storage to the loop counter so that XLA cannot hoist a float32 copy of
                # the whole (loop-invariant) prediction arrays out of the loop
                pred_k, conf_k, k = jax.lax.optimization_barrier((pred, conf, k))
            else:
                pred_k, conf_k = pred, conf
            ke, kt = k // nT, k % nT
            e0, p0 = jnp.minimum(ke * C, E - C), jnp.minimum(kt * T, Pn - T)
            # entries of an overlapping last block/tile that an earlier one already did get weight 0
            e_new = ((e0 + jnp.arange(C)) >= ke * C).astype(jnp.float32)
            p_new = ((p0 + jnp.arange(T)) >= kt * T).astype(jnp.float32)
            l, gc, gt, gm = block_grads(
                ds(cam, (0, 0, p0), (N, 3, T)), ds(t, (e0, 0), (C, 3)), ds(M, (e0, 0, 0), (C, 3, 3)),
                ds(pred_k, (e0, 0, p0), (C, 3, T)), ds(conf_k, (e0, p0), (C, T)),
                ds(keep, (0, p0), (N, T)) * p_new, ds(ew, (e0,), (C,)) * e_new, ds(idx, (e0,), (C,)),
            )
            g_cam = dus(g_cam, ds(g_cam, (0, 0, p0), (N, 3, T)) + gc, (0, 0, p0))
            g_t = dus(g_t, ds(g_t, (e0, 0), (C, 3)) + gt, (e0, 0))
            g_M = dus(g_M, ds(g_M, (e0, 0, 0), (C, 3, 3)) + gm, (e0, 0, 0))
            return (loss + l, g_cam, g_t, g_M), None

        init = (jnp.float32(0), jnp.zeros_like(cam), jnp.zeros((E, 3), jnp.float32),
                jnp.zeros((E, 3, 3), jnp.float32))
        out, _ = jax.lax.scan(body, init, jnp.arange(nE * nT))
        return out

    if mesh is not None:
        local_value_and_grads = value_and_grads

        def summed(*args):
            loss, g_cam, g_t, g_M = local_value_and_grads(*args)
            return jax.lax.psum(loss, EDGE_AXIS), jax.lax.psum(g_cam, EDGE_AXIS), g_t, g_M

        e_ax, rep = PartitionSpec(EDGE_AXIS), PartitionSpec()
        value_and_grads = jax.shard_map(
            summed, mesh=mesh, in_specs=(rep, e_ax, e_ax, e_ax, e_ax, rep, e_ax, e_ax),
            out_specs=(rep, rep, e_ax, e_ax),
            check_vma=False,  # the blocked scan's zero-initialised carries become device-varying: fine here
        )

    @jax.custom_vjp
    def term(cam, t, M, pred, conf, keep, ew, idx):
        return value_and_grads(cam, t, M, pred, conf, keep, ew, idx)[0]

    def fwd(cam, t, M, pred, conf, keep, ew, idx):
        loss, g_cam, g_t, g_M = value_and_grads(cam, t, M, pred, conf, keep, ew, idx)
        return loss, (g_cam, g_t, g_M, cam, t, M, pred, conf, keep, ew, idx)

    def bwd(res, ct):
        g_cam, g_t, g_M, cam, t, M, pred, conf, keep, ew, idx = res
        _, rho, g = pieces(cam, t, M, pred, conf, keep, ew, idx)
        g_pred = -apply_3x3(M, g, transpose=True)  # M^T g: (E, 3, P)
        _, w_vjp = jax.vjp(lambda c_, k_, e_: pixel_weights(c_, k_, e_, idx, conf_mode), conf, keep, ew)
        g_conf, g_keep, g_ew = w_vjp(ct * rho)
        return (ct * g_cam, ct * g_t, ct * g_M, (ct * g_pred).astype(pred.dtype), g_conf.astype(conf.dtype),
                g_keep, g_ew, np.zeros(idx.shape, dtype=jax.dtypes.float0))

    term.defvjp(fwd, bwd)
    return term


def alignment_loss(
    *,
    R_im: jax.Array,
    T_im: jax.Array,
    cam_pts: jax.Array,
    R_pw: jax.Array,
    T_pw: jax.Array,
    s_pw: jax.Array,
    pred_i: jax.Array,
    pred_j: jax.Array,
    conf_i: jax.Array,
    conf_j: jax.Array,
    keep: jax.Array,
    edge_weights: jax.Array,
    ei: jax.Array,
    ej: jax.Array,
    conf_mode: str = "log",
    dist: str = "l1",
    robust: str | None = None,
    robust_scale: float = 1.0,
    chunk_pixels: int | None = None,
    backend: str | None = None,
    mesh: Mesh | None = None,
    num_edges: int | None = None,
    precision: str = "highest",
) -> jax.Array:
    """The dense GA loss (scalar float32).

    Args:
      R_im, T_im: (N, 3, 3), (N, 3) cam-to-world rotations and translations.
      cam_pts: (N, 3, HW) float32, each image's points in its own camera frame (depth * ray).
      R_pw, T_pw, s_pw: (E, 3, 3), (E, 3), (E,): pairwise transforms x -> s (R x + T).
      pred_i, pred_j: (E, 3, HW) planar (float32 or bfloat16 storage): pred1 pts3d and pred2
        pts3d_in_other_view, both in camera i's frame.
      conf_i, conf_j: (E, HW) confidences; weights are conf_transform(conf) x keep[image] x edge_weights.
      keep: (N, HW) float32, 0 on user-ignored pixels. edge_weights: (E,) float32.
      ei, ej: (E,) int32 image indices of each edge.
      conf_mode: confidence transform ('log' official). dist: 'l1' (Euclidean norm, official) or 'l2'.
      robust / robust_scale: optional kernel on the distances (see `robust_kernel_and_slope`).
      chunk_pixels: edge-pixels processed per block (bounds the temporaries); None: the backend's default
        (`plan_blocks`, `default_chunk_pixels`).
      backend: platform the blocking is planned for (default `jax.default_backend()`); it changes the speed and
        the temporaries, never the value beyond float32 summation order.
      mesh: 1-D `Mesh` with axis EDGE_AXIS: split the edges over its devices (E must divide by its size; pad with
        zero-weight edges and give `num_edges`). None: one device.
      num_edges: the number of real edges when the edge arrays are padded (the loss is a mean over real edges).
      precision: precision of the loss's matmuls (`PRECISIONS`; 'highest' = exact float32 on every backend).
    """
    if dist not in DISTS:
        raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    E, HW = conf_i.shape
    if mesh is not None and E % mesh.size:
        raise ValueError(f"alignment_loss: {E} edges do not split over {mesh.size} devices; pad them (zero weights)")
    backend = jax.default_backend() if backend is None else str(backend)
    term = _fused_term(dist, robust, float(robust_scale), conf_mode, None if chunk_pixels is None else int(chunk_pixels),
                       backend, mesh, precision)
    total = 0.0
    for idx, pred, conf in ((ei, pred_i, conf_i), (ej, pred_j, conf_j)):
        Rc = R_im[idx]  # (E, 3, 3)
        M = s_pw[:, None, None] * jnp.sum(Rc[:, :, :, None] * R_pw[:, :, None, :], axis=1)  # s_e R_c^T R_e
        t = jnp.sum(Rc * (T_im[idx] - s_pw[:, None] * T_pw)[:, :, None], axis=1)  # R_c^T (T_c - s_e T_e)
        total = total + term(cam_pts, t, M, pred, conf, keep, edge_weights, idx)
    return total / jnp.float32((E if num_edges is None else int(num_edges)) * HW)
