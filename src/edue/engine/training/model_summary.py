"""What ``edue model show`` prints: a backbone's tappable blocks, their output shapes and
parameters, and which of them carry heads under the configured ``method.heads``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from edue.config import Config
from edue.errors import ConfigError
from edue.methods.backbone_spec import backbone_spec
from edue.methods.edue import head_names
from edue.metrics.cost import count_parameters
from edue.nets.backbones import BackboneError
from edue.nets.factory import build_backbone


@dataclass(frozen=True)
class BlockRow:
    """One tappable block.

    Attributes:
        name: its name (``encoder.i`` or ``decoder.j``), usable in ``method.heads``.
        shape: output shape ``[C, *spatial]`` for the probe input.
        parameters: trainable parameters of the block itself.
        head: whether the configured ``method.heads`` puts a head on it.
    """

    name: str
    shape: tuple[int, ...]
    parameters: int
    head: bool


@dataclass(frozen=True)
class BackboneSummary:
    """A backbone as ``edue model show`` describes it."""

    kind: str
    input_shape: tuple[int, ...]
    total_parameters: int
    blocks: list[BlockRow]
    size_divisor: int


def summarize_backbone(
    config: Config, in_channels: int, spatial_dims: int, input_size: tuple[int, ...] | None = None
) -> BackboneSummary:
    """Build the configured backbone (no pretrained weights) and probe it once.

    Args:
        config: the run configuration (``model.*`` and ``method.heads``).
        in_channels: image channels ``C``.
        spatial_dims: 2 or 3.
        input_size: probe size (default: ``data.patch_size``, else ``data.size``, else 128
            in 2D and 64 in 3D, rounded up to the backbone's size divisor).

    Raises:
        ConfigError: a backbone option that cannot be built.
    """
    spec = replace(
        backbone_spec(config, spatial_dims, in_channels, for_training=False), out_channels=0
    )
    try:
        backbone = build_backbone(spec)
    except BackboneError as error:
        raise ConfigError(str(error)) from None
    divisor = int(backbone.min_size_divisor)  # type: ignore[arg-type]
    if input_size is None:
        default = 128 if spatial_dims == 2 else 64
        input_size = spec.patch_size or (default,) * spatial_dims
    input_size = tuple(-(-int(s) // divisor) * divisor for s in input_size)
    taps: dict[str, nn.Module] = backbone.tap_modules()  # type: ignore[operator]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        module.register_forward_hook(_shape_keeper(name, shapes)) for name, module in taps.items()
    ]
    backbone.eval()
    with torch.no_grad():
        backbone(torch.zeros(1, in_channels, *input_size))
    for handle in handles:
        handle.remove()
    encoder = list(backbone.encoder_names)  # type: ignore[arg-type]
    decoder = list(backbone.decoder_names)  # type: ignore[arg-type]
    with_heads = set(head_names(config.method.heads, encoder, decoder))
    unknown = sorted(with_heads - set(taps))
    if unknown:
        raise ConfigError(
            f"method.heads names blocks the {spec.kind} backbone does not have: {unknown} "
            f"(it has: {', '.join(taps)})"
        )
    parameters = {
        name: count_parameters(module, trainable_only=True) for name, module in taps.items()
    }
    stages = getattr(backbone, "encoder_stage_parameters", None)
    if callable(stages):  # taps that hold no layers: count the stage they follow
        with torch.no_grad():
            x = torch.zeros(1, in_channels, *input_size)
            parameters.update(zip(encoder, stages(x), strict=True))
    rows = [
        BlockRow(name, shapes[name], parameters[name], name in with_heads)
        for name in encoder + decoder
    ]
    return BackboneSummary(
        spec.kind,
        (in_channels, *input_size),
        count_parameters(backbone, trainable_only=True),
        rows,
        divisor,
    )


def _shape_keeper(name: str, shapes: dict[str, tuple[int, ...]]):  # type: ignore[no-untyped-def]
    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        shapes[name] = tuple(int(s) for s in output.shape[1:])

    return hook
