"""A plain U-Net trained on the soft vote; its uncertainty is ``p (1 − p)``."""

from __future__ import annotations

from edue.losses import bce
from edue.methods.base import Method
from edue.methods.registry import BuildRequest, MethodSpec, register_method
from edue.nets.backbones import Backbone


class PlainUNet(Method):
    """One network, one output (``S = 1``).

    Args:
        network: a U-Net with ``out_channels = K``.
    """

    name = "plain"

    def __init__(self, network: Backbone) -> None:
        super().__init__(network)

    def loss(self, logits, batch, generator=None):  # type: ignore[no-untyped-def,override]
        value = bce(logits[0], batch["soft_vote"])
        return value, {"bce": float(value.detach())}


def _build(request: BuildRequest) -> PlainUNet:
    return PlainUNet(request.backbone())


SPEC = register_method(
    MethodSpec(
        name="plain",
        label="U-Net",
        build=_build,
        summary="one U-Net trained on the soft vote; uncertainty p (1 - p)",
        order=30,
    )
)
