"""The explicit leading-axis variance equals torch's, values and gradients."""

from __future__ import annotations

import pytest
import torch

from edue.variance import leading_variance


@pytest.mark.parametrize("shape", [(2, 5), (4, 3, 2, 8, 8), (6, 2, 4, 4, 4), (3, 1)])
def test_equals_torch_unbiased_variance(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(len(shape)))
    torch.testing.assert_close(leading_variance(x), x.var(0, unbiased=True))


def test_binary_masks_give_the_known_maximum():
    # 6 raters split 3/3: unbiased variance 0.3, the contract's ceiling
    masks = torch.tensor([1.0, 1, 1, 0, 0, 0]).view(6, 1)
    assert leading_variance(masks).item() == pytest.approx(0.3)


def test_gradient_matches_torch():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    (grad,) = torch.autograd.grad(leading_variance(x).sum(), x)
    (reference,) = torch.autograd.grad(x.var(0, unbiased=True).sum(), x)
    torch.testing.assert_close(grad, reference)
    assert torch.autograd.gradcheck(leading_variance, (x,))


def test_one_entry_is_an_error():
    with pytest.raises(ValueError, match="at least 2"):
        leading_variance(torch.zeros(1, 3))
