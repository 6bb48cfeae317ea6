"""DUSt3R / MASt3R point-map regression: `L21`, `Regr3D` (+ shift / scale invariant variants), `ConfLoss`.

Follows `dust3r/losses.py`, `dust3r/utils/geometry.py: normalize_pointcloud` and `mast3r/losses.py`
(spec: shared/reference/training.md §6-7). Views are the official dicts, NHWC: `gt['pts3d'] (B, H, W, 3)`
world points, `gt['valid_mask'] (B, H, W)` bool, `gt['camera_pose'] (B, 4, 4)` cam2world, MASt3R also
`gt['sky_mask'] (B, H, W)` and `gt['is_metric_scale'] (B,)`; predictions `pred1['pts3d']`,
`pred2['pts3d_in_other_view'] (B, H, W, 3)`, `pred['conf'] (B, H, W)`.

Per-pixel losses are kept dense, `(B, H, W)` with a mask, instead of the official boolean-indexed vectors:
means over a mask pool the whole batch (never per sample), as the official `x[mask].mean()` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from f3d_jax.train.losses._common import (HIGHEST, affine_inverse, at_least_f32, masked_mean, nanmedian_lower,
                                          safe_norm)
from f3d_jax.train.losses.multiloss import Details, Term, View

_NORMS = {"avg": ("dis", "log1p", "warp-log1p"), "median": None, "sqrt": None}


@dataclasses.dataclass(frozen=True)
class L21Loss:
    """Euclidean distance between 3-D points (`dust3r.losses.L21Loss`); `reduction` 'mean' / 'sum' / 'none'."""

    reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum", "none"):
            raise ValueError(f"L21Loss: bad reduction {self.reduction!r} (mean, sum or none)")

    def distance(self, a: Array, b: Array) -> Array:
        return safe_norm(a - b, axis=-1)

    def __repr__(self) -> str:
        return "L21Loss()"


L21 = L21Loss()


def _split_norm_mode(norm_mode: str, owner: str) -> tuple[str, str]:
    parts = norm_mode.split("_")
    if len(parts) != 2 or parts[0] not in _NORMS:
        raise ValueError(f"{owner}: bad norm_mode {norm_mode!r} (expected 'avg_dis', 'avg_log1p', "
                         "'avg_warp-log1p', 'median_dis', 'sqrt_dis', optionally with a '?' prefix in MASt3R)")
    allowed = _NORMS[parts[0]]
    if allowed is not None and parts[1] not in allowed:
        raise ValueError(f"{owner}: bad distance mode {parts[1]!r} in norm_mode {norm_mode!r} ({allowed})")
    return parts[0], parts[1]


def normalize_pointcloud(pts1: Array, pts2: Array, norm_mode: str, valid1: Array,
                         valid2: Array) -> tuple[Array, Array, Array]:
    """Joint normalisation of two point maps (`dust3r.utils.geometry.normalize_pointcloud`).

    pts1, pts2: (B, H, W, 3); valid1, valid2: (B, H, W) bool. norm_mode '<norm>_<dis>': 'avg_dis' (mean
    distance to the origin over both views' valid points, +1e-8 in the count), 'avg_log1p',
    'avg_warp-log1p' (points warped by log1p(d)/d first), 'median_*' (lower median, no gradient),
    'sqrt_*' ((mean sqrt d)^2). The factor is clipped at 1e-8. Returns (pts1 / f, pts2 / f, f (B,)).
    """
    norm, dis = _split_norm_mode(norm_mode, "normalize_pointcloud")
    B = pts1.shape[0]
    n1 = pts1.shape[1] * pts1.shape[2]
    flat1, flat2 = valid1.reshape(B, -1), valid2.reshape(B, -1)
    if norm == "avg":
        z1 = jnp.where(valid1[..., None], pts1, 0.0)
        z2 = jnp.where(valid2[..., None], pts2, 0.0)
        all_dis = jnp.concatenate([safe_norm(z1).reshape(B, -1), safe_norm(z2).reshape(B, -1)], axis=1)
        if dis == "log1p":
            all_dis = jnp.log1p(all_dis)
        elif dis == "warp-log1p":
            log_dis = jnp.log1p(all_dis)
            warp = log_dis / jnp.maximum(all_dis, 1e-8)
            pts1 = pts1 * warp[:, :n1].reshape(pts1.shape[:-1] + (1,))
            pts2 = pts2 * warp[:, n1:].reshape(pts2.shape[:-1] + (1,))
            all_dis = log_dis
        count = (jnp.sum(flat1, axis=1) + jnp.sum(flat2, axis=1)).astype(pts1.dtype) + 1e-8
        factor = jnp.sum(all_dis, axis=1) / count
    else:
        valid = jnp.concatenate([flat1, flat2], axis=1)
        all_dis = jnp.concatenate([safe_norm(jnp.where(valid1[..., None], pts1, 0.0)).reshape(B, -1),
                                   safe_norm(jnp.where(valid2[..., None], pts2, 0.0)).reshape(B, -1)], axis=1)
        if norm == "median":
            factor = jax.lax.stop_gradient(nanmedian_lower(all_dis, valid))
        else:  # sqrt: nanmean of sqrt(d), exact count
            s = jnp.sqrt(jnp.where(valid, all_dis, 1.0))
            n = jnp.sum(valid, axis=1)
            factor = (jnp.sum(jnp.where(valid, s, 0.0), axis=1) / n.astype(s.dtype)) ** 2
    factor = jnp.maximum(factor, 1e-8)
    f = factor[:, None, None, None]
    return pts1 / f, pts2 / f, factor


def _transform(T: Array, pts: Array) -> Array:
    """Apply (B, 4, 4) rigid/affine transforms to (B, H, W, 3) points."""
    return (jnp.einsum("bij,bhwj->bhwi", T[:, :3, :3], pts, precision=HIGHEST)
            + T[:, None, None, :3, 3])


def _apply_log_to_norm(xyz: Array) -> Array:
    d = safe_norm(xyz, axis=-1, keepdims=True)
    return xyz / jnp.maximum(d, 1e-8) * jnp.log1p(d)


def _require(d: View, key: str, who: str, what: str) -> Array:
    if key not in d:
        raise KeyError(f"{who}: {what} has no {key!r} (keys: {sorted(d)})")
    return jnp.asarray(d[key])


def get_pred_pts3d(gt: View, pred: View, use_pose: bool, who: str = "Regr3D") -> Array:
    """Predicted points as `dust3r.inference.get_pred_pts3d` picks them ('pts3d' first, then
    'pts3d_in_other_view' for the second view)."""
    if "pts3d" in pred:
        pts = at_least_f32(pred["pts3d"])
        if use_pose:
            pts = _transform(_require(pred, "camera_pose", who, "pred2 with 'pts3d'"), pts)
        return pts
    if "pts3d_in_other_view" in pred:
        if not use_pose:
            raise KeyError(f"{who}: pred1 must hold 'pts3d' (it has {sorted(pred)})")
        return at_least_f32(pred["pts3d_in_other_view"])
    raise KeyError(f"{who}: the prediction has neither 'pts3d' nor 'pts3d_in_other_view' ({sorted(pred)})")


@dataclasses.dataclass(frozen=True)
class Regr3D(Term):
    """3-D regression in view 1's camera frame (`dust3r.losses.Regr3D`, `mast3r.losses.Regr3D`).

    criterion: `L21` (its reduction: 'mean' for a bare term, switched to 'none' inside `ConfLoss`).
    norm_mode: '<norm>_<dis>' (see `normalize_pointcloud`), '?<norm>_<dis>' (MASt3R: entries whose
    `gt1['is_metric_scale']` is True keep the metric scale: their predictions are divided by the **GT**
    factor), or None/'' for no normalisation. gt_scale: normalise only the predictions.
    MASt3R extensions (defaults = DUSt3R behaviour): sky_loss_value (> 0: sky pixels `sky_mask & ~valid`
    join the mask with this constant loss; needs a `ConfLoss` wrapper), max_metric_scale (an entry stays
    metric only if all its valid GT points are closer than this to camera 1), loss_in_log (True: map points
    by x/|x|*log1p|x| before L21; 'before': only the GT, before normalisation).
    shift_inv / scale_inv: the `Regr3D_ShiftInv` / `_ScaleInv` / `_ScaleShiftInv` median alignments
    (no gradient through the medians). name: the details prefix (the official class name).
    """

    criterion: L21Loss = L21
    norm_mode: str | None = "avg_dis"
    gt_scale: bool = False
    sky_loss_value: float = 0.0
    max_metric_scale: float | bool = False
    loss_in_log: bool | str = False
    shift_inv: bool = False
    scale_inv: bool = False
    name: str = "Regr3D"

    def __post_init__(self) -> None:
        if not isinstance(self.criterion, L21Loss):
            raise TypeError(f"{self.name}: criterion must be L21 (an L21Loss), got {self.criterion!r}")
        if self.norm_mode:
            _split_norm_mode(self.norm_mode.removeprefix("?"), self.name)
        if self.loss_in_log not in (False, True, "before"):
            raise ValueError(f"{self.name}: loss_in_log must be False, True or 'before', got {self.loss_in_log!r}")

    @property
    def _metric_aware(self) -> bool:
        return bool(self.norm_mode) and self.norm_mode.startswith("?")

    def with_reduction(self, mode: str) -> Regr3D:
        return dataclasses.replace(self, criterion=L21Loss(mode))

    def check_top_level(self) -> None:
        if self.sky_loss_value > 0:
            raise ValueError(f"{self.name}: sky_loss_value={self.sky_loss_value} needs a ConfLoss wrapper "
                             "(the official code asserts it); pass sky_loss_value=0 for a bare term")
        if self.criterion.reduction == "none":
            raise ValueError(f"{self.name}: reduction 'none' cannot be the loss of a top-level term")

    # -- points ------------------------------------------------------------------------------------------

    def get_all_pts3d(self, gt1: View, gt2: View, pred1: View,
                      pred2: View) -> tuple[Array, Array, Array, Array, Array, Array]:
        """(gt_pts1, gt_pts2, pr_pts1, pr_pts2, valid1, valid2) after the frame change, normalisation and
        the optional shift / scale alignment; all (B, H, W, 3) / (B, H, W)."""
        who = self.name
        pose1 = _require(gt1, "camera_pose", who, "gt1")
        valid1 = _require(gt1, "valid_mask", who, "gt1").astype(bool)
        valid2 = _require(gt2, "valid_mask", who, "gt2").astype(bool)
        # invalid GT points may be inf/nan: zero them first so that no NaN reaches a gradient
        g1 = jnp.asarray(_require(gt1, "pts3d", who, "gt1"))
        g2 = jnp.asarray(_require(gt2, "pts3d", who, "gt2"))
        g1 = jnp.where(jnp.isfinite(g1), g1, 0.0)
        g2 = jnp.where(jnp.isfinite(g2), g2, 0.0)
        in_camera1 = affine_inverse(pose1)
        gt_pts1 = _transform(in_camera1, g1)
        gt_pts2 = _transform(in_camera1, g2)
        if self.loss_in_log == "before":
            gt_pts1, gt_pts2 = _apply_log_to_norm(gt_pts1), _apply_log_to_norm(gt_pts2)

        pr_pts1 = get_pred_pts3d(gt1, pred1, use_pose=False, who=who)
        pr_pts2 = get_pred_pts3d(gt2, pred2, use_pose=True, who=who)
        B = pr_pts1.shape[0]

        if self._metric_aware:
            metric = _require(gt1, "is_metric_scale", who, "gt1 (norm_mode '?...')").astype(bool).reshape(B)
            if self.max_metric_scale:
                d1 = jnp.max(jnp.where(valid1, safe_norm(gt_pts1), 0.0).reshape(B, -1), axis=1)
                d2 = jnp.max(jnp.where(valid2, safe_norm(gt_pts2), 0.0).reshape(B, -1), axis=1)
                metric = metric & (d1 < self.max_metric_scale) & (d2 < self.max_metric_scale)
        else:
            metric = jnp.zeros((B,), bool)
        m4 = metric[:, None, None, None]

        if self.norm_mode:
            mode = self.norm_mode.removeprefix("?")
            n1, n2, _ = normalize_pointcloud(pr_pts1, pr_pts2, mode, valid1, valid2)
            pr_pts1, pr_pts2 = jnp.where(m4, pr_pts1, n1), jnp.where(m4, pr_pts2, n2)
            if not self.gt_scale:
                gt_pts1, gt_pts2, gt_factor = normalize_pointcloud(gt_pts1, gt_pts2, mode, valid1, valid2)
                f = gt_factor[:, None, None, None]
                pr_pts1, pr_pts2 = jnp.where(m4, pr_pts1 / f, pr_pts1), jnp.where(m4, pr_pts2 / f, pr_pts2)

        if self.shift_inv:  # subtract the joint median depth (Regr3D_ShiftInv), no gradient
            v = jnp.concatenate([valid1.reshape(B, -1), valid2.reshape(B, -1)], axis=1)

            def shift(p1: Array, p2: Array) -> tuple[Array, Array]:
                z = jnp.concatenate([p1[..., 2].reshape(B, -1), p2[..., 2].reshape(B, -1)], axis=1)
                s = jax.lax.stop_gradient(nanmedian_lower(z, v))[:, None, None]
                return p1.at[..., 2].add(-s), p2.at[..., 2].add(-s)

            gt_pts1, gt_pts2 = shift(gt_pts1, gt_pts2)
            pr_pts1, pr_pts2 = shift(pr_pts1, pr_pts2)

        if self.scale_inv:  # median distance to the median centre (Regr3D_ScaleInv), no gradient
            v = jnp.concatenate([valid1.reshape(B, -1), valid2.reshape(B, -1)], axis=1)

            def scale(p1: Array, p2: Array) -> Array:
                p = jnp.concatenate([p1.reshape(B, -1, 3), p2.reshape(B, -1, 3)], axis=1)
                p = jnp.where(v[..., None], p, 0.0)
                centre = nanmedian_lower(jnp.moveaxis(p, -1, 1), v[:, None, :])  # (B, 3)
                d = safe_norm(p - centre[:, None, :])
                return jax.lax.stop_gradient(nanmedian_lower(d, v))[:, None, None, None]

            gt_s = scale(gt_pts1, gt_pts2)
            pr_s = jnp.clip(scale(pr_pts1, pr_pts2), 1e-3, 1e3)
            if self.gt_scale:
                pr_pts1, pr_pts2 = pr_pts1 * (gt_s / pr_s), pr_pts2 * (gt_s / pr_s)
            else:
                gt_pts1, gt_pts2 = gt_pts1 / gt_s, gt_pts2 / gt_s
                pr_pts1, pr_pts2 = pr_pts1 / pr_s, pr_pts2 / pr_s
        return gt_pts1, gt_pts2, pr_pts1, pr_pts2, valid1, valid2

    def pixel_losses(self, gt1: View, gt2: View, pred1: View,
                     pred2: View) -> tuple[Array, Array, Array, Array, Details]:
        """Dense per-pixel L21 losses and their masks: (l1, mask1, l2, mask2, details), (B, H, W) each."""
        gt_pts1, gt_pts2, pr_pts1, pr_pts2, mask1, mask2 = self.get_all_pts3d(gt1, gt2, pred1, pred2)
        sky1 = sky2 = None
        if self.sky_loss_value > 0:
            sky1 = _require(gt1, "sky_mask", self.name, "gt1").astype(bool) & ~mask1
            sky2 = _require(gt2, "sky_mask", self.name, "gt2").astype(bool) & ~mask2
            mask1, mask2 = mask1 | sky1, mask2 | sky2

        def per_pixel(pr: Array, gt: Array, mask: Array, sky: Array | None) -> Array:
            pr = jnp.where(mask[..., None], pr, 0.0)
            gt = jnp.where(mask[..., None], gt, 0.0)
            if self.loss_in_log and self.loss_in_log != "before":
                pr, gt = _apply_log_to_norm(pr), _apply_log_to_norm(gt)
            loss = jnp.where(mask, self.criterion.distance(pr, gt), 0.0)
            if sky is not None:
                loss = jnp.where(sky, jnp.asarray(self.sky_loss_value, loss.dtype), loss)
            return loss

        l1 = per_pixel(pr_pts1, gt_pts1, mask1, sky1)
        l2 = per_pixel(pr_pts2, gt_pts2, mask2, sky2)
        details = {f"{self.name}_pts3d_1": masked_mean(l1, mask1), f"{self.name}_pts3d_2": masked_mean(l2, mask2)}
        return l1, mask1, l2, mask2, details

    def compute_loss(self, gt1: View, gt2: View, pred1: View, pred2: View,
                     key: Array | None) -> tuple[Array, Details]:
        l1, m1, l2, m2, details = self.pixel_losses(gt1, gt2, pred1, pred2)
        if self.criterion.reduction == "sum":
            return jnp.sum(jnp.where(m1, l1, 0.0)) + jnp.sum(jnp.where(m2, l2, 0.0)), details
        return masked_mean(l1, m1) + masked_mean(l2, m2), details

    def __repr__(self) -> str:
        return f"{self.name}({self.criterion!r})"


@dataclasses.dataclass(frozen=True)
class ConfLoss(Term):
    """Confidence-weighted regression (`dust3r.losses.ConfLoss`): per view, the mean over the inner
    criterion's mask of `loss * conf - alpha * log(conf)` with `pred['conf'] (B, H, W)`; the two views'
    means are summed. Details `conf_loss_1`, `conf_loss2` (sic) and the inner ones."""

    pixel_loss: Regr3D
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.pixel_loss, Regr3D):
            raise TypeError(f"ConfLoss wraps a single Regr3D-like term, got {self.pixel_loss!r}")
        if not self.alpha > 0:
            raise ValueError(f"ConfLoss: alpha must be > 0, got {self.alpha}")
        if self.pixel_loss.criterion.reduction != "none":
            object.__setattr__(self, "pixel_loss", self.pixel_loss.with_reduction("none"))

    def compute_loss(self, gt1: View, gt2: View, pred1: View, pred2: View,
                     key: Array | None) -> tuple[Array, Details]:
        l1, m1, l2, m2, details = self.pixel_loss.pixel_losses(gt1, gt2, pred1, pred2)
        c1 = jnp.where(m1, at_least_f32(_require(pred1, "conf", "ConfLoss", "pred1")), 1.0)
        c2 = jnp.where(m2, at_least_f32(_require(pred2, "conf", "ConfLoss", "pred2")), 1.0)
        conf_loss1 = masked_mean(l1 * c1 - self.alpha * jnp.log(c1), m1)
        conf_loss2 = masked_mean(l2 * c2 - self.alpha * jnp.log(c2), m2)
        return conf_loss1 + conf_loss2, {"conf_loss_1": conf_loss1, "conf_loss2": conf_loss2, **details}

    def __repr__(self) -> str:
        return f"ConfLoss({self.pixel_loss!r}, alpha={self.alpha:g})"


def regr3d_factory(namespace: str, name: str = "Regr3D", shift_inv: bool = False, scale_inv: bool = False):
    """The constructor a criterion string calls: official signature and defaults of `namespace`'s class."""
    if namespace == "mast3r":
        def make(criterion: Any, norm_mode: str = "avg_dis", gt_scale: bool = False, opt_fit_gt: bool = False,
                 sky_loss_value: float = 2, max_metric_scale: float | bool = False,
                 loss_in_log: bool | str = False) -> Regr3D:
            del opt_fit_gt  # accepted and ignored by the official class
            return Regr3D(criterion, norm_mode, gt_scale, sky_loss_value, max_metric_scale, loss_in_log,
                          shift_inv, scale_inv, name)
    else:
        def make(criterion: Any, norm_mode: str = "avg_dis", gt_scale: bool = False) -> Regr3D:
            if norm_mode and norm_mode.startswith("?"):
                raise ValueError(f"{name}: norm_mode {norm_mode!r} ('?' = metric-aware) exists only in the "
                                 "MASt3R namespace (build_criterion(..., namespace='mast3r'))")
            return Regr3D(criterion, norm_mode, gt_scale, 0.0, False, False, shift_inv, scale_inv, name)
    make.__name__ = name
    return make
