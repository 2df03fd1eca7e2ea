"""``edue evaluate``: every metric of one trained method on one dataset split.

Writes into the output folder:

* ``metrics.json`` — aggregated metrics, parameters, inference time, provenance;
* ``per_case.csv`` — one row per case;
* ``curves.json`` — quality-control curves and reliability diagrams;
* ``ood.json`` — the distortion study (pairwise-Dice variance and SV per image at
  0 / 50 / 100 % distortion, and how well each separates distorted from clean; with a
  calibration also the distribution-shift gate's score and its AUROC);
* ``samples.npz`` — member stacks of a few fixed cases for the comparison panels.

With a calibration (``calibration.json`` beside the checkpoint, a file given, or one
fitted on the run's validation split during the evaluation), ``metrics.json`` also
holds the referral outcome on the evaluated images for every ``alpha`` of
:data:`~edue.engine.referral.calibrate.REPORTED_ALPHAS` (:func:`referral_metrics`) and the SV's
calibration in the experts' units.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edue import result_keys as rk
from edue.data.case import MultiRaterCase
from edue.data.pipeline import load_cases
from edue.engine.checkpoint import run_dir_of
from edue.engine.evaluation.shift import ood_study
from edue.engine.inference.predictor import Predictor
from edue.engine.referral.calibrate import MAX_TRAIN_IMAGES, REPORTED_ALPHAS, fit_calibration
from edue.engine.referral.calibration import Calibration, find_calibration
from edue.errors import DataError
from edue.io import atomic_path, write_json, write_npz
from edue.metrics import EvaluationAccumulator
from edue.metrics.cost import time_per_image
from edue.metrics.expert_units import linear_fit, mean_absolute_error
from edue.metrics.ged import ged_lidc
from edue.metrics.qc import (
    DEFAULT_POOR_THRESHOLDS,
    check_structure_names,
    poor_threshold_for,
)
from edue.metrics.risk_control import oracle_referral_rate, referral_outcome
from edue.prediction import Prediction

N_SAMPLES = 4


def measure_inference(predictor: Predictor, image: np.ndarray, repeats: int = 5) -> float:
    """Median seconds of one single-image prediction (after two warm-up passes)."""
    return time_per_image(
        lambda x: predictor.predict(x),  # type: ignore[arg-type]
        image,
        warmup=2,
        repeats=repeats,
        n_images=1,
    )


def _save_samples(path: Path, cases: list[MultiRaterCase], preds: list[Prediction]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for i, (case, pred) in enumerate(zip(cases, preds, strict=True)):
        arrays[f"{i}/image"] = case.image
        arrays[f"{i}/masks"] = case.masks
        arrays[f"{i}/members"] = pred.members.numpy().astype(np.float16)
        if pred.segmentation is not None:
            arrays[f"{i}/segmentation"] = pred.segmentation.numpy().astype(np.float16)
        arrays[f"{i}/score"] = np.array(pred.score)
        arrays[f"{i}/case_id"] = np.array(case.case_id)
    arrays["structures"] = np.array(list(cases[0].structures))
    write_npz(path, **arrays)  # type: ignore[arg-type]


def evaluate_predictor(
    predictor: Predictor,
    cases: Sequence[MultiRaterCase],
    out_dir: str | Path,
    ood: bool = True,
    seed: int = 0,
    hausdorff: bool = True,
    extra: dict[str, Any] | None = None,
    poor_thresholds: Mapping[str, float] | None = None,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Evaluate on ``cases`` and write every output; returns ``metrics.json``'s content.

    ``poor_thresholds`` (structure -> soft Dice) override the quality-control defaults
    of :data:`edue.metrics.qc.DEFAULT_POOR_THRESHOLDS` for the structures they name; the
    referral outcome (with ``calibration``) uses the same levels.
    """
    if not cases:
        raise DataError("no case to evaluate (an empty list of cases was given)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = {**DEFAULT_POOR_THRESHOLDS, **(poor_thresholds or {})}
    acc = EvaluationAccumulator(hausdorff=hausdorff, seed=seed, poor_thresholds=thresholds)
    gate = calibration.gate if calibration is not None else None
    sample_cases: list[MultiRaterCase] = []
    sample_preds: list[Prediction] = []
    gate_scores: list[float] = []
    started = time.perf_counter()
    tap = gate.modules if gate is not None else None
    for case, pred, row in predictor.predict_cases_with_features(list(cases), tap=tap):
        record = acc.update(pred, case)
        if gate is not None:
            score = float("nan") if row is None else float(gate.score(row[None])[0])
            record[rk.OOD_SCORE] = score
            gate_scores.append(score)
        if len(sample_cases) < N_SAMPLES:
            sample_cases.append(case)
            sample_preds.append(pred)
    seconds = time.perf_counter() - started
    aggregated = acc.aggregate()
    if predictor.method.sampled:
        aggregated.update(many_sample_ged(predictor, cases))
    referral: dict[str, Any] | None = None
    if calibration is not None:
        flags = gate.flags(gate_scores) if gate is not None else None
        aggregated.update(referral_metrics(calibration, acc, thresholds, flags))
        referral = {
            "calibration": str(calibration.path) if calibration.path else None,
            "split": calibration.split,
            "n_calibration": len(calibration.case_ids),
            "alpha": calibration.alpha,
            "delta": calibration.delta,
            "alphas": list(_alphas(calibration)),
            "poor": {s: poor_threshold_for(s, thresholds) for s in calibration.names},
            "gate": gate.summary() if gate is not None else None,
            "notes": calibration.notes,
        }
    metrics: dict[str, Any] = {
        "method": predictor.name,
        "n_members": predictor.method.n_members,
        "n_passes": predictor.n_passes,
        "parameters": predictor.n_parameters(),
        "seconds_per_image": measure_inference(predictor, cases[0].image),
        "evaluation_seconds": seconds,
        "structures": list(cases[0].structures),
        "device": str(predictor.device),
        "training": dict(predictor.training),
        **(extra or {}),
        "referral": referral,
        "metrics": aggregated,
    }
    with atomic_path(out / "per_case.csv") as tmp:
        acc.write_csv(tmp)
    write_json(out / "curves.json", acc.curves())
    _save_samples(out / "samples.npz", sample_cases, sample_preds)
    if ood:
        write_json(out / "ood.json", ood_study(predictor, cases, seed=seed, gate=gate))
    write_json(out / "metrics.json", metrics)
    return metrics


def many_sample_ged(
    predictor: Predictor, cases: Sequence[MultiRaterCase], samples: int = rk.MANY_SAMPLES
) -> dict[str, float]:
    """GED of ``samples`` draws per image, for a method that samples (``method.sampled``):
    the LIDC literature reports GED with 16 and with 100 samples.

    The method's ``samples`` is set for the pass and restored after it; the members are
    drawn from the same seeded generator as at prediction (the first draws are the
    usual members). Conventions: :data:`edue.metrics.ged.LIDC_PRESET`.

    Returns:
        ``ged_many/s/mean`` and ``ged_many/s/std`` over the images, per structure.
    """
    method = predictor.method
    before = int(getattr(method, "samples"))  # noqa: B009 - a sampling method's attribute
    setattr(method, "samples", samples)  # noqa: B010
    values: list[np.ndarray] = []
    try:
        for case, pred, _ in predictor.predict_cases_with_features(list(cases)):
            raters = torch.from_numpy(np.asarray(case.masks, dtype=np.float32))
            values.append(ged_lidc(pred.members.float().cpu(), raters).numpy())
    finally:
        setattr(method, "samples", before)  # noqa: B010
    table = np.stack(values)  # [images, K]
    out: dict[str, float] = {}
    for k, structure in enumerate(cases[0].structures):
        column = table[:, k]
        out[rk.key(rk.GED_MANY, structure, rk.MEAN)] = float(np.nanmean(column))
        out[rk.key(rk.GED_MANY, structure, rk.STD)] = float(np.nanstd(column))
    return out


def _alphas(calibration: Calibration) -> tuple[float, ...]:
    return tuple(sorted({*REPORTED_ALPHAS, calibration.alpha}))


def referral_metrics(
    calibration: Calibration,
    acc: EvaluationAccumulator,
    poor_thresholds: Mapping[str, float],
    gate_flags: np.ndarray | None = None,
) -> dict[str, float]:
    """The referral outcome and the SV's calibration on the evaluated images.

    For every ``alpha`` of :data:`REPORTED_ALPHAS` and the calibration's own, the
    threshold certified on the calibration images (Learn-then-Test at the calibration's
    ``delta``, poor levels from ``poor_thresholds``) is applied to the evaluated images,
    the gate's flags referring images too.

    Keys (``s`` a structure, ``a`` an alpha as ``f"{a:g}"``):
    ``referral_rate/s/alpha_a`` (share referred), ``referral_poor_share/s/alpha_a``
    (share poor among the accepted; nan when none is), ``referral_expected_rate/s/alpha_a``
    (the calibration images' referral rate), ``referral_oracle_rate/s/alpha_a`` (the
    least any threshold on the SV could refer here, in hindsight),
    ``referral_threshold/s/alpha_a``; ``referral_poor_rate/s`` and
    ``referral_poor_level/s``; the SV against the experts' SV: ``sv_slope/s``,
    ``sv_intercept/s``, ``sv_mae/s`` and ``sv_mae_isotonic/s`` (after the isotonic map
    of the calibration images); ``referral_delta``, ``referral_n_calibration`` and, with
    a gate, ``ood_gate_flag_rate`` (share of the evaluated images it flags).
    """
    out: dict[str, float] = {
        rk.REFERRAL_DELTA: calibration.delta,
        rk.REFERRAL_N_CALIBRATION: float(len(calibration.case_ids)),
    }
    if gate_flags is not None:
        out[rk.OOD_GATE_FLAG_RATE] = float(np.mean(gate_flags)) if len(gate_flags) else np.nan
    for structure in calibration.structures:
        s = structure.name
        sv = acc.column(rk.key(rk.MODEL_SV, s))
        expert = acc.column(rk.key(rk.EXPERT_SV, s))
        level = poor_threshold_for(s, poor_thresholds)
        poor = acc.column(rk.key(rk.SOFT_DICE, s)) < level
        out[rk.key(rk.REFERRAL_POOR_LEVEL, s)] = level
        out[rk.key(rk.REFERRAL_POOR_RATE, s)] = float(poor.mean())
        for alpha in _alphas(calibration):
            choice = structure.threshold_for(alpha, calibration.delta, level)
            outcome = referral_outcome(sv, poor, choice.threshold, gate_flags)
            a = rk.alpha_qualifier(alpha)
            out[rk.key(rk.REFERRAL_RATE, s, a)] = outcome["referral_rate"]
            out[rk.key(rk.REFERRAL_POOR_SHARE, s, a)] = outcome["poor_share_accepted"]
            out[rk.key(rk.REFERRAL_EXPECTED_RATE, s, a)] = choice.referral_rate
            out[rk.key(rk.REFERRAL_ORACLE_RATE, s, a)] = oracle_referral_rate(sv, poor, alpha)
            out[rk.key(rk.REFERRAL_THRESHOLD, s, a)] = choice.threshold
        slope, intercept = linear_fit(expert, sv)
        out[rk.key(rk.SV_SLOPE, s)], out[rk.key(rk.SV_INTERCEPT, s)] = slope, intercept
        out[rk.key(rk.SV_MAE, s)] = mean_absolute_error(sv, expert)
        out[rk.key(rk.SV_MAE_ISOTONIC, s)] = mean_absolute_error(
            structure.scale.expected(sv), expert
        )
    return out


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    data: str | None = None,
    data_format: str | None = None,
    split: str = "test",
    all_cases: bool = False,
    ood: bool = False,
    poor_thresholds: Mapping[str, float] | None = None,
    device: str = "auto",
    calibration: str | Path | None = None,
    use_calibration: bool = True,
    calibration_split: str = "val",
) -> dict[str, Any]:
    """Evaluate a checkpoint on one subset of a dataset; returns ``metrics.json``'s content.

    Args:
        checkpoint: checkpoint file or run folder.
        out_dir: evaluation folder to write.
        data: dataset root (default: the training configuration's).
        data_format: reader name (default: the training configuration's).
        split: subset of the run's split (``split.json`` of the run folder when ``data``
            is not given, else the configured split of ``data``).
        all_cases: evaluate every case of the dataset (``split`` only names the subset).
        ood: also run the distortion study.
        poor_thresholds: quality-control thresholds (structure -> soft Dice); with a
            calibration file, its own poor levels come first and these override them.
        device: ``auto``, ``cpu`` or ``cuda``.
        calibration: a calibration file (it must exist); by default the
            ``calibration.json`` beside the checkpoint, else one fitted in memory on
            ``calibration_split`` (and the training split) when the run has it and
            neither ``data`` nor ``all_cases`` is given.
        use_calibration: ``False``: no referral outcome.
        calibration_split: the split of that in-memory calibration.

    Raises:
        ConfigError: the subset is empty or unknown.
        EdueError: a calibration file that is missing (when given), unreadable,
            malformed or fitted for another model.
    """
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    check_structure_names(poor_thresholds or {}, predictor.structures, "--poor")
    cases = load_cases(
        predictor.config.data, [split], run_dir_of(checkpoint), data, data_format, all_cases
    )[split]
    found = None
    levels = dict(poor_thresholds or {})
    if use_calibration:
        found = find_calibration(checkpoint, calibration)
        if found is not None:
            found.check_model(predictor)
            levels = {**found.poor_levels, **levels}
        elif not data and not all_cases and calibration_split != split:
            found = _calibrate_in_memory(predictor, checkpoint, calibration_split, levels)
    return evaluate_predictor(
        predictor,
        cases,
        out_dir,
        ood=ood,
        extra={"checkpoint": str(checkpoint), "split": split},
        poor_thresholds=levels,
        calibration=found,
    )


def _calibrate_in_memory(
    predictor: Predictor, checkpoint: str | Path, split: str, levels: Mapping[str, float]
) -> Calibration | None:
    """A calibration on the run's ``split`` (``None`` when the run has no such split)."""
    from edue.errors import ConfigError

    try:
        cases = load_cases(
            predictor.config.data,
            [split, "train"],
            run_dir_of(checkpoint),
            limits={"train": MAX_TRAIN_IMAGES},
        )
    except ConfigError:
        return None
    calibration = fit_calibration(
        predictor,
        cases[split],
        cases["train"],
        levels,
        checkpoint=str(checkpoint),
        weights_sha256=predictor.weights_sha256 or "",
        split=split,
    )
    calibration.notes.append(f"fitted during the evaluation on split '{split}' (not saved)")
    return calibration
