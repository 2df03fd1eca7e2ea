"""MONAI's ``DynUNet`` (the nnU-Net architecture) as an edue backbone, 2D or 3D.

Kernel sizes and strides come from the configuration or are planned from the patch size
and the voxel spacing the way nnU-Net plans them (:func:`plan_kernels_strides`). The
blocks are tappable as ``encoder.0`` (the input block, full resolution), ``encoder.1 …``
(the down-sampling blocks), ``encoder.{L-1}`` (the bottleneck) and ``decoder.0 …
decoder.{L-2}`` (the up-sampling blocks, coarse to fine), ``L`` the number of levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from edue.nets.backbones import Backbone, BackboneError, BackboneSpec

_NORMS = ("batch", "instance", "group")


def _norm_name(kind: str, filters: Sequence[int]) -> tuple[str, dict[str, object]]:
    """MONAI's norm argument; group norm uses up to 8 groups dividing every width."""
    if kind == "batch":
        return ("BATCH", {})
    if kind == "instance":
        return ("INSTANCE", {"affine": True})
    return ("GROUP", {"num_groups": math.gcd(8, *filters)})


def plan_kernels_strides(
    patch_size: Sequence[int], spacing: Sequence[float] | None = None, max_levels: int = 6
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's rule for a plain U-Net's kernels and strides.

    Each level halves an axis while its spacing is at most twice the finest spacing and
    the axis keeps at least 4 voxels after halving (axes of a coarser spacing wait until
    the others catch up, and get 1-wide kernels meanwhile); levels stop when no axis can
    be halved or at ``max_levels``.

    Args:
        patch_size: the patch (or image) size the network sees, e.g. ``(96, 96, 96)``.
        spacing: voxel spacing per axis (``None``: isotropic).
        max_levels: the most levels, the full-resolution one included.

    Returns:
        ``(kernel_size, strides)``: one list per level; ``strides[0]`` is all ones.

    Example:
        ``plan_kernels_strides((96, 96, 96))`` gives 5 levels of 3³ kernels and strides
        1, 2, 2, 2, 2 (96 → 6).
    """
    sizes = [int(s) for s in patch_size]
    spacings = [float(s) for s in (spacing if spacing is not None else [1.0] * len(sizes))]
    if len(spacings) != len(sizes):
        raise BackboneError(
            f"model.spacing: {len(spacings)} values for a {len(sizes)}-D patch {sizes}"
        )
    dims = len(sizes)
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * dims]
    while len(strides) < max_levels:
        finest = min(spacings)
        ratio = [s / finest for s in spacings]
        stride = [2 if r <= 2 and size >= 8 else 1 for r, size in zip(ratio, sizes, strict=True)]
        if all(s == 1 for s in stride):
            break
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
        strides.append(stride)
    kernels.append([3] * dims)
    return kernels, strides


def nnunet_filters(levels: int, spatial_dims: int) -> list[int]:
    """nnU-Net's widths: 32 doubling per level, capped at 320 (3D) or 512 (2D)."""
    cap = 320 if spatial_dims == 3 else 512
    return [min(32 * 2**i, cap) for i in range(levels)]


class DynUNetBackbone(Backbone):
    """MONAI ``DynUNet`` with named taps (see the module docstring).

    Args:
        spec: ``kind == "dynunet"``; uses ``kernel_size``, ``strides``, ``filters``,
            ``patch_size``, ``spacing``, ``norm``, ``dropout``, ``spatial_dims``,
            ``in_channels`` and ``out_channels``.

    Shapes:
        input ``[B, C, *spatial]`` with sizes multiples of :attr:`min_size_divisor`;
        output ``[B, K, *spatial]`` logits, or the last up-sampling block's features
        ``[B, filters[0], *spatial]`` when ``out_channels == 0``.
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        from monai.networks.nets import DynUNet

        dims = spec.spatial_dims
        if spec.kernel_size is not None and spec.strides is not None:
            kernels = [list(k) for k in spec.kernel_size]
            strides = [list(s) for s in spec.strides]
        elif spec.kernel_size is None and spec.strides is None:
            patch = spec.patch_size or (128,) * dims
            if len(patch) != dims:
                raise BackboneError(
                    f"model: a {dims}D DynUNet cannot be planned for the {len(patch)}-D "
                    f"patch {list(patch)}; set data.patch_size or model.strides"
                )
            kernels, strides = plan_kernels_strides(patch, spec.spacing)
        else:
            raise BackboneError("model.kernel_size and model.strides: give both or neither")
        if len(kernels) != len(strides) or len(strides) < 2:
            raise BackboneError(
                f"model.kernel_size ({len(kernels)} levels) and model.strides "
                f"({len(strides)} levels) need the same number of levels, at least 2"
            )
        for name, values in (("kernel_size", kernels), ("strides", strides)):
            if any(len(v) != dims for v in values):
                raise BackboneError(f"model.{name}: every level needs {dims} values, got {values}")
        filters = list(spec.filters) if spec.filters else nnunet_filters(len(strides), dims)
        if len(filters) != len(strides):
            raise BackboneError(f"model.filters: {len(filters)} widths for {len(strides)} levels")
        if spec.norm not in _NORMS:
            raise BackboneError(
                f"model.norm: DynUNet supports {', '.join(_NORMS)}, not '{spec.norm}'"
            )
        self.spatial_dims = dims
        self.in_channels = spec.in_channels
        self.kernel_size, self.strides, self.filters = kernels, strides, filters
        self.net = DynUNet(
            dims,
            spec.in_channels,
            max(spec.out_channels, 1),
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            dropout=spec.dropout or None,
            norm_name=_norm_name(spec.norm, filters),
        )
        if not spec.out_channels:
            self.net.output_block = nn.Identity()  # type: ignore[assignment]

    @property
    def encoder_names(self) -> list[str]:
        """Input block, down-sampling blocks, bottleneck: fine to coarse."""
        return [f"encoder.{i}" for i in range(len(self.strides))]

    @property
    def decoder_names(self) -> list[str]:
        """Up-sampling blocks, coarse to fine."""
        return [f"decoder.{j}" for j in range(len(self.strides) - 1)]

    @property
    def min_size_divisor(self) -> int:
        """Every axis should be a multiple of this (the product of its strides)."""
        total = [1] * self.spatial_dims
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride, strict=True)]
        return max(total)

    def tap_modules(self) -> dict[str, nn.Module]:
        """The tappable blocks by name."""
        encoder = [self.net.input_block, *self.net.downsamples, self.net.bottleneck]
        taps = dict(zip(self.encoder_names, encoder, strict=True))
        taps.update(zip(self.decoder_names, self.net.upsamples, strict=True))
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]
