"""MC dropout: dropout kept active at inference, ``N`` stochastic passes."""

from __future__ import annotations

import torch
from torch import nn

from edue.methods.plain import PlainUNet
from edue.methods.registry import BuildRequest, MethodSpec, register_method
from edue.nets.backbones import Backbone


class MCDropout(PlainUNet):
    """A U-Net with dropout, sampled ``samples`` times at prediction.

    Only the dropout layers are switched to training mode at inference; normalisation
    layers keep their running statistics.

    Args:
        network: a U-Net with ``dropout > 0`` and ``out_channels = K``.
        samples: stochastic passes ``N``.
        generator_seed: seed of the dropout masks at prediction (reproducible samples).
    """

    name = "mc_dropout"
    sampled = True

    def __init__(self, network: Backbone, samples: int = 10, generator_seed: int = 0) -> None:
        super().__init__(network)
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in network.modules()):
            raise ValueError("MC dropout needs a network with dropout layers")
        self.samples = samples
        self.generator_seed = generator_seed

    def _dropout_layers(self) -> list[nn.Module]:
        return [m for m in self.network.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]

    @torch.no_grad()
    def predict_members(self, x: torch.Tensor) -> torch.Tensor:
        layers = self._dropout_layers()
        states = [m.training for m in layers]
        for m in layers:
            m.train()
        # A fixed seed per call makes the N samples reproducible without touching the
        # caller's global random state.
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(self.generator_seed)
            samples = [torch.sigmoid(self.network(x).float()) for _ in range(self.samples)]
        for m, state in zip(layers, states, strict=True):
            m.train(state)
        return torch.stack(samples)

    @torch.no_grad()
    def members_after_forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.predict_members(x)  # the samples need passes of their own

    @property
    def n_members(self) -> int:
        return self.samples


def _build(request: BuildRequest) -> MCDropout:
    m = request.config.method
    return MCDropout(
        request.backbone(dropout=m.mc_dropout), m.mc_samples, request.config.train.seed
    )


SPEC = register_method(
    MethodSpec(
        name="mc_dropout",
        label="MC dropout",
        build=_build,
        members=lambda c: c.method.mc_samples,
        one_pass=False,
        summary="a U-Net with dropout sampled N times at prediction",
        order=20,
    )
)
