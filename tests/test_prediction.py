import pytest
import torch

from edue.prediction import Prediction, bernoulli_entropy


def test_derived_maps_hand_computed():
    members = torch.tensor([[[0.2, 1.0]], [[0.4, 1.0]], [[0.6, 1.0]]])  # [S=3, K=1, 2]
    pred = Prediction(members)
    assert torch.allclose(pred.mean, torch.tensor([[0.4, 1.0]]))
    assert torch.allclose(pred.variance, torch.tensor([[0.04, 0.0]]))  # unbiased
    assert torch.allclose(pred.uncertainty, pred.variance)
    assert torch.allclose(pred.sv, torch.tensor([0.04]))
    assert pred.mask().tolist() == [[False, True]]


def test_single_member_uses_bernoulli_variance():
    pred = Prediction(torch.tensor([[[0.5, 0.1]]]))
    assert torch.count_nonzero(pred.variance) == 0
    assert torch.allclose(pred.uncertainty, torch.tensor([[0.25, 0.09]]))
    assert torch.allclose(pred.sv, torch.tensor([0.34]))


def test_entropy_is_max_at_half():
    e = bernoulli_entropy(torch.tensor([0.5, 0.01, 0.99]))
    assert abs(e[0].item() - torch.log(torch.tensor(2.0)).item()) < 1e-6
    assert e[1] < e[0] and abs(e[1].item() - e[2].item()) < 1e-6


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[S, K"):
        Prediction(torch.zeros(4, 4))


def test_sv_counts_pixels_of_the_grid_predicted_on():
    members = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    own = Prediction(members)
    resampled = Prediction(members, pixel_scale=0.25)  # maps at twice the grid's size a side
    torch.testing.assert_close(resampled.sv, own.sv * 0.25)
    torch.testing.assert_close(resampled.uncertainty, own.uncertainty)  # the maps unchanged
