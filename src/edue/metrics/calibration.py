"""Probabilistic quality: negative log-likelihood, Brier score and calibration.

Targets may be soft: the raters' soft vote (fraction of raters marking a pixel) or, for
synthetic data, the analytic probability that a rater marks it. All functions work per
structure on ``[K, *spatial]`` tensors (2D or 3D) and return ``[K]``.

Reliability convention (binary, "probability of the positive class"): pixels are binned
by the predicted probability ``p`` itself, not by the confidence ``max(p, 1 − p)``. In a
bin, the *mean predicted probability* is compared with the *observed frequency*, the mean
target (for binary targets, the fraction of positives; for soft targets, the mean soft
label). ``ECE = Σ_b (n_b / N) · |mean_p_b − mean_target_b|``. Bins are ``n_bins`` equal
intervals of [0, 1], left-closed ``[b_i, b_{i+1})``, the last one closed ``[b_{n−1}, 1]``.

For binary targets this is exactly torchmetrics' ``binary_calibration_error`` (which also
bins the probability of the positive class), except that torchmetrics puts ``p == 1.0``
into an extra bin of its own while here it joins the last bin.

Conventions: docs/method.md, section "Calibration: NLL, Brier and ECE".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edue import result_keys as rk
from edue.metrics._utils import as_tensor
from edue.prediction import structure_names

NLL_EPS = 1e-6


def nll(prob: torch.Tensor, target: torch.Tensor, eps: float = NLL_EPS) -> torch.Tensor:
    """Binary cross-entropy with (soft) targets, mean over pixels, per structure.

    ``NLL = −mean[t · log p + (1 − t) · log(1 − p)]`` with ``p`` clamped to
    ``[eps, 1 − eps]`` (so a confident mistake costs at most ``−log(eps) ≈ 13.8`` nats).
    With soft targets the minimum, reached at ``p = t``, is the entropy of ``t``, not 0.

    Args:
        prob: predicted probability ``[K, *spatial]``.
        target: target probability ``[K, *spatial]`` in [0, 1] (soft vote or binary).
        eps: clamping of ``p``.

    Returns:
        ``[K]`` mean NLL in nats.
    """
    p = as_tensor(prob, torch.float64).clamp(eps, 1 - eps)
    t = as_tensor(target, torch.float64)
    _check(p, t)
    return F.binary_cross_entropy(p, t, reduction="none").flatten(1).mean(1).float()


def brier(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Brier score ``mean (p − t)²`` per structure. ``[K, *sp], [K, *sp] -> [K]``."""
    p = as_tensor(prob, torch.float64)
    t = as_tensor(target, torch.float64)
    _check(p, t)
    return (p - t).pow(2).flatten(1).mean(1).float()


class CalibrationAccumulator:
    """Streaming reliability statistics: memory is ``O(K · n_bins)``, not ``O(pixels)``.

    Per structure and bin it keeps the pixel count, the sum of predicted probabilities
    and the sum of targets (float64), so cases of any size and number can be added.

    Args:
        n_bins: number of equal-width probability bins on [0, 1].
        structures: names of the ``K`` structures (for :meth:`aggregate` keys).

    Example:
        >>> acc = CalibrationAccumulator(n_bins=15)
        >>> for prob, soft_vote in cases:            # doctest: +SKIP
        ...     acc.update(prob, soft_vote)
        >>> acc.ece()                                # doctest: +SKIP
    """

    def __init__(self, n_bins: int = 15, structures: Sequence[str] | None = None) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)
        self.structures = None if structures is None else tuple(structures)
        self.bin_edges = torch.linspace(0.0, 1.0, self.n_bins + 1, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._count: torch.Tensor | None = None
        self._sum_prob: torch.Tensor | None = None
        self._sum_target: torch.Tensor | None = None

    @property
    def n_pixels(self) -> torch.Tensor:
        """Pixels added so far per structure ``[K]`` (empty before the first update)."""
        if self._count is None:
            return torch.zeros(0, dtype=torch.float64)
        return self._count.sum(1)

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        """Add one case.

        Args:
            prob: predicted probability ``[K, *spatial]`` in [0, 1].
            target: binary or soft target ``[K, *spatial]`` in [0, 1].
        """
        p = as_tensor(prob, torch.float64).flatten(1)
        t = as_tensor(target, torch.float64).flatten(1)
        _check(p, t)
        k, b = p.shape[0], self.n_bins
        if self._count is None:
            self._count = torch.zeros(k, b, dtype=torch.float64)
            self._sum_prob = torch.zeros(k, b, dtype=torch.float64)
            self._sum_target = torch.zeros(k, b, dtype=torch.float64)
        elif self._count.shape[0] != k:
            raise ValueError(f"expected {self._count.shape[0]} structures, got {k}")
        count, sum_prob, sum_target = self._require()
        index = torch.bucketize(p.clamp(0.0, 1.0), self.bin_edges[1:-1], right=True)
        flat = (index + torch.arange(k).unsqueeze(1) * b).flatten()
        size = k * b
        count += torch.bincount(flat, minlength=size).view(k, b).double()
        sum_prob += torch.bincount(flat, weights=p.flatten(), minlength=size).view(k, b)
        sum_target += torch.bincount(flat, weights=t.flatten(), minlength=size).view(k, b)

    def _require(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._count is None or self._sum_prob is None or self._sum_target is None:
            raise RuntimeError("CalibrationAccumulator has no data: call update() first")
        return self._count, self._sum_prob, self._sum_target

    def reliability(self) -> dict[str, torch.Tensor]:
        """Reliability-diagram data per structure.

        Returns:
            ``bin_edges [n_bins + 1]``; ``mean_predicted``, ``observed_frequency`` and
            ``counts`` ``[K, n_bins]`` (the two means are nan in empty bins).
        """
        count, sum_prob, sum_target = self._require()
        safe = count.clamp_min(1)
        empty = count == 0
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {
            "bin_edges": self.bin_edges.clone(),
            "mean_predicted": torch.where(empty, nan, sum_prob / safe),
            "observed_frequency": torch.where(empty, nan, sum_target / safe),
            "counts": count.clone(),
        }

    def ece(self) -> torch.Tensor:
        """Expected calibration error per structure ``[K]`` (float64)."""
        count, sum_prob, sum_target = self._require()
        # n_b/N · |S_p/n_b − S_t/n_b| = |S_p − S_t| / N, and empty bins contribute 0.
        return (sum_prob - sum_target).abs().sum(1) / count.sum(1).clamp_min(1)

    def aggregate(self, prefix: str = "ece") -> dict[str, float]:
        """``{rk.key(prefix, structure): ece}`` as plain floats."""
        values = self.ece()
        names = structure_names(values.shape[0], self.structures)
        return {rk.key(prefix, name): float(v) for name, v in zip(names, values, strict=True)}


def expected_calibration_error(
    prob: torch.Tensor, target: torch.Tensor, n_bins: int = 15
) -> torch.Tensor:
    """ECE of one set of probabilities (see the module conventions). ``-> [K]``."""
    acc = CalibrationAccumulator(n_bins)
    acc.update(prob, target)
    return acc.ece()


def _check(p: torch.Tensor, t: torch.Tensor) -> None:
    if p.shape != t.shape:
        raise ValueError(f"prob and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
