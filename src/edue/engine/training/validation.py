"""Per-epoch validation: loss, soft Dice and SV rank correlation, agreed across ranks."""

from __future__ import annotations

import torch

from edue.data.case import case_to_sample, collate_cases, expert_sv
from edue.data.pipeline import PreparedSource
from edue.engine.runtime import Runtime
from edue.methods import Method
from edue.metrics.disagreement import spearman
from edue.metrics.segmentation import soft_dice
from edue.prediction import SCORES, Prediction


@torch.no_grad()
def validation_metrics(
    method: Method,
    model: torch.nn.Module,
    subset: PreparedSource,
    runtime: Runtime,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """Validation figures over ``subset``, sharded by rank and all-reduced.

    Returns:
        ``val/loss``, ``val/soft_dice/<structure>`` and ``val/spearman_sv/<structure>``
        (the method's image-level score); for methods with several members also
        ``val/spearman_sv_<score>/<structure>`` for every score of
        :data:`~edue.prediction.SCORES` (what chooses ``method.score`` on validation).
    """
    del model  # the unwrapped method is used: no DDP synchronisation in evaluation
    method.eval()
    n, k = len(subset), len(subset.structures)
    mine = list(range(runtime.rank, n, runtime.world_size))
    generator = torch.Generator(device=runtime.device).manual_seed(seed)
    loss_sum = torch.zeros((), dtype=torch.float64)
    dice_sum = torch.zeros(k, dtype=torch.float64)
    model_sv = torch.zeros(len(SCORES), n, k, dtype=torch.float64)
    true_sv = torch.zeros(n, k, dtype=torch.float64)
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        batch = collate_cases([case_to_sample(subset.load(i)) for i in idx])
        batch = {
            key: v.to(runtime.device) if isinstance(v, torch.Tensor) else v
            for key, v in batch.items()
        }
        with runtime.autocast():
            logits = method(batch["image"]).float()
        loss, _ = method.validation_loss(logits, batch, generator)
        loss_sum += float(loss) * len(idx)
        members = method.members_after_forward(batch["image"], logits).float().cpu()
        for j, case_index in enumerate(idx):
            stack, segmentation = method.split_stack(members[:, j])
            pred = Prediction(stack, segmentation=segmentation, score=method.score)
            dice_sum += soft_dice(pred.mean, batch["soft_vote"][j].cpu()).double()
            variance, bernoulli = pred.uncertainty_sums()
            model_sv[:, case_index] = torch.stack([variance, bernoulli, variance + bernoulli])
            r = int(batch["rater_valid"][j].sum())
            true_sv[case_index] = expert_sv(batch["masks"][j, :r].cpu()).double()
    totals = (
        runtime.all_reduce_mean(
            torch.cat([loss_sum[None], dice_sum, model_sv.flatten(), true_sv.flatten()])
        ).cpu()
        * runtime.world_size
    )
    loss_mean = float(totals[0]) / max(n, 1)
    dice_mean = (totals[1 : 1 + k] / max(n, 1)).tolist()
    n_sv = len(SCORES) * n * k
    sv_model = totals[1 + k : 1 + k + n_sv].reshape(len(SCORES), n, k).numpy()
    sv_true = totals[1 + k + n_sv :].reshape(n, k).numpy()
    chosen = SCORES.index(method.score) if method.n_members >= 2 else SCORES.index("bernoulli")
    out = {"val/loss": loss_mean}
    for s, name in enumerate(subset.structures):
        out[f"val/soft_dice/{name}"] = float(dice_mean[s])
        out[f"val/spearman_sv/{name}"] = spearman(sv_model[chosen, :, s], sv_true[:, s])
        if method.n_members >= 2:
            for i, score in enumerate(SCORES):
                out[f"val/spearman_sv_{score}/{name}"] = spearman(sv_model[i, :, s], sv_true[:, s])
    return out
