"""All metrics of one case, and their aggregation over a dataset.

:func:`evaluate_case` turns a ``(Prediction, MultiRaterCase)`` pair into one flat row of
floats keyed ``"metric/structure"`` (e.g. ``"soft_dice/disc"``).
:class:`EvaluationAccumulator` keeps those rows (CSV-able) plus streaming calibration
statistics and aggregates them into dataset-level numbers: means and standard
deviations, image-level correlations with bootstrap CIs, ECE and quality-control d-AUC.

Conventions: docs/method.md, section "Aggregation over a dataset".
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from edue import result_keys as rk
from edue.data.case import MultiRaterCase, expert_variance, soft_vote
from edue.metrics._utils import nan_mean_std
from edue.metrics.calibration import CalibrationAccumulator, brier, nll
from edue.metrics.disagreement import (
    boundary_length,
    correlation_entries,
    image_correlation,
    pixel_ncc,
    size_controlled_correlations,
)
from edue.metrics.ged import (
    LIDC_PRESET,
    SetOverlap,
    ged_from_overlap,
    hungarian_iou_from_overlap,
)
from edue.metrics.ood import pairwise_dice_variance_from_counts
from edue.metrics.qc import DEFAULT_POOR_THRESHOLDS, FALLBACK_POOR_THRESHOLD, poor_threshold_for
from edue.metrics.qc import qc_curve as _qc_curve
from edue.metrics.segmentation import (
    DEFAULT_THRESHOLDS,
    hard_dice,
    hausdorff95,
    mean_rater_dice,
    soft_dice,
)
from edue.prediction import Prediction

#: Per-case metrics of :func:`evaluate_case`, in column order.
CASE_METRICS: tuple[str, ...] = rk.PER_CASE_METRICS


def evaluate_case(
    prediction: Prediction,
    case: MultiRaterCase,
    spacing: Sequence[float] | None = None,
    hausdorff: bool = True,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ged_options: Mapping[str, object] = LIDC_PRESET,
) -> dict[str, float]:
    """Every per-case metric of one prediction, as a flat dict of floats.

    Targets: ``soft_dice`` vs the soft vote (multi-threshold); ``hard_dice`` of the mean
    at 0.5 vs the soft vote binarised at 0.5 (``> 0.5``); ``rater_dice`` the mean Dice
    against each rater; ``hd95`` between the same masks as ``hard_dice`` (nan if either
    is empty; in ``spacing``, else ``case.spacing``, else pixels); ``nll`` and ``brier``
    vs the soft vote; ``model_sv`` = ``prediction.sv``; ``expert_sv`` = sum of the expert
    variance map; ``pixel_ncc`` of ``prediction.uncertainty`` vs the expert variance;
    ``ged`` (``ged_options``, LIDC preset by default) and ``hungarian_iou`` of the members
    (binarised at 0.5) vs the rater masks; ``pairwise_dice_var`` across members
    (nan for a single member); ``structure_area`` = sum of the soft vote and
    ``boundary_length`` = boundary pixels of the soft vote binarised at 0.5 (the sizes
    the size-controlled correlations control for). With two members or more, also
    ``member_soft_dice_i`` (member ``i`` alone, in the method's order: EDUE's heads
    coarse → final) and the image-level scores ``sv_variance``, ``sv_bernoulli`` and
    ``sv_combined`` (:attr:`~edue.prediction.Prediction.score`).

    Args:
        prediction: members ``[S, K, *spatial]``.
        case: the case with rater masks ``[R, K, *spatial]``.
        spacing: physical pixel size for HD95, overriding ``case.spacing``.
        hausdorff: compute HD95 (the slowest metric).
        thresholds: thresholds of the soft Dice.
        ged_options: GED conventions (``empty_empty``, ``include_self_pairs``,
            ``squared``; see :mod:`edue.metrics.ged`); ``empty_empty`` also applies to
            the Hungarian IoU.

    Returns:
        ``{"metric/structure": value}`` for the metrics of :data:`CASE_METRICS`.
    """
    masks = torch.from_numpy(np.ascontiguousarray(case.masks))
    members = prediction.members.detach().cpu()
    if members.shape[1:] != masks.shape[1:]:
        raise ValueError(
            f"case {case.case_id}: prediction members {tuple(members.shape)} do not match "
            f"rater masks {tuple(masks.shape)} in [K, *spatial]"
        )
    prob = prediction.mean.detach().cpu()
    vote = soft_vote(masks)
    variance = expert_variance(masks)
    reference = vote > 0.5
    overlap = SetOverlap.of(members, masks)  # shared by GED, Hungarian IoU and member Dice
    n = overlap.n_samples
    values: dict[str, torch.Tensor] = {
        "soft_dice": soft_dice(prob, vote, thresholds),
        "hard_dice": hard_dice(prob, reference),
        "rater_dice": mean_rater_dice(prob, masks),
        "nll": nll(prob, vote),
        "brier": brier(prob, vote),
        "model_sv": prediction.sv.detach().cpu(),
        "expert_sv": variance.flatten(1).sum(1),
        "pixel_ncc": pixel_ncc(prediction.uncertainty, variance),
        "ged": ged_from_overlap(overlap, **ged_options),  # type: ignore[arg-type]
        "hungarian_iou": hungarian_iou_from_overlap(
            overlap,
            ged_options.get("empty_empty", 1.0),  # type: ignore[arg-type]
        ),
        "pairwise_dice_var": pairwise_dice_variance_from_counts(overlap.intersection[:, :n, :n]),
        "structure_area": vote.flatten(1).sum(1).double(),
        "boundary_length": boundary_length(reference),
    }
    if hausdorff:
        values["hd95"] = hausdorff95(prob > 0.5, reference, spacing or case.spacing)
    row: dict[str, float] = {}
    for metric in CASE_METRICS:
        if metric in values:
            for name, value in zip(case.structures, values[metric].tolist(), strict=True):
                row[rk.key(metric, name)] = float(value)
    if members.shape[0] >= 2:  # each member alone, and every image-level score
        extra = {
            f"member_soft_dice_{i}": soft_dice(member, vote, thresholds)
            for i, member in enumerate(members)
        }
        extra["sv_variance"] = prediction.variance.flatten(1).sum(1)
        extra["sv_bernoulli"] = prediction.bernoulli.flatten(1).sum(1)
        extra["sv_combined"] = extra["sv_variance"] + extra["sv_bernoulli"]
        for metric, tensor in extra.items():
            for name, value in zip(case.structures, tensor.tolist(), strict=True):
                row[rk.key(metric, name)] = float(value)
    return row


class EvaluationAccumulator:
    """Evaluates ``(prediction, case)`` pairs and aggregates them over a dataset.

    Args:
        spacing: HD95 spacing overriding each case's own.
        hausdorff: compute HD95 per case.
        n_bins: bins of the calibration accumulators.
        poor_thresholds: quality-control Dice thresholds per structure name.
        fallback_poor_threshold: for structures not in ``poor_thresholds``.
        qc_dice: per-case metric whose value decides "poor" (model soft Dice by default).
        n_boot: bootstrap resamples of the correlation CIs.
        seed: bootstrap seed.
        **case_options: passed to :func:`evaluate_case` (``thresholds``, ``ged_options``).
    """

    def __init__(
        self,
        spacing: Sequence[float] | None = None,
        hausdorff: bool = True,
        n_bins: int = 15,
        poor_thresholds: Mapping[str, float] = DEFAULT_POOR_THRESHOLDS,
        fallback_poor_threshold: float = FALLBACK_POOR_THRESHOLD,
        qc_dice: str = "soft_dice",
        n_boot: int = 1000,
        seed: int = 0,
        **case_options: object,
    ) -> None:
        self.spacing, self.hausdorff, self.n_bins = spacing, hausdorff, n_bins
        self.poor_thresholds = poor_thresholds
        self.fallback_poor_threshold = fallback_poor_threshold
        self.qc_dice, self.n_boot, self.seed = qc_dice, n_boot, seed
        self.case_options = case_options
        self.reset()

    def reset(self) -> None:
        """Forget all cases."""
        self.rows: list[dict[str, object]] = []
        self.structures: tuple[str, ...] | None = None
        self.calibration_soft_vote = CalibrationAccumulator(self.n_bins)
        self.calibration_rater_probability = CalibrationAccumulator(self.n_bins)

    def update(self, prediction: Prediction, case: MultiRaterCase) -> dict[str, object]:
        """Evaluate one case, store its row and update the calibration statistics.

        Returns:
            The row: ``case_id``, ``method`` and the metrics of :func:`evaluate_case`.
        """
        if self.structures is None:
            self.structures = tuple(case.structures)
            self.calibration_soft_vote.structures = self.structures
            self.calibration_rater_probability.structures = self.structures
        elif tuple(case.structures) != self.structures:
            raise ValueError(
                f"case {case.case_id}: structures {case.structures} differ from {self.structures}"
            )
        metrics = evaluate_case(
            prediction,
            case,
            self.spacing,
            self.hausdorff,
            **self.case_options,  # type: ignore[arg-type]
        )
        row: dict[str, object] = {"case_id": case.case_id, "method": prediction.method, **metrics}
        self.rows.append(row)
        prob = prediction.mean.detach().cpu()
        self.calibration_soft_vote.update(prob, soft_vote(torch.from_numpy(case.masks)))
        if case.rater_probability is not None:
            analytic = torch.from_numpy(case.rater_probability)
            self.calibration_rater_probability.update(prob, analytic)
        return row

    @property
    def n_cases(self) -> int:
        """Number of cases evaluated."""
        return len(self.rows)

    def column(self, key: str) -> np.ndarray:
        """All cases' values of one metric column, e.g. ``"soft_dice/disc"`` ``[N]``."""
        return np.array([row.get(key, np.nan) for row in self.rows], dtype=np.float64)

    def _metric_keys(self) -> list[str]:
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in ("case_id", "method") and k not in keys)
        return keys

    def qc_curve(self, structure: str) -> dict[str, object]:
        """Quality-control curve of one structure: model SV vs ``qc_dice``."""
        threshold = poor_threshold_for(
            structure, self.poor_thresholds, self.fallback_poor_threshold
        )
        return _qc_curve(
            self.column(rk.key(rk.MODEL_SV, structure)),
            self.column(f"{self.qc_dice}/{structure}"),
            threshold,
        )

    def aggregate(self) -> dict[str, float]:
        """Dataset-level summary as a flat dict of floats.

        Keys (``m`` a per-case metric, ``s`` a structure): ``n_cases``; ``m/s/mean``,
        ``m/s/std`` (nan-aware, population std); ``image_spearman/s`` and
        ``image_pearson/s`` with ``/ci_low``, ``/ci_high``; ``image_partial_spearman/s``
        (controlling for the structure's area) and ``image_spearman_per_boundary/s``
        (:func:`~edue.metrics.disagreement.size_controlled_correlations`);
        ``ece_soft_vote/s`` and, when some case had an analytic rater probability,
        ``ece_rater_probability/s`` (over those cases only); ``qc_auc/s``,
        ``qc_ideal_auc/s``, ``qc_random_auc/s``, ``qc_d_auc/s``, ``qc_n_poor/s``,
        ``qc_threshold/s``.
        """
        if not self.rows or self.structures is None:
            raise RuntimeError("EvaluationAccumulator has no data: call update() first")
        out: dict[str, float] = {"n_cases": float(self.n_cases)}
        for key in self._metric_keys():
            mean, std, _ = nan_mean_std(self.column(key))
            out[f"{key}/mean"], out[f"{key}/std"] = mean, std
        for name in self.structures:
            corr = image_correlation(
                self.column(rk.key(rk.MODEL_SV, name)),
                self.column(rk.key(rk.EXPERT_SV, name)),
                n_boot=self.n_boot,
                seed=self.seed,
            )
            out.update(correlation_entries(corr, name))
            controlled = size_controlled_correlations(
                self.column(rk.key(rk.MODEL_SV, name)),
                self.column(rk.key(rk.EXPERT_SV, name)),
                self.column(rk.key(rk.STRUCTURE_AREA, name)),
                self.column(rk.key(rk.BOUNDARY_LENGTH, name)),
            )
            out[rk.key(rk.IMAGE_PARTIAL_SPEARMAN, name)] = controlled["partial_spearman"]
            out[rk.key(rk.IMAGE_SPEARMAN_PER_BOUNDARY, name)] = controlled["spearman_per_boundary"]
            qc = self.qc_curve(name)
            for part in ("auc", "ideal_auc", "random_auc", "d_auc", "n_poor"):
                out[f"qc_{part}/{name}"] = float(qc[part])  # type: ignore[arg-type]
            out[rk.key(rk.QC_THRESHOLD, name)] = poor_threshold_for(
                name, self.poor_thresholds, self.fallback_poor_threshold
            )
        out.update(self.calibration_soft_vote.aggregate("ece_soft_vote"))
        if self.calibration_rater_probability.n_pixels.numel():
            out.update(self.calibration_rater_probability.aggregate("ece_rater_probability"))
        return out

    def curves(self) -> dict[str, dict[str, object]]:
        """Arrays for figures: QC curves and reliability diagrams per structure."""
        if self.structures is None:
            raise RuntimeError("EvaluationAccumulator has no data: call update() first")
        out: dict[str, dict[str, object]] = {"qc": {s: self.qc_curve(s) for s in self.structures}}
        sources = {"reliability_soft_vote": self.calibration_soft_vote}
        if self.calibration_rater_probability.n_pixels.numel():
            sources["reliability_rater_probability"] = self.calibration_rater_probability
        for label, acc in sources.items():
            diagram = acc.reliability()
            edges = diagram.pop("bin_edges")
            out[label] = {
                s: {"bin_edges": edges, **{key: value[k] for key, value in diagram.items()}}
                for k, s in enumerate(self.structures)
            }
        return out

    def write_csv(self, path: str | Path) -> Path:
        """Write the per-case rows to a CSV file (one row per case) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = ["case_id", "method", *self._metric_keys()]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        return path
