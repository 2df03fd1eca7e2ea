"""EDUE: heads after the decoder blocks, trained with random rater sampling and
disagreement guidance; prediction and uncertainty in one forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edue.losses import edue_loss
from edue.methods.base import Method
from edue.methods.registry import BuildRequest, MethodSpec, register_method
from edue.nets.heads import MultiHeadNet
from edue.nets.unet import UNet

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config


class EDUE(Method):
    """One network, ``S`` heads at different decoder depths.

    Args:
        backbone: a feature-only U-Net (``out_channels=0``).
        out_channels: structures ``K``.
        heads: ``"decoder"`` (every decoder block) or explicit block names; the last
            named block gives the final head.
        aux_weight, label_sampling, guidance, guidance_weight: see :func:`edue_loss`.
    """

    name = "edue"

    def __init__(
        self,
        backbone: UNet,
        out_channels: int,
        heads: str | Sequence[str] = "decoder",
        aux_weight: float = 0.3,
        label_sampling: bool = True,
        guidance: bool = True,
        guidance_weight: float = 5.0,
    ) -> None:
        names = backbone.decoder_names if heads == "decoder" else list(heads)
        super().__init__(
            MultiHeadNet(backbone, names, out_channels, backbone.spatial_dims, backbone.in_channels)
        )
        self.loss_options: dict[str, Any] = {
            "aux_weight": aux_weight,
            "label_sampling": label_sampling,
            "guidance": guidance,
            "guidance_weight": guidance_weight,
        }

    def loss(self, logits, batch, generator=None):  # type: ignore[no-untyped-def,override]
        return edue_loss(logits, batch, generator=generator, **self.loss_options)

    @property
    def n_members(self) -> int:
        return len(self.network.heads)  # type: ignore[arg-type]


def _build(request: BuildRequest) -> EDUE:
    m = request.config.method
    return EDUE(
        request.unet(0),
        request.out_channels,
        m.heads,
        m.aux_weight,
        m.label_sampling,
        m.guidance,
        m.guidance_weight,
    )


def _members(config: Config) -> int:
    heads = config.method.heads
    return len(config.model.channels) - 1 if heads == "decoder" else len(heads)


SPEC = register_method(
    MethodSpec(
        name="edue",
        label="EDUE",
        build=_build,
        members=_members,
        summary="heads on the decoder blocks, rater sampling and disagreement guidance",
        role="subject",
        ablations={
            "edue_no_guidance": {"guidance": False},
            "edue_no_sampling": {"label_sampling": False},
        },
        order=0,
    )
)
