"""Network pass, matching and condensed data of the sparse global alignment (official `forward_mast3r`,
`prepare_canonical_data`, `condense_data`; spec `alignment.md` sections 4.1-4.2).

`collect_pairs` calls the model twice per unordered pair (the first time the pair is met, both orders),
matches the descriptors (`f3d_jax.matching.extract_correspondences`) and folds the self pointmaps into the
canonical accumulators right away, so only (H, W) sums per image and the subsampled cross predictions stay
in memory. `condense` then lays every matched pixel of every image out in flat, padded arrays
(`SparseProblem`), the static-shape input of the jitted optimiser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from f3d_jax.geometry.graph import connected_components
from f3d_jax.matching import extract_correspondences
from f3d_jax.sparse.canonical import CanonAccumulator, anchor_grid_shape, anchor_offsets, base_focal

BLOCK_SIZE = 2**13  # official brute-force block of the sparse GA matcher


def _idx(view: dict, name: str) -> int:
    if not isinstance(view, dict) or "idx" not in view:
        raise ValueError(f"sparse_global_alignment: pairs: {name} must be a view dict with an 'idx' entry")
    return int(np.asarray(view["idx"]).reshape(-1)[0])


def _pred_array(pred: Any, key: str, who: str, ndim: int, pair: str = "") -> np.ndarray:
    if not isinstance(pred, dict) or key not in pred:
        raise ValueError(f"sparse_global_alignment: model output {who} has no {key!r} entry")
    a = np.asarray(jax.device_get(pred[key]), np.float32)
    if a.ndim == ndim + 1 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != ndim:
        raise ValueError(f"sparse_global_alignment: model output {who}[{key!r}] must be (1, H, W{', C' if ndim == 3 else ''}),"
                         f" got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"sparse_global_alignment: model output {who}[{key!r}] has non-finite values (NaN/inf){pair}")
    return a


@dataclasses.dataclass
class PairData:
    """One unordered pair as first met (i, j): matches of i's pixels xy_i with j's xy_j, and the
    subsampled cross predictions (pass (i, j) head 2: j in i's frame; pass (j, i) head 2: i in j's frame)."""

    i: int
    j: int
    xy_i: np.ndarray
    xy_j: np.ndarray
    conf: np.ndarray
    cross_ij: tuple[np.ndarray, np.ndarray]  # X21_i_j[::s, ::s] (.., 3), C21_i_j[::s, ::s]
    cross_ji: tuple[np.ndarray, np.ndarray]
    conf_score: float


def _cache_file(cache_dir: str, names: tuple[str, str], subsample: int, desc_conf: str) -> str:
    h = [hashlib.md5(n.encode()).hexdigest() for n in names]
    return os.path.join(cache_dir, f"sparse_pairs_conf={desc_conf}_subsample={subsample}", f"{h[0]}-{h[1]}.npz")


def _save_atomic(path: str, **arrays: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def collect_pairs(
    names: Sequence[str], pairs: Sequence[tuple[dict, dict]], model: Callable | None, subsample: int,
    desc_conf: str, cache_dir: str | None = None, masks: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[tuple[int, int]], list[PairData], list[CanonAccumulator | None]]:
    """Run the model on every unordered pair once and match it.

    `masks` (one (H, W) bool or None per image): matches with a pixel where its image's mask is False are
    dropped (after the cache: the cache holds the unmasked matches).

    Returns:
        keys: ordered pairs (i, j) in order of first appearance (duplicates dropped), as the official
            `tmp_pairs` dict; pair_data: one `PairData` per unordered pair, in first-met order;
            canon: one accumulator per image (None for an image in no pair).
    """
    n = len(names)
    keys: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for k, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"sparse_global_alignment: pairs[{k}] must be a (view1, view2) tuple")
        i, j = _idx(pair[0], f"pairs[{k}][0]"), _idx(pair[1], f"pairs[{k}][1]")
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"sparse_global_alignment: pairs[{k}] has image index ({i}, {j}) outside 0..{n - 1}"
                             f" ({n} image names given)")
        if i == j:
            raise ValueError(f"sparse_global_alignment: pairs[{k}] pairs image {i} with itself")
        if (i, j) not in seen:
            seen.add((i, j))
            keys.append((i, j))
    view_of: dict[tuple[int, int], tuple[dict, dict]] = {}
    for v1, v2 in pairs:
        view_of.setdefault((_idx(v1, ""), _idx(v2, "")), (v1, v2))

    canon: list[CanonAccumulator | None] = [None] * n
    pair_data: list[PairData] = []
    done: set[frozenset] = set()
    for i, j in keys:
        u = frozenset((i, j))
        if u in done:
            continue
        done.add(u)
        mult = ((i, j) in seen) + ((j, i) in seen)
        cache = _cache_file(cache_dir, (names[i], names[j]), subsample, desc_conf) if cache_dir else None
        if cache is not None and os.path.isfile(cache):
            with np.load(cache) as z:
                d = {k: z[k] for k in z.files}
        else:
            if model is None:
                raise ValueError(f"sparse_global_alignment: no model and no cached result for pair ({i}, {j})")
            v1, v2 = view_of[(i, j)]
            r11, r21 = model(v1, v2)
            r22, r12 = model(v2, v1)
            who = {"11": f"model(view {i}, view {j})[0]", "21": f"model(view {i}, view {j})[1]",
                   "22": f"model(view {j}, view {i})[0]", "12": f"model(view {j}, view {i})[1]"}
            res = {"11": r11, "21": r21, "22": r22, "12": r12}
            pair = f" in the pair of images {i} ({names[i]}) and {j} ({names[j]})"
            X = {k: _pred_array(r, "pts3d", who[k], 3, pair) for k, r in res.items()}
            C = {k: _pred_array(r, "conf", who[k], 2, pair) for k, r in res.items()}
            D = {k: _pred_array(r, "desc", who[k], 3, pair) for k, r in res.items()}
            Q = {k: _pred_array(r, desc_conf, who[k], 2, pair) for k, r in res.items()}
            xy_i, xy_j, conf = extract_correspondences(
                [D["11"], D["21"], D["22"], D["12"]], [Q["11"], Q["21"], Q["22"], Q["12"]],
                subsample=subsample, dist="dot", block_size=BLOCK_SIZE)
            s = subsample
            score = float(np.sqrt(np.sqrt(C["11"].mean() * C["12"].mean() * C["21"].mean() * C["22"].mean())))
            # copies, not strided views: a view would keep each pair's full-resolution maps alive for the whole
            # alignment (memory growing with pairs x H x W instead of pairs x anchors)
            sub = {f"{a}{k}s": np.ascontiguousarray(m[k][::s, ::s]) for a, m in (("X", X), ("C", C)) for k in ("21", "12")}
            d = dict(X11=X["11"], C11=C["11"], X22=X["22"], C22=C["22"], **sub,
                     xy_i=xy_i, xy_j=xy_j, conf=conf, score=np.float64(score))
            if cache is not None:
                _save_atomic(cache, **d)
        for img, Xs, Cs in ((i, d["X11"], d["C11"]), (j, d["X22"], d["C22"])):
            if canon[img] is None:
                canon[img] = CanonAccumulator(Xs.shape[0], Xs.shape[1], subsample)
            elif (canon[img].H, canon[img].W) != Xs.shape[:2]:
                raise ValueError(f"sparse_global_alignment: image {img} ({names[img]}) has pointmaps of different"
                                 f" sizes {(canon[img].H, canon[img].W)} and {Xs.shape[:2]}")
            canon[img].add(Xs, Cs, times=mult)
        xy_i, xy_j, conf = d["xy_i"], d["xy_j"], d["conf"]
        if masks is not None:
            keep = np.ones(len(conf), bool)
            for img, xy, Xs in ((i, xy_i, d["X11"]), (j, xy_j, d["X22"])):
                if masks[img] is not None:
                    if masks[img].shape != Xs.shape[:2]:
                        raise ValueError(f"sparse_global_alignment: masks[{img}] ({names[img]}) has shape "
                                         f"{masks[img].shape}, the image's pointmaps {Xs.shape[:2]} (working resolution)")
                    keep &= masks[img][xy[:, 1], xy[:, 0]]
            xy_i, xy_j, conf = xy_i[keep], xy_j[keep], conf[keep]
        pair_data.append(PairData(i, j, xy_i, xy_j, conf, (d["X21s"], d["C21s"]),
                                  (d["X12s"], d["C12s"]), float(d["score"])))
    return keys, pair_data, canon


def components(n: int, pair_data: Sequence[PairData]) -> list[list[int]]:
    """Connected components of the images linked by pairs with at least one match (sorted)."""
    return connected_components(n, ((p.i, p.j) for p in pair_data if len(p.conf)))


@dataclasses.dataclass(frozen=True)
class Canonical:
    """Per-image canonical data (host numpy): canon (H, W, 3), canon2 (H, W), conf (H, W), focal f0."""

    canon: np.ndarray
    canon2: np.ndarray
    conf: np.ndarray
    focal: np.float32


def finalize_canonical(canon: Sequence[CanonAccumulator | None], names: Sequence[str]) -> list[Canonical]:
    out = []
    for k, acc in enumerate(canon):
        if acc is None:
            raise ValueError(f"sparse_global_alignment: image {k} ({names[k]}) is in no pair")
        c, c2, cf = acc.finalize()
        out.append(Canonical(c, c2, cf, base_focal(c)))
    return out


def bucket_size(m: int, quantum: int = 512) -> int:
    """Padded length of an array of `m` entries: a multiple of max(quantum, 2^(floor(log2 m) - 3)), i.e. eight
    buckets per octave above 8 x quantum (padding at most 12.5%, or one quantum below). Nearby problem sizes share
    compiled stages (a second call with a slightly different number of matches reuses the compilation), and the
    number of distinct compilations grows with log(m), not m."""
    m = max(int(m), 1)
    step = max(quantum, 1 << max(0, m.bit_length() - 4))
    return -(-m // step) * step


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseProblem:
    """Static-shape arrays of one sparse alignment (N images, A anchors max per image, P matched-pixel
    entries, M matches, F fallback terms, all padded; padding has zero weight).

    Per image: `imsizes` (N, 2) (W, H) float32, `base_focals` (N,), `median_depths` (N,), `core_depth`
    (N, A) anchor depths divided by the median (padding 1), `parents` (N,) int32 (root: itself).
    Matched-pixel entries (the official per-image "anchors", concatenated over images): `pt_img` (P,)
    int32, `pt_uv` (P, 2) float32 pixel, `pt_anchor` (P,) int32 anchor index, `pt_offset` (P,) float32.
    Matches (each unordered pair once): `m_p`, `m_q` (M,) int32 entries of the two pixels, `m_conf` (M,)
    (0 for pairs that fail `matching_conf_thr` and for padding). Fallback (DUSt3R regression for pairs
    that fail it): `fb_pt` (F,) entry, `fb_cam` (F,) int32 the partner camera, `fb_tgt` (F, 3) the network's
    point in the partner's frame, `fb_conf` (F,).
    Known poses: `known_pose` (N,) float32 1 where `known_cam2w` (N, 4, 4) (cam-to-world, OpenCV) is the
    image's frozen pose, else 0; `free_scale` () float32 1 where the global scale is free (the official
    anti-collapse normalisation g = 1 / min size), 0 where two known camera centres fix it (g = 1).
    """

    imsizes: jax.Array
    base_focals: jax.Array
    median_depths: jax.Array
    core_depth: jax.Array
    parents: jax.Array
    pt_img: jax.Array
    pt_uv: jax.Array
    pt_anchor: jax.Array
    pt_offset: jax.Array
    m_p: jax.Array
    m_q: jax.Array
    m_conf: jax.Array
    fb_pt: jax.Array
    fb_cam: jax.Array
    fb_tgt: jax.Array
    fb_conf: jax.Array
    known_pose: jax.Array
    known_cam2w: jax.Array
    free_scale: jax.Array


@dataclasses.dataclass(frozen=True)
class Condensed:
    """Host-side result of `condense`: the problem plus the bookkeeping to read results back."""

    problem: SparseProblem
    n_points: tuple[int, ...]  # matched-pixel entries per image
    point_start: tuple[int, ...]  # first entry of each image
    anchors_shape: tuple[tuple[int, int], ...]  # (Hs, Ws) per image
    scores: np.ndarray  # (N, N) match counts
    depth_levels: int
    used_pairs: tuple[int, ...] = ()  # indices into pair_data of the pairs whose matches enter the loss


def condense(
    n: int, keys: Sequence[tuple[int, int]], pair_data: Sequence[PairData], canon: Sequence[Canonical],
    chain_parents: np.ndarray, depth_levels: int, subsample: int, matching_conf_thr: float,
) -> Condensed:
    """Lay the matched pixels, matches and fallback terms out as a `SparseProblem` (official `condense_data`).

    Each image's entries are its matched pixels, partner after partner in order of the first pair `key`
    containing the image (a pixel matched with two partners appears twice).
    """
    by_pair = {(p.i, p.j): p for p in pair_data}

    def side(a: int, b: int) -> np.ndarray:  # a's pixels matched with b
        p = by_pair.get((a, b))
        return p.xy_i if p is not None else by_pair[(b, a)].xy_j

    partners: list[list[int]] = [[] for _ in range(n)]
    for a, b in keys:
        if b not in partners[a]:
            partners[a].append(b)
        if a not in partners[b]:
            partners[b].append(a)
    shapes = [anchor_grid_shape(c.canon.shape[0], c.canon.shape[1], subsample) for c in canon]
    A = bucket_size(max(h * w for h, w in shapes), 16)
    core = np.ones((n, A), np.float32)
    med = np.ones(n, np.float32)
    start: dict[tuple[int, int], int] = {}
    img_l, uv_l, anc_l, off_l = [], [], [], []
    n_points, point_start = [], []
    total = 0
    for a in range(n):
        c = canon[a]
        cd = c.canon[subsample // 2 :: subsample, subsample // 2 :: subsample, 2].reshape(-1)
        med[a] = np.sort(cd)[(len(cd) - 1) // 2]  # torch's lower median
        core[a, : len(cd)] = cd / med[a]
        point_start.append(total)
        for b in partners[a]:
            xy = side(a, b)
            idx, off = anchor_offsets(c.canon2, xy, subsample)
            start[(a, b)] = total
            total += len(xy)
            img_l.append(np.full(len(xy), a, np.int32))
            uv_l.append(np.asarray(xy, np.float32))
            anc_l.append(idx)
            off_l.append(off)
        n_points.append(total - point_start[-1])
    P = bucket_size(total)

    def pad(parts, size, shape, dtype, fill=0):
        out = np.full((size,) + shape, fill, dtype)
        if parts:
            cat = np.concatenate(parts).astype(dtype)
            out[: len(cat)] = cat
        return out

    pt_img = pad(img_l, P, (), np.int32)
    pt_uv = pad(uv_l, P, (2,), np.float32)
    pt_anchor = pad(anc_l, P, (), np.int32)
    pt_offset = pad(off_l, P, (), np.float32, 1)

    mp, mq, mc = [], [], []
    ok: dict[frozenset, bool] = {}
    scores = np.zeros((n, n), np.float32)
    for p in pair_data:
        m = len(p.conf)
        scores[p.i, p.j] = scores[p.j, p.i] = m
        ok[frozenset((p.i, p.j))] = bool(m and p.conf.max() > matching_conf_thr)
        if ok[frozenset((p.i, p.j))]:
            mp.append(start[(p.i, p.j)] + np.arange(m))
            mq.append(start[(p.j, p.i)] + np.arange(m))
            mc.append(p.conf)
    M = bucket_size(sum(len(c) for c in mc))
    m_p, m_q, m_conf = pad(mp, M, (), np.int32), pad(mq, M, (), np.int32), pad(mc, M, (), np.float32)

    # fallback: for every ordered key (a, b) of a pair failing the threshold, all of a's entries against
    # the network's a-in-b's-frame prediction (sampled on the [::s, ::s] grid at a's anchor index, official)
    fp, fcam, ftgt, fconf = [], [], [], []
    for a, b in keys:
        if ok[frozenset((a, b))] or n_points[a] == 0:
            continue
        p = by_pair.get((b, a))
        X, C = p.cross_ij if p is not None else by_pair[(a, b)].cross_ji
        sl = slice(point_start[a], point_start[a] + n_points[a])
        idx = pt_anchor[sl]
        fp.append(np.arange(sl.start, sl.stop))
        fcam.append(np.full(n_points[a], b, np.int32))
        ftgt.append(X.reshape(-1, 3)[idx])
        fconf.append(C.reshape(-1)[idx])
    F = bucket_size(sum(len(c) for c in fconf), 64)
    problem = SparseProblem(
        imsizes=np.asarray([(c.canon.shape[1], c.canon.shape[0]) for c in canon], np.float32),
        base_focals=np.asarray([c.focal for c in canon], np.float32),
        median_depths=med,
        core_depth=core,
        parents=np.asarray(chain_parents, np.int32),
        pt_img=pt_img, pt_uv=pt_uv, pt_anchor=pt_anchor, pt_offset=pt_offset,
        m_p=m_p, m_q=m_q, m_conf=m_conf,
        fb_pt=pad(fp, F, (), np.int32), fb_cam=pad(fcam, F, (), np.int32), fb_tgt=pad(ftgt, F, (3,), np.float32),
        fb_conf=pad(fconf, F, (), np.float32),
        known_pose=np.zeros(n, np.float32), known_cam2w=np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)),
        free_scale=np.float32(1),
    )
    used = tuple(k for k, p in enumerate(pair_data) if ok[frozenset((p.i, p.j))])
    return Condensed(problem, tuple(n_points), tuple(point_start), tuple(shapes), scores, depth_levels, used)
