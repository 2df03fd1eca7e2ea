"""The protocol every method follows.

A method is an ``nn.Module`` that, in training, returns a stack of logits
``[S, B, K, *spatial]`` and computes its own loss from them; at inference it returns
member probabilities ``[S, B, K, *spatial]`` that become :class:`~edue.prediction.Prediction`
objects. Nothing downstream knows which method it is.
"""

from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """Base class of all methods.

    Attributes:
        name: registry name of the method.
        network: the module whose weights are checkpointed.
    """

    name = "method"
    #: the uncertainty map of its predictions (:data:`edue.prediction.SCORES`)
    score = "variance"
    #: whether its members are draws whose number is free (``samples`` attribute: MC
    #: dropout, SSN, the Probabilistic U-Net), so more can be drawn at evaluation
    sampled = False

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training outputs: logits ``[S, B, K, *spatial]``."""
        out = self.network(x)
        return out if out.ndim == x.ndim + 1 else out.unsqueeze(0)

    def loss(
        self,
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and its named parts."""
        raise NotImplementedError

    def validation_loss(
        self,
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss that early stopping and the choice of ``best.pt`` follow: the
        training loss, unless the method trains on something prediction does not use."""
        return self.loss(logits, batch, generator)

    @torch.no_grad()
    def predict_members(self, x: torch.Tensor) -> torch.Tensor:
        """Member probabilities ``[S, B, K, *spatial]`` (the module must be in eval mode)."""
        return self.members_from_logits(self.forward(x))

    def members_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Member probabilities ``[S, B, K, *spatial]`` from a forward's logits."""
        return torch.sigmoid(logits.float())

    @torch.no_grad()
    def members_after_forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Member probabilities of ``x`` whose forward already gave ``logits`` ``[S_all, B,
        K, *spatial]``: no second pass unless the method samples (MC dropout)."""
        return self.members_from_logits(logits)

    @property
    def n_members(self) -> int:
        """Number of members ``S`` at prediction."""
        return 1

    @property
    def stack_size(self) -> int:
        """Maps in the stack :meth:`members_from_logits` returns: the members, plus one
        when the method gives its segmentation apart from them (:meth:`split_stack`)."""
        return self.n_members

    def split_stack(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The members ``[S, …]`` and the segmentation probability ``[…]`` of a predicted
        stack ``[stack_size, …]`` (``None``: the segmentation is the members' mean)."""
        return stack, None
