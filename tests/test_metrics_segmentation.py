"""Dice variants and HD95: hand-computed cases and MONAI's compute_dice as reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice

from edue.metrics.segmentation import (
    DEFAULT_THRESHOLDS,
    binary_dice,
    dice_per_rater,
    hard_dice,
    hausdorff95,
    mean_rater_dice,
    soft_dice,
)


def _random_case(shape: tuple[int, ...], n_raters: int = 6, seed: int = 0):
    """Probabilities and rater masks ``[R, K, *shape]`` with one empty structure."""
    gen = torch.Generator().manual_seed(seed)
    k = 3
    base = torch.rand((k, *shape), generator=gen)
    masks = (base.unsqueeze(0) + 0.3 * torch.rand((n_raters, k, *shape), generator=gen)) > 0.8
    masks[:, 2] = False  # structure 2: empty for every rater
    prob = (base + 0.2 * torch.rand((k, *shape), generator=gen)).clamp(0, 1)
    prob[2] = 0.05  # and empty in the prediction at every threshold
    return prob, masks.to(torch.uint8)


def _monai_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI Dice of binary ``[B, K, *sp]`` tensors, 1 for empty-empty."""
    return compute_dice(pred.float(), target.float(), include_background=True, ignore_empty=False)


def test_soft_dice_hand_computed() -> None:
    prob = torch.tensor([[[0.2, 0.6], [0.8, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    vote = torch.tensor([[[0.0, 0.5], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    # Structure 0 per threshold: 0.1 -> 4/6, 0.3 -> 4/5, 0.5 -> 2/3, 0.7 -> 1, 0.9 -> 0.
    expected = (4 / 6 + 4 / 5 + 2 / 3 + 1 + 0) / 5
    result = soft_dice(prob, vote)
    assert result.shape == (2,)
    assert result[0].item() == pytest.approx(expected, abs=1e-6)
    assert result[1].item() == 1.0  # empty-empty at every threshold


def test_hard_dice_and_binary_dice_hand_computed() -> None:
    prob = torch.tensor([[[0.9, 0.6], [0.4, 0.5]]])
    target = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.uint8)
    # pred > 0.5 = {a, b}; target = {a, c}; |∩| = 1 -> 2/4.
    assert hard_dice(prob, target).tolist() == pytest.approx([0.5])
    assert binary_dice(prob > 0.5, target).tolist() == pytest.approx([0.5])
    assert binary_dice(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).tolist() == [1.0]
    assert binary_dice(torch.ones(1, 2, 2), torch.zeros(1, 2, 2)).tolist() == [0.0]


@pytest.mark.parametrize("shape", [(24, 20), (6, 10, 12)])
def test_soft_dice_matches_monai(shape: tuple[int, ...]) -> None:
    prob, masks = _random_case(shape)
    vote = masks.float().mean(0)
    t = torch.tensor(DEFAULT_THRESHOLDS).view(-1, *([1] * (len(shape) + 1)))
    reference = _monai_dice(prob.unsqueeze(0) > t, vote.unsqueeze(0) > t).mean(0)
    result = soft_dice(prob, vote)
    torch.testing.assert_close(result, reference.float(), atol=1e-6, rtol=0)
    assert result[2].item() == pytest.approx(1.0)  # the empty structure
    assert 0.0 < result[0].item() < 1.0


@pytest.mark.parametrize("shape", [(24, 20), (6, 10, 12)])
def test_hard_and_per_rater_dice_match_monai(shape: tuple[int, ...]) -> None:
    prob, masks = _random_case(shape, seed=3)
    target = masks.float().mean(0) > 0.5
    reference = _monai_dice((prob > 0.5).unsqueeze(0), target.unsqueeze(0))[0]
    torch.testing.assert_close(hard_dice(prob, target), reference.float(), atol=1e-6, rtol=0)

    pred = (prob > 0.5).unsqueeze(0).expand_as(masks)
    per_rater_reference = _monai_dice(pred, masks)
    per_rater = dice_per_rater(prob, masks)
    assert per_rater.shape == (masks.shape[0], 3)
    torch.testing.assert_close(per_rater, per_rater_reference.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(mean_rater_dice(prob, masks), per_rater.mean(0))


def test_dice_accepts_numpy_and_rejects_mismatched_shapes() -> None:
    prob = np.full((1, 3, 3), 0.9, dtype=np.float32)
    vote = np.ones((1, 3, 3), dtype=np.float32)
    assert soft_dice(prob, vote).tolist() == pytest.approx([(4 + 0) / 5])  # 0.9 is not > 0.9
    with pytest.raises(ValueError, match="shapes differ"):
        soft_dice(torch.zeros(1, 3, 3), torch.zeros(1, 3, 4))


def test_hausdorff95_hand_computed_2d_with_spacing() -> None:
    pred = torch.zeros(2, 8, 8, dtype=torch.bool)
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    pred[0, 2, 2] = True
    target[0, 2, 5] = True  # 3 pixels apart along the last axis
    pred[1, 1, 1] = True  # structure 1: reference empty -> nan
    assert hausdorff95(pred, target)[0].item() == pytest.approx(3.0)
    assert hausdorff95(pred, target, spacing=(1.0, 2.0))[0].item() == pytest.approx(6.0)
    assert math.isnan(hausdorff95(pred, target)[1].item())
    both_empty = hausdorff95(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    assert math.isnan(both_empty[0].item())


def test_hausdorff95_3d_and_identical_masks() -> None:
    pred = torch.zeros(1, 6, 6, 6, dtype=torch.bool)
    target = torch.zeros_like(pred)
    pred[0, 1, 2, 2] = True
    target[0, 4, 2, 2] = True  # 3 voxels apart along depth
    assert hausdorff95(pred, target, spacing=(2.0, 1.0, 1.0)).item() == pytest.approx(6.0)
    cube = torch.zeros(1, 6, 6, 6, dtype=torch.bool)
    cube[0, 1:4, 1:4, 1:4] = True
    assert hausdorff95(cube, cube).item() == pytest.approx(0.0)
