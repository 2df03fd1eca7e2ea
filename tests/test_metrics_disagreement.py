"""Image-level correlations (scipy as reference), bootstrap CIs and pixel NCC."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from edue.metrics.disagreement import (
    DisagreementMetric,
    _bootstrap,
    image_correlation,
    pixel_ncc,
)


def _correlated(n: int = 60, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, n)
    return x, x + noise * rng.normal(size=n)


def test_point_estimates_match_scipy() -> None:
    x, y = _correlated(noise=1.5)
    result = image_correlation(x, y, n_boot=0)
    assert result["spearman"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert result["pearson"] == pytest.approx(pearsonr(x, y).statistic, abs=1e-12)
    assert 0.2 < result["spearman"] < 0.95
    assert result["n"] == 60
    assert all(math.isnan(v) for v in result["spearman_ci"])  # n_boot = 0: no CI


def test_bootstrap_is_seeded_and_contains_a_clear_correlation() -> None:
    x, y = _correlated()
    first = image_correlation(torch.tensor(x), torch.tensor(y), n_boot=500, seed=4)
    again = image_correlation(x, y, n_boot=500, seed=4)
    other = image_correlation(x, y, n_boot=500, seed=5)
    assert first == again
    assert first["spearman_ci"] != other["spearman_ci"]
    for kind in ("spearman", "pearson"):
        low, high = first[f"{kind}_ci"]
        assert low < first[kind] < high
        assert low > 0.5  # a clear positive correlation stays clear


def test_vectorised_bootstrap_equals_scipy_per_resample() -> None:
    x, y = _correlated(n=15, noise=1.0, seed=2)
    spear, pear = _bootstrap(x, y, n_boot=6, seed=11)
    index = np.random.default_rng(11).integers(0, x.size, size=(6, x.size))
    for b in range(6):  # resamples contain ties: the average-rank convention must match
        xb, yb = x[index[b]], y[index[b]]
        assert spear[b] == pytest.approx(spearmanr(xb, yb).statistic, abs=1e-10)
        assert pear[b] == pytest.approx(pearsonr(xb, yb).statistic, abs=1e-10)


def test_degenerate_inputs_give_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = image_correlation(np.ones(20), np.arange(20.0))
        short = image_correlation([1.0, 2.0], [2.0, 1.0])
        # nearly constant: most resamples are constant, no warning either
        sparse = image_correlation(np.r_[np.zeros(19), 1.0], np.arange(20.0), n_boot=200)
    for result in (constant, short):
        assert math.isnan(result["spearman"]) and math.isnan(result["pearson"])
        assert all(math.isnan(v) for v in result["pearson_ci"])
    assert not math.isnan(sparse["spearman"])


def test_non_finite_pairs_are_dropped() -> None:
    x, y = _correlated(n=30, noise=1.0)
    x_nan = np.r_[x, np.nan, 3.0]
    y_nan = np.r_[y, 1.0, np.inf]
    result = image_correlation(x_nan, y_nan, n_boot=100)
    assert result["n"] == 30
    assert result == image_correlation(x, y, n_boot=100)


def test_pixel_ncc_hand_cases_and_conventions() -> None:
    a = torch.tensor([[[0.0, 0.1], [0.2, 0.4]]])
    assert pixel_ncc(a, a).item() == pytest.approx(1.0)
    assert pixel_ncc(a, -a).item() == pytest.approx(-1.0)
    assert pixel_ncc(a, 3 * a + 0.5).item() == pytest.approx(1.0)
    z = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])
    w = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]])
    assert pixel_ncc(z, w).item() == pytest.approx(0.0, abs=1e-12)  # orthogonal
    flat = torch.full((1, 2, 2), 0.1)
    assert math.isnan(pixel_ncc(flat, torch.zeros(1, 2, 2)).item())  # both constant
    assert pixel_ncc(flat, a).item() == 0.0  # one constant
    assert pixel_ncc(a, torch.zeros(1, 2, 2)).item() == 0.0
    assert pixel_ncc(flat, flat, both_constant=1.0).item() == 1.0
    assert pixel_ncc(flat, a, one_constant=float("nan")).isnan().all()


@pytest.mark.parametrize("shape", [(2, 12, 10), (2, 4, 6, 5)])
def test_pixel_ncc_matches_numpy_corrcoef(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(shape, generator=gen)
    b = a + torch.rand(shape, generator=gen)
    result = pixel_ncc(a, b)
    for k in range(shape[0]):
        reference = np.corrcoef(a[k].flatten().numpy(), b[k].flatten().numpy())[0, 1]
        assert result[k].item() == pytest.approx(reference, abs=1e-6)


def test_disagreement_metric_accumulates_and_aggregates() -> None:
    gen = torch.Generator().manual_seed(2)
    metric = DisagreementMetric(structures=("disc", "cup"))
    expected_ncc = []
    for i in range(12):
        expert = torch.rand(2, 8, 8, generator=gen) * (i + 1)
        model = expert + 0.5 * torch.rand(2, 8, 8, generator=gen)
        if i == 0:
            expert[1], model[1] = 0.0, 0.0  # both constant: nan, excluded
        expected_ncc.append(metric.update(model, expert).numpy())
    summary = metric.aggregate(n_boot=200, seed=1)
    ncc = np.stack(expected_ncc)
    assert metric.n_cases == 12
    assert summary["pixel_ncc/cup/n"] == 11
    assert summary["pixel_ncc/cup/mean"] == pytest.approx(np.nanmean(ncc[:, 1]), abs=1e-6)
    assert summary["pixel_ncc/disc/std"] == pytest.approx(np.std(ncc[:, 0]), abs=1e-6)
    model_sv = np.stack(metric.model_sv)[:, 0]
    expert_sv = np.stack(metric.expert_sv)[:, 0]
    assert summary["image_spearman/disc"] == pytest.approx(spearmanr(model_sv, expert_sv).statistic)
    assert summary["image_spearman/disc"] > 0.9  # SV grows with i for both
    assert summary["image_pearson/cup/ci_low"] <= summary["image_pearson/cup/ci_high"]
    metric.reset()
    with pytest.raises(RuntimeError):
        metric.aggregate()


def test_disagreement_metric_uses_given_scores() -> None:
    metric = DisagreementMetric()
    maps = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    for score in (1.0, 2.0, 3.0, 4.0):
        metric.update(maps, maps, model_sv=torch.tensor([score]), expert_sv=torch.tensor([-score]))
    summary = metric.aggregate(n_boot=0)
    assert summary["image_spearman/s0"] == pytest.approx(-1.0)
    assert summary["pixel_ncc/s0/mean"] == pytest.approx(1.0)
