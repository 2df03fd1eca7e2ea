"""1×1(×1) convolutions computed as one batched matrix product.

Output heads map a feature map ``[B, C, *sp]`` to a few logits per pixel. PyTorch's CPU
convolution sends a 1×1 kernel with 1–2 output channels down a slow generic path;
the same projection as ``baddbmm(bias, W, X)`` on ``[B, C, N]`` is 2–4× faster (0.85 ms
→ 0.2 ms for 16 channels at 256², two cores) and equal up to rounding. The modules keep
``nn.Conv2d``/``nn.Conv3d``'s parameters, names and shapes, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def pointwise_projection(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Project ``[B, C, *sp]`` to ``[B, K, *sp]``.

    Args:
        x: features ``[B, C, *sp]``, contiguous.
        weight: kernel ``[K, C, 1, …]``.
        bias: ``[K]`` or ``None``.
    """
    b, c = x.shape[:2]
    k = weight.shape[0]
    flat = x.reshape(b, c, -1)
    w = weight.reshape(1, k, c).expand(b, k, c)
    if bias is None:
        out = torch.bmm(w, flat)
    else:
        out = torch.baddbmm(bias.reshape(1, k, 1).expand(b, k, flat.shape[2]), w, flat)
    return out.reshape(b, k, *x.shape[2:])


def _forward(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """The projection; channels-last inputs keep the convolution (as fast there)."""
    if not x.is_contiguous():
        return conv._conv_forward(x, conv.weight, conv.bias)
    return pointwise_projection(x, conv.weight, conv.bias)


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 ``nn.Conv2d`` whose forward is :func:`pointwise_projection`.

    Shapes:
        ``[B, C, H, W]`` → ``[B, K, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x)


class PointwiseConv3d(nn.Conv3d):
    """A 1×1×1 ``nn.Conv3d`` whose forward is :func:`pointwise_projection`.

    Shapes:
        ``[B, C, D, H, W]`` → ``[B, K, D, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x)


def pointwise_conv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A 1×1 (2D) or 1×1×1 (3D) convolution with bias."""
    cls = {2: PointwiseConv2d, 3: PointwiseConv3d}[spatial_dims]
    return cls(in_channels, out_channels)
