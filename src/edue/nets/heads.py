"""Prediction heads attached to named blocks of any backbone through forward hooks.

This is how EDUE and Layer Ensembles turn one network into a stack of predictions from
different depths without touching the backbone's code: a hook keeps each named block's
output, a 1×1 convolution maps it to ``K`` logits, and the logits are upsampled to the
input's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edue.nets.pointwise import pointwise_conv


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, its gradient scaled by ``scale`` (0: stopped, 1: unchanged).

    Shapes: any; the output has ``x``'s shape.
    """
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _ScaleGradient.apply(x, float(scale))  # type: ignore[no-any-return]


class MultiHeadNet(nn.Module):
    """A backbone with a 1×1 convolution head after each of several named blocks.

    Args:
        backbone: any module; its own output is ignored.
        block_names: names of the blocks to tap (the backbone's ``tap_modules()`` names
            where it has them, else names of ``backbone.named_modules()``), in
            the order the heads are returned; the last is the "final" head.
        out_channels: structures ``K``.
        spatial_dims: 2 or 3.
        in_channels: image channels, used to probe the tapped blocks' widths.
        second_heads: also a second set of heads on the same blocks (EDUE's separate
            uncertainty heads), reading the blocks' outputs through
            :func:`scale_gradient`; they are created after the first set, so the
            backbone and the first heads start from the same weights as without them.
        second_gradient: scale of the second heads' gradient into the backbone
            (0: stopped, the backbone trained by the first heads alone).

    Shapes:
        input ``[B, C, *spatial]``; output ``[S, B, K, *spatial]`` logits, ``S = len(block_names)``
        (``2 S`` with ``second_heads``: the first set, then the second, each coarse → final).
    """

    def __init__(
        self,
        backbone: nn.Module,
        block_names: Sequence[str],
        out_channels: int,
        spatial_dims: int,
        in_channels: int,
        second_heads: bool = False,
        second_gradient: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.block_names = list(block_names)
        modules = dict(backbone.named_modules())
        taps = getattr(backbone, "tap_modules", None)
        if callable(taps):  # a backbone's own names for its blocks come first
            modules.update(taps())
        unknown = [n for n in self.block_names if n not in modules]
        if unknown:
            raise ValueError(f"backbone has no blocks named {unknown}")
        self._features: dict[str, torch.Tensor] = {}
        for name in self.block_names:
            modules[name].register_forward_hook(self._keeper(name))
        widths = self._probe_widths(spatial_dims, in_channels)
        self.heads = nn.ModuleList(pointwise_conv(spatial_dims, w, out_channels) for w in widths)
        self.second_heads = (
            nn.ModuleList(pointwise_conv(spatial_dims, w, out_channels) for w in widths)
            if second_heads
            else None
        )
        self.second_gradient = float(second_gradient)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def _keeper(self, name: str):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self._features[name] = output

        return hook

    @torch.no_grad()
    def _probe_widths(self, spatial_dims: int, in_channels: int) -> list[int]:
        was_training = self.backbone.training
        self.backbone.eval()
        divisor = int(getattr(self.backbone, "min_size_divisor", 16))
        size = max(2 * divisor, 32 if spatial_dims == 2 else 16)
        self.backbone(torch.zeros(1, in_channels, *([size] * spatial_dims)))
        self.backbone.train(was_training)
        widths = [int(self._features[n].shape[1]) for n in self.block_names]
        self._features.clear()
        return widths

    def forward(self, x: torch.Tensor, only: Sequence[int] | None = None) -> torch.Tensor:
        """Logits ``[S, B, K, *spatial]`` of every head (``only``: of these heads alone,
        by their index in the output, in that order; the others are not computed)."""
        size = x.shape[2:]
        self._features.clear()
        self.backbone(x)
        features = [self._features[name] for name in self.block_names]
        self._features.clear()
        pairs = list(zip(features, self.heads, strict=True))
        if self.second_heads is not None:
            pairs += [
                (scale_gradient(f, self.second_gradient), head)
                for f, head in zip(features, self.second_heads, strict=True)
            ]
        if only is not None:
            pairs = [pairs[i] for i in only]
        outputs = []
        for feature, head in pairs:
            logits = head(feature)
            if logits.shape[2:] != size:
                logits = F.interpolate(logits, size=size, mode=self.mode, align_corners=False)
            outputs.append(logits)
        return torch.stack(outputs)
