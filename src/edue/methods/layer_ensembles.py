"""Layer Ensembles (Kushibar et al., MICCAI 2022): a head after every encoder and decoder
block, the loss summed over heads, and the prediction the mean of the heads after
skipping the first ``T``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from edue.losses import summed_heads_bce
from edue.methods.backbone_spec import backbone_blocks
from edue.methods.base import Method
from edue.methods.registry import BuildRequest, MethodSpec, register_method
from edue.nets.backbones import Backbone
from edue.nets.heads import MultiHeadNet

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config


class LayerEnsembles(Method):
    """Heads on every block, attached by forward hooks (any backbone works).

    Args:
        backbone: a feature-only U-Net (``out_channels=0``).
        out_channels: structures ``K``.
        skip_first: heads ignored at prediction (the shallow, least accurate ones).
    """

    name = "layer_ensembles"

    def __init__(self, backbone: Backbone, out_channels: int, skip_first: int = 4) -> None:
        names = backbone.block_names
        if not 0 <= skip_first <= len(names) - 2:
            raise ValueError(
                f"skip_first must leave at least 2 of the {len(names)} heads, got {skip_first}"
            )
        super().__init__(
            MultiHeadNet(backbone, names, out_channels, backbone.spatial_dims, backbone.in_channels)
        )
        self.skip_first = skip_first

    def loss(self, logits, batch, generator=None):  # type: ignore[no-untyped-def,override]
        return summed_heads_bce(logits, batch)

    def members_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[self.skip_first :].float())

    @torch.no_grad()
    def predict_all_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities of every head ``[S_all, B, K, *sp]`` (for AULA and choosing T)."""
        return torch.sigmoid(self.forward(x).float())

    @property
    def n_members(self) -> int:
        return len(self.network.heads) - self.skip_first  # type: ignore[arg-type]


def _build(request: BuildRequest) -> LayerEnsembles:
    return LayerEnsembles(
        request.backbone(0), request.out_channels, request.config.method.skip_first
    )


def _blocks(config: Config) -> int:
    encoder, decoder = backbone_blocks(config)
    return len(encoder) + len(decoder)


def _check(config: Config) -> None:
    blocks = _blocks(config)
    if config.method.skip_first > blocks - 2:
        model = config.model
        network = (
            f"a {len(model.channels)}-level U-Net"
            if model.backbone == "unet"
            else f"the {model.backbone} backbone"
        )
        raise ValueError(
            f"method.skip_first {config.method.skip_first} must leave at least 2 of the "
            f"{blocks} heads of {network}"
        )


def _members(config: Config) -> int:
    return _blocks(config) - config.method.skip_first  # encoder + decoder blocks, less T


SPEC = register_method(
    MethodSpec(
        name="layer_ensembles",
        label="Layer Ensembles",
        build=_build,
        members=_members,
        check=_check,
        summary="heads on every encoder and decoder block; mean of the heads after the first T",
        order=10,
    )
)
