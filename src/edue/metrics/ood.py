"""Out-of-distribution check: member agreement and its separation power.

The inputs are distorted with :mod:`edue.data.distortions` (Gaussian noise, blur, hue
shift; :func:`~edue.data.distortions.distort_dataset`).

* :func:`pairwise_dice_variance`: Dice between every pair of members (heads: "layer
  agreement"; ensemble members: "model agreement"), then the variance of those values.
* :func:`separation_auroc`: how well a per-image score separates distorted from clean
  images (rank-based AUROC, ties counted one half).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from edue.metrics._utils import as_array_1d, as_binary, overlap_counts
from edue.metrics.segmentation import dice_from_counts
from edue.prediction import Prediction


def pairwise_dice_variance(
    pred: Prediction | torch.Tensor, threshold: float = 0.5, ddof: int = 0
) -> torch.Tensor:
    """Variance of the Dice between every pair of members, per structure.

    Members are binarised (``> threshold``), the Dice of each of the ``S (S − 1) / 2``
    unordered pairs is computed (1 for two empty masks) and the variance of these values
    is returned (population variance by default, ``ddof=0``). Identical members give 0.

    Args:
        pred: a :class:`~edue.prediction.Prediction` or members ``[S, K, *spatial]``.
        threshold: binarisation threshold of probabilities.
        ddof: delta degrees of freedom of the variance.

    Returns:
        ``[K]`` float32; nan when there are fewer than 2 pairs beyond ``ddof``
        (e.g. a single member).
    """
    members = pred.members if isinstance(pred, Prediction) else pred
    masks = as_binary(members, threshold).flatten(2).transpose(0, 1)  # [K, S, N]
    return pairwise_dice_variance_from_counts(overlap_counts(masks, masks), ddof)


def pairwise_dice_variance_from_counts(intersection: torch.Tensor, ddof: int = 0) -> torch.Tensor:
    """:func:`pairwise_dice_variance` from member overlaps ``[K, S, S]`` (sizes on the diagonal).

    Returns:
        ``[K]`` float32 (nan when there are not more than ``ddof`` pairs).
    """
    n_members = intersection.shape[1]
    rows, cols = torch.triu_indices(n_members, n_members, offset=1)
    if rows.numel() <= ddof:
        return torch.full((intersection.shape[0],), float("nan"))
    sizes = torch.diagonal(intersection, dim1=1, dim2=2)  # [K, S]
    dice = dice_from_counts(intersection[:, rows, cols], sizes[:, rows], sizes[:, cols])
    return dice.double().var(1, correction=ddof).float()


def separation_auroc(scores: object, is_distorted: object) -> float:
    """AUROC of ``scores`` for telling distorted (positive) from clean images.

    Rank-based (Mann–Whitney): the probability that a random distorted image scores
    higher than a random clean one, ties counting one half. Images with a non-finite
    score are dropped; nan when either class is absent.

    Args:
        scores: per-image score ``[N]`` (higher = more likely distorted).
        is_distorted: bool ``[N]``.
    """
    s = as_array_1d(scores)
    positive = as_array_1d(is_distorted) != 0
    if s.shape != positive.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {positive.size}")
    keep = np.isfinite(s)
    s, positive = s[keep], positive[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
