"""Set-to-set metrics between model samples and rater masks (LIDC-style).

Given binary samples ``S [S, K, *sp]`` (heads, ensemble members or MC samples) and rater
masks ``Y [R, K, *sp]``, per structure:

* **Generalized Energy Distance** with ``d = 1 − IoU``::

      D²_GED = 2 E[d(s, y)] − E[d(s, s')] − E[d(y, y')]

* **Hungarian-matched IoU**: the mean IoU of an optimal one-to-one matching between the
  two sets (:func:`scipy.optimize.linear_sum_assignment`).

Every convention is an explicit argument:

``empty_empty``
    The IoU of two empty masks: a number (1.0 by default: they agree, distance 0) or
    ``"skip"``, which drops such pairs from every expectation (an expectation with no
    pair left is nan, and so is the result).
``include_self_pairs``
    Whether the within-set expectations ``E[d(s, s')]`` and ``E[d(y, y')]`` average over
    all ``S × S`` ordered pairs, self-pairs (distance 0) included (the plug-in estimator of
    the Probabilistic U-Net and PHiSeg code), or over the ``S (S − 1)`` pairs of distinct
    elements (default here: the unbiased estimator, which can be slightly negative; a set
    of one element then has a within-set term of 0).
``squared``
    Return ``D²_GED`` (what the LIDC literature reports as "GED") or its square root
    (negative estimates are clipped to 0 first).

:data:`LIDC_PRESET` bundles the common LIDC choice: ``d = 1 − IoU``, IoU(empty, empty) = 1,
self-pairs included, squared. Use ``ged(samples, raters, **LIDC_PRESET)`` or
:func:`ged_lidc`.

Conventions: docs/method.md, section "Set metrics: GED and Hungarian-matched IoU".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from edue.metrics._utils import as_binary, overlap_counts

EmptyEmpty = float | Literal["skip"]

LIDC_PRESET: Mapping[str, object] = MappingProxyType(
    {"empty_empty": 1.0, "include_self_pairs": True, "squared": True}
)


def _flat_masks(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[n, K, *spatial]`` masks or probabilities -> ``[K, n, N]`` bool."""
    return as_binary(x, threshold).flatten(2).transpose(0, 1)


def _iou(inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor, empty_empty: EmptyEmpty):
    """IoU ``[K, A, B]`` from intersections and set sizes ``[K, A]``, ``[K, B]``."""
    union = size_a.unsqueeze(2) + size_b.unsqueeze(1) - inter
    empty = float("nan") if empty_empty == "skip" else float(empty_empty)
    return torch.where(union > 0, inter / union.clamp_min(1), empty)


def pairwise_iou(
    a: torch.Tensor, b: torch.Tensor, empty_empty: EmptyEmpty = 1.0, threshold: float = 0.5
) -> torch.Tensor:
    """IoU between every element of two sets of masks, per structure.

    Args:
        a: ``[A, K, *spatial]`` masks (probabilities are thresholded ``> threshold``).
        b: ``[B, K, *spatial]`` masks.
        empty_empty: IoU of two empty masks, or ``"skip"`` for nan.
        threshold: binarisation threshold of floating inputs.

    Returns:
        ``[K, A, B]`` float64 IoU (nan for skipped pairs).
    """
    fa, fb = _flat_masks(a, threshold), _flat_masks(b, threshold)
    if fa.shape[0] != fb.shape[0] or fa.shape[2] != fb.shape[2]:
        raise ValueError(f"incompatible mask sets: {tuple(a.shape)} vs {tuple(b.shape)}")
    inter = overlap_counts(fa, fb)
    size_a = fa.to(torch.float32).sum(2).double()  # float sums are faster than bool sums
    size_b = fb.to(torch.float32).sum(2).double()
    return _iou(inter, size_a, size_b, empty_empty)


def _within_mean(dist: torch.Tensor, include_self_pairs: bool) -> torch.Tensor:
    """Mean distance inside one set ``[K, n, n] -> [K]``."""
    n = dist.shape[1]
    if include_self_pairs:
        return dist.nanmean((1, 2))
    if n < 2:
        return torch.zeros(dist.shape[0], dtype=dist.dtype)
    off = ~torch.eye(n, dtype=torch.bool)
    return dist[:, off].nanmean(1)


@dataclass(frozen=True)
class SetOverlap:
    """Overlap counts of every pair within and across two mask sets (one Gram matrix).

    Computing it once lets :func:`ged_from_overlap`, :func:`hungarian_iou_from_overlap`
    and :func:`~edue.metrics.ood.pairwise_dice_variance_from_counts` share the work.

    Attributes:
        intersection: ``[K, S + R, S + R]`` float64 ``|m_i ∩ m_j|``; samples first, then
            raters; the diagonal holds the mask sizes.
        n_samples: ``S``.
    """

    intersection: torch.Tensor
    n_samples: int

    @classmethod
    def of(cls, samples: torch.Tensor, raters: torch.Tensor, threshold: float = 0.5) -> SetOverlap:
        """Overlaps of samples ``[S, K, *sp]`` and raters ``[R, K, *sp]`` (``> threshold``)."""
        fs, fr = _flat_masks(samples, threshold), _flat_masks(raters, threshold)
        if fs.shape[0] != fr.shape[0] or fs.shape[2] != fr.shape[2]:
            raise ValueError(
                f"incompatible mask sets: {tuple(samples.shape)} vs {tuple(raters.shape)}"
            )
        both = torch.cat([fs, fr], 1)
        return cls(overlap_counts(both, both), int(fs.shape[1]))

    def iou(self, empty_empty: EmptyEmpty = 1.0) -> torch.Tensor:
        """IoU of every pair ``[K, S + R, S + R]``."""
        size = torch.diagonal(self.intersection, dim1=1, dim2=2)
        return _iou(self.intersection, size, size, empty_empty)


def ged_from_overlap(
    overlap: SetOverlap,
    empty_empty: EmptyEmpty = 1.0,
    include_self_pairs: bool = False,
    squared: bool = True,
) -> torch.Tensor:
    """:func:`ged` from precomputed overlaps. ``-> [K]`` float32."""
    dist = 1 - overlap.iou(empty_empty)
    n = overlap.n_samples
    value = (
        2 * dist[:, :n, n:].nanmean((1, 2))
        - _within_mean(dist[:, :n, :n], include_self_pairs)
        - _within_mean(dist[:, n:, n:], include_self_pairs)
    )
    if not squared:
        value = value.clamp_min(0).sqrt()
    return value.float()


def ged(
    samples: torch.Tensor,
    raters: torch.Tensor,
    empty_empty: EmptyEmpty = 1.0,
    include_self_pairs: bool = False,
    squared: bool = True,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Generalized Energy Distance with ``d = 1 − IoU`` (see the module conventions).

    Args:
        samples: model samples ``[S, K, *spatial]``, binary or probabilities
            (thresholded ``> threshold``), e.g. ``prediction.members``.
        raters: rater masks ``[R, K, *spatial]``.
        empty_empty: IoU of two empty masks, or ``"skip"``.
        include_self_pairs: average the within-set terms over all ``n × n`` pairs.
        squared: return ``D²_GED`` (True) or ``D_GED``.
        threshold: binarisation threshold of floating inputs.

    Returns:
        ``[K]`` float32.
    """
    overlap = SetOverlap.of(samples, raters, threshold)
    return ged_from_overlap(overlap, empty_empty, include_self_pairs, squared)


def ged_lidc(samples: torch.Tensor, raters: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """:func:`ged` with :data:`LIDC_PRESET`. ``[S, K, *sp], [R, K, *sp] -> [K]``."""
    return ged(samples, raters, threshold=threshold, **LIDC_PRESET)  # type: ignore[arg-type]


def hungarian_iou(
    samples: torch.Tensor,
    raters: torch.Tensor,
    empty_empty: EmptyEmpty = 1.0,
    threshold: float = 0.5,
    max_matched: int = 4096,
) -> torch.Tensor:
    """Mean IoU of the optimal one-to-one matching between samples and raters.

    When ``S != R`` both sets are tiled to ``L = lcm(S, R)`` elements (each sample
    repeated ``L / S`` times, each rater ``L / R`` times) before matching, as done for
    LIDC (e.g. 16 samples vs 4 annotations: the annotations are repeated 4 times), so
    every rater is matched equally often. With ``empty_empty="skip"`` empty–empty pairs
    count as perfect matches for the assignment but are left out of the mean.

    Args:
        samples: ``[S, K, *spatial]`` binary or probabilities.
        raters: ``[R, K, *spatial]`` binary.
        empty_empty: IoU of two empty masks, or ``"skip"``.
        threshold: binarisation threshold of floating inputs.
        max_matched: largest ``L`` accepted (the assignment is ``O(L³)``).

    Returns:
        ``[K]`` float32 mean matched IoU.
    """
    return _matched_mean(pairwise_iou(samples, raters, empty_empty, threshold), max_matched)


def hungarian_iou_from_overlap(
    overlap: SetOverlap, empty_empty: EmptyEmpty = 1.0, max_matched: int = 4096
) -> torch.Tensor:
    """:func:`hungarian_iou` from precomputed overlaps. ``-> [K]`` float32."""
    n = overlap.n_samples
    return _matched_mean(overlap.iou(empty_empty)[:, :n, n:], max_matched)


def _matched_mean(iou: torch.Tensor, max_matched: int) -> torch.Tensor:
    """Mean IoU of the optimal matching of lcm-tiled sets, per structure ``[K, S, R] -> [K]``."""
    values = iou.numpy()
    n_s, n_r = values.shape[1], values.shape[2]
    size = math.lcm(n_s, n_r)
    if size > max_matched:
        raise ValueError(f"lcm({n_s}, {n_r}) = {size} exceeds max_matched={max_matched}")
    out = np.empty(values.shape[0])
    for k in range(values.shape[0]):
        tiled = np.tile(values[k], (size // n_s, size // n_r))
        rows, cols = linear_sum_assignment(np.nan_to_num(tiled, nan=1.0), maximize=True)
        matched = tiled[rows, cols]
        matched = matched[np.isfinite(matched)]
        out[k] = matched.mean() if matched.size else np.nan
    return torch.from_numpy(out).float()
