"""GED and Hungarian-matched IoU on hand-computed sets, and a brute-force matching."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from edue.metrics.ged import LIDC_PRESET, ged, ged_lidc, hungarian_iou, pairwise_iou


def _masks(*pixel_sets: tuple[int, ...], size: int = 8) -> torch.Tensor:
    """One structure: masks ``[n, 1, 1, size]`` with the given pixels on."""
    out = torch.zeros(len(pixel_sets), 1, 1, size, dtype=torch.bool)
    for i, pixels in enumerate(pixel_sets):
        out[i, 0, 0, list(pixels)] = True
    return out


A = (0, 1, 2, 3)
B = (2, 3, 4, 5)  # IoU(A, B) = 2 / 6
C = (6, 7)  # disjoint from A
EMPTY: tuple[int, ...] = ()


def test_pairwise_iou_hand_computed() -> None:
    iou = pairwise_iou(_masks(A, EMPTY), _masks(B, C, EMPTY))
    assert iou.shape == (1, 2, 3)
    np.testing.assert_allclose(iou[0].numpy(), [[1 / 3, 0.0, 0.0], [0.0, 0.0, 1.0]])
    skipped = pairwise_iou(_masks(EMPTY), _masks(EMPTY), empty_empty="skip")
    assert math.isnan(skipped.item())
    probs = _masks(A).float() * 0.7  # probabilities are thresholded at 0.5
    assert pairwise_iou(probs, _masks(A)).item() == 1.0


def test_identical_sets_have_zero_ged_under_the_lidc_preset() -> None:
    members = _masks(A, B, C, EMPTY)
    assert ged(members, members.flip(0), **LIDC_PRESET).item() == pytest.approx(0.0, abs=1e-7)
    assert ged_lidc(members, members).item() == pytest.approx(0.0, abs=1e-7)
    # excluding self-pairs is the unbiased estimator: slightly negative for identical sets
    assert ged(members, members, include_self_pairs=False).item() < 0


def test_ged_hand_computed_self_pair_conventions() -> None:
    # disjoint singletons: d = 1, within-set terms 0 under both conventions
    for include in (True, False):
        assert ged(_masks(A), _masks(C), include_self_pairs=include).item() == pytest.approx(2.0)
    samples, raters = _masks(A, C), _masks(A, A)
    # cross mean 0.5; within samples 0.5 with self-pairs, 1 without; raters 0
    assert ged(samples, raters, include_self_pairs=True).item() == pytest.approx(0.5)
    assert ged(samples, raters, include_self_pairs=False).item() == pytest.approx(0.0)
    assert ged(samples, raters, include_self_pairs=True, squared=False).item() == pytest.approx(
        math.sqrt(0.5)
    )


def test_ged_empty_empty_conventions() -> None:
    samples, raters = _masks(EMPTY), _masks(EMPTY, A)
    # IoU(∅, ∅) = 1: cross 0.5 -> 1; within raters (self-pairs) 0.5 -> 0.5
    assert ged(samples, raters, empty_empty=1.0, include_self_pairs=True).item() == pytest.approx(
        0.5
    )
    # IoU(∅, ∅) = 0: cross 1 -> 2; within samples 1; within raters 0.75 -> 0.25
    assert ged(samples, raters, empty_empty=0.0, include_self_pairs=True).item() == pytest.approx(
        0.25
    )
    # skip: cross keeps (∅, A) only -> 2; samples (one element) 0; raters 1 -> 1
    assert ged(samples, raters, empty_empty="skip").item() == pytest.approx(1.0)
    # skip with self-pairs: the only sample pair is skipped -> nan
    assert math.isnan(ged(samples, raters, empty_empty="skip", include_self_pairs=True).item())


def test_ged_per_structure_and_3d() -> None:
    members = torch.zeros(3, 2, 2, 4, 4, dtype=torch.bool)
    members[:, 0, :, :2] = True  # structure 0: identical members
    raters = members.clone()
    members[1, 1, 0, 0, 0] = True  # structure 1: members differ from empty raters
    result = ged_lidc(members, raters)
    assert result.shape == (2,)
    assert result[0].item() == pytest.approx(0.0, abs=1e-7)
    # structure 1: member 1 differs from every (empty) rater, d = 1: cross term 3/9;
    # within the members (self-pairs included) 4 of 9 ordered pairs differ; raters 0
    assert result[1].item() == pytest.approx(2 * 3 / 9 - 4 / 9)


def test_hungarian_iou_hand_computed() -> None:
    assert hungarian_iou(_masks(A, B), _masks(B, A)).item() == pytest.approx(1.0)
    assert hungarian_iou(_masks(A, A, B, B), _masks(A, B)).item() == pytest.approx(1.0)
    # 3 samples vs 2 raters, tiled to 6: 3 A–A, 2 B–B and one A–B (IoU 1/3)
    assert hungarian_iou(_masks(A, A, B), _masks(A, B)).item() == pytest.approx((5 + 1 / 3) / 6)
    assert hungarian_iou(_masks(A), _masks(C)).item() == 0.0
    # empty–empty: a perfect match, or left out of the mean
    assert hungarian_iou(_masks(EMPTY, A), _masks(EMPTY, B)).item() == pytest.approx(
        (1 + 1 / 3) / 2
    )
    assert hungarian_iou(_masks(EMPTY, A), _masks(EMPTY, B), empty_empty="skip").item() == (
        pytest.approx(1 / 3)
    )
    with pytest.raises(ValueError, match="max_matched"):
        hungarian_iou(_masks(A, B, C), _masks(A, B), max_matched=5)


def test_hungarian_iou_equals_brute_force_matching() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = torch.rand(3, 1, 5, 5, generator=gen) > 0.5
    raters = torch.rand(2, 1, 5, 5, generator=gen) > 0.5
    iou = pairwise_iou(samples, raters)[0].numpy()
    tiled = np.tile(iou, (2, 3))  # lcm(3, 2) = 6
    best = max(np.mean(tiled[range(6), list(perm)]) for perm in itertools.permutations(range(6)))
    assert hungarian_iou(samples, raters).item() == pytest.approx(best, abs=1e-6)
