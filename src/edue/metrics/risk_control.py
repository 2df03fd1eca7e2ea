"""Risk control for referral: from an image-level score to accept / refer, for any
method's score.

Everything here works on plain arrays of per-image numbers (a score such as the SV, a
soft Dice) and never knows which method produced them.

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

Expert units live in :mod:`edue.metrics.expert_units`; the distribution-shift gate in
:mod:`edue.engine.referral.gate`. Conventions: docs/referral.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

from edue.metrics._utils import as_array_1d


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
