"""What the command line prints after a job: the summary lines of ``edue evaluate``,
``edue calibrate`` and ``edue predict``, built from their results (the command line only
prints them)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edue import result_keys as rk
from edue.engine.referral.calibration import REASON_SHIFT, REASON_UNCERTAIN

if TYPE_CHECKING:
    from edue.engine.referral.calibration import Calibration


def percent(value: float) -> str:
    """A share as a whole percentage; a dash when undefined (nothing accepted)."""
    return f"{value:.0%}" if not math.isnan(value) else "-"


def evaluation_lines(result: Mapping[str, Any]) -> list[str]:
    """The summary of an evaluation (what :func:`~edue.engine.evaluation.evaluate.
    evaluate_checkpoint` returns): cases, speed, the headline metrics per structure and,
    with a calibration, the referral outcome at each risk level."""
    m = result["metrics"]
    lines = [
        f"{result['method']}: {int(m[rk.N_CASES])} cases, "
        f"{result['seconds_per_image'] * 1000:.1f} ms/image, {result['parameters']:,} parameters"
    ]
    for s in result["structures"]:
        lines.append(
            f"  {s:>8}: soft Dice {m[rk.mean_key(rk.SOFT_DICE, s)]:.3f}  "
            f"NLL {m[rk.mean_key(rk.NLL, s)]:.3f}  "
            f"Spearman(SV) {m[rk.key(rk.IMAGE_SPEARMAN, s)]:.3f}  "
            f"pixel NCC {m[rk.mean_key(rk.PIXEL_NCC, s)]:.3f}"
        )
    referral = result.get("referral")
    if not referral:
        return lines
    lines.append(
        f"referral (calibrated on {referral['n_calibration']} '{referral['split']}' "
        f"image(s), delta {referral['delta']:g}): share referred / poor among accepted"
    )
    for s in result["structures"]:
        parts = [
            f"alpha {a:g}: {percent(m[rk.alpha_key(rk.REFERRAL_RATE, s, a)])} / "
            f"{percent(m[rk.alpha_key(rk.REFERRAL_POOR_SHARE, s, a)])}"
            for a in referral["alphas"]
        ]
        lines.append(
            f"  {s:>8}: {'  '.join(parts)}  (poor below {referral['poor'][s]:g}: "
            f"{m[rk.key(rk.REFERRAL_POOR_RATE, s)]:.0%}); SV vs experts: slope "
            f"{m[rk.key(rk.SV_SLOPE, s)]:.2f}, MAE {m[rk.key(rk.SV_MAE, s)]:.1f} -> "
            f"{m[rk.key(rk.SV_MAE_ISOTONIC, s)]:.1f} after the isotonic map"
        )
    return lines


def calibration_lines(calibration: Calibration) -> list[str]:
    """The summary of a fitted calibration: per structure its decision, then the gate
    and the expected referral rates."""
    rates = calibration.expected_referral()
    lines = [
        f"{calibration.method}: calibrated on {len(calibration.case_ids)} '{calibration.split}' "
        f"image(s) (and {calibration.n_train} training images), alpha {calibration.alpha:g}, "
        f"delta {calibration.delta:g}"
    ]
    for s in calibration.structures:
        d = s.decision
        if not d.certified:
            verdict = "refer every image (none certified)"
        elif d.threshold == float("inf"):
            verdict = "accept every image"
        else:
            verdict = f"refer SV > {d.threshold:.4g}"
        lines.append(
            f"  {s.name:>8}: poor below soft Dice {s.poor_level:g} ({s.poor().mean():.0%} of "
            f"them); {verdict}; accepted {d.n_accepted}, {d.n_poor_accepted} poor; expected "
            f"referral {d.referral_rate:.0%}"
        )
    if calibration.gate is not None:
        gate = calibration.gate
        lines.append(
            f"  OOD gate: {len(gate.modules)} encoder blocks ({gate.gaussian.dims} features, "
            f"{gate.gaussian.n} training images), flags distance > {gate.threshold:.4g} "
            f"(false-alarm rate <= {gate.false_alarm:g}; {rates[REASON_SHIFT]:.0%} of these)"
        )
    lines.append(
        f"expected referral: {rates['any']:.0%} of images ({rates[REASON_UNCERTAIN]:.0%} "
        f"{REASON_UNCERTAIN}, {rates[REASON_SHIFT]:.0%} {REASON_SHIFT})"
    )
    lines.append(f"calibration: {calibration.path}")
    return lines


def referral_line(referral: Mapping[str, Any] | None, disabled: bool) -> str:
    """The summary line of the referral decisions of ``edue predict``."""
    if referral is None:
        return (
            "referral: off (--no-calibration)"
            if disabled
            else "referral: no calibration.json beside the checkpoint (run `edue calibrate`)"
        )
    by_reason = referral["by_reason"]
    per = ", ".join(f"{s} {n}" for s, n in referral["uncertain_by_structure"].items())
    shift = f", {by_reason[REASON_SHIFT]} {REASON_SHIFT}" if referral["gate"] else ""
    return (
        f"referred {referral['n_referred']} of {referral['n_images']} image(s) to a second "
        f"expert (alpha {referral['alpha']:g}): {by_reason[REASON_UNCERTAIN]} "
        f"{REASON_UNCERTAIN} ({per}){shift}"
    )
