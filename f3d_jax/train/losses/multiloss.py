"""Composable criteria with the official `MultiLoss` semantics (`dust3r/losses.py`).

A criterion is a chain of weighted terms: `A + 0.075 * B` evaluates `1 * A(...) + 0.075 * B(...)`. As in the
official code, `k * T` *sets* the weight of the chain head (so `k * (A + B)` weights only `A`, and
`2 * (3 * A)` has weight 2), `T1 + T2` appends `T2`'s chain, and each term's `details` (its loss **before**
the weight, plus monitoring values) are merged left to right, later keys overwriting earlier ones.

Calling convention of every criterion: `criterion(gt1, gt2, pred1, pred2, *, key=None) -> (loss, details)`
with the official view / prediction dict keys (NHWC), `loss` a 0-d array and `details` a dict of 0-d
arrays. `key` (a `jax.random` key) is only read by matching terms that need randomness (correspondences
sampled in the loss, shuffled blocks); criteria are pure and jit-able.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

View = dict[str, Any]
Details = dict[str, Array]


class Term:
    """One loss term. Subclasses are frozen dataclasses implementing `compute_loss`."""

    def compute_loss(self, gt1: View, gt2: View, pred1: View, pred2: View,
                     key: Array | None) -> tuple[Array, Details]:
        raise NotImplementedError

    def check_top_level(self) -> None:
        """Raise if this term cannot be evaluated on its own (outside a confidence wrapper)."""

    def __call__(self, gt1: View, gt2: View, pred1: View, pred2: View, *,
                 key: Array | None = None) -> tuple[Array, Details]:
        return Sum(((1.0, self),))(gt1, gt2, pred1, pred2, key=key)

    def __mul__(self, alpha: Any) -> Sum:
        return Sum(((_weight(alpha), self),))

    __rmul__ = __mul__

    def __add__(self, other: Any) -> Sum:
        return Sum(((1.0, self),)) + other


def _weight(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"a criterion can only be multiplied by an int or a float, not {alpha!r}")
    return float(alpha)


@dataclasses.dataclass(frozen=True)
class Sum:
    """A chain of `(weight, term)`; the official `MultiLoss` linked list as a tuple."""

    terms: tuple[tuple[float, Term], ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("a criterion needs at least one term")
        for _, t in self.terms:
            t.check_top_level()

    def __call__(self, gt1: View, gt2: View, pred1: View, pred2: View, *,
                 key: Array | None = None) -> tuple[Array, Details]:
        total = None
        details: Details = {}
        for i, (w, term) in enumerate(self.terms):
            k = None if key is None else jax.random.fold_in(key, i)
            loss, d = term.compute_loss(gt1, gt2, pred1, pred2, k)
            loss = loss * jnp.asarray(w, loss.dtype)
            total = loss if total is None else total + loss
            details |= d
        return total, details

    def __mul__(self, alpha: Any) -> Sum:
        (_, head), *rest = self.terms
        return Sum(((_weight(alpha), head), *rest))

    __rmul__ = __mul__

    def __add__(self, other: Any) -> Sum:
        if isinstance(other, Term):
            other = Sum(((1.0, other),))
        if not isinstance(other, Sum):
            raise TypeError(f"can only add a criterion to a criterion, not {other!r}")
        return Sum(self.terms + other.terms)

    def __repr__(self) -> str:
        parts = [(f"{w:g}*{t!r}" if w != 1 else repr(t)) for w, t in self.terms]
        return " + ".join(parts)
