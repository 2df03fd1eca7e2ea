"""From a configuration's ``model`` section (and the data's patch size) to the
:class:`~edue.nets.backbones.BackboneSpec` a method builds, and the block names that
spec has (what head placements and Layer Ensembles' skip count are resolved against).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edue.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config
    from edue.nets.backbones import BackboneSpec


def backbone_spec(
    config: Config, spatial_dims: int, in_channels: int = 3, for_training: bool = True
) -> BackboneSpec:
    """The :class:`~edue.nets.backbones.BackboneSpec` of a configuration's ``model``."""
    from edue.nets.backbones import BackboneSpec

    m, data = config.model, config.data
    patch: tuple[int, ...] | None = None
    if data.patch_size:
        patch = tuple(data.patch_size)
        patch = patch * spatial_dims if len(patch) == 1 else patch
    elif data.size:
        patch = (data.size,) * spatial_dims
    return BackboneSpec(
        kind=m.backbone,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        channels=tuple(m.channels),
        norm=m.norm,
        arch=m.arch,
        encoder=m.encoder,
        encoder_depth=m.encoder_depth,
        decoder_channels=tuple(m.decoder_channels) if m.decoder_channels else None,
        encoder_weights=m.encoder_weights,
        encoder_weights_path=m.encoder_weights_path,
        load_weights=for_training,
        input_mean=tuple(m.input_mean) if m.input_mean else None,
        input_std=tuple(m.input_std) if m.input_std else None,
        kernel_size=tuple(tuple(k) for k in m.kernel_size) if m.kernel_size else None,
        strides=tuple(tuple(s) for s in m.strides) if m.strides else None,
        filters=tuple(m.filters) if m.filters else None,
        patch_size=patch,
        spacing=tuple(m.spacing) if m.spacing else None,
    )


def configured_spatial_dims(config: Config) -> int:
    """The spatial dimensions a configuration fixes before any data is read: those of
    ``model.strides``, ``model.kernel_size`` or ``model.spacing`` where given, else of a
    2- or 3-value ``data.patch_size``, else 2."""
    m, patch = config.model, config.data.patch_size
    for given in (m.strides[0] if m.strides else None, m.kernel_size[0] if m.kernel_size else None):
        if given and len(given) in (2, 3):
            return len(given)
    if m.spacing and len(m.spacing) in (2, 3):
        return len(m.spacing)
    return len(patch) if patch and len(patch) in (2, 3) else 2


def backbone_blocks(config: Config) -> tuple[list[str], list[str]]:
    """``(encoder block names, decoder block names)`` of the configured backbone, at the
    spatial dimensions of :func:`configured_spatial_dims` (the names do not depend on
    them otherwise)."""
    from edue.nets.backbones import BackboneError
    from edue.nets.factory import tap_layout

    dims = configured_spatial_dims(config)
    try:
        return tap_layout(backbone_spec(config, dims, for_training=False))
    except BackboneError as error:
        raise ConfigError(str(error)) from None
