"""Expert units: a model's image-level score mapped onto the experts' SV, for any method.

:class:`IsotonicMap` and :class:`ExpertScale`: the model's score mapped onto the
experts' SV by a monotone (isotonic, pool-adjacent-violators) fit on calibration
images, with an empirical range from the residuals of the calibration images nearest in
score; plus the linear fit and mean absolute error of the raw score in expert units
(:func:`linear_fit`, :func:`mean_absolute_error`).

Conventions: docs/referral.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression

from edue.metrics._utils import as_array_1d, finite_pairs

#: Share of the experts' SV the range of :class:`ExpertScale` is meant to cover.
INTERVAL_COVERAGE = 0.8
#: Fewest calibration images in the neighbourhood of :class:`ExpertScale`.
MIN_NEIGHBOURS = 10


@dataclass(frozen=True)
class IsotonicMap:
    """A non-decreasing map fitted by isotonic regression, linear between its knots and
    constant beyond them.

    Attributes:
        x: knots ``[J]``, strictly increasing.
        y: values at the knots ``[J]``, non-decreasing.
    """

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, x: object, y: object) -> IsotonicMap:
        """Least-squares non-decreasing fit of ``y`` on ``x`` (pool adjacent violators);
        tied ``x`` values are merged first (their mean ``y``, weighted by count).

        Raises:
            ValueError: no pair with both values finite.
        """
        a, b = finite_pairs(x, y, ("x", "y"))
        if a.size == 0:
            raise ValueError("IsotonicMap.fit needs at least one finite pair")
        knots, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
        means = np.bincount(inverse, weights=b) / counts
        fitted = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True)
        return cls(knots.astype(np.float64), np.asarray(fitted.x, dtype=np.float64))

    def __call__(self, values: object) -> np.ndarray:
        """The map at ``values`` ``[M]`` (nan stays nan)."""
        v = as_array_1d(values)
        out = np.interp(v, self.x, self.y)
        out[~np.isfinite(v)] = np.nan
        return out

    def to_dict(self) -> dict[str, list[float]]:
        """Plain JSON-ready lists."""
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicMap:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: missing keys, lengths differ, or the knots are not increasing.
        """
        x = np.asarray(data["x"], dtype=np.float64)
        y = np.asarray(data["y"], dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError("isotonic map: 'x' and 'y' must be equal-length non-empty lists")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
            raise ValueError("isotonic map: knots must increase and values must not decrease")
        return cls(x, y)


@dataclass(frozen=True)
class ExpertScale:
    """The model's score in the experts' units, with an empirical range.

    The expected experts' SV of an image with score ``s`` is the isotonic map of the
    calibration images' experts' SV on their score, at ``s``. Its range adds the
    ``(1 − coverage) / 2`` and ``(1 + coverage) / 2`` quantiles of the residuals
    (experts' SV minus the map) of the ``k`` calibration images nearest to ``s`` in score
    (``k = max(MIN_NEIGHBOURS, ceil(N / 4))``, at most ``N``), clipped at 0. The range
    describes how far the experts scattered around the map for similar images; it is
    in-sample and carries no coverage guarantee.

    Attributes:
        mapping: the isotonic map.
        scores: calibration scores ``[N]``.
        residuals: calibration residuals ``[N]``.
        coverage: the share of experts' SV the range is meant to cover.
    """

    mapping: IsotonicMap
    scores: np.ndarray
    residuals: np.ndarray
    coverage: float = INTERVAL_COVERAGE

    @classmethod
    def fit(
        cls, scores: object, expert: object, coverage: float = INTERVAL_COVERAGE
    ) -> ExpertScale:
        """Fit the map and keep the residuals of the finite pairs."""
        s, e = finite_pairs(scores, expert, ("scores", "expert"))
        mapping = IsotonicMap.fit(s, e)
        return cls(mapping, s, e - mapping(s), float(coverage))

    @property
    def neighbours(self) -> int:
        """Calibration images in each neighbourhood."""
        n = int(self.scores.size)
        return min(n, max(MIN_NEIGHBOURS, int(math.ceil(n / 4))))

    def expected(self, values: object) -> np.ndarray:
        """Expected experts' SV ``[M]``."""
        return self.mapping(values)

    def interval(self, values: object) -> tuple[np.ndarray, np.ndarray]:
        """Low and high ends of the range ``[M]`` each (nan for a non-finite value)."""
        v = as_array_1d(values)
        low, high = np.full(v.shape, np.nan), np.full(v.shape, np.nan)
        finite = np.isfinite(v)
        if self.scores.size == 0 or not finite.any():
            return low, high
        tail = (1 - self.coverage) / 2
        f = v[finite]
        # each value's nearest calibration images (ties in calibration order) ``[M, n]``
        gaps = np.abs(self.scores[None, :] - f[:, None])
        near = np.argsort(gaps, axis=1, kind="stable")[:, : self.neighbours]
        lo, hi = row_quantiles(self.residuals[near], (tail, 1 - tail))
        centre = self.mapping(f)
        low[finite], high[finite] = np.maximum(centre + lo, 0.0), np.maximum(centre + hi, 0.0)
        return low, high


def row_quantiles(rows: np.ndarray, levels: Sequence[float]) -> list[np.ndarray]:
    """Quantiles of each row of ``rows`` ``[M, n]`` at ``levels``, one ``[M]`` each.

    NumPy's default (``linear``) definition, ``np.quantile(rows, q, axis=1)`` to
    rounding: one sort of the rows and two columns read per level, without
    ``np.quantile``'s overhead (it dominated a single image's referral decision).
    """
    ordered = np.sort(rows, axis=1)
    last = ordered.shape[1] - 1
    out = []
    for q in levels:
        position = q * last
        below = min(int(math.floor(position)), last)
        above = min(below + 1, last)
        weight = position - below
        low, high = ordered[:, below], ordered[:, above]
        out.append(low + weight * (high - low))
    return out


def linear_fit(expert: object, model: object) -> tuple[float, float]:
    """Slope and intercept of the least-squares line ``model ≈ slope · expert + intercept``.

    A score in the experts' units has slope 1 and intercept 0. Pairs with a non-finite
    value are dropped; ``(nan, nan)`` with fewer than two pairs or a constant ``expert``.
    """
    x, y = finite_pairs(expert, model, ("expert", "model"))
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def mean_absolute_error(a: object, b: object) -> float:
    """Mean ``|a − b|`` over the pairs with both finite (nan when none)."""
    x, y = finite_pairs(a, b)
    return float(np.abs(x - y).mean()) if x.size else float("nan")


def percentile_of(values: object, reference: object) -> np.ndarray:
    """Percentage of the finite ``reference`` values at or below each value ``[M]``
    (nan for a non-finite value or an empty reference)."""
    v = as_array_1d(values)
    ref = np.sort(as_array_1d(reference))
    ref = ref[np.isfinite(ref)]
    out = np.full(v.shape, np.nan)
    if ref.size:
        finite = np.isfinite(v)
        out[finite] = 100.0 * np.searchsorted(ref, v[finite], side="right") / ref.size
    return out
