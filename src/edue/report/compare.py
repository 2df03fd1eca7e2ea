"""``edue compare``: the paper's comparison from evaluated runs.

:func:`compare_runs` reads the folders written by ``edue evaluate`` (one per method) and
writes into the output folder:

* ``table.md``, ``table.tex``, ``table.csv`` — segmentation and uncertainty per
  structure, cost, quality control and OOD separation, and for calibrated runs the
  referral with a guarantee and the SV in the experts' units (best values bold);
* ``claims.json`` — the paper's claims checked against the numbers (EDUE vs the Deep
  Ensemble with targets, vs the plain U-Net without);
* ``figures/*.png`` — QC curves, agreement and SV box plots under distortion, the sample
  panel, reliability diagrams, model-vs-expert SV scatter plots and, for calibrated
  runs, the referral rate against the guarantee level;
* ``report.html`` — all of the above in one self-contained page.

Folders without ``ood.json``, ``samples.npz``, ``curves.json`` or ``per_case.csv`` still
give a report (the sections that need them say so); a missing or corrupt
``metrics.json`` raises :class:`~edue.errors.EdueError` naming the folder.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edue.io import atomic_path, write_json
from edue.report.claims import compute_claims, json_ready
from edue.report.html import FigureEntry, ReportContent, render_report
from edue.report.render import to_latex, to_markdown
from edue.report.runs import RunResult, all_structures, has_referral, load_runs, ood_kinds
from edue.report.tables import comparison_tables, flat_csv

#: Cases of ``samples.npz`` shown in the sample panel (every structure of each).
MAX_SAMPLE_CASES = 4


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _sample_figure(runs: Sequence[RunResult], path: Path) -> tuple[Path | None, str]:
    """The Figure-4 grid of the sample cases all runs share; ``(None, why)`` when none."""

    from edue.data.case import MultiRaterCase
    from edue.report.figures import sample_grid

    with_samples = [r for r in runs if r.samples]
    if not with_samples:
        return None, "no run has samples.npz"
    shared = [
        c.case_id
        for c in with_samples[0].samples or []
        if all(any(o.case_id == c.case_id for o in r.samples or []) for r in with_samples)
    ]
    if not shared:
        return None, "the runs' samples.npz share no case (compare runs on the same test split)"
    cases, predictions, skipped = [], [], set()
    for case_id in shared[:MAX_SAMPLE_CASES]:
        first = next(c for c in with_samples[0].samples or [] if c.case_id == case_id)
        names = with_samples[0].structures
        if len(names) != first.masks.shape[1]:
            names = tuple(f"structure {k}" for k in range(first.masks.shape[1]))
        cases.append(MultiRaterCase(first.image, first.masks, case_id, names))
        preds = {}
        for run in with_samples:
            sample = next(c for c in run.samples or [] if c.case_id == case_id)
            if sample.members.shape[1:] != first.masks.shape[1:]:
                skipped.add(run.label)
                continue
            preds[run.label] = sample.prediction()
        predictions.append(preds)
    left_out = [r.label for r in runs if not r.samples] + sorted(skipped)
    note = f"{len(cases)} shared case(s)"
    note += f"; left out (no or mismatching samples): {', '.join(left_out)}" if left_out else ""
    return sample_grid(cases, predictions, path), note


def _or(path: Path | None, why: str) -> tuple[Path | None, str]:
    return path, "" if path else why


def _figure(
    entries: list[FigureEntry],
    notes: list[str],
    key: str,
    title: str,
    draw: Callable[[], tuple[Path | None, str]],
) -> None:
    """Draw one figure; a failure becomes a note instead of stopping the report."""
    try:
        path, note = draw()
    except Exception as exc:  # one broken input must not cost the whole report
        notes.append(f"figure '{title}' failed: {type(exc).__name__}: {exc}")
        path, note = None, f"it could not be drawn ({type(exc).__name__}: {exc})"
    entries.append(FigureEntry(key, title, path, note))


def write_figures(runs: Sequence[RunResult], folder: Path, notes: list[str]) -> list[FigureEntry]:
    """All comparison figures as PNGs in ``folder``, in report order (failures noted)."""
    from edue.report import comparison_figures as fg

    structures, kinds = all_structures(runs), ood_kinds(runs)
    no_ood = "no run has ood.json (evaluate with --ood)"
    entries: list[FigureEntry] = []
    _figure(
        entries,
        notes,
        "qc",
        "Quality control (Figure 2)",
        lambda: _or(
            fg.qc_curves_figure(runs, structures, folder / "qc_curves.png")
            if any(r.curves for r in runs)
            else None,
            "no run has curves.json",
        ),
    )
    _figure(
        entries,
        notes,
        "ood_agreement",
        "Member agreement under distortion (Figure 3)",
        lambda: _or(
            fg.ood_boxplot_figure(runs, kinds, folder / "ood_agreement.png"),
            no_ood if not kinds else "no run with ood.json has two or more members",
        ),
    )
    _figure(
        entries,
        notes,
        "ood_sv",
        "SV under distortion",
        lambda: _or(fg.ood_boxplot_figure(runs, kinds, folder / "ood_sv.png", score="sv"), no_ood),
    )
    _figure(
        entries,
        notes,
        "samples",
        "Sample cases (Figure 4)",
        lambda: _sample_figure(runs, folder / "samples.png"),
    )
    _figure(
        entries,
        notes,
        "reliability",
        "Reliability diagrams",
        lambda: _or(
            fg.reliability_figure(runs, structures, folder / "reliability.png"),
            "no run has reliability diagrams in curves.json",
        ),
    )
    _figure(
        entries,
        notes,
        "sv_scatter",
        "Model SV against expert SV",
        lambda: _or(
            fg.sv_scatter_figure(runs, structures, folder / "sv_scatter.png"),
            "no run has per_case.csv",
        ),
    )
    if any(has_referral(r) for r in runs):
        _figure(
            entries,
            notes,
            "referral",
            "Referral rate against the guarantee level",
            lambda: _or(
                fg.referral_figure(runs, structures, folder / "referral.png"),
                "no run has a referral outcome (evaluate a calibrated run)",
            ),
        )
    return entries


def _summary(runs: Sequence[RunResult], claims: dict) -> list[str]:
    n_cases = sorted({int(r.value("n_cases")) for r in runs if np.isfinite(r.value("n_cases"))})
    lines = [
        f"{len(runs)} method(s): {', '.join(r.label for r in runs)}.",
        f"Structures: {', '.join(all_structures(runs))}; test images: "
        f"{', '.join(map(str, n_cases)) or 'unknown'}"
        + (" (the runs differ: compare on the same split)" if len(n_cases) > 1 else "."),
        f"Device(s): {', '.join(sorted({str(r.info.get('device', '?')) for r in runs}))}.",
    ]
    return lines + list(claims.get("headline", [])) + list(claims.get("skipped", []))


def _provenance(runs: Sequence[RunResult]) -> list[dict[str, str]]:
    rows = []
    for run in runs:
        present = [
            n
            for n in ("per_case.csv", "curves.json", "ood.json", "samples.npz")
            if (run.folder / n).is_file()
        ]
        rows.append(
            {
                "method": run.label,
                "name": run.method,
                "folder": str(run.folder.resolve()),
                "parameters": f"{run.parameters:,.0f}" if np.isfinite(run.parameters) else "?",
                "members": str(run.n_members),
                "device": str(run.info.get("device", "?")),
                "test images": f"{run.value('n_cases'):.0f}",
                "checkpoint": str(run.info.get("checkpoint", "")),
                "split": str(run.info.get("split", "")),
                "files": ", ".join(present),
            }
        )
    return rows


def compare_runs(runs: Sequence[str], out: str | Path) -> Path:
    """Write the comparison report of evaluated runs (see the module docstring).

    Args:
        runs: evaluation folders written by ``edue evaluate``, one per method.
        out: output folder (created).

    Returns:
        The path of ``report.html``.

    Raises:
        EdueError: no folder given, or a folder's ``metrics.json`` is missing or corrupt.
    """
    results = load_runs(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = comparison_tables(results)
    _write_text(out / "table.md", "# EDUE comparison\n\n" + "\n".join(map(to_markdown, tables)))
    _write_text(
        out / "table.tex", "% needs \\usepackage{booktabs}\n" + "\n".join(map(to_latex, tables))
    )
    _write_text(out / "table.csv", flat_csv(results))
    claims = compute_claims(results, all_structures(results))
    write_json(out / "claims.json", json_ready(claims))
    notes = [note for run in results for note in run.notes]
    figures = write_figures(results, out / "figures", notes)
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    content = ReportContent(
        title="EDUE comparison report",
        generated=generated,
        summary=_summary(results, claims),
        claims=json_ready(claims),
        tables=tables,
        figures=figures,
        provenance=_provenance(results),
        notes=notes,
    )
    report = out / "report.html"
    _write_text(report, render_report(content))
    return report
