"""EDUE: heads after the decoder blocks, trained with random rater sampling and
disagreement guidance; prediction and uncertainty in one forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from edue.losses import edue_loss
from edue.methods.backbone_spec import backbone_blocks
from edue.methods.base import Method
from edue.methods.registry import BuildRequest, MethodSpec, register_method
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


#: where EDUE's segmentation comes from (``method.segmentation``)
SEGMENTATIONS = ("mean", "final", "weighted")


def head_options(m: MethodConfig) -> dict[str, Any]:
    """The :class:`EDUE` switches of a method configuration that are not loss options."""
    return {
        "segmentation": m.segmentation,
        "uncertainty_heads": m.uncertainty_heads,
        "uncertainty_gradient": m.uncertainty_gradient,
        "score": m.score,
    }


class EDUE(Method):
    """One network, ``S`` heads at different decoder depths.

    With ``uncertainty_heads="shared"`` (the published method) the heads are both the
    segmentation and the uncertainty: every head is trained with the EDUE loss and the
    members are the heads. With ``"separate"`` the network has two sets of heads on the
    same blocks: the *segmentation heads*, trained exactly like the deep-supervised
    U-Net (every head on the soft vote, auxiliary weight ``aux_weight``), and the
    *uncertainty heads*, trained with the EDUE loss (rater sampling, guidance) on the
    blocks' outputs whose gradient into the backbone is scaled by
    ``uncertainty_gradient`` (0: stopped, the backbone trained as the deep-supervised
    U-Net's). The members are then the uncertainty heads.

    Args:
        backbone: a feature-only U-Net (``out_channels=0``).
        out_channels: structures ``K``.
        heads: ``"decoder"`` (every decoder block), ``"encoder+decoder"`` (every block,
            as the authors' code can), or explicit block names; the last named block
            gives the final head.
        segmentation: ``"mean"`` (the mean over the segmentation path's heads, the
            published read-out), ``"final"`` (its final head alone) or ``"weighted"``
            (the heads' mean weighted as the loss weighs them on the soft vote: 1 for the
            final head, ``aux_weight`` for each other); the uncertainty is the spread of
            the members either way.
        uncertainty_heads: ``"shared"`` or ``"separate"`` (see above).
        uncertainty_gradient: with separate heads, the scale of the uncertainty heads'
            gradient into the backbone (0 … 1).
        score: the predictions' uncertainty map (:data:`edue.prediction.SCORES`).
        loss_options: keyword arguments of :func:`~edue.losses.edue_loss`
            (``aux_weight``, ``label_sampling``, ``guidance``, ``guidance_weight``,
            ``guidance_norm``, ``guidance_detach_final``).

    Shapes:
        training logits ``[S, B, K, *sp]`` (``[2 S, …]`` with separate heads: the
        segmentation heads, then the uncertainty heads); predicted stack
        ``[stack_size, B, K, *sp]`` (:meth:`split_stack` tells members from segmentation).
    """

    name = "edue"

    def __init__(
        self,
        backbone: Backbone,
        out_channels: int,
        heads: str | Sequence[str] = "decoder",
        segmentation: str = "mean",
        uncertainty_heads: str = "shared",
        uncertainty_gradient: float = 0.0,
        score: str = "variance",
        **loss_options: Any,
    ) -> None:
        if segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation {segmentation!r}: expected one of {SEGMENTATIONS}")
        if uncertainty_heads not in ("shared", "separate"):
            raise ValueError(
                f"uncertainty_heads {uncertainty_heads!r}: expected 'shared' or 'separate'"
            )
        self.separate = uncertainty_heads == "separate"
        super().__init__(
            MultiHeadNet(
                backbone,
                head_names(heads, backbone.encoder_names, backbone.decoder_names),
                out_channels,
                backbone.spatial_dims,
                backbone.in_channels,
                second_heads=self.separate,
                second_gradient=uncertainty_gradient,
            )
        )
        self.segmentation = segmentation
        self.score = score
        self.loss_options: dict[str, Any] = loss_options

    @property
    def _n_heads(self) -> int:
        return len(self.network.heads)  # type: ignore[arg-type]

    def loss(self, logits, batch, generator=None):  # type: ignore[no-untyped-def,override]
        if not self.separate:
            return edue_loss(logits, batch, generator=generator, **self.loss_options)
        s = self._n_heads
        seg_loss, seg_parts = edue_loss(
            logits[:s],
            batch,
            aux_weight=self.loss_options.get("aux_weight", 0.3),
            label_sampling=False,
            guidance=False,
        )
        unc_loss, unc_parts = edue_loss(logits[s:], batch, generator=generator, **self.loss_options)
        parts = {f"seg_{k}": v for k, v in seg_parts.items()}
        parts.update({f"unc_{k}": v for k, v in unc_parts.items()})
        return seg_loss + unc_loss, parts

    @torch.no_grad()
    def predict_members(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.separate and self.segmentation == "final"):
            return super().predict_members(x)
        s = self._n_heads  # the segmentation's auxiliary heads are not needed: not computed
        logits = self.network(x, only=[*range(s, 2 * s), s - 1])
        return torch.sigmoid(logits.float())

    def _head_weights(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """The weights of the ``weighted`` read-out ``[n]`` (summing to 1)."""
        w = torch.full((n,), float(self.loss_options.get("aux_weight", 0.3)), dtype=like.dtype)
        w[-1] = 1.0
        return (w / w.sum()).to(like.device)

    def _segmentation_of(self, heads: torch.Tensor) -> torch.Tensor:
        """The segmentation ``[…]`` from a stack of head probabilities ``[S, …]``."""
        if self.segmentation == "final":
            return heads[-1]
        if self.segmentation == "weighted":
            w = self._head_weights(heads.shape[0], heads)
            return torch.tensordot(w, heads, dims=1)
        return heads.mean(0)

    def members_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits.float())
        if not self.separate:
            return probs
        seg, unc = probs[: self._n_heads], probs[self._n_heads :]
        return torch.cat([unc, self._segmentation_of(seg)[None]])

    def split_stack(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.separate:
            return stack[:-1], stack[-1]
        if self.segmentation == "mean":
            return stack, None
        return stack, self._segmentation_of(stack)

    @property
    def n_members(self) -> int:
        return self._n_heads

    @property
    def stack_size(self) -> int:
        return self.n_members + (1 if self.separate else 0)


def _build(request: BuildRequest) -> EDUE:
    m = request.config.method
    return EDUE(
        request.backbone(0), request.out_channels, m.heads, **head_options(m), **loss_options(m)
    )


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
        order=0,
    )
)
