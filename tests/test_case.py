import numpy as np
import pytest
import torch

from edue.data.case import (
    CaseDataset,
    MultiRaterCase,
    collate_cases,
    expert_sv,
    expert_variance,
    random_rater,
    soft_vote,
)
from edue.errors import DataError
from tests.conftest import make_case


def test_targets_hand_computed():
    # 3 raters, one structure, 2 pixels: votes (1,1,0) and (0,0,0)
    masks = torch.tensor([[[1, 0]], [[1, 0]], [[0, 0]]], dtype=torch.float32)
    assert torch.allclose(soft_vote(masks), torch.tensor([[2 / 3, 0.0]]))
    # unbiased variance of (1,1,0): mean 2/3, sum sq dev = 2*(1/9) + 4/9 = 6/9, /2 = 1/3
    assert torch.allclose(expert_variance(masks), torch.tensor([[1 / 3, 0.0]]))
    assert torch.allclose(expert_sv(masks), torch.tensor([1 / 3]))


def test_six_raters_variance_at_most_0_3():
    masks = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.float32).reshape(6, 1, 1)
    assert expert_variance(masks).item() == pytest.approx(0.3)


def test_single_rater_has_zero_variance():
    masks = torch.ones(1, 2, 4, 4)
    assert torch.count_nonzero(expert_variance(masks)) == 0


def test_collate_pads_raters_without_duplicating(rng):
    a = make_case(rng, n_raters=2, case_id="a")
    b = make_case(rng, n_raters=4, case_id="b")
    ds = CaseDataset([a, b])
    batch = collate_cases([ds[0], ds[1]])
    assert batch["masks"].shape == (2, 4, 2, 16, 16)
    assert batch["rater_valid"].tolist() == [[True, True, False, False], [True] * 4]
    assert torch.count_nonzero(batch["masks"][0, 2:]) == 0
    # the expert variance of case a is computed from its 2 raters only
    expected = expert_variance(torch.from_numpy(a.masks).float())
    assert torch.allclose(batch["expert_variance"][0], expected)


def test_random_rater_only_draws_valid_and_varies():
    masks = torch.arange(4, dtype=torch.float32).reshape(1, 4, 1, 1, 1).repeat(50, 1, 1, 1, 1)
    valid = torch.tensor([[True, True, True, False]]).repeat(50, 1)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([random_rater(masks, valid, g).flatten() for _ in range(20)])
    assert set(draws.unique().tolist()) == {0.0, 1.0, 2.0}
    # draws differ across iterations for the same sample
    assert len(set(draws[:, 0].tolist())) > 1


@pytest.mark.parametrize(
    "image, masks, message",
    [
        (np.zeros((3, 8, 8), np.float32), np.zeros((2, 2, 8, 9), np.uint8), "differs from image"),
        (np.zeros((3, 8, 8), np.float32), np.full((2, 2, 8, 8), 3, np.uint8), "binary"),
        (np.full((3, 8, 8), np.nan, np.float32), np.zeros((2, 2, 8, 8), np.uint8), "NaN"),
        (np.zeros((3, 8, 8), np.float32), np.zeros((0, 2, 8, 8), np.uint8), "no rater"),
        (np.zeros((3, 8, 8), np.float32), np.zeros((2, 3, 8, 8), np.uint8), "structures"),
    ],
)
def test_validate_rejects_bad_cases(image, masks, message):
    case = MultiRaterCase(image=image, masks=masks, case_id="bad", structures=("a", "b"))
    with pytest.raises(DataError, match=message):
        case.validate("some/file.png")


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int16, np.float32])
def test_distinct_values_equals_unique(dtype):
    from edue.data.case import distinct_values

    rng = np.random.default_rng(0)
    for values in ([0, 1], [0, 1, 7], [1], [0, 255]):
        a = rng.choice(values, size=(3, 5, 6)).astype(dtype)
        np.testing.assert_array_equal(distinct_values(a), np.unique(a))
        assert distinct_values(a).dtype == a.dtype
