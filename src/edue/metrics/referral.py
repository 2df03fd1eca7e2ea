"""From an image-level score to a referral decision: the math, for any method's score.

Everything here works on plain arrays of per-image numbers (a score such as the SV, a
soft Dice, the experts' SV, pooled network features) and never knows which method
produced them.

* **Referral threshold with a finite-sample guarantee** (:func:`learn_then_test`): an
  image is *accepted* when its score is at most a threshold ``t`` and *referred* to a
  second expert otherwise. The threshold is chosen on calibration images by
  Learn-then-Test (Angelopoulos, Bates, Candès, Jordan & Lei, 2021) so that, with
  probability at least ``1 − delta`` over the calibration draw, the *selective risk*
  ``R(t) = P(poor | score <= t)`` — the share of poor segmentations among the accepted
  images — is at most ``alpha``. Each candidate ``t`` of a grid fixed before the
  calibration images are seen (:func:`threshold_grid`) is the null hypothesis
  ``H_t: R(t) > alpha``, tested with the exact binomial p-value
  ``P(Binomial(n_t, alpha) <= k_t)`` of the ``k_t`` poor among the ``n_t`` accepted
  calibration images (:func:`binomial_p_value`); hypotheses are rejected by fixed-sequence
  testing at level ``delta``, from the strictest candidate upwards, until the first one
  that cannot be rejected. Every rejected ``t`` controls the risk simultaneously, so the
  most permissive one is returned. The assumptions: calibration and future images are
  independent draws from one distribution (i.i.d., hence exchangeable), and the share of
  poor among accepted images does not fall when the threshold rises.
* **Outcome on other images** (:func:`referral_outcome`, :func:`oracle_referral_rate`):
  the realised referral rate and share of poor among the accepted images, and the
  smallest referral rate any threshold could have achieved on those images.
* **Expert units** (:class:`IsotonicMap`, :class:`ExpertScale`): the model's score
  mapped onto the experts' SV by a monotone (isotonic, pool-adjacent-violators) fit
  on calibration images, with an empirical range from the residuals of the calibration
  images nearest in score; plus the linear fit and mean absolute error of the raw score
  in expert units (:func:`linear_fit`, :func:`mean_absolute_error`).
* **Distribution shift** (:class:`ShrunkGaussian`, :func:`conformal_upper_threshold`):
  a Gaussian with Ledoit–Wolf shrinkage covariance fitted on the training images'
  pooled features, the Mahalanobis distance of new features to it, and a threshold
  whose false-alarm rate on images like the calibration ones is at most a stated rate.

Conventions: docs/referral.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression
from scipy.stats import binom

from edue.metrics._utils import as_array_1d, finite_pairs

#: Share of the experts' SV the range of :class:`ExpertScale` is meant to cover.
INTERVAL_COVERAGE = 0.8
#: Fewest calibration images in the neighbourhood of :class:`ExpertScale`.
MIN_NEIGHBOURS = 10


# --------------------------------------------------------------------------- threshold
def binomial_p_value(k: int, n: int, alpha: float) -> float:
    """P-value of ``H: risk > alpha`` after ``k`` poor among ``n`` accepted images.

    ``P(Binomial(n, alpha) <= k)``: under the null the count of poor images is
    stochastically larger than ``Binomial(n, alpha)``, so this p-value is valid. It is
    1 for ``n == 0`` (nothing accepted: no evidence).
    """
    if n <= 0:
        return 1.0
    return float(binom.cdf(int(k), int(n), float(alpha)))


def min_accepted(alpha: float, level: float) -> int:
    """Fewest accepted images for which any rejection is possible at ``level``:
    the smallest ``n`` with ``(1 − alpha) ** n <= level`` (all of them good)."""
    if not 0 < alpha < 1 or not 0 < level < 1:
        raise ValueError(f"alpha and level must lie in (0, 1), got {alpha} and {level}")
    return int(math.ceil(math.log(level) / math.log(1 - alpha)))


def threshold_grid(
    reference: object, n_quantiles: int = 100, growth: float = 1.05, steps: int = 60
) -> np.ndarray:
    """Candidate thresholds, fixed before any calibration image is seen.

    The quantiles of ``reference`` scores (e.g. the training images' SV, independent of
    the calibration images) at levels ``0, 1/n_quantiles, …, 1``, then a geometric
    extension above the largest (``max · growth ** j``, ``j = 1 … steps``, in case
    new images score higher than the reference ones), then ``+inf`` (accept everything).

    Args:
        reference: scores ``[M]`` (non-finite ones are dropped; at least one must be left).
        n_quantiles: quantile steps.
        growth: factor between consecutive thresholds above the largest reference score.
        steps: thresholds above the largest reference score.

    Returns:
        Ascending unique thresholds ``[G]`` ending with ``inf``.

    Raises:
        ValueError: no finite reference score.
    """
    ref = as_array_1d(reference)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        raise ValueError("threshold_grid needs at least one finite reference score")
    levels = np.linspace(0.0, 1.0, n_quantiles + 1)
    grid = [np.quantile(ref, levels)]
    top = float(ref.max())
    if top > 0:
        grid.append(top * growth ** np.arange(1, steps + 1))
    return np.append(np.unique(np.concatenate(grid)), np.inf)


@dataclass(frozen=True)
class ReferralThreshold:
    """The threshold :func:`learn_then_test` chose and what it did on the calibration set.

    Attributes:
        threshold: accept an image when its score is at most this; ``-inf`` refers
            every image (no threshold could be certified), ``inf`` accepts every one.
        alpha: the largest share of poor segmentations allowed among accepted images.
        delta: the probability (over the calibration draw) that the guarantee fails.
        n: calibration images used.
        n_accepted: calibration images the threshold accepts.
        n_poor_accepted: poor ones among them.
        p_value: binomial p-value of the chosen threshold (1 when none was certified).
        referral_rate: share of calibration images referred (the expected referral
            rate on new images from the same distribution).
    """

    threshold: float
    alpha: float
    delta: float
    n: int
    n_accepted: int
    n_poor_accepted: int
    p_value: float
    referral_rate: float

    @property
    def certified(self) -> bool:
        """Whether some threshold accepting at least one image was certified."""
        return self.threshold > -math.inf

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (infinities as the strings ``"inf"`` / ``"-inf"``)."""
        return {
            "threshold": encode_float(self.threshold),
            "alpha": self.alpha,
            "delta": self.delta,
            "n": self.n,
            "n_accepted": self.n_accepted,
            "n_poor_accepted": self.n_poor_accepted,
            "p_value": self.p_value,
            "referral_rate": self.referral_rate,
        }


def encode_float(value: float) -> float | str:
    """A float for JSON: infinities and nan as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    return value if math.isfinite(value) else str(value)


def learn_then_test(
    scores: object,
    poor: object,
    alpha: float,
    delta: float,
    grid: object,
) -> ReferralThreshold:
    """The most permissive threshold certified to keep the share of poor images among
    accepted ones at most ``alpha`` with probability ``1 − delta`` (module docstring).

    Fixed-sequence testing runs over ``grid`` from the strictest candidate upwards and
    stops at the first candidate it cannot reject. Candidates that accept fewer than
    :func:`min_accepted` calibration images are passed over: no outcome could reject
    them (even with no poor image among those accepted, the p-value exceeds ``delta``).
    The family-wise error of this sequence stays at most ``delta`` when the selective
    risk does not decrease as the threshold rises (the premise of referring by score);
    docs/referral.md gives the argument.

    Args:
        scores: calibration scores ``[N]`` (higher = refer first); non-finite scores are
            dropped together with their flags.
        poor: whether each calibration segmentation is poor ``[N]`` (bool or 0/1).
        alpha: allowed share of poor among accepted images, in (0, 1).
        delta: allowed probability that the guarantee fails, in (0, 1).
        grid: candidate thresholds ``[G]`` fixed independently of the calibration
            images (:func:`threshold_grid`).

    Returns:
        The chosen :class:`ReferralThreshold`.

    Raises:
        ValueError: ``alpha`` or ``delta`` outside (0, 1), lengths differ, or an empty grid.
    """
    if not 0 < alpha < 1 or not 0 < delta < 1:
        raise ValueError(f"alpha and delta must lie in (0, 1), got {alpha} and {delta}")
    s, bad = as_array_1d(scores), as_array_1d(poor) != 0
    if s.shape != bad.shape:
        raise ValueError(f"scores and poor flags differ in length: {s.size} vs {bad.size}")
    keep = np.isfinite(s)
    s, bad = s[keep], bad[keep]
    candidates = np.unique(as_array_1d(grid))
    if candidates.size == 0:
        raise ValueError("learn_then_test needs at least one candidate threshold")
    fewest = min_accepted(alpha, delta)
    order = np.argsort(s, kind="stable")
    ranked, bad_before = s[order], np.concatenate([[0], np.cumsum(bad[order])])
    threshold, p_value = -math.inf, 1.0
    for candidate in candidates:
        n_t = int(np.searchsorted(ranked, candidate, side="right"))
        if n_t < fewest:
            continue
        p = binomial_p_value(int(bad_before[n_t]), n_t, alpha)
        if p > delta:
            break
        threshold, p_value = float(candidate), p
    accepted = s <= threshold
    n = int(s.size)
    return ReferralThreshold(
        threshold=threshold,
        alpha=float(alpha),
        delta=float(delta),
        n=n,
        n_accepted=int(accepted.sum()),
        n_poor_accepted=int((accepted & bad).sum()),
        p_value=p_value,
        referral_rate=float(1 - accepted.mean()) if n else float("nan"),
    )


def referral_outcome(
    scores: object, poor: object, threshold: float, refer_anyway: object | None = None
) -> dict[str, float]:
    """What a threshold does on a set of images.

    Args:
        scores: per-image scores ``[N]`` (a non-finite score is referred).
        poor: poor flags ``[N]``.
        threshold: accept when ``score <= threshold``.
        refer_anyway: images referred for another reason ``[N]`` (e.g. the
            distribution-shift gate), or ``None``.

    Returns:
        ``n``, ``n_accepted``, ``n_poor_accepted``, ``referral_rate`` (share referred),
        ``poor_share_accepted`` (nan when nothing is accepted) and ``poor_rate`` (share
        poor among all images).
    """
    s, bad = as_array_1d(scores), as_array_1d(poor) != 0
    if s.shape != bad.shape:
        raise ValueError(f"scores and poor flags differ in length: {s.size} vs {bad.size}")
    accepted = np.isfinite(s) & (s <= threshold)
    if refer_anyway is not None:
        accepted &= as_array_1d(refer_anyway) == 0
    n, n_acc = int(s.size), int(accepted.sum())
    n_bad = int((accepted & bad).sum())
    return {
        "n": float(n),
        "n_accepted": float(n_acc),
        "n_poor_accepted": float(n_bad),
        "referral_rate": 1 - n_acc / n if n else float("nan"),
        "poor_share_accepted": n_bad / n_acc if n_acc else float("nan"),
        "poor_rate": float(bad.mean()) if n else float("nan"),
    }


def oracle_referral_rate(scores: object, poor: object, alpha: float) -> float:
    """The smallest share of images a threshold on ``scores`` must refer so that at
    most ``alpha`` of the accepted ones are poor, knowing which are poor (hindsight).

    Images are accepted from the lowest score up, whole blocks of tied scores at a time;
    accepting nothing always qualifies (rate 1). Non-finite scores are always referred.
    """
    s, bad = as_array_1d(scores), as_array_1d(poor) != 0
    n = int(s.size)
    if n == 0:
        return float("nan")
    keep = np.isfinite(s)
    order = np.argsort(s[keep], kind="stable")
    ranked, bad_ranked = s[keep][order], bad[keep][order]
    cum_bad = np.cumsum(bad_ranked)
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # last of each block
    n_acc = ends + 1
    ok = cum_bad[ends] <= alpha * n_acc
    return float(1 - n_acc[ok].max() / n) if ok.any() else 1.0


# --------------------------------------------------------------------------- expert units
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


# --------------------------------------------------------------------------- shift
@dataclass(frozen=True)
class ShrunkGaussian:
    """A Gaussian fitted to feature vectors, for Mahalanobis distances.

    Features are standardised per dimension (training mean and standard deviation),
    then their covariance is shrunk towards a multiple of the identity with the
    Ledoit–Wolf (2004) weight, so it is well conditioned even with more dimensions
    than images.

    Attributes:
        mean: feature means ``[F]``.
        scale: feature standard deviations ``[F]`` (a constant feature gets 1).
        precision: inverse of the shrunk covariance of the standardised features ``[F, F]``.
        shrinkage: the Ledoit–Wolf weight in [0, 1].
        n: images fitted.
    """

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    shrinkage: float
    n: int

    @classmethod
    def fit(cls, features: object) -> ShrunkGaussian:
        """Fit on ``features`` ``[N, F]`` (rows with a non-finite value are dropped).

        Raises:
            ValueError: not a 2-D array, or fewer than two usable rows.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, F], got shape {x.shape}")
        x = x[np.isfinite(x).all(1)]
        n, f = x.shape
        if n < 2:
            raise ValueError(f"a Gaussian needs at least two feature vectors, got {n}")
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale <= 1e-12] = 1.0
        z = (x - mean) / scale
        cov = z.T @ z / n
        mu = float(np.trace(cov)) / f
        target_gap = float(((cov - mu * np.eye(f)) ** 2).sum()) / f
        spread = (float(((z**2).sum(1) ** 2).sum()) - n * float((cov**2).sum())) / (n**2 * f)
        shrinkage = min(max(spread, 0.0), target_gap) / target_gap if target_gap > 0 else 1.0
        shrunk = (1 - shrinkage) * cov + shrinkage * mu * np.eye(f)
        precision = np.linalg.pinv(shrunk, hermitian=True)
        return cls(mean, scale, precision, float(shrinkage), int(n))

    @property
    def dims(self) -> int:
        """Feature dimensions ``F``."""
        return int(self.mean.size)

    def whitening(self) -> np.ndarray:
        """The matrix ``W`` ``[F, F]`` with ``distance(x) = ‖(x − mean) · W‖``.

        ``W = diag(1 / scale) · V · diag(√λ)`` for the eigendecomposition ``V diag(λ) Vᵀ``
        of the precision (positive semi-definite; negative rounding clipped to 0).
        """
        values, vectors = np.linalg.eigh(self.precision)
        return vectors * np.sqrt(np.clip(values, 0.0, None)) / self.scale[:, None]

    def distance(self, features: object) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` ``[M, F]`` to the fit ``[M]``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.shape[-1] != self.dims:
            raise ValueError(f"features have {x.shape[-1]} dimensions, the fit {self.dims}")
        z = (x - self.mean) / self.scale
        return np.sqrt(np.maximum(((z @ self.precision) * z).sum(1), 0.0))


def conformal_upper_threshold(scores: object, false_alarm: float) -> float:
    """A threshold flagging (``score > threshold``) at most ``false_alarm`` of new images
    drawn like the calibration ones, in expectation over the calibration draw.

    The ``ceil((N + 1)(1 − false_alarm))``-th smallest of the ``N`` finite calibration
    scores (split-conformal quantile); ``inf`` (flag nothing) when that rank exceeds ``N``.

    Raises:
        ValueError: ``false_alarm`` outside (0, 1).
    """
    if not 0 < false_alarm < 1:
        raise ValueError(f"the false-alarm rate must lie in (0, 1), got {false_alarm}")
    s = np.sort(as_array_1d(scores))
    s = s[np.isfinite(s)]
    rank = int(math.ceil((s.size + 1) * (1 - false_alarm)))
    return float(s[rank - 1]) if 1 <= rank <= s.size else math.inf
