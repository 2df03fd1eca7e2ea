"""Building backbones: the one place that knows every backbone class.

:func:`build_backbone` turns a :class:`~edue.nets.backbones.BackboneSpec` into a
network; :func:`tap_layout` gives its block names without building weights. The
interface the backbones implement lives in :mod:`edue.nets.backbones`, so the backbone
modules import it without importing this factory.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from edue.nets.backbones import Backbone, BackboneError, BackboneSpec


def build_backbone(spec: BackboneSpec) -> Backbone:
    """The backbone a :class:`BackboneSpec` describes.

    Raises:
        BackboneError: an option that cannot be built (unknown architecture or encoder,
            a missing or unreadable weights file, smp not installed, smp asked in 3D).
    """
    if spec.kind == "unet":
        from edue.nets.unet import UNet

        return UNet(
            spec.spatial_dims,
            spec.in_channels,
            spec.out_channels,
            spec.channels,
            spec.norm,
            spec.dropout,
        )
    if spec.kind == "smp":
        from edue.nets.smp_backbone import SmpBackbone

        return SmpBackbone(spec)
    if spec.kind == "dynunet":
        from edue.nets.dynunet_backbone import DynUNetBackbone

        return DynUNetBackbone(spec)
    raise BackboneError(f"model.backbone: unknown backbone '{spec.kind}' (unet, smp, dynunet)")


def tap_layout(spec: BackboneSpec) -> tuple[list[str], list[str]]:
    """``(encoder names, decoder names)`` of the backbone ``spec`` describes.

    Computed without weights files (a feature-only copy is built once per distinct spec
    and remembered; for the U-Net it is arithmetic).
    """
    if spec.kind == "unet":
        depth = len(spec.channels)
        return [f"encoder.{i}" for i in range(depth)], [f"decoder.{i}" for i in range(depth - 1)]
    encoder, decoder = _layout_of(replace(spec, out_channels=0, load_weights=False, dropout=0.0))
    return list(encoder), list(decoder)


@functools.lru_cache(maxsize=32)
def _layout_of(spec: BackboneSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Block names of a feature-only build of ``spec`` (a frozen, hashable spec)."""
    backbone = build_backbone(spec)
    return tuple(backbone.encoder_names), tuple(backbone.decoder_names)
