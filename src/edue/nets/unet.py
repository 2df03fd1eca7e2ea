"""A U-Net for 2D and 3D (``spatial_dims``) whose blocks are addressable by name.

Encoder blocks are ``encoder.0 … encoder.{L-1}`` (the last is the bottleneck), decoder
blocks ``decoder.0 … decoder.{L-2}`` from coarse to fine (the last works at full
resolution). Heads are attached to these names from outside (see
:mod:`edue.nets.heads`), so the same mechanism also works on other backbones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edue.nets.backbones import Backbone
from edue.nets.pointwise import pointwise_conv


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def _norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}' (batch, instance, group, none)")


class ConvBlock(nn.Sequential):
    """Two 3×3(×3) convolutions, each followed by normalisation and LeakyReLU.

    Optional dropout after the block (used by MC dropout).
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, norm: str, dropout: float = 0.0
    ) -> None:
        conv = conv_nd(spatial_dims)
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers += [
                conv(c_in, out_ch, 3, padding=1, bias=norm == "none"),
                _norm(norm, spatial_dims, out_ch),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        if dropout > 0:
            drop = {2: nn.Dropout2d, 3: nn.Dropout3d}[spatial_dims]
            layers.append(drop(dropout))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Transposed-convolution upsampling, concatenation with the skip, a :class:`ConvBlock`."""

    def __init__(
        self, spatial_dims: int, in_ch: int, skip_ch: int, out_ch: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        up = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
        self.up = up(in_ch, skip_ch, kernel_size=2, stride=2)
        self.block = ConvBlock(spatial_dims, 2 * skip_ch, out_ch, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[2:] != skip.shape[2:]:  # odd sizes: pad to the skip's size
            pads: list[int] = []
            for have, want in zip(reversed(x.shape[2:]), reversed(skip.shape[2:]), strict=True):
                pads += [0, want - have]
            x = nn.functional.pad(x, pads)
        return self.block(torch.cat([x, skip], dim=1))


class UNet(Backbone):
    """U-Net with ``len(channels)`` encoder levels and ``len(channels) − 1`` decoder blocks.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        out_channels: structures ``K`` of the final 1×1 convolution; ``0`` for a
            feature-only backbone (heads are then attached by name).
        channels: widths of the encoder levels, fine to coarse, e.g. ``(16, 32, 64, 128)``.
        norm: ``batch``, ``instance``, ``group`` or ``none``.
        dropout: dropout probability after the bottleneck and every decoder block (MC dropout).

    Shapes:
        input ``[B, C, *spatial]``; output ``[B, K, *spatial]`` logits (or the last decoder
        features ``[B, channels[0], *spatial]`` when ``out_channels == 0``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 2:
            raise ValueError("a U-Net needs at least two levels")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = tuple(int(c) for c in channels)
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
        self.pool = pool(2)
        self.encoder = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(self.channels):
            is_bottleneck = level == len(self.channels) - 1
            self.encoder.append(
                ConvBlock(spatial_dims, prev, width, norm, dropout if is_bottleneck else 0.0)
            )
            prev = width
        self.decoder = nn.ModuleList(
            UpBlock(
                spatial_dims,
                self.channels[i + 1],
                self.channels[i],
                self.channels[i],
                norm,
                dropout,
            )
            for i in reversed(range(len(self.channels) - 1))
        )
        self.out = (
            pointwise_conv(spatial_dims, self.channels[0], out_channels) if out_channels else None
        )

    @property
    def block_names(self) -> list[str]:
        """Names of all blocks in forward order: encoder then decoder."""
        return [f"encoder.{i}" for i in range(len(self.encoder))] + [
            f"decoder.{i}" for i in range(len(self.decoder))
        ]

    @property
    def encoder_names(self) -> list[str]:
        """Names of the encoder blocks, fine to coarse (the last is the bottleneck)."""
        return [f"encoder.{i}" for i in range(len(self.encoder))]

    @property
    def decoder_names(self) -> list[str]:
        """Names of the decoder blocks, coarse to fine."""
        return [f"decoder.{i}" for i in range(len(self.decoder))]

    def tap_modules(self) -> dict[str, nn.Module]:
        """The tappable blocks by name (:attr:`block_names`)."""
        modules = dict(self.named_modules())
        return {name: modules[name] for name in self.block_names}

    @property
    def min_size_divisor(self) -> int:
        """Input sizes should be multiples of this (2 ** number of poolings)."""
        return int(2 ** (len(self.channels) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for i, up in enumerate(self.decoder):
            x = up(x, skips[-(i + 2)])
        return self.out(x) if self.out is not None else x
