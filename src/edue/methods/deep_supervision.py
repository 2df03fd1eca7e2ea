"""A U-Net with deep supervision on the soft vote (nnU-Net's default training): the same
network and heads as EDUE, trained without the guidance and without rater sampling.

It isolates what EDUE's guidance adds: EDUE's auxiliary heads also act as deep
supervision, which speeds up convergence, so a comparison against a plain U-Net alone
cannot tell whether EDUE's lead comes from the guidance or from deep supervision.

Two uncertainty read-outs, registered as two methods:

* ``deep_supervision``: ``p (1 − p)`` of the final head (one member), like the plain U-Net;
* ``deep_supervision_heads``: the variance across its heads (the members are the heads,
  as for EDUE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from edue.methods.edue import EDUE, head_count, loss_options
from edue.methods.registry import BuildRequest, MethodSpec, register_method

if TYPE_CHECKING:  # pragma: no cover
    from edue.config import Config


class DeepSupervision(EDUE):
    """EDUE's network trained on the soft vote by every head (auxiliary weight
    ``aux_weight``), no guidance, no rater sampling.

    Args:
        final_only: the members are the final head alone (uncertainty ``p (1 − p)``);
            otherwise every head (uncertainty = variance across heads).
        Other arguments: see :class:`~edue.methods.edue.EDUE`.
    """

    name = "deep_supervision"

    def __init__(self, *args, final_only: bool = True, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.final_only = final_only
        if not final_only:
            self.name = "deep_supervision_heads"

    def members_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((logits[-1:] if self.final_only else logits).float())

    @property
    def n_members(self) -> int:
        return 1 if self.final_only else super().n_members


def _build(final_only: bool):  # type: ignore[no-untyped-def]
    def build(request: BuildRequest) -> DeepSupervision:
        m = request.config.method
        options = {**loss_options(m), "label_sampling": False, "guidance": False}
        return DeepSupervision(
            request.backbone(0), request.out_channels, m.heads, final_only=final_only, **options
        )

    return build


def _heads(config: Config) -> int:
    return head_count(config)


SPEC = register_method(
    MethodSpec(
        name="deep_supervision",
        label="U-Net + deep supervision",
        build=_build(final_only=True),
        summary="EDUE's network on the soft vote by every head; uncertainty p (1 - p)",
        order=35,
    )
)
SPEC_HEADS = register_method(
    MethodSpec(
        name="deep_supervision_heads",
        label="U-Net + deep supervision (head variance)",
        build=_build(final_only=False),
        members=_heads,
        trained_as=SPEC.name,
        summary="EDUE's network on the soft vote by every head; variance across heads",
        order=36,
    )
)
