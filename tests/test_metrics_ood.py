"""OOD distortions, member agreement variance and separation AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from edue.data.distortions import (
    _RGB_TO_YIQ,
    distort,
    distort_dataset,
    gaussian_blur,
    gaussian_noise,
    hue_shift,
)
from edue.metrics.ood import pairwise_dice_variance, separation_auroc
from edue.prediction import Prediction


def _images(n: int = 10, channels: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, size, size)).astype(np.float32)


def test_distort_dataset_respects_the_fraction_exactly() -> None:
    images = _images()
    for fraction, expected in ((0.0, 0), (0.5, 5), (1.0, 10)):
        out, flags = distort_dataset(images, fraction, "noise", seed=3)
        assert flags.dtype == bool and int(flags.sum()) == expected
        changed = ~np.isclose(out, images).all(axis=(1, 2, 3))
        np.testing.assert_array_equal(changed, flags)
    assert int(distort_dataset(_images(7), 0.5, "blur")[1].sum()) == 4  # round half up
    with pytest.raises(ValueError):
        distort_dataset(images, 1.5, "noise")
    with pytest.raises(ValueError):
        distort_dataset(images, 0.5, "rain")


def test_distort_dataset_is_reproducible_and_leaves_the_input_alone() -> None:
    images = _images()
    before = images.copy()
    first, flags = distort_dataset(images, 0.5, "noise", seed=1)
    again, flags_again = distort_dataset(images, 0.5, "noise", seed=1)
    other, _ = distort_dataset(images, 0.5, "noise", seed=2)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(flags, flags_again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(images, before)
    # an image's distortion does not depend on which others were chosen
    everything, _ = distort_dataset(images, 1.0, "noise", seed=1)
    np.testing.assert_array_equal(first[flags], everything[flags])


def test_distort_dataset_keeps_the_container_type() -> None:
    tensor_out, flags = distort_dataset(torch.from_numpy(_images(4)), 0.5, "hue", seed=0)
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.shape == (4, 3, 16, 16)
    ragged = [np.zeros((1, 8, 8), np.float32), np.ones((1, 4, 6, 6), np.float32)]
    list_out, flags = distort_dataset(ragged, 1.0, "mixed", seed=0)
    assert isinstance(list_out, list) and [x.shape for x in list_out] == [(1, 8, 8), (1, 4, 6, 6)]
    assert flags.all()


def test_gaussian_noise_scale_and_seed() -> None:
    image = _images(1, size=64)[0] * 4
    noisy = gaussian_noise(image, std=0.5, rng=0)
    assert np.std(noisy - image) == pytest.approx(0.5 * image.std(), rel=0.05)
    np.testing.assert_array_equal(noisy, distort(image, "noise", rng=0, std=0.5))


def test_gaussian_blur_is_spatial_only() -> None:
    image = _images(1, channels=2, size=32)[0]
    image[1] = 0.0
    blurred = gaussian_blur(image, sigma=3.0)
    assert blurred[0].std() < 0.3 * image[0].std()
    assert not np.any(blurred[1])  # channels are not mixed
    assert blurred[0].mean() == pytest.approx(image[0].mean(), rel=0.02)
    volume = np.ones((1, 5, 6, 7), np.float32)
    np.testing.assert_allclose(gaussian_blur(volume, sigma=2.0), volume, rtol=1e-6)


def test_hue_shift_rotates_chroma_and_keeps_luminance() -> None:
    image = _images(1, size=8)[0]
    np.testing.assert_allclose(hue_shift(image, 0.0), image, atol=1e-6)
    np.testing.assert_allclose(hue_shift(image, 360.0), image, atol=1e-5)
    shifted = hue_shift(image, 90.0)
    assert np.abs(shifted - image).max() > 0.1
    luminance = np.einsum("j,j...->...", _RGB_TO_YIQ[0], image)
    np.testing.assert_allclose(
        np.einsum("j,j...->...", _RGB_TO_YIQ[0], shifted), luminance, atol=1e-5
    )
    grey = np.repeat(image[:1], 3, axis=0)  # no chroma: unchanged
    np.testing.assert_allclose(hue_shift(grey, 90.0), grey, atol=1e-5)


def test_hue_shift_fallback_inverts_non_rgb_images() -> None:
    image = np.array([[[0.0, 1.0], [2.0, 4.0]], [[5.0, 5.0], [6.0, 7.0]]], np.float32)
    expected = np.array([[[4.0, 3.0], [2.0, 0.0]], [[7.0, 7.0], [6.0, 5.0]]], np.float32)
    np.testing.assert_array_equal(hue_shift(image, 90.0), expected)


def test_pairwise_dice_variance_hand_computed() -> None:
    a = torch.zeros(1, 1, 8)
    a[..., :4] = 1.0
    b = torch.zeros(1, 1, 8)
    b[..., 2:6] = 1.0  # Dice(a, b) = 0.5
    identical = torch.stack([a, a, a])
    assert pairwise_dice_variance(identical).tolist() == [0.0]
    # pairs: (a, a) = 1, (a, b) = 0.5, (a, b) = 0.5 -> population variance 1/18
    members = torch.stack([a, a, b]) * 0.8  # probabilities, thresholded at 0.5
    assert pairwise_dice_variance(members).item() == pytest.approx(1 / 18, abs=1e-7)
    assert pairwise_dice_variance(Prediction(members)).item() == pytest.approx(1 / 18, abs=1e-7)
    assert pairwise_dice_variance(members, ddof=1).item() == pytest.approx(1 / 12, abs=1e-7)
    assert math.isnan(pairwise_dice_variance(members[:1]).item())


def test_pairwise_dice_variance_per_structure_3d() -> None:
    gen = torch.Generator().manual_seed(0)
    members = torch.rand(4, 2, 3, 5, 5, generator=gen)
    members[:, 0] = members[:1, 0]  # structure 0: identical members
    result = pairwise_dice_variance(members)
    assert result.shape == (2,)
    binary = (members[:, 1] > 0.5).flatten(1).numpy()
    dice = [
        2 * (a & b).sum() / (a.sum() + b.sum())
        for i, a in enumerate(binary)
        for b in binary[i + 1 :]
    ]
    assert len(dice) == 6 and np.var(dice) > 1e-4  # the random members differ
    assert result[0].item() == 0.0
    assert result[1].item() == pytest.approx(np.var(dice), rel=1e-5)


def test_separation_auroc_hand_and_torchmetrics() -> None:
    assert separation_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert separation_auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert separation_auroc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert math.isnan(separation_auroc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.5
    scores = np.round(rng.uniform(size=200) + 0.5 * labels, 1) / 1.5  # in [0, 1], with ties
    # (torchmetrics applies a sigmoid to scores outside [0, 1], merging float32 ties)
    reference = binary_auroc(torch.tensor(scores), torch.tensor(labels).long()).item()
    assert separation_auroc(scores, labels) == pytest.approx(reference, abs=1e-6)
    assert separation_auroc(np.r_[scores, np.nan], np.r_[labels, True]) == pytest.approx(reference)
