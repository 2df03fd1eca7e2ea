"""Tests of the embedded synthetic fundus-like dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from edue.data.case import expert_sv
from edue.data.synthetic import (
    SPLIT_STRIDE,
    FundusConfig,
    generate_case,
    generate_cases,
    make_splits,
    rater_biases,
)
from edue.errors import ConfigError


@pytest.fixture(scope="module")
def hundred_cases() -> list:
    return generate_cases(100, seed=0)


def test_shapes_dtypes_and_values() -> None:
    case = generate_case(0).validate()
    assert case.case_id == "synth-0-00000"
    assert case.structures == ("disc", "cup")
    assert case.image.shape == (3, 128, 128) and case.image.dtype == np.float32
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0
    assert case.masks.shape == (6, 2, 128, 128) and case.masks.dtype == np.uint8
    assert set(np.unique(case.masks).tolist()) == {0, 1}
    prob = case.rater_probability
    assert prob is not None and prob.shape == (2, 128, 128) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    amb = case.meta["ambiguity"]
    assert isinstance(amb, list) and len(amb) == 2 and all(0.0 <= a <= 1.0 for a in amb)
    assert case.meta["seed"] == 0 and case.meta["index"] == 0
    # both structures present for every rater, disc well inside the image
    assert case.masks.reshape(6, 2, -1).any(-1).all()
    assert not case.masks[:, 0, [0, -1]].any() and not case.masks[:, 0, :, [0, -1]].any()


def test_deterministic_and_order_independent() -> None:
    a, b = generate_case(7, seed=3), generate_case(7, seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.rater_probability, b.rater_probability)
    batch = generate_cases(4, seed=3, start=5)
    assert [c.case_id for c in batch] == [f"synth-3-{i:05d}" for i in range(5, 9)]
    np.testing.assert_array_equal(batch[2].image, a.image)
    np.testing.assert_array_equal(batch[2].masks, a.masks)
    other_seed, other_index = generate_case(7, seed=4), generate_case(8, seed=3)
    assert not np.array_equal(other_seed.image, a.image)
    assert not np.array_equal(other_seed.masks, a.masks)
    assert not np.array_equal(other_index.image, a.image)


def test_rater_styles_depend_on_seed_only() -> None:
    styles = [generate_case(i, seed=5).meta["rater_bias"] for i in range(4)]
    assert all(s == styles[0] for s in styles)
    biases = np.array(styles[0])
    np.testing.assert_allclose(biases, rater_biases(5, 6))
    assert (biases > 0).sum() == 3 and (biases < 0).sum() == 3  # some larger, some smaller
    np.testing.assert_allclose(np.mean(biases**2), 1.0)
    assert not np.array_equal(rater_biases(5, 6), rater_biases(6, 6))
    assert np.all(rater_biases(0, 1) == 0)


def test_image_does_not_depend_on_rater_count() -> None:
    a = generate_case(2, config=FundusConfig(n_raters=6))
    b = generate_case(2, config=FundusConfig(n_raters=3))
    np.testing.assert_array_equal(a.image, b.image)
    assert b.masks.shape == (3, 2, 128, 128)


def test_cup_inside_disc_for_every_rater(hundred_cases: list) -> None:
    for case in hundred_cases[:40]:
        assert not np.any(case.masks[:, 1] & (1 - case.masks[:, 0]))
    # the clipping that enforces it is rare
    clipped = sum(int(c.meta["clipped_cup_pixels"]) for c in hundred_cases)
    cup_pixels = sum(int(c.masks[:, 1].sum()) for c in hundred_cases)
    assert clipped <= 1e-3 * cup_pixels


@pytest.mark.parametrize("size,n_raters", [(64, 6), (96, 3), (64, 1)])
def test_configurable_size_and_raters(size: int, n_raters: int) -> None:
    config = FundusConfig(size=size, n_raters=n_raters)
    case = generate_case(1, seed=2, config=config).validate()
    assert case.image.shape == (3, size, size)
    assert case.masks.shape == (n_raters, 2, size, size)
    assert case.rater_probability is not None
    assert case.rater_probability.shape == (2, size, size)
    disc_fraction = case.masks[:, 0].mean()
    assert 0.05 < disc_fraction < 0.5  # the disc radius scales with the image
    if n_raters == 1:
        assert float(expert_sv(torch.from_numpy(case.masks)).sum()) == 0.0


def test_rater_probability_is_calibrated() -> None:
    config = FundusConfig(n_raters=200)
    for index in (0, 4):
        case = generate_case(index, seed=1, config=config)
        prob = case.rater_probability
        assert prob is not None
        empirical = case.masks.mean(0)
        error = np.abs(empirical - prob)
        band = (prob > 0.02) & (prob < 0.98)
        assert error.mean() < 0.005
        assert error[band].mean() < 0.03
        # the total expected area matches too (no systematic bias)
        np.testing.assert_allclose(empirical.sum((1, 2)), prob.sum((1, 2)), rtol=0.02)


def test_six_rater_soft_vote_is_unbiased(hundred_cases: list) -> None:
    diff = np.mean([(c.masks.mean(0) - c.rater_probability).sum((1, 2)) for c in hundred_cases], 0)
    area = np.mean([c.rater_probability.sum((1, 2)) for c in hundred_cases], 0)
    assert np.all(np.abs(diff) < 0.01 * area)


def test_ambiguity_predicts_expert_disagreement(hundred_cases: list) -> None:
    amb = np.array([c.meta["ambiguity"] for c in hundred_cases])
    sv = np.stack([expert_sv(torch.from_numpy(c.masks)).numpy() for c in hundred_cases])
    for k in range(2):
        rho = spearmanr(amb[:, k], sv[:, k])[0]
        assert rho >= 0.7, (k, rho)


def test_ambiguity_is_visible_as_boundary_blur(hundred_cases: list) -> None:
    amb = np.array([c.meta["ambiguity"] for c in hundred_cases])
    for k in range(2):
        sharpness = []
        for case in hundred_cases:
            gy, gx = np.gradient(case.image[1].astype(np.float64))
            band = np.abs(case.rater_probability[k] - 0.5) < 0.4
            sharpness.append(np.hypot(gx, gy)[band].mean())
        assert spearmanr(amb[:, k], sharpness)[0] < -0.6


def test_structures_visible(hundred_cases: list) -> None:
    """The disc is brighter than the background and the cup brighter than the rim."""
    for case in hundred_cases[:30]:
        green, prob = case.image[1], case.rater_probability
        outside = green[prob[0] < 0.02].mean()
        rim = green[(prob[0] > 0.98) & (prob[1] < 0.02)].mean()
        cup = green[prob[1] > 0.98].mean()
        assert outside < rim < cup


def test_make_splits_disjoint_and_stable() -> None:
    splits = make_splits(4, 2, 3, seed=1)
    ids = {name: {c.case_id for c in cases} for name, cases in splits.items()}
    assert [len(ids[n]) for n in ("train", "val", "test")] == [4, 2, 3]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert splits["test"][0].meta["index"] == 2 * SPLIT_STRIDE
    other = make_splits(6, 1, 3, seed=1)
    assert [c.case_id for c in other["test"]] == [c.case_id for c in splits["test"]]
    np.testing.assert_array_equal(other["test"][1].image, splits["test"][1].image)


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError):
        generate_case(-1)
    with pytest.raises(ConfigError):
        generate_case(0, seed=-2)
    with pytest.raises(ConfigError):
        generate_case(0, config=FundusConfig(n_raters=0))
    with pytest.raises(ConfigError):
        generate_case(0, config=FundusConfig(ambiguity_range=(0.5, 1.5)))
    with pytest.raises(ConfigError):
        make_splits(SPLIT_STRIDE + 1, 1, 1)
