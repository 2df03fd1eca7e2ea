"""Referral math: the Learn-then-Test guarantee on a synthetic score with known risk, the
isotonic map to the experts' units, the shrunk Gaussian and the conformal gate threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edue.engine.referral.gate import ShrunkGaussian, conformal_upper_threshold
from edue.metrics.expert_units import (
    ExpertScale,
    IsotonicMap,
    linear_fit,
    mean_absolute_error,
    percentile_of,
    row_quantiles,
)
from edue.metrics.risk_control import (
    binomial_p_value,
    learn_then_test,
    min_accepted,
    oracle_referral_rate,
    referral_outcome,
    threshold_grid,
)

ALPHA, DELTA = 0.1, 0.1


# --------------------------------------------------------------------------- synthetic score
def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A score ``s ~ U(0, 1)`` and poor flags with ``P(poor | s) = s²``: the selective
    risk of the threshold ``t <= 1`` is ``E[s² | s <= t] = t² / 3``."""
    score = rng.random(n)
    return score, rng.random(n) < score**2


def _true_risk(threshold: float) -> float:
    t = min(threshold, 1.0)
    return t * t / 3 if t > 0 else 0.0


def _repetition(seed: int, n_calibration: int, alpha: float = ALPHA) -> tuple[float, ...]:
    """One draw of reference (training), calibration and test images, all exchangeable:
    the true selective risk of the chosen threshold, the realised share of poor among
    the accepted test images, and the test referral rate."""
    rng = np.random.default_rng(seed)
    grid = threshold_grid(rng.random(300))  # fixed before the calibration images
    score, poor = _draw(rng, n_calibration)
    choice = learn_then_test(score, poor, alpha, DELTA, grid)
    test_score, test_poor = _draw(rng, 2000)
    outcome = referral_outcome(test_score, test_poor, choice.threshold)
    return (
        _true_risk(choice.threshold),
        outcome["poor_share_accepted"],
        outcome["referral_rate"],
        choice.referral_rate,
    )


@pytest.mark.parametrize("n_calibration", [200, 1000])
def test_guarantee_holds_over_seeded_repetitions(n_calibration: int) -> None:
    results = np.array([_repetition(seed, n_calibration) for seed in range(300)])
    true_risk, realised, referred, expected = results.T
    # the guarantee: P(risk > alpha) <= delta (binomial slack of 300 repetitions: +0.05)
    assert np.mean(true_risk > ALPHA) <= DELTA + 0.05
    # what the users see: among accepted test images at most alpha are poor, on average
    accepted = np.isfinite(realised)  # some images accepted (else the share is undefined)
    assert accepted.mean() > (0.8 if n_calibration == 200 else 0.99)
    assert realised[accepted].mean() <= ALPHA
    assert true_risk.mean() <= ALPHA
    # and it does refer less than everything: the best threshold refers 1 - sqrt(0.3)
    best = 1 - math.sqrt(3 * ALPHA)
    assert referred.mean() < (0.8 if n_calibration == 200 else 0.6)
    assert referred.mean() > best
    # the calibration images' referral rate is the test one, up to sampling
    assert abs(expected.mean() - referred.mean()) < 0.03


def test_the_uncorrected_threshold_breaks_the_guarantee() -> None:
    """The largest threshold whose *empirical* share of poor is at most alpha misses the
    target about half the time: the finite-sample correction is what keeps the promise."""
    violations = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        score, poor = _draw(rng, 200)
        order = np.argsort(score)
        share = np.cumsum(poor[order]) / np.arange(1, score.size + 1)
        naive = score[order][np.flatnonzero(share <= ALPHA).max()]
        violations += _true_risk(naive) > ALPHA
    assert violations / 200 > 0.3


def test_too_few_calibration_images_refer_everything() -> None:
    assert min_accepted(0.1, 0.1) == 22  # 0.9 ** 22 = 0.098 <= 0.1 < 0.9 ** 21
    score = np.linspace(0, 1, 21)
    choice = learn_then_test(score, np.zeros(21), 0.1, 0.1, threshold_grid(score))
    assert choice.threshold == -math.inf and not choice.certified
    assert choice.referral_rate == 1.0 and choice.n_accepted == 0


def test_a_clean_calibration_set_accepts_everything() -> None:
    score = np.linspace(0, 1, 60)
    choice = learn_then_test(score, np.zeros(60), 0.1, 0.1, threshold_grid(score))
    assert choice.threshold == math.inf and choice.referral_rate == 0.0
    assert choice.p_value == pytest.approx(0.9**60)


def test_hand_checked_choice_stops_at_the_first_unrejected_candidate() -> None:
    # 30 images; the 25 lowest are good, then poor ones: only thresholds accepting
    # 22..25 images (no poor) can be certified at alpha = delta = 0.1
    score = np.arange(30, dtype=float)
    poor = score >= 25
    choice = learn_then_test(score, poor, 0.1, 0.1, np.append(score, np.inf))
    assert choice.threshold == 24.0
    assert (choice.n_accepted, choice.n_poor_accepted) == (25, 0)
    assert choice.p_value == pytest.approx(0.9**25)
    assert binomial_p_value(1, 26, 0.1) > 0.1  # the next candidate is not rejected


def test_binomial_p_value() -> None:
    assert binomial_p_value(0, 0, 0.1) == 1.0
    assert binomial_p_value(0, 10, 0.1) == pytest.approx(0.9**10)
    assert binomial_p_value(1, 10, 0.1) == pytest.approx(0.9**10 + 10 * 0.1 * 0.9**9)


def test_threshold_grid_covers_the_reference_and_beyond() -> None:
    grid = threshold_grid([1.0, 2.0, 3.0, np.nan], n_quantiles=4, growth=2.0, steps=3)
    np.testing.assert_allclose(grid, [1.0, 1.5, 2.0, 2.5, 3.0, 6.0, 12.0, 24.0, np.inf])
    with pytest.raises(ValueError):
        threshold_grid([np.nan])


def test_referral_outcome_and_hindsight_rate() -> None:
    score = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan])
    poor = np.array([0, 1, 0, 0, 1, 0])
    out = referral_outcome(score, poor, 3.0)
    assert out["referral_rate"] == pytest.approx(0.5)
    assert out["poor_share_accepted"] == pytest.approx(1 / 3)
    gated = referral_outcome(score, poor, 3.0, refer_anyway=[0, 1, 0, 0, 0, 0])
    assert gated["poor_share_accepted"] == 0.0 and gated["n_accepted"] == 2
    assert math.isnan(referral_outcome(score, poor, -math.inf)["poor_share_accepted"])
    # hindsight: accept the lowest scores while at most alpha of them are poor
    assert oracle_referral_rate(score, poor, 0.0) == pytest.approx(5 / 6)
    assert oracle_referral_rate(score, poor, 0.34) == pytest.approx(2 / 6)
    assert oracle_referral_rate([1.0, 1.0], [1, 0], 0.4) == 1.0  # a tied block goes whole


# --------------------------------------------------------------------------- expert units
def test_isotonic_map_pools_adjacent_violators() -> None:
    fit = IsotonicMap.fit([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0])
    np.testing.assert_allclose(fit.y, [1.0, 2.5, 2.5, 4.0])
    np.testing.assert_allclose(fit([0.0, 2.5, 10.0, np.nan]), [1.0, 2.5, 4.0, np.nan])
    tied = IsotonicMap.fit([1, 1, 2], [0.0, 2.0, 3.0])  # ties merged first
    np.testing.assert_allclose(tied.x, [1.0, 2.0])
    np.testing.assert_allclose(tied.y, [1.0, 3.0])
    again = IsotonicMap.from_dict(fit.to_dict())
    np.testing.assert_array_equal(again.x, fit.x)
    np.testing.assert_array_equal(again.y, fit.y)
    with pytest.raises(ValueError):
        IsotonicMap.from_dict({"x": [2, 1], "y": [0, 1]})


def test_expert_scale_recovers_a_monotone_map_and_its_spread() -> None:
    rng = np.random.default_rng(0)
    model = rng.uniform(0, 100, 400)
    expert = 0.5 * model + 10 + rng.normal(0, 2, model.size)  # model SV twice too large
    scale = ExpertScale.fit(model, expert)
    new_model = rng.uniform(5, 95, 2000)
    new_expert = 0.5 * new_model + 10 + rng.normal(0, 2, new_model.size)
    assert mean_absolute_error(scale.expected(new_model), new_expert) < 2.2
    assert mean_absolute_error(new_model, new_expert) > 12
    low, high = scale.interval(new_model)
    covered = np.mean((new_expert >= low) & (new_expert <= high))
    assert 0.7 < covered < 0.9  # an 80 % range
    assert np.all(low >= 0) and np.all(high >= low)
    slope, intercept = linear_fit(expert, model)
    assert slope == pytest.approx(2.0, rel=0.05)


def test_row_quantiles_match_numpy() -> None:
    rng = np.random.default_rng(4)
    for n in (1, 2, 5, 15):
        rows = rng.normal(size=(7, n))
        rows[0] = 3.0  # ties
        levels = (0.0, 0.05, 0.25, 0.5, 0.95, 1.0)
        ours = row_quantiles(rows, levels)
        for q, got in zip(levels, ours, strict=True):
            np.testing.assert_allclose(got, np.quantile(rows, q, axis=1), rtol=1e-12, atol=1e-12)


def test_linear_fit_and_mae() -> None:
    slope, intercept = linear_fit([1, 2, 3], [3, 5, 7])
    assert (slope, intercept) == (pytest.approx(2.0), pytest.approx(1.0))
    assert all(math.isnan(v) for v in linear_fit([1, 1], [2, 3]))
    assert mean_absolute_error([1, 2, np.nan], [2, 2, 0]) == pytest.approx(0.5)


def test_percentile_of() -> None:
    np.testing.assert_allclose(
        percentile_of([0.0, 2.0, 10.0, np.nan], [1, 2, 3, 4]), [0, 50, 100, np.nan]
    )


# --------------------------------------------------------------------------- shift
def test_shrunk_gaussian_measures_mahalanobis_distance() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (5000, 3)) * np.array([1.0, 2.0, 0.5]) + 3.0
    fit = ShrunkGaussian.fit(features)
    distances = fit.distance(np.array([[3.0, 3.0, 3.0], [3.0, 5.0, 3.0], [3.0, 3.0, 4.0]]))
    np.testing.assert_allclose(distances, [0.0, 1.0, 2.0], atol=0.05)
    # strongly correlated features: little shrinkage, and the exact distance
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    correlated = rng.multivariate_normal([0.0, 0.0], cov, 5000)
    fit = ShrunkGaussian.fit(correlated)
    assert 0 <= fit.shrinkage < 0.05
    point = np.array([1.0, -1.0])
    exact = math.sqrt(point @ np.linalg.inv(cov) @ point)  # sqrt(2 / 0.1) = 4.47
    assert fit.distance(point[None])[0] == pytest.approx(exact, rel=0.05)


def test_shrunk_gaussian_with_more_dimensions_than_images_separates_a_shift() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(0, 1, (30, 64))
    fit = ShrunkGaussian.fit(train)
    assert 0 < fit.shrinkage <= 1
    clean = fit.distance(rng.normal(0, 1, (50, 64)))
    shifted = fit.distance(rng.normal(0.8, 1, (50, 64)))
    assert np.all(np.isfinite(clean)) and shifted.min() > np.median(clean)


def test_conformal_threshold_keeps_the_false_alarm_rate() -> None:
    rates = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        threshold = conformal_upper_threshold(rng.normal(size=60), 0.05)
        rates.append(np.mean(rng.normal(size=500) > threshold))
    assert np.mean(rates) <= 0.05 + 0.005
    assert np.mean(rates) > 0.02  # not trivially strict
    assert conformal_upper_threshold([1.0, 2.0, 3.0], 0.05) == math.inf  # too few to flag
    assert conformal_upper_threshold(np.arange(1.0, 20.0), 0.1) == 18.0  # rank ceil(20 * 0.9)
