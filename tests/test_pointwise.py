"""The matrix-product 1×1 convolution equals torch's convolution, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edue.nets.pointwise import PointwiseConv2d, PointwiseConv3d


@pytest.mark.parametrize(
    "cls, reference, shape",
    [
        (PointwiseConv2d, nn.Conv2d, (3, 16, 9, 7)),
        (PointwiseConv3d, nn.Conv3d, (2, 8, 5, 6, 4)),
    ],
)
def test_equals_convolution_with_the_same_parameters(cls, reference, shape):
    torch.manual_seed(0)
    conv = reference(shape[1], 2, 1)
    point = cls(shape[1], 2)
    point.load_state_dict(conv.state_dict())  # same names and shapes: old checkpoints load
    x = torch.randn(*shape, requires_grad=True)
    y_ref, y = conv(x), point(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn_like(y)
    ref_grads = torch.autograd.grad(y_ref, [x, conv.weight, conv.bias], grad_out)
    grads = torch.autograd.grad(y, [x, point.weight, point.bias], grad_out)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channels_last_input_gives_the_same_result():
    torch.manual_seed(1)
    point = PointwiseConv2d(4, 3)
    x = torch.randn(2, 4, 6, 5)
    torch.testing.assert_close(
        point(x.to(memory_format=torch.channels_last)), point(x), rtol=1e-5, atol=1e-6
    )


def test_without_bias():
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 2, 1, bias=False)
    point = PointwiseConv2d(5, 2, bias=False)
    point.load_state_dict(conv.state_dict())
    x = torch.randn(1, 5, 4, 4)
    torch.testing.assert_close(point(x), conv(x), rtol=1e-5, atol=1e-6)
