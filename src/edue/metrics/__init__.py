"""Metrics: functions of ``Prediction`` / ``MultiRaterCase`` (or plain tensors) only.

Every metric is a plain function returning one value per structure ``[K]``; those that
aggregate over a dataset also exist as accumulating classes (``update`` / ``aggregate``),
in the manner of MONAI's ``compute_dice`` / ``DiceMetric``. Inputs may be 2D
``[K, H, W]`` or 3D ``[K, D, H, W]``.

Modules: :mod:`~edue.metrics.segmentation` (Dice, HD95), :mod:`~edue.metrics.calibration`
(NLL, Brier, ECE), :mod:`~edue.metrics.disagreement` (image- and pixel-level correlation
with expert disagreement), :mod:`~edue.metrics.ged` (GED, Hungarian IoU),
:mod:`~edue.metrics.qc` (quality-control curves), :mod:`~edue.metrics.ood` (member
agreement and AUROC under the distortions of :mod:`edue.data.distortions`),
:mod:`~edue.metrics.cost` (parameters, time), :mod:`~edue.metrics.risk_control`
(referral thresholds with a finite-sample guarantee), :mod:`~edue.metrics.expert_units`
(the isotonic map to the experts' units) and :mod:`~edue.metrics.summary` (:func:`evaluate_case`,
:class:`EvaluationAccumulator`).

Conventions: docs/method.md, section "Metrics".
"""

from edue.data.distortions import (  # the OOD study's input distortions, kept here too
    DISTORTIONS,
    distort,
    distort_dataset,
    gaussian_blur,
    gaussian_noise,
    hue_shift,
)
from edue.metrics.calibration import (
    CalibrationAccumulator,
    brier,
    expected_calibration_error,
    nll,
)
from edue.metrics.cost import count_parameters, time_per_image
from edue.metrics.disagreement import DisagreementMetric, image_correlation, pixel_ncc
from edue.metrics.expert_units import (
    ExpertScale,
    IsotonicMap,
    linear_fit,
    mean_absolute_error,
    percentile_of,
)
from edue.metrics.ged import LIDC_PRESET, ged, ged_lidc, hungarian_iou, pairwise_iou
from edue.metrics.ood import pairwise_dice_variance, separation_auroc
from edue.metrics.qc import (
    DEFAULT_POOR_THRESHOLDS,
    FALLBACK_POOR_THRESHOLD,
    poor_threshold_for,
    qc_curve,
)
from edue.metrics.risk_control import (
    ReferralThreshold,
    binomial_p_value,
    learn_then_test,
    min_accepted,
    oracle_referral_rate,
    referral_outcome,
    threshold_grid,
)
from edue.metrics.segmentation import (
    DEFAULT_THRESHOLDS,
    binary_dice,
    dice_per_rater,
    hard_dice,
    hausdorff95,
    mean_rater_dice,
    soft_dice,
)
from edue.metrics.summary import CASE_METRICS, EvaluationAccumulator, evaluate_case

__all__ = [
    "CASE_METRICS",
    "DEFAULT_POOR_THRESHOLDS",
    "DEFAULT_THRESHOLDS",
    "DISTORTIONS",
    "FALLBACK_POOR_THRESHOLD",
    "LIDC_PRESET",
    "CalibrationAccumulator",
    "DisagreementMetric",
    "EvaluationAccumulator",
    "ExpertScale",
    "IsotonicMap",
    "ReferralThreshold",
    "binary_dice",
    "binomial_p_value",
    "brier",
    "count_parameters",
    "dice_per_rater",
    "distort",
    "distort_dataset",
    "evaluate_case",
    "expected_calibration_error",
    "gaussian_blur",
    "gaussian_noise",
    "ged",
    "ged_lidc",
    "hard_dice",
    "hausdorff95",
    "hue_shift",
    "hungarian_iou",
    "image_correlation",
    "learn_then_test",
    "linear_fit",
    "mean_absolute_error",
    "mean_rater_dice",
    "min_accepted",
    "nll",
    "oracle_referral_rate",
    "pairwise_dice_variance",
    "pairwise_iou",
    "percentile_of",
    "pixel_ncc",
    "poor_threshold_for",
    "qc_curve",
    "referral_outcome",
    "separation_auroc",
    "soft_dice",
    "threshold_grid",
    "time_per_image",
]
