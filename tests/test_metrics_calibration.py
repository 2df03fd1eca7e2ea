"""NLL, Brier and ECE: hand computations, torch BCE and torchmetrics as references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_calibration_error

from edue.metrics.calibration import (
    CalibrationAccumulator,
    brier,
    expected_calibration_error,
    nll,
)


def test_nll_hand_computed_with_soft_target_and_clamping() -> None:
    prob = torch.tensor([[0.8, 0.8], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    expected_0 = (-math.log(0.8) - (0.5 * math.log(0.8) + 0.5 * math.log(0.2))) / 2
    expected_1 = (-math.log(1e-6) - math.log(1 - 1e-6)) / 2  # p = 0 clamped to 1e-6
    result = nll(prob, target)
    assert result.tolist() == pytest.approx([expected_0, expected_1], rel=1e-6)


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 4, 8, 8)])
def test_nll_matches_torch_bce_and_numpy(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    prob = torch.rand(shape, generator=gen) * 0.98 + 0.01
    target = torch.randint(0, 7, shape, generator=gen) / 6.0  # soft vote of 6 raters
    result = nll(prob, target)
    reference = torch.stack([F.binary_cross_entropy(prob[k], target[k]) for k in range(shape[0])])
    torch.testing.assert_close(result, reference, atol=1e-6, rtol=1e-5)
    p, t = prob.double().numpy(), target.double().numpy()
    by_hand = -(t * np.log(p) + (1 - t) * np.log(1 - p)).reshape(shape[0], -1).mean(1)
    np.testing.assert_allclose(result.numpy(), by_hand, rtol=1e-5)


def test_brier_hand_computed() -> None:
    prob = torch.tensor([[[0.8, 0.2], [0.5, 1.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    assert brier(prob, target).tolist() == pytest.approx([(0.04 + 0.04 + 0.25 + 0.25) / 4])


def test_ece_and_reliability_hand_computed() -> None:
    prob = torch.tensor([[0.05, 0.15, 0.95, 0.95]])
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    acc = CalibrationAccumulator(n_bins=10)
    acc.update(prob, target)
    # bins 0, 1 and 9: gaps 0.05, 0.85, 0.45 with weights 1/4, 1/4, 1/2
    assert acc.ece().tolist() == pytest.approx([0.25 * 0.05 + 0.25 * 0.85 + 0.5 * 0.45])
    diagram = acc.reliability()
    assert diagram["bin_edges"].shape == (11,)
    assert diagram["counts"][0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert diagram["mean_predicted"][0, 9].item() == pytest.approx(0.95)
    assert diagram["observed_frequency"][0, 9].item() == pytest.approx(0.5)
    assert diagram["observed_frequency"][0, 1].item() == pytest.approx(1.0)
    assert math.isnan(diagram["mean_predicted"][0, 5].item())


def test_ece_soft_targets_and_edges() -> None:
    prob = torch.full((1, 4, 4), 0.3)
    assert expected_calibration_error(prob, torch.full((1, 4, 4), 0.3)).item() == pytest.approx(0)
    assert expected_calibration_error(prob, torch.full((1, 4, 4), 0.5)).item() == pytest.approx(0.2)
    acc = CalibrationAccumulator(n_bins=4)
    acc.update(torch.tensor([[0.0, 0.25, 1.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    # left-closed bins; p = 1.0 joins the last bin
    assert acc.reliability()["counts"][0].tolist() == [1, 1, 0, 1]


@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_matches_torchmetrics_on_binary_targets(n_bins: int) -> None:
    gen = torch.Generator().manual_seed(7)
    prob = torch.rand(2, 4, 16, 16, generator=gen)  # 3D, values in [0, 1)
    target = (torch.rand(2, 4, 16, 16, generator=gen) < prob**2).float()
    result = expected_calibration_error(prob, target, n_bins=n_bins)
    for k in range(2):
        reference = binary_calibration_error(prob[k].flatten(), target[k].flatten().long(), n_bins)
        assert result[k].item() == pytest.approx(reference.item(), abs=1e-6)
    assert result[0].item() > 0.01  # miscalibrated by construction: the test can fail


def test_accumulator_streams_like_one_big_update() -> None:
    gen = torch.Generator().manual_seed(3)
    parts = [
        (torch.rand(2, 8, 8, generator=gen), torch.rand(2, 8, 8, generator=gen)) for _ in range(5)
    ]
    streamed = CalibrationAccumulator(15, structures=("a", "b"))
    for prob, target in parts:
        streamed.update(prob, target)
    whole = CalibrationAccumulator(15)
    whole.update(torch.cat([p for p, _ in parts], 1), torch.cat([t for _, t in parts], 1))
    torch.testing.assert_close(streamed.ece(), whole.ece())
    assert streamed.reliability()["counts"].shape == (2, 15)  # O(K · bins) state
    assert streamed.n_pixels.tolist() == [320, 320]
    assert set(streamed.aggregate()) == {"ece/a", "ece/b"}
    with pytest.raises(ValueError, match="structures"):
        streamed.update(torch.rand(3, 8, 8, generator=gen), torch.rand(3, 8, 8, generator=gen))
    with pytest.raises(RuntimeError):
        CalibrationAccumulator().ece()
