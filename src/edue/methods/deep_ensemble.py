"""Deep Ensembles: ``M`` plain U-Nets trained with different seeds.

Members train as independent jobs (``edue train method.name=deep_ensemble
method.member=i``); :func:`gather` joins their checkpoints into one predictor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edue.methods.base import Method
from edue.methods.plain import SPEC as PLAIN
from edue.methods.registry import BuildRequest, MethodSpec, register_method
from edue.nets.backbones import Backbone


class DeepEnsemble(Method):
    """Several plain U-Nets whose outputs are the members.

    Args:
        members: U-Nets with ``out_channels = K``, all of the same architecture.
    """

    name = "deep_ensemble"

    def __init__(self, members: Sequence[Backbone]) -> None:
        super().__init__(nn.ModuleList(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.network])  # type: ignore[union-attr,attr-defined]

    @property
    def n_members(self) -> int:
        return len(self.network)  # type: ignore[arg-type]


def _build(request: BuildRequest) -> DeepEnsemble:
    size = request.config.method.ensemble_size
    return DeepEnsemble([request.backbone() for _ in range(size)])


SPEC = register_method(
    MethodSpec(
        name="deep_ensemble",
        label="Deep Ensemble",
        build=_build,
        members=lambda c: c.method.ensemble_size,
        one_pass=False,
        summary="M plain U-Nets trained with different seeds; variance across members",
        member_method=PLAIN.name,
        first_member_from=PLAIN.name,
        order=40,
    )
)
