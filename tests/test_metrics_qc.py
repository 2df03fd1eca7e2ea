"""Quality-control curves: hand-computed curve, perfect/reversed rankings, ties."""

from __future__ import annotations

import numpy as np
import pytest

from edue.metrics.qc import (
    DEFAULT_POOR_THRESHOLDS,
    FALLBACK_POOR_THRESHOLD,
    poor_threshold_for,
    qc_curve,
)


def test_hand_computed_curve() -> None:
    dice = [0.9, 0.5, 0.95, 0.6]  # poor below 0.8: images 1 and 3
    result = qc_curve(scores=[4, 3, 2, 1], dice=dice, poor_threshold=0.8)
    np.testing.assert_allclose(result["fraction_flagged"], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(result["fraction_poor_remaining"], [0.5, 0.5, 0.25, 0.25, 0])
    np.testing.assert_allclose(result["ideal"], [0.5, 0.25, 0, 0, 0])
    np.testing.assert_allclose(result["random"], [0.5, 0.375, 0.25, 0.125, 0])
    assert result["auc"] == pytest.approx(0.3125)
    assert result["ideal_auc"] == pytest.approx(0.125)
    assert result["random_auc"] == pytest.approx(0.25)
    assert result["d_auc"] == pytest.approx(0.1875)
    assert (result["n_poor"], result["n"]) == (2, 4)


def test_perfect_ranking_has_zero_d_auc_and_reversed_is_worse() -> None:
    rng = np.random.default_rng(0)
    dice = rng.uniform(0.6, 1.0, 50)
    perfect = qc_curve(-dice, dice, poor_threshold=0.8)  # worst Dice flagged first
    np.testing.assert_allclose(perfect["fraction_poor_remaining"], perfect["ideal"])
    assert perfect["d_auc"] == pytest.approx(0.0, abs=1e-12)
    reversed_ = qc_curve(dice, dice, poor_threshold=0.8)
    share = perfect["n_poor"] / 50
    assert 0 < share < 1
    assert reversed_["d_auc"] > 0.2
    # reversed: poor images are flagged last, the curve stays at `share` until x = 1 − share
    assert reversed_["auc"] == pytest.approx(share * (1 - share) + share**2 / 2)
    assert perfect["ideal_auc"] == pytest.approx(share**2 / 2)


def test_no_poor_images_gives_zero_curves_and_no_d_auc() -> None:
    result = qc_curve([0.3, 0.1, 0.2], [0.99, 0.98, 0.995], poor_threshold=0.97)
    for key in ("fraction_poor_remaining", "ideal", "random"):
        assert not np.any(result[key])
    assert result["auc"] == result["ideal_auc"] == 0.0
    assert np.isnan(result["d_auc"])  # nothing to rank: not a perfect score


def test_only_poor_images_has_no_d_auc() -> None:
    result = qc_curve([0.3, 0.1, 0.2], [0.5, 0.6, 0.4], poor_threshold=0.97)
    assert result["n_poor"] == 3
    assert result["auc"] == pytest.approx(result["ideal_auc"])  # every ranking is ideal
    assert np.isnan(result["d_auc"])


def test_ties_are_ranked_fairly_and_input_order_does_not_matter() -> None:
    dice = np.array([0.5, 0.9, 0.6, 0.95])
    tied = qc_curve(np.ones(4), dice, poor_threshold=0.8)
    np.testing.assert_allclose(tied["fraction_poor_remaining"], tied["random"])
    scores = np.array([2.0, 1.0, 1.0, 0.5])
    order = np.array([3, 1, 0, 2])
    first = qc_curve(scores, dice, 0.8)
    second = qc_curve(scores[order], dice[order], 0.8)
    np.testing.assert_allclose(first["fraction_poor_remaining"], second["fraction_poor_remaining"])
    # top block {0}: poor; tie block {1, 2}: one poor of two -> removed 1, 1.5, 2, then 2
    np.testing.assert_allclose(first["fraction_poor_remaining"], [0.5, 0.25, 0.125, 0, 0])


def test_threshold_options_and_invalid_input() -> None:
    dice = [0.85, 0.9]
    assert qc_curve([1, 2], dice, 0.85)["n_poor"] == 0
    assert qc_curve([1, 2], dice, 0.85, inclusive=True)["n_poor"] == 1
    result = qc_curve([1.0, np.nan, 2.0], [0.5, 0.1, np.nan], 0.8)
    assert result["n"] == 1 and result["n_poor"] == 1
    with pytest.raises(ValueError):
        qc_curve([np.nan], [0.5], 0.8)
    with pytest.raises(ValueError, match="length"):
        qc_curve([1.0, 2.0], [0.5], 0.8)


def test_default_poor_thresholds() -> None:
    assert DEFAULT_POOR_THRESHOLDS["disc"] == 0.97
    assert poor_threshold_for("cup") == 0.85
    assert poor_threshold_for("Disc") == 0.97
    assert poor_threshold_for("GTVp") == FALLBACK_POOR_THRESHOLD
    assert poor_threshold_for("GTVp", {"gtvp": 0.7}) == 0.7
    assert poor_threshold_for("x", fallback=0.5) == 0.5
