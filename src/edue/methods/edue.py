"""EDUE: heads after the decoder blocks, trained with random rater sampling and
disagreement guidance; prediction and uncertainty in one forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edue.losses import edue_loss
from edue.methods.base import Method
from edue.methods.registry import BuildRequest, MethodSpec, backbone_blocks, register_method
from edue.nets.backbones import Backbone
from edue.nets.heads import MultiHeadNet

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config, MethodConfig


def head_names(
    heads: str | Sequence[str], encoder: Sequence[str], decoder: Sequence[str]
) -> list[str]:
    """Block names of a head placement (``decoder``, ``encoder+decoder`` or a list),
    given a backbone's encoder and decoder block names."""
    if heads == "decoder":
        return list(decoder)
    if heads == "encoder+decoder":
        return list(encoder) + list(decoder)
    return list(heads)


def loss_options(m: MethodConfig) -> dict[str, Any]:
    """The :func:`~edue.losses.edue_loss` switches of a method configuration."""
    return {
        "aux_weight": m.aux_weight,
        "label_sampling": m.label_sampling,
        "guidance": m.guidance,
        "guidance_weight": m.guidance_weight,
        "guidance_norm": m.guidance_norm,
        "guidance_detach_final": m.guidance_detach_final,
    }


class EDUE(Method):
    """One network, ``S`` heads at different decoder depths.

    Args:
        backbone: a feature-only U-Net (``out_channels=0``).
        out_channels: structures ``K``.
        heads: ``"decoder"`` (every decoder block), ``"encoder+decoder"`` (every block,
            as the authors' code can), or explicit block names; the last named block
            gives the final head.
        loss_options: keyword arguments of :func:`~edue.losses.edue_loss`
            (``aux_weight``, ``label_sampling``, ``guidance``, ``guidance_weight``,
            ``guidance_norm``, ``guidance_detach_final``).
    """

    name = "edue"

    def __init__(
        self,
        backbone: Backbone,
        out_channels: int,
        heads: str | Sequence[str] = "decoder",
        **loss_options: Any,
    ) -> None:
        super().__init__(
            MultiHeadNet(
                backbone,
                head_names(heads, backbone.encoder_names, backbone.decoder_names),
                out_channels,
                backbone.spatial_dims,
                backbone.in_channels,
            )
        )
        self.loss_options: dict[str, Any] = loss_options

    def loss(self, logits, batch, generator=None):  # type: ignore[no-untyped-def,override]
        return edue_loss(logits, batch, generator=generator, **self.loss_options)

    @property
    def n_members(self) -> int:
        return len(self.network.heads)  # type: ignore[arg-type]


def _build(request: BuildRequest) -> EDUE:
    m = request.config.method
    return EDUE(request.backbone(0), request.out_channels, m.heads, **loss_options(m))


def head_count(config: Config) -> int:
    """Heads of the configured placement on the configured backbone."""
    heads = config.method.heads
    if not isinstance(heads, str):  # a list: no backbone to look at
        return len(heads)
    return len(head_names(heads, *backbone_blocks(config)))


SPEC = register_method(
    MethodSpec(
        name="edue",
        label="EDUE",
        build=_build,
        members=head_count,
        summary="heads on the decoder blocks, rater sampling and disagreement guidance",
        role="subject",
        ablations={
            "edue_no_guidance": {"guidance": False},
            "edue_no_sampling": {"label_sampling": False},
        },
        order=0,
    )
)
