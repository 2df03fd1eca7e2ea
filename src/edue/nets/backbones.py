"""Backbones behind one interface: edue's U-Net, segmentation-models-pytorch, MONAI's DynUNet.

Every backbone is an ``nn.Module`` that

* maps ``[B, C, *spatial]`` to ``[B, K, *spatial]`` logits, or, built with
  ``out_channels = 0``, to its last decoder features (heads are then attached by name);
* names its tappable blocks ``encoder.0 … encoder.{E-1}`` (fine to coarse; the last is the
  bottleneck) and ``decoder.0 … decoder.{D-1}`` (coarse to fine) through
  :meth:`tap_modules`, and lists them in :attr:`block_names`, :attr:`encoder_names` and
  :attr:`decoder_names`;
* has ``spatial_dims``, ``in_channels`` and ``min_size_divisor``.

So EDUE, Layer Ensembles, deep supervision, MC dropout, the plain U-Net and Deep
Ensembles work on any of them unchanged (see :class:`edue.nets.heads.MultiHeadNet`).
The choice is made by :class:`BackboneSpec` (built from ``model.*`` of a configuration)
and built by :func:`edue.nets.factory.build_backbone`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class Backbone(nn.Module):
    """Base class of the backbones (see the module docstring for the contract).

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
    """

    spatial_dims: int
    in_channels: int

    @property
    def encoder_names(self) -> list[str]:
        """Encoder block names, fine to coarse (the last is the bottleneck)."""
        raise NotImplementedError

    @property
    def decoder_names(self) -> list[str]:
        """Decoder block names, coarse to fine."""
        raise NotImplementedError

    @property
    def block_names(self) -> list[str]:
        """Encoder then decoder names, in forward order."""
        return self.encoder_names + self.decoder_names

    @property
    def min_size_divisor(self) -> int:
        """Input sizes should be multiples of this (the total down-sampling)."""
        raise NotImplementedError

    def tap_modules(self) -> dict[str, nn.Module]:
        """The tappable blocks by name."""
        raise NotImplementedError


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that decides a backbone's architecture and initial weights.

    Attributes:
        kind: ``unet``, ``smp`` or ``dynunet``.
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        out_channels: logits ``K``; ``0`` for a feature-only backbone.
        dropout: dropout probability inside the blocks (MC dropout).
        channels: U-Net widths, fine to coarse (``unet``).
        norm: ``batch``, ``instance``, ``group`` or ``none`` (``unet``, ``dynunet``).
        arch: segmentation-models-pytorch architecture (``Unet``, ``UnetPlusPlus``, ``FPN``…).
        encoder: its encoder name (``resnet34``, ``efficientnet-b0``, ``tu-…``).
        encoder_depth: encoder stages used (3–5).
        decoder_channels: widths of the smp decoder blocks (``None``: the architecture's).
        encoder_weights: ``imagenet`` to download pretrained weights, ``None`` otherwise.
        encoder_weights_path: a local file of encoder weights (``.safetensors``, ``.pt``).
        load_weights: load pretrained weights (``False`` when a checkpoint follows).
        input_mean: per-channel mean subtracted from the input (``None``: from the encoder's
            pretraining where weights are loaded, else no normalisation).
        input_std: per-channel standard deviation the input is divided by.
        kernel_size: DynUNet kernel size per level (``None``: planned).
        strides: DynUNet stride per level, the first ``1`` (``None``: planned).
        filters: DynUNet widths per level (``None``: nnU-Net's 32·2^i, capped).
        patch_size: the training patch or image size the DynUNet is planned for.
        spacing: the voxel spacing it is planned for (``None``: isotropic).
    """

    kind: str = "unet"
    spatial_dims: int = 2
    in_channels: int = 3
    out_channels: int = 2
    dropout: float = 0.0
    channels: tuple[int, ...] = (16, 32, 64, 128)
    norm: str = "batch"
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] | None = None
    encoder_weights: str | None = None
    encoder_weights_path: str | None = None
    load_weights: bool = True
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    kernel_size: tuple[tuple[int, ...], ...] | None = None
    strides: tuple[tuple[int, ...], ...] | None = None
    filters: tuple[int, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None


class BackboneError(ValueError):
    """A backbone option that cannot be built; the message is one line for the user."""
