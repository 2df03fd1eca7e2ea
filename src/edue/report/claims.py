"""The paper's headline claims, checked against the evaluated numbers.

Against the Deep Ensemble (targets of the reproduction, see ``docs/method.md``, section
"Claims checked by edue compare"):

* image-level Spearman of EDUE ≥ 1.3 × the Deep Ensemble's, for every structure (when
  the ensemble's correlation is ≤ 0 the ratio is undefined and EDUE passes when its own
  correlation is positive);
* pixel NCC of EDUE ≥ the Deep Ensemble's; NLL of EDUE ≤ the Deep Ensemble's;
* soft Dice not below the Deep Ensemble's by more than 0.02;
* EDUE's inference time ≤ 1/4 of the Deep Ensemble's.

Against the plain U-Net there are no targets: the report states by how much EDUE beats
it (or not) in Spearman, pixel NCC and NLL. A missing method skips its claims with a
reason. Every number is kept for ``claims.json`` (nan written as ``null``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edue import result_keys as rk
from edue.report.roles import methods_with_role
from edue.report.runs import RunResult, find_method, find_role

#: Targets of the comparison with the Deep Ensemble.
TARGETS: dict[str, float] = {
    "spearman_ratio_min": 1.3,
    "ncc_difference_min": 0.0,
    "nll_difference_max": 0.0,
    "soft_dice_abs_difference_max": 0.02,
    "time_ratio_max": 0.25,
}


@dataclass
class Claim:
    """One checked statement.

    Attributes:
        id: stable key, e.g. ``"spearman_ratio/disc"``.
        statement: the plain-language sentence, numbers included.
        structure: the structure, or ``None`` for per-method claims (time).
        edue: EDUE's value.
        reference: the other method's value.
        value: the compared quantity (ratio or difference).
        target: the target in words.
        passed: whether the target is met (``None``: not computable).
    """

    id: str
    statement: str
    structure: str | None
    edue: float
    reference: float
    value: float
    target: str
    passed: bool | None

    @property
    def mark(self) -> str:
        """✓, ✗ or ? (not computable)."""
        return "?" if self.passed is None else ("✓" if self.passed else "✗")


def _check(ok: Callable[[], bool], *values: float) -> bool | None:
    return None if not all(math.isfinite(v) for v in values) else bool(ok())


def _fmt(value: float, spec: str) -> str:
    return f"{value:{spec}}" if math.isfinite(value) else "n/a"


def _spearman_ratio(edue: RunResult, ref: RunResult, s: str) -> Claim:
    e, r = edue.value(rk.key(rk.IMAGE_SPEARMAN, s)), ref.value(rk.key(rk.IMAGE_SPEARMAN, s))
    target = TARGETS["spearman_ratio_min"]
    ratio = e / r if r > 0 else math.nan
    if r > 0 or not math.isfinite(r):
        how = f"{_fmt(ratio, '.2f')}×"
    else:
        how = f"ratio undefined since {ref.label} ≤ 0, EDUE must be > 0"
    return Claim(
        rk.key(rk.SPEARMAN_RATIO, s),
        f"Image-level Spearman ({s}): {edue.label} {_fmt(e, '.2f')} vs {ref.label} "
        f"{_fmt(r, '.2f')} → {how} (target ≥ {target:.2f}×)",
        s,
        e,
        r,
        ratio,
        f"≥ {target:g}×",
        _check(lambda: e >= target * r if r > 0 else e > 0, e, r),
    )


def _difference(
    edue: RunResult,
    ref: RunResult,
    s: str,
    name: str,
    key: str,
    digits: int,
    target: str,
    ok: Callable[[float], bool],
    targeted: bool = True,
) -> Claim:
    """EDUE minus the reference on one metric; ``target`` like ``"≥ 0"``."""
    e, r = edue.value(key.format(s=s)), ref.value(key.format(s=s))
    diff = e - r
    rule = f"target {target}" if targeted else f"EDUE better when {target}"
    return Claim(
        rk.key(rk.difference(rk.parse(key).metric), s),
        f"{name} ({s}): {edue.label} {_fmt(e, f'.{digits}f')} vs {ref.label} "
        f"{_fmt(r, f'.{digits}f')} → {_fmt(diff, f'+.{digits}f')} ({rule})",
        s,
        e,
        r,
        diff,
        target,
        _check(lambda: ok(diff), e, r),
    )


def _time_ratio(edue: RunResult, ref: RunResult) -> Claim:
    e, r = edue.seconds_per_image, ref.seconds_per_image
    target = TARGETS["time_ratio_max"]
    ratio = e / r if r > 0 else math.nan
    return Claim(
        "time_ratio",
        f"Inference time per image: {edue.label} {_fmt(e * 1000, '.2f')} ms vs "
        f"{ref.label} {_fmt(r * 1000, '.2f')} ms → {_fmt(ratio, '.2f')}× "
        f"(target ≤ {target:.2f}×)",
        None,
        e,
        r,
        ratio,
        f"≤ {target:g}×",
        _check(lambda: ratio <= target, ratio),
    )


def claims_vs_deep_ensemble(
    edue: RunResult, ref: RunResult, structures: Sequence[str]
) -> list[Claim]:
    """The targeted claims of EDUE against the Deep Ensemble."""
    out = [_spearman_ratio(edue, ref, s) for s in structures]
    tol = TARGETS["soft_dice_abs_difference_max"]
    for s in structures:
        out += [
            _difference(
                edue,
                ref,
                s,
                "Pixel NCC",
                rk.template(rk.PIXEL_NCC, rk.MEAN),
                2,
                "≥ 0",
                lambda d: d >= TARGETS["ncc_difference_min"],
            ),
            _difference(
                edue,
                ref,
                s,
                "NLL",
                rk.template(rk.NLL, rk.MEAN),
                3,
                "≤ 0",
                lambda d: d <= TARGETS["nll_difference_max"],
            ),
            _difference(
                edue,
                ref,
                s,
                "Soft Dice",
                rk.template(rk.SOFT_DICE, rk.MEAN),
                3,
                f"Δ ≥ −{tol:g}",
                # "competitive Dice": not worse than the reference by more than tol
                lambda d: d >= -tol,
            ),
        ]
    return [*out, _time_ratio(edue, ref)]


def claims_vs_plain(edue: RunResult, ref: RunResult, structures: Sequence[str]) -> list[Claim]:
    """How EDUE compares with the plain U-Net (passed = EDUE is better; no targets)."""
    out = []
    for s in structures:
        out += [
            _difference(
                edue,
                ref,
                s,
                "Image-level Spearman",
                rk.template(rk.IMAGE_SPEARMAN),
                2,
                "> 0",
                lambda d: d > 0,
                targeted=False,
            ),
            _difference(
                edue,
                ref,
                s,
                "Pixel NCC",
                rk.template(rk.PIXEL_NCC, rk.MEAN),
                2,
                "> 0",
                lambda d: d > 0,
                targeted=False,
            ),
            _difference(
                edue,
                ref,
                s,
                "NLL",
                rk.template(rk.NLL, rk.MEAN),
                3,
                "< 0",
                lambda d: d < 0,
                targeted=False,
            ),
        ]
    return out


def _average_gain(claims: Sequence[Claim], metric: str) -> float:
    """Mean relative gain of EDUE over the reference, in percent (positive references)."""
    gains = [
        (c.edue / c.reference - 1) * 100
        for c in claims
        if rk.parse(c.id).metric == metric
        and math.isfinite(c.edue)
        and math.isfinite(c.reference)
        and c.reference > 0
    ]
    return sum(gains) / len(gains) if gains else math.nan


def budget_note(edue: RunResult, ref: RunResult) -> str:
    """The budget of a comparison, in words: both runs' training, and whether the numbers
    may be quoted (only when both were trained to convergence)."""
    both = f"{edue.label}: {edue.budget}; {ref.label}: {ref.budget}"
    if edue.converged and ref.converged:
        return f"converged budget ({both})"
    return (
        f"NOT a converged comparison ({both}); do not quote it: the converged study's "
        f"numbers are in docs/studies.md"
    )


def _group(edue: RunResult, ref: RunResult, claims: list[Claim], targeted: bool) -> dict[str, Any]:
    checked = [c for c in claims if c.passed is not None]
    n_passed = sum(bool(c.passed) for c in checked)
    budget = budget_note(edue, ref)
    converged = bool(edue.converged and ref.converged)
    short = "converged budget" if converged else "quick budget, not converged"
    return {
        "reference": {"method": ref.method, "label": ref.label, "folder": str(ref.folder)},
        "claims": [{**asdict(c), "mark": c.mark, "budget": short} for c in claims],
        "passed": n_passed,
        "checked": len(checked),
        "all_passed": bool(checked) and all(c.passed for c in checked),
        "targeted": targeted,
        "converged": converged,
        "budget": budget,
        "summary": (
            f"{edue.label} vs {ref.label} ({short}): {n_passed} of {len(checked)} targets met"
            if targeted
            else f"{edue.label} vs {ref.label} ({short}): {edue.label} better on {n_passed} of "
            f"{len(checked)} comparisons"
        ),
    }


#: The compared references: report role, claim builder, whether it has targets.
_REFERENCES: tuple[tuple[str, Callable[..., list[Claim]], bool], ...] = (
    ("ensemble_reference", claims_vs_deep_ensemble, True),
    ("one_pass_reference", claims_vs_plain, False),
)


def compute_claims(runs: Sequence[RunResult], structures: Sequence[str]) -> dict[str, Any]:
    """Every claim of the report, as a JSON-ready dict (nan kept; see :func:`json_ready`).

    The methods are found by their role in the method registry: the subject of the
    claims (EDUE), the ensemble reference (the Deep Ensemble, with targets) and the
    one-pass references (the plain U-Net and the deep-supervised U-Net, no targets).

    Keys: ``edue`` (label, folder) or ``None``; ``targets``; ``vs_<reference method>``
    for each reference (reference, claims, passed, checked, all_passed, summary) or
    ``None``; ``average_gain_vs_<ensemble reference>_percent`` (image Spearman, pixel
    NCC); ``skipped`` (why a group is missing); ``headline`` (the summary sentences).
    """
    out: dict[str, Any] = {"edue": None, "targets": dict(TARGETS)}
    references = [
        (spec, build, targeted)
        for role, build, targeted in _REFERENCES
        for spec in (methods_with_role(role) or (None,))
    ]
    for spec, _, targeted in references:
        if spec is not None:
            out[f"vs_{spec.name}"] = None
            if targeted:
                out[f"average_gain_vs_{spec.name}_percent"] = None
    out.update({"skipped": [], "headline": []})
    edue = find_role(runs, "subject")
    if edue is None:
        out["skipped"].append("no EDUE run among the compared folders: no claims to check")
        return out
    out["edue"] = {"label": edue.label, "folder": str(edue.folder)}
    shared = [s for s in structures if s in edue.structures]
    for spec, build, targeted in references:
        ref = find_method(runs, spec.name) if spec else None
        if spec is None or ref is None:
            name = spec.name if spec else "reference"
            out["skipped"].append(f"no {name} run: the claims against it are skipped")
            continue
        claims = build(edue, ref, [s for s in shared if s in ref.structures])
        out[f"vs_{spec.name}"] = _group(edue, ref, claims, targeted)
        out["headline"].append(out[f"vs_{spec.name}"]["summary"])
        if targeted:
            out[f"average_gain_vs_{spec.name}_percent"] = {
                "image_spearman": _average_gain(claims, rk.SPEARMAN_RATIO),
                "pixel_ncc": _average_gain(claims, rk.PIXEL_NCC_DIFFERENCE),
            }
    return out


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj
