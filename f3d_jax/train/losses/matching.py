"""MASt3R matching losses: `InfoNCE`, `APLoss`, `MatchingLoss`, `ConfMatchingLoss` (`mast3r/losses.py`; spec:
shared/reference/training.md §8).

Correspondences come from the views, `gt1['corres'], gt2['corres'] (B, N, 2)` integer `(x, y)` pixels
(column first) and `gt1['valid_corres'] (B, N)` bool, or, when the views carry none and the term was built
with `num_corres`, are sampled inside the loss from the `key` passed to the criterion
(`f3d_jax.train.losses.correspondences.sample_correspondences`). Descriptors: `pred['desc'] (B, H, W, D)`,
their confidences `pred['desc_conf'] (B, H, W)`. Per-match losses are kept dense, `(B, N)` with the
validity mask; every gathered pair (valid or not) is a negative for the others of its entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from f3d_jax.train.losses._common import (HIGHEST, at_least_f32, masked_mean, masked_quantile, masked_sum,
                                          unbiased_std)
from f3d_jax.train.losses.multiloss import Details, Term, View

_REDUCTIONS = ("mean", "sum", "1-mean", "none")


def similarities(desc1: Array, desc2: Array, euc: bool = False) -> Array:
    """(B, N1, D), (B, N2, D) -> (B, N1, N2): dot products, or 1 / (1 + Euclidean distance) with `euc`."""
    if euc:
        d2 = (jnp.sum(desc1 * desc1, -1)[:, :, None] + jnp.sum(desc2 * desc2, -1)[:, None, :]
              - 2 * jnp.einsum("bnd,bmd->bnm", desc1, desc2, precision=HIGHEST))
        pos = d2 > 0
        dist = jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)
        return 1 / (1 + dist)
    return jnp.einsum("bnd,bmd->bnm", desc1, desc2, precision=HIGHEST)


def _reduce(loss: Array, valid: Array, reduction: str) -> Array:
    if reduction == "sum":
        return masked_sum(loss, valid)
    if reduction == "mean":
        return masked_mean(loss, valid)
    if reduction == "1-mean":
        return jnp.where(jnp.any(valid), 1.0 - masked_mean(loss, valid), 1.0)
    raise ValueError(f"reduction {reduction!r} has no scalar value")


def _dtype(fp: Any) -> Any:
    return jnp.dtype(fp)


@dataclasses.dataclass(frozen=True)
class InfoNCE:
    """InfoNCE over the (B, N, N) similarity matrices, positives on the diagonal (`mast3r.losses.InfoNCE`).

    mode 'proper' (row + column log-softmax of the diagonal), 'all' (softmax over the whole matrix) or 'dual'
    (dual softmax); each probability is clipped from below at `eps` (zero gradient when clipped). Computed
    in log space (log-sum-exp), equal to the official direct exponentials where those do not overflow.
    fp: the dtype the descriptors are cast to (official `fp=torch.float32`).
    """

    temperature: float = 0.07
    eps: float = 1e-8
    mode: str = "all"
    reduction: str = "mean"
    fp: Any = jnp.float32

    def __post_init__(self) -> None:
        if self.mode not in ("all", "proper", "dual"):
            raise ValueError(f"InfoNCE: mode must be 'all', 'proper' or 'dual', got {self.mode!r}")
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"InfoNCE: bad reduction {self.reduction!r} ({_REDUCTIONS})")

    def loss(self, desc1: Array, desc2: Array, euc: bool = False) -> Array:
        """(B, N, D), (B, N2, D) -> per-match loss (B, N)."""
        dt = _dtype(self.fp)
        desc1, desc2 = desc1.astype(dt), desc2.astype(dt)
        n1, n2 = desc1.shape[1], desc2.shape[1]
        if self.mode != "all" and n1 != n2:
            raise ValueError(f"InfoNCE(mode={self.mode!r}) needs as many image-2 descriptors as matches "
                             f"({n2} != {n1}): negatives_padding > 0 only works with mode='all' or APLoss "
                             "(the official code crashes here too)")
        sim = similarities(desc1, desc2, euc) / self.temperature
        sim = jnp.where(jnp.isnan(sim), -jnp.inf, sim)
        diag = jnp.diagonal(sim, axis1=-2, axis2=-1)  # (B, min(n1, n2))
        log_eps = jnp.log(jnp.asarray(self.eps, dt))
        row = jax.nn.logsumexp(sim, axis=-1)  # over image-2 descriptors, fixed image-1 descriptor
        if self.mode == "all":
            total = jax.nn.logsumexp(sim, axis=(-2, -1))[:, None]
            return -jnp.maximum(diag - total, log_eps)
        col = jax.nn.logsumexp(sim, axis=-2)
        if self.mode == "proper":
            return -(jnp.maximum(diag - col, log_eps) + jnp.maximum(diag - row, log_eps))
        return -jnp.maximum(2 * diag - row - col, log_eps)

    def __repr__(self) -> str:
        return f"InfoNCE(temperature={self.temperature:g}, mode={self.mode!r})"


@dataclasses.dataclass(frozen=True)
class APLoss:
    """Exact average precision of the single positive of each row (`mast3r.losses.APLoss`, test criterion;
    no gradient). nq 'torch': 1 / (1 + rank) in a stable descending sort; 'sklearn' (or 0): sklearn's
    tie handling, 1 / #(scores >= positive). min, max, euc are accepted and ignored, as officially."""

    nq: Any = "torch"
    min: float = 0
    max: float = 1
    euc: bool = False
    reduction: str = "mean"
    fp: Any = jnp.float32

    def __post_init__(self) -> None:
        nq = "sklearn" if self.nq == 0 else self.nq
        if nq not in ("torch", "sklearn"):
            raise ValueError(f"Unknown mode {self.nq} for AP loss")
        object.__setattr__(self, "nq", nq)
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"APLoss: bad reduction {self.reduction!r} ({_REDUCTIONS})")

    def loss(self, desc1: Array, desc2: Array, euc: bool = False) -> Array:
        dt = _dtype(self.fp)
        n1, n2 = desc1.shape[1], desc2.shape[1]
        if n2 < n1:
            raise ValueError(f"APLoss: fewer image-2 descriptors ({n2}) than matches ({n1})")
        scores = jax.lax.stop_gradient(similarities(desc1.astype(dt), desc2.astype(dt), euc))
        pos = jnp.diagonal(scores, axis1=-2, axis2=-1)[..., None]  # (B, N1, 1)
        if self.nq == "sklearn":
            rank = jnp.sum(scores >= pos, axis=-1) - 1
        else:
            before = jnp.arange(n2)[None, None, :] < jnp.arange(n1)[None, :, None]
            rank = jnp.sum(scores > pos, axis=-1) + jnp.sum((scores == pos) & before, axis=-1)
        return (1.0 / (1.0 + rank)).astype(jnp.float32)

    def __repr__(self) -> str:
        return f"APLoss(nq={self.nq!r})"


def _gather(x: Array, corres: Array) -> Array:
    """x (B, H, W, ...) at corres (B, N, 2) (x, y) -> (B, N, ...)."""
    b = jnp.arange(x.shape[0])[:, None]
    return x[b, corres[..., 1], corres[..., 0]]


@dataclasses.dataclass(frozen=True)
class MatchingLoss(Term):
    """Per-image matching loss over the GT correspondences (`mast3r.losses.MatchingLoss`).

    criterion: InfoNCE or APLoss. negatives_padding P: append, per entry, the first P image-2 pixels in
    raster order that are not matched (InfoNCE 'all' / APLoss only). blocksize: with more correspondences
    N than this, the N pairs are shuffled per entry (needs the criterion's `key`) and cut into N / blocksize
    independent blocks (the official intent; its own code crashes there). use_pts3d: match the point maps
    with the Euclidean similarity instead of the descriptors. Extensions: num_corres / corres_nneg sample
    correspondences from the key when the views carry no 'corres'.
    """

    criterion: InfoNCE | APLoss
    withconf: bool = False
    use_pts3d: bool = False
    negatives_padding: int = 0
    blocksize: int = 4096
    num_corres: int | None = None
    corres_nneg: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, (InfoNCE, APLoss)):
            raise TypeError(f"MatchingLoss: criterion must be InfoNCE(...) or APLoss(...), got {self.criterion!r}")
        if self.negatives_padding < 0 or self.blocksize <= 0:
            raise ValueError("MatchingLoss: negatives_padding must be >= 0 and blocksize > 0")

    def with_reduction(self, mode: str) -> MatchingLoss:
        return dataclasses.replace(self, criterion=dataclasses.replace(self.criterion, reduction=mode))

    def check_top_level(self) -> None:
        if self.criterion.reduction == "none":
            raise ValueError("MatchingLoss: reduction 'none' cannot be the loss of a top-level term")

    def _correspondences(self, gt1: View, gt2: View, key: Array | None) -> tuple[Array, Array, Array]:
        if "corres" in gt1 and "corres" in gt2 and "valid_corres" in gt1:
            return jnp.asarray(gt1["corres"]), jnp.asarray(gt2["corres"]), jnp.asarray(gt1["valid_corres"], bool)
        if self.num_corres is None:
            raise KeyError("MatchingLoss: the views carry no 'corres' / 'valid_corres'; add them to the batch or "
                           "build the loss with num_corres=... and pass key=... to sample them")
        if key is None:
            raise ValueError("MatchingLoss: sampling correspondences needs a PRNG key (criterion(..., key=key))")
        from f3d_jax.train.losses.correspondences import sample_correspondences
        c1, c2, valid = sample_correspondences(jax.random.fold_in(key, 1), gt1, gt2, self.num_corres,
                                               self.corres_nneg)
        return c1, c2, valid

    def _check_static(self, N: int, desc2_shape: tuple[int, ...], key: Array | None) -> None:
        """Shape / configuration errors, raised before any computation."""
        _, H, W, _ = desc2_shape
        P = self.negatives_padding
        if P > H * W - N:
            raise ValueError(f"MatchingLoss: negatives_padding={P} exceeds the {H * W - N} unmatched pixels "
                             f"an image of {H}x{W} is sure to have with {N} correspondences")
        if P and isinstance(self.criterion, InfoNCE) and self.criterion.mode != "all":
            raise ValueError(f"MatchingLoss: negatives_padding > 0 with InfoNCE(mode={self.criterion.mode!r}) is "
                             "undefined (the official code crashes); use mode='all' or APLoss")
        if N > self.blocksize:
            if N % self.blocksize:
                raise ValueError(f"MatchingLoss: {N} correspondences cannot be cut into blocks of {self.blocksize}")
            if key is None:
                raise ValueError(f"MatchingLoss: {N} correspondences > blocksize={self.blocksize} shuffles the "
                                 "blocks, which needs a PRNG key (criterion(..., key=key))")

    def matches(self, gt1: View, gt2: View, pred1: View, pred2: View,
                key: Array | None) -> tuple[Array, Array, Array | None, Array | None, Details]:
        """(loss (B, N), valid (B, N), confs1, confs2 (B, N) or None, details) before any reduction; with
        shuffled blocks the N axis is in the shuffled order (confidences and validity alike)."""
        k1, k2 = ("pts3d", "pts3d_in_other_view") if self.use_pts3d else ("desc", "desc")
        for d, k, w in ((pred1, k1, "pred1"), (pred2, k2, "pred2")):
            if k not in d:
                raise KeyError(f"MatchingLoss: {w} has no {k!r} (keys: {sorted(d)})")
        desc1, desc2 = jnp.asarray(pred1[k1]), jnp.asarray(pred2[k2])
        corres1, corres2, valid = self._correspondences(gt1, gt2, key)
        B, N = valid.shape
        self._check_static(N, desc2.shape, key)
        d1, d2 = _gather(desc1, corres1), _gather(desc2, corres2)

        if self.negatives_padding:
            _, H, W, _ = desc2.shape
            P = self.negatives_padding
            flat = corres2[..., 0] + W * corres2[..., 1]
            free = jnp.ones((B, H * W), bool).at[jnp.arange(B)[:, None], flat].set(False)
            idx = jax.vmap(lambda m: jnp.nonzero(m, size=P, fill_value=0)[0])(free)  # first P, raster order
            d2 = jnp.concatenate([d2, jnp.take_along_axis(desc2.reshape(B, H * W, -1), idx[..., None], 1)], 1)

        confs1 = confs2 = None
        if self.withconf:
            ck = "conf" if self.use_pts3d else "desc_conf"
            for d, w in ((pred1, "pred1"), (pred2, "pred2")):
                if ck not in d:
                    raise KeyError(f"ConfMatchingLoss: {w} has no {ck!r} (keys: {sorted(d)})")
            confs1, confs2 = _gather(at_least_f32(pred1[ck]), corres1), _gather(at_least_f32(pred2[ck]), corres2)

        if N <= self.blocksize:
            loss = self.criterion.loss(d1, d2, euc=self.use_pts3d)
        else:  # shuffle per entry, then independent blocks of `blocksize` pairs
            perm = jax.vmap(lambda k: jax.random.permutation(k, N))(jax.random.split(jax.random.fold_in(key, 2), B))
            take = lambda x: jnp.take_along_axis(x, perm.reshape(perm.shape + (1,) * (x.ndim - 2)), axis=1)
            d1, d2, valid = take(d1), take(d2[:, :N]), take(valid)
            nb = N // self.blocksize
            loss = self.criterion.loss(d1.reshape(B * nb, self.blocksize, -1), d2.reshape(B * nb, self.blocksize, -1),
                                       euc=self.use_pts3d).reshape(B, N)
            if self.withconf:
                confs1, confs2 = take(confs1), take(confs2)

        details: Details = {}
        if self.withconf:
            details["Conf1_std"] = unbiased_std(confs1)
            details["Conf2_std"] = unbiased_std(confs2)
        return loss, valid, confs1, confs2, details

    def compute_loss(self, gt1: View, gt2: View, pred1: View, pred2: View,
                     key: Array | None) -> tuple[Array, Details]:
        loss, valid, _, _, details = self.matches(gt1, gt2, pred1, pred2, key)
        out = _reduce(loss, valid, self.criterion.reduction)
        return out, details | {"MatchingLoss": out}

    def __repr__(self) -> str:
        return f"MatchingLoss({self.criterion!r})"


@dataclasses.dataclass(frozen=True)
class ConfMatchingLoss(Term):
    """Confidence-weighted matching loss (`mast3r.losses.ConfMatchingLoss`): mean over valid matches of
    `loss * g - alpha * log(g)` with g = the two `desc_conf` at the match combined by `confmode` ('prod', the
    class default, or 'mean', the official recipe). neg_conf_loss_quantile q: also push down the confidences
    of the invalid pairs with the q-quantile of the valid losses. Details `matching_conf_loss`,
    `MatchingLoss`, `Conf1_std`, `Conf2_std`."""

    pixel_loss: MatchingLoss
    alpha: float = 1.0
    confmode: str = "prod"
    neg_conf_loss_quantile: float | bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pixel_loss, MatchingLoss):
            raise TypeError(f"ConfMatchingLoss wraps a MatchingLoss(...), got {self.pixel_loss!r}")
        if not self.alpha > 0:
            raise ValueError(f"ConfMatchingLoss: alpha must be > 0, got {self.alpha}")
        if self.confmode not in ("prod", "mean"):
            raise ValueError(f"Unknown conf mode {self.confmode}")
        inner = dataclasses.replace(self.pixel_loss.with_reduction("none"), withconf=True)
        object.__setattr__(self, "pixel_loss", inner)

    def compute_loss(self, gt1: View, gt2: View, pred1: View, pred2: View,
                     key: Array | None) -> tuple[Array, Details]:
        loss, valid, c1, c2, details = self.pixel_loss.matches(gt1, gt2, pred1, pred2, key)
        details = {"MatchingLoss": masked_mean(loss, valid), **details}
        c1s, c2s = jnp.where(valid, c1, 1.0), jnp.where(valid, c2, 1.0)
        conf = c1s * c2s if self.confmode == "prod" else 0.5 * (c1s + c2s)
        conf_loss = masked_mean(loss * conf - self.alpha * jnp.log(conf), valid)
        if self.neg_conf_loss_quantile:
            nu = jax.lax.stop_gradient(masked_quantile(loss, valid, float(self.neg_conf_loss_quantile)))
            neg = ~valid
            n1, n2 = jnp.where(neg, c1, 1.0), jnp.where(neg, c2, 1.0)
            terms = jnp.concatenate([nu * n1 - self.alpha * jnp.log(n1), nu * n2 - self.alpha * jnp.log(n2)])
            conf_loss = conf_loss + masked_mean(terms, jnp.concatenate([neg, neg]))
        return conf_loss, {"matching_conf_loss": conf_loss, **details}

    def __repr__(self) -> str:
        return f"ConfMatchingLoss({self.pixel_loss!r}, alpha={self.alpha:g}, confmode={self.confmode!r})"
