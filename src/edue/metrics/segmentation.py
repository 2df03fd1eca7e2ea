"""Overlap and boundary metrics of a segmentation against its reference.

All functions take one case, ``[K, *spatial]`` per structure (2D ``[K, H, W]`` or 3D
``[K, D, H, W]``), and return one value per structure ``[K]``.

Conventions:
    * Binarisation is strict: a probability ``p`` is foreground when ``p > threshold``
      (as in the authors' soft Dice), so a soft vote of exactly 0.5 (3 of 6 raters) is
      background at threshold 0.5. Integer or boolean masks count non-zero as foreground.
    * **Empty–empty Dice is 1**: when prediction and reference are both empty the two
      agree perfectly. (MONAI's ``compute_dice(..., ignore_empty=False)`` does the same;
      with ``ignore_empty=True`` it would give nan instead.) A non-empty mask against an
      empty one has Dice 0.
    * **HD95 is nan when either mask is empty**: the distance to an empty set is not
      defined. Use nan-aware averages (:func:`numpy.nanmean`).

Dice is computed here from pixel counts in one vectorised pass (it is needed at 5
thresholds, for every rater and for every pair of members, where per-pair library calls
would dominate the cost); MONAI's ``compute_dice`` serves as the independent reference in
the tests. The 95th-percentile Hausdorff distance is MONAI's.

Conventions: docs/method.md, section "Segmentation: Dice and HD95".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.metrics import compute_hausdorff_distance

from edue.metrics._utils import as_binary, as_tensor

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)


def dice_from_counts(
    intersection: torch.Tensor, size_pred: torch.Tensor, size_target: torch.Tensor
) -> torch.Tensor:
    """Dice ``2|A∩B| / (|A| + |B|)`` from counts, 1 where both masks are empty.

    Args:
        intersection: ``|A ∩ B|``, any shape.
        size_pred: ``|A|``, broadcastable to ``intersection``.
        size_target: ``|B|``, broadcastable to ``intersection``.

    Returns:
        float32 Dice of the broadcast shape.
    """
    total = (size_pred + size_target).double()
    dice = torch.where(total > 0, 2 * intersection.double() / total.clamp_min(1), 1.0)
    return dice.float()


def _dice_flat(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of boolean masks ``[..., N]`` (pixels flattened last) -> ``[...]``."""
    intersection = (pred & target).sum(-1)
    return dice_from_counts(intersection, pred.sum(-1), target.sum(-1))


def binary_dice(pred_mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Dice of two binary masks per structure.

    Args:
        pred_mask: ``[K, *spatial]`` binary (bool, integer or 0/1 float).
        target_mask: ``[K, *spatial]`` binary.

    Returns:
        ``[K]`` Dice, 1 where both are empty.
    """
    pred = as_binary(pred_mask).flatten(1)
    target = as_binary(target_mask).flatten(1)
    _check_same_shape(pred, target)
    return _dice_flat(pred, target)


def soft_dice(
    prob: torch.Tensor,
    soft_vote: torch.Tensor,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> torch.Tensor:
    """Multi-threshold ("soft") Dice against the raters' soft vote.

    Prediction and soft vote are both binarised at each threshold (``> t``), the Dice is
    computed per threshold and averaged over thresholds.

    Args:
        prob: predicted probability ``[K, *spatial]``.
        soft_vote: mean of the rater masks ``[K, *spatial]`` in [0, 1].
        thresholds: binarisation thresholds, by default ``(0.1, 0.3, 0.5, 0.7, 0.9)``.

    Returns:
        ``[K]`` mean Dice over thresholds (empty–empty counts as 1 at that threshold).
    """
    p = as_tensor(prob, torch.float32).flatten(1)
    y = as_tensor(soft_vote, torch.float32).flatten(1)
    _check_same_shape(p, y)
    t = torch.as_tensor(list(thresholds), dtype=torch.float32).view(-1, 1, 1)
    return _dice_flat(p.unsqueeze(0) > t, y.unsqueeze(0) > t).mean(0)


def hard_dice(
    prob: torch.Tensor, target_binary: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """Dice of the prediction binarised at ``threshold`` against a binary reference.

    Args:
        prob: predicted probability ``[K, *spatial]``.
        target_binary: reference mask ``[K, *spatial]`` (non-zero is foreground).
        threshold: binarisation threshold of ``prob`` (``> threshold``).

    Returns:
        ``[K]`` Dice, 1 where both are empty.
    """
    pred = (as_tensor(prob, torch.float32) > threshold).flatten(1)
    target = (as_tensor(target_binary) != 0).flatten(1)
    _check_same_shape(pred, target)
    return _dice_flat(pred, target)


def dice_per_rater(prob: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice of the binarised prediction against each rater's mask.

    Args:
        prob: predicted probability ``[K, *spatial]``.
        masks: rater masks ``[R, K, *spatial]``.
        threshold: binarisation threshold of ``prob``.

    Returns:
        ``[R, K]`` Dice, 1 where both are empty.
    """
    pred = (as_tensor(prob, torch.float32) > threshold).flatten(1)
    raters = (as_tensor(masks) != 0).flatten(2)
    _check_same_shape(pred, raters[0])
    return _dice_flat(pred.unsqueeze(0), raters)


def mean_rater_dice(
    prob: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """Mean over raters of :func:`dice_per_rater`. ``[K, *sp], [R, K, *sp] -> [K]``."""
    return dice_per_rater(prob, masks, threshold).mean(0)


def hausdorff95(
    pred_mask: torch.Tensor,
    target_mask: torch.Tensor,
    spacing: float | Sequence[float] | None = None,
    percentile: float = 95.0,
) -> torch.Tensor:
    """Symmetric 95th-percentile Hausdorff distance per structure (MONAI).

    Args:
        pred_mask: binary prediction ``[K, *spatial]``.
        target_mask: binary reference ``[K, *spatial]``.
        spacing: pixel/voxel size per spatial axis (or one isotropic value); distances
            are in these units. ``None`` means unit spacing (distances in pixels).
        percentile: the percentile of the surface distances (95 by default).

    Returns:
        ``[K]`` float32 distances; **nan where either mask is empty** (undefined).
    """
    pred = as_binary(pred_mask)
    target = as_binary(target_mask)
    _check_same_shape(pred, target)
    out = torch.full((pred.shape[0],), float("nan"))
    present = pred.flatten(1).any(1) & target.flatten(1).any(1)
    if not bool(present.any()):
        return out
    index = torch.nonzero(present).flatten()
    if isinstance(spacing, Sequence):
        spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        # MONAI 1.5+ emits a deprecation notice from its own internals on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        hd = compute_hausdorff_distance(
            pred[index].unsqueeze(0).float(),
            target[index].unsqueeze(0).float(),
            include_background=True,
            percentile=percentile,
            spacing=spacing,
        )
    out[index] = hd[0].float().cpu()
    return out


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
