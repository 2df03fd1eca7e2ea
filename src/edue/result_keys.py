"""The result schema: every key of ``metrics.json``, ``per_case.csv``, the study's tables
and the report is built and parsed here, nowhere else.

A key is a metric name, then optionally a structure, then optionally one qualifier::

    key       = metric [ "/" structure [ "/" qualifier ] ]
              | image_metric [ "/" qualifier ]
    qualifier = "mean" | "std" | "n" | "ci_low" | "ci_high" | "alpha_" risk

An *image metric* (:data:`IMAGE_METRICS`, e.g. the shift gate's ``ood_score``) has one
value per image, not per structure, so its qualifier follows the name directly
(``ood_score/mean``).

* ``per_case.csv`` has one column ``metric/structure`` per :data:`PER_CASE_METRICS`
  metric (and the image-level scores and per-member Dice of methods with several
  members), e.g. ``soft_dice/disc``.
* ``metrics.json`` holds each per-case column's dataset ``mean`` and ``std``
  (``soft_dice/disc/mean``), the dataset-level metrics (``image_spearman/disc`` with
  ``/ci_low`` and ``/ci_high``, ``qc_auc/disc``, ``ece_soft_vote/disc``), the referral
  figures per risk level ``alpha`` (``referral_rate/disc/alpha_0.1``) and ``n_cases``.

Renaming a metric is a change of one constant here. Conventions of every metric:
docs/metrics.md; the schema itself: docs/results.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# ----------------------------------------------------------------------------- per case
SOFT_DICE = "soft_dice"
HARD_DICE = "hard_dice"
RATER_DICE = "rater_dice"
NLL = "nll"
BRIER = "brier"
MODEL_SV = "model_sv"
EXPERT_SV = "expert_sv"
PIXEL_NCC = "pixel_ncc"
GED = "ged"
HUNGARIAN_IOU = "hungarian_iou"
PAIRWISE_DICE_VAR = "pairwise_dice_var"
STRUCTURE_AREA = "structure_area"
BOUNDARY_LENGTH = "boundary_length"
HD95 = "hd95"
#: the image-level scores of a method with several members (``method.score``)
SV_VARIANCE = "sv_variance"
SV_BERNOULLI = "sv_bernoulli"
SV_COMBINED = "sv_combined"
_MEMBER_SOFT_DICE = "member_soft_dice_"

#: the distribution-shift gate's distance of an image (one per image, not per structure)
OOD_SCORE = "ood_score"
#: GED of :data:`MANY_SAMPLES` draws (methods that sample: ``ged_many/s/mean``, ``/std``)
GED_MANY = "ged_many"
MANY_SAMPLES = 100

#: Per-case metrics, in the column order of ``per_case.csv``.
PER_CASE_METRICS = (
    SOFT_DICE,
    HARD_DICE,
    RATER_DICE,
    HD95,
    NLL,
    BRIER,
    MODEL_SV,
    EXPERT_SV,
    PIXEL_NCC,
    GED,
    HUNGARIAN_IOU,
    PAIRWISE_DICE_VAR,
    STRUCTURE_AREA,
    BOUNDARY_LENGTH,
)

# ----------------------------------------------------------------------------- dataset
N_CASES = "n_cases"
IMAGE_SPEARMAN = "image_spearman"
IMAGE_PEARSON = "image_pearson"
IMAGE_PARTIAL_SPEARMAN = "image_partial_spearman"
IMAGE_SPEARMAN_PER_BOUNDARY = "image_spearman_per_boundary"
ECE_SOFT_VOTE = "ece_soft_vote"
ECE_RATER_PROBABILITY = "ece_rater_probability"
QC_AUC = "qc_auc"
QC_IDEAL_AUC = "qc_ideal_auc"
QC_RANDOM_AUC = "qc_random_auc"
QC_D_AUC = "qc_d_auc"
QC_N_POOR = "qc_n_poor"
QC_THRESHOLD = "qc_threshold"

# ----------------------------------------------------------------------------- referral
REFERRAL_RATE = "referral_rate"
REFERRAL_POOR_SHARE = "referral_poor_share"
REFERRAL_EXPECTED_RATE = "referral_expected_rate"
REFERRAL_ORACLE_RATE = "referral_oracle_rate"
REFERRAL_THRESHOLD = "referral_threshold"
REFERRAL_POOR_LEVEL = "referral_poor_level"
REFERRAL_POOR_RATE = "referral_poor_rate"
#: the calibration's delta and number of images, and the gate's share of flagged images
REFERRAL_DELTA = "referral_delta"
REFERRAL_N_CALIBRATION = "referral_n_calibration"
OOD_GATE_FLAG_RATE = "ood_gate_flag_rate"
SV_SLOPE = "sv_slope"
SV_INTERCEPT = "sv_intercept"
SV_MAE = "sv_mae"
SV_MAE_ISOTONIC = "sv_mae_isotonic"

#: metrics with one value per image or dataset, not per structure
IMAGE_METRICS = (N_CASES, OOD_SCORE, REFERRAL_DELTA, REFERRAL_N_CALIBRATION, OOD_GATE_FLAG_RATE)

# ----------------------------------------------------------------------------- study
#: EDUE's image-level Spearman over the reference method's (the study's claims)
SPEARMAN_RATIO = "spearman_ratio"
_DIFFERENCE = "_difference"
#: EDUE's pixel NCC less the reference method's (the study's claims)
PIXEL_NCC_DIFFERENCE = PIXEL_NCC + _DIFFERENCE

# ----------------------------------------------------------------------------- qualifiers
MEAN = "mean"
STD = "std"
N = "n"
CI_LOW = "ci_low"
CI_HIGH = "ci_high"
_ALPHA = "alpha_"
QUALIFIERS = (MEAN, STD, N, CI_LOW, CI_HIGH)


def key(metric: str, structure: str | None = None, qualifier: str | None = None) -> str:
    """``metric[/structure[/qualifier]]``.

    Raises:
        ValueError: a part contains ``/`` or is empty, a structure for an image metric,
            or a qualifier without a structure for a per-structure metric.
    """
    parts = [metric] if structure is None else [metric, structure]
    if metric in IMAGE_METRICS and structure is not None:
        raise ValueError(f"{metric} is one value per image: it has no structure")
    if qualifier is not None:
        if structure is None and metric not in IMAGE_METRICS:
            raise ValueError(f"a qualifier ({qualifier!r}) needs a structure")
        parts.append(qualifier)
    for part in parts:
        if not part or "/" in part:
            raise ValueError(f"bad result key part {part!r} in {parts}")
    return "/".join(parts)


def template(metric: str, qualifier: str | None = None) -> str:
    """A key with the structure left open, ``metric/{s}[/qualifier]``, filled by
    ``template.format(s=structure)`` (what report tables list per column)."""
    return key(metric, "{s}", qualifier)


def mean_key(metric: str, structure: str) -> str:
    """The dataset mean of a per-case metric: ``metric/structure/mean``."""
    return key(metric, structure, MEAN)


def alpha_qualifier(alpha: float) -> str:
    """``alpha_<a>`` with ``a`` written as ``%g`` (``0.1`` → ``alpha_0.1``)."""
    return f"{_ALPHA}{alpha:g}"


def alpha_key(metric: str, structure: str, alpha: float) -> str:
    """A referral figure at risk level ``alpha``: ``metric/structure/alpha_<a>``."""
    return key(metric, structure, alpha_qualifier(alpha))


def member_soft_dice(member: int) -> str:
    """The metric name of one member's soft Dice (``member_soft_dice_<i>``)."""
    return f"{_MEMBER_SOFT_DICE}{member}"


def difference(metric: str) -> str:
    """The name of a claim on a metric's difference, EDUE less the reference
    (``pixel_ncc`` → ``pixel_ncc_difference``)."""
    return metric + _DIFFERENCE


def ood_condition(kind: str, fraction: float) -> str:
    """The key of one distortion condition in ``ood.json``'s results: ``kind@fraction``."""
    return f"{kind}@{fraction:g}"


@dataclass(frozen=True)
class ResultKey:
    """A parsed key.

    Attributes:
        metric: the metric name.
        structure: the structure, or ``None`` for a dataset-wide value (``n_cases``).
        qualifier: ``mean``, ``std``, ``n``, ``ci_low``, ``ci_high``, ``alpha_<a>`` or
            ``None``.
    """

    metric: str
    structure: str | None = None
    qualifier: str | None = None

    @property
    def alpha(self) -> float | None:
        """The risk level of an ``alpha_<a>`` qualifier, else ``None``."""
        if self.qualifier is None or not self.qualifier.startswith(_ALPHA):
            return None
        return float(self.qualifier.removeprefix(_ALPHA))

    @property
    def member(self) -> int | None:
        """The member index of a ``member_soft_dice_<i>`` metric, else ``None``."""
        if not self.metric.startswith(_MEMBER_SOFT_DICE):
            return None
        return int(self.metric.removeprefix(_MEMBER_SOFT_DICE))

    def __str__(self) -> str:
        return key(self.metric, self.structure, self.qualifier)


def parse(text: str) -> ResultKey:
    """Split a key into its parts (the inverse of :func:`key`).

    Raises:
        ValueError: more than three parts, an empty part, or an unknown qualifier.
    """
    parts = text.split("/")
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"not a result key: {text!r} (metric[/structure[/qualifier]])")
    if parts[0] in IMAGE_METRICS:
        if len(parts) == 3 or (len(parts) == 2 and parts[1] not in QUALIFIERS):
            raise ValueError(f"{text!r}: {parts[0]} is one value per image (metric[/qualifier])")
        return ResultKey(parts[0], None, parts[1] if len(parts) == 2 else None)
    if len(parts) == 3:
        qualifier = parts[2]
        if qualifier not in QUALIFIERS and not _is_alpha(qualifier):
            raise ValueError(f"unknown qualifier {qualifier!r} in result key {text!r}")
        return ResultKey(parts[0], parts[1], qualifier)
    return ResultKey(parts[0], parts[1] if len(parts) == 2 else None)


def _is_alpha(qualifier: str) -> bool:
    if not qualifier.startswith(_ALPHA):
        return False
    try:
        return math.isfinite(float(qualifier.removeprefix(_ALPHA)))
    except ValueError:
        return False


def alphas(keys: Iterable[str], metric: str = REFERRAL_RATE) -> tuple[float, ...]:
    """The risk levels for which ``keys`` hold ``metric``, ascending."""
    found = set()
    for text in keys:
        try:
            parsed = parse(text)
        except ValueError:
            continue
        if parsed.metric == metric and parsed.alpha is not None:
            found.add(parsed.alpha)
    return tuple(sorted(found))


def structures(keys: Iterable[str], metric: str) -> list[str]:
    """The structures for which ``keys`` hold ``metric``, in first-seen order."""
    found: list[str] = []
    for text in keys:
        try:
            parsed = parse(text)
        except ValueError:
            continue
        if parsed.metric == metric and parsed.structure and parsed.structure not in found:
            found.append(parsed.structure)
    return found
