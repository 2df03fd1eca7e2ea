"""Training losses, EDUE's first.

EDUE (see ``docs/method.md``, section "Training loss")::

    L = Σ_s w_s · BCE(z_s, t_s)  +  λ · RMSE( var_s σ(z_s),  var_r M_r )

The final (full-resolution) head has weight 1 and learns the soft majority vote; each
auxiliary head has weight ``aux_weight`` and learns one randomly drawn rater, drawn anew
for every head, sample and iteration. The second term, the *disagreement guidance*,
makes the spread across heads match the spread across raters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edue.data.case import random_rater
from edue.variance import leading_variance

_RMSE_EPS = 1e-8
#: floor of the experts' RMS variance when the guidance is normalised by it (a batch
#: without any disagreement would otherwise divide by ~0)
_EXPERT_RMS_FLOOR = 1e-3
GUIDANCE_NORMS = ("none", "expert_rms", "mse")


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with (possibly soft) targets, mean over all elements."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def head_variance(logits: torch.Tensor) -> torch.Tensor:
    """Unbiased variance across heads of the sigmoid probabilities.

    Args:
        logits: ``[S, B, K, *sp]`` with ``S >= 2``.

    Returns:
        ``[B, K, *sp]``.
    """
    return leading_variance(torch.sigmoid(logits.float()))


def guidance_rmse(head_var: torch.Tensor, expert_var: torch.Tensor) -> torch.Tensor:
    """Root of the mean squared difference between two variance maps (scalar).

    A tiny epsilon inside the root keeps the gradient finite when the maps coincide.
    """
    return torch.sqrt(F.mse_loss(head_var, expert_var.float()) + _RMSE_EPS)


def guidance_term(
    logits: torch.Tensor, expert_var: torch.Tensor, norm: str = "none", detach_final: bool = False
) -> torch.Tensor:
    """The disagreement guidance: RMSE between the variance across heads and the experts'.

    Args:
        logits: head logits ``[S, B, K, *sp]`` (``S >= 2``); the last head is the final one.
        expert_var: ``[B, K, *sp]``.
        norm: ``none`` (the published term); ``expert_rms``: the RMSE divided by the
            root mean square of the experts' variance over the batch (floored at 1e-3), a
            relative error that does not change scale with the structures' share of the
            image (their RMS variance is ~0.05 for 2D fundus crops, ~0.017 for 3D PET/CT);
            ``mse``: the mean squared error without the root, whose gradient
            ``2 (v_h − v_e) / N`` is not amplified by ``1 / RMSE`` where the error is small
            (the published RMSE pulls hardest where disagreement is rarest).
        detach_final: keep the guidance's gradient out of the final head (it then only
            shapes the auxiliary heads, and the final head learns the soft vote alone).

    Returns:
        A scalar.
    """
    if detach_final:
        logits = torch.cat([logits[:-1], logits[-1:].detach()])
    if norm == "mse":
        return F.mse_loss(head_variance(logits), expert_var.float())
    rmse = guidance_rmse(head_variance(logits), expert_var)
    if norm == "none":
        return rmse
    if norm == "expert_rms":
        scale = torch.sqrt(expert_var.float().square().mean()).clamp_min(_EXPERT_RMS_FLOOR)
        return rmse / scale.detach()
    raise ValueError(f"guidance norm {norm!r}: expected one of {', '.join(GUIDANCE_NORMS)}")


def edue_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    *,
    aux_weight: float = 0.3,
    label_sampling: bool = True,
    guidance: bool = True,
    guidance_weight: float = 5.0,
    guidance_norm: str = "none",
    guidance_detach_final: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The EDUE training loss.

    Args:
        logits: head logits ``[S, B, K, *sp]``; the last head is the final one.
        batch: with ``soft_vote`` and ``expert_variance`` ``[B, K, *sp]``, ``masks``
            ``[B, R, K, *sp]`` and ``rater_valid`` ``[B, R]``.
        aux_weight: BCE weight of each auxiliary head.
        label_sampling: auxiliary targets are one random rater each (else the soft vote).
        guidance: add the disagreement-guidance term.
        guidance_weight: lambda.
        guidance_norm, guidance_detach_final: see :func:`guidance_term`.
        generator: random source of the rater draws (on the masks' device).

    Returns:
        The scalar loss and its parts as floats (``bce_final``, ``bce_aux``, ``guidance``).
    """
    soft = batch["soft_vote"]
    loss_final = bce(logits[-1], soft)
    loss_aux = logits.new_zeros(())
    for head in logits[:-1]:
        target = (
            random_rater(batch["masks"], batch["rater_valid"], generator)
            if label_sampling
            else soft
        )
        loss_aux = loss_aux + bce(head, target)
    total = loss_final + aux_weight * loss_aux
    parts = {"bce_final": float(loss_final.detach()), "bce_aux": float(loss_aux.detach())}
    if guidance and logits.shape[0] >= 2:
        loss_guid = guidance_term(
            logits, batch["expert_variance"], guidance_norm, guidance_detach_final
        )
        total = total + guidance_weight * loss_guid
        parts["guidance"] = float(loss_guid.detach())
    return total, parts


def summed_heads_bce(
    logits: torch.Tensor, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Layer Ensembles: BCE of every head against the soft vote, summed over heads.

    Args:
        logits: ``[S, B, K, *sp]``.
    """
    per_head = torch.stack([bce(h, batch["soft_vote"]) for h in logits])
    return per_head.sum(), {"bce_heads_mean": float(per_head.detach().mean())}
