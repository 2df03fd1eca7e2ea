"""The paper's comparison tables, built from evaluated runs (rendered as Markdown, LaTeX
and HTML by :mod:`edue.report.render`; the raw numbers as one CSV here).

A :class:`Table` holds formatted cells (with the raw value each was ranked by) and
optional column groups (one per structure or distortion). The best value of each column
is marked *bold*, direction-aware (higher is better for Dice, correlations, NCC and
AUROC; lower for NLL, GED, ECE, d-AUC, parameters and time), comparing the values as
displayed so that ties are all bold. A column with fewer than two finite values marks
nothing. The CSV is one wide row per method holding every raw number of every table.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from edue import result_keys as rk
from edue.report.runs import (
    RunResult,
    all_structures,
    find_role,
    has_referral,
    ood_auroc,
    ood_gate_auroc,
    ood_kinds,
    referral_alphas,
)

MISSING = "—"


@dataclass
class Cell:
    """One table cell: its text and the value it is ranked by (nan: not ranked)."""

    text: str
    value: float = math.nan
    bold: bool = False


@dataclass
class Table:
    """A table with one row per method.

    Attributes:
        title: short title (a Markdown heading, the LaTeX caption).
        headers: column headers (without the row-label column).
        rows: ``(label, cells)`` per method.
        groups: ``(group header, span)`` covering ``headers`` left to right, or empty.
        note: one sentence printed under the table.
    """

    title: str
    headers: list[str]
    rows: list[tuple[str, list[Cell]]]
    groups: list[tuple[str, int]] = field(default_factory=list)
    note: str = ""

    def column(self, index: int) -> list[Cell]:
        """The cells of one column, top to bottom."""
        return [cells[index] for _, cells in self.rows]


@dataclass(frozen=True)
class MetricColumn:
    """How one per-structure metric is shown: keys use ``{s}`` for the structure name.

    Attributes:
        header: column header.
        key: metric key of the value.
        higher_is_better: ranking direction (``None``: no bold).
        digits: decimals shown.
        spread: key of a standard deviation shown as ``± std``.
        interval: keys of a confidence interval shown as ``[low, high]``.
    """

    header: str
    key: str
    higher_is_better: bool | None
    digits: int
    spread: str | None = None
    interval: tuple[str, str] | None = None

    def keys(self, structure: str) -> list[str]:
        """All metric keys this column reads, for the CSV."""
        extra = [self.spread] if self.spread else []
        extra += list(self.interval) if self.interval else []
        return [k.format(s=structure) for k in (self.key, *extra)]

    def cell(self, run: RunResult, structure: str) -> Cell:
        """The formatted cell of one run."""
        value = run.value(self.key.format(s=structure))
        if not math.isfinite(value):
            return Cell(MISSING)
        text = f"{value:.{self.digits}f}"
        if self.spread:
            spread = run.value(self.spread.format(s=structure))
            text += f" ± {spread:.{self.digits}f}" if math.isfinite(spread) else ""
        if self.interval:
            low, high = (run.value(k.format(s=structure)) for k in self.interval)
            if math.isfinite(low) and math.isfinite(high):
                text += f" [{low:.{self.digits}f}, {high:.{self.digits}f}]"
        return Cell(text, value)


MAIN_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn(
        "soft Dice",
        rk.template(rk.SOFT_DICE, rk.MEAN),
        True,
        3,
        spread=rk.template(rk.SOFT_DICE, rk.STD),
    ),
    MetricColumn("NLL", rk.template(rk.NLL, rk.MEAN), False, 3),
    MetricColumn(
        "Spearman [95% CI]",
        rk.template(rk.IMAGE_SPEARMAN),
        True,
        2,
        interval=(
            rk.template(rk.IMAGE_SPEARMAN, rk.CI_LOW),
            rk.template(rk.IMAGE_SPEARMAN, rk.CI_HIGH),
        ),
    ),
    MetricColumn("Pearson", rk.template(rk.IMAGE_PEARSON), True, 2),
    MetricColumn(
        "pixel NCC",
        rk.template(rk.PIXEL_NCC, rk.MEAN),
        True,
        2,
        spread=rk.template(rk.PIXEL_NCC, rk.STD),
    ),
    MetricColumn("GED", rk.template(rk.GED, rk.MEAN), False, 3),
    MetricColumn("ECE", rk.template(rk.ECE_SOFT_VOTE), False, 3),
)
QC_COLUMN = MetricColumn("d-AUC", rk.template(rk.QC_D_AUC), False, 3)
SV_SCALE_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("slope", rk.template(rk.SV_SLOPE), None, 2),
    MetricColumn("intercept", rk.template(rk.SV_INTERCEPT), None, 1),
    MetricColumn("MAE", rk.template(rk.SV_MAE), False, 1),
    MetricColumn("MAE isotonic", rk.template(rk.SV_MAE_ISOTONIC), False, 1),
)


def referral_columns(alphas: Sequence[float]) -> list[MetricColumn]:
    """Per guarantee level: the share of test images referred (lower is better) and the
    realised share of poor among the accepted ones."""
    columns = []
    for a in alphas:
        columns += [
            MetricColumn(
                f"α={a:g} referred", rk.template(rk.REFERRAL_RATE, rk.alpha_qualifier(a)), False, 2
            ),
            MetricColumn(
                f"α={a:g} poor accepted",
                rk.template(rk.REFERRAL_POOR_SHARE, rk.alpha_qualifier(a)),
                None,
                3,
            ),
        ]
    return columns


def mark_best(cells: Sequence[Cell], higher_is_better: bool | None, digits: int) -> None:
    """Bold the best of ``cells`` in place (ties as displayed are all bold)."""
    if higher_is_better is None:
        return
    ranked = [(round(c.value, digits), c) for c in cells if math.isfinite(c.value)]
    if len(ranked) < 2:
        return
    best = (max if higher_is_better else min)(v for v, _ in ranked)
    for value, cell in ranked:
        cell.bold = value == best


def _metric_table(
    runs: Sequence[RunResult],
    title: str,
    columns: Sequence[MetricColumn],
    structures: Sequence[str],
    note: str,
) -> Table:
    rows = [(run.label, [c.cell(run, s) for s in structures for c in columns]) for run in runs]
    table = Table(
        title,
        [c.header for _ in structures for c in columns],
        rows,
        [(s, len(columns)) for s in structures],
        note,
    )
    for i, column in enumerate(c for _ in structures for c in columns):
        mark_best(table.column(i), column.higher_is_better, column.digits)
    return table


def main_table(runs: Sequence[RunResult]) -> Table:
    """Table 1: segmentation quality and uncertainty per structure."""
    return _metric_table(
        runs,
        "Segmentation and uncertainty",
        MAIN_COLUMNS,
        all_structures(runs),
        "Soft Dice and pixel NCC: mean ± std over images; Spearman/Pearson: image-level "
        "correlation of model SV with expert SV (95% bootstrap CI); ECE vs the soft vote. "
        "Bold: best per column.",
    )


def cost_numbers(runs: Sequence[RunResult]) -> list[dict[str, float]]:
    """Per run: members, passes, parameters, ms per image and the two time ratios."""
    one_pass = [
        r.seconds_per_image for r in runs if r.passes == 1 and math.isfinite(r.seconds_per_image)
    ]
    fastest = min(one_pass) if one_pass else math.nan
    edue = find_role(runs, "subject")
    edue_time = edue.seconds_per_image if edue else math.nan
    out = []
    for run in runs:
        t = run.seconds_per_image
        out.append(
            {
                "n_members": float(run.n_members),
                "passes": float(run.passes),
                "parameters": run.parameters,
                "ms_per_image": t * 1000,
                "time_vs_fastest_one_pass": t / fastest if fastest > 0 else math.nan,
                "time_vs_edue": t / edue_time if edue_time > 0 else math.nan,
            }
        )
    return out


def _num(value: float, fmt: str, suffix: str = "") -> Cell:
    return Cell(f"{value:{fmt}}{suffix}", value) if math.isfinite(value) else Cell(MISSING)


def cost_table(runs: Sequence[RunResult]) -> Table:
    """Table 2: members, forward passes, parameters and inference time per method."""
    rows = []
    for run, cost in zip(runs, cost_numbers(runs), strict=True):
        rows.append(
            (
                run.label,
                [
                    Cell(str(run.n_members)),
                    Cell(str(run.passes)),
                    _num(cost["parameters"], ",.0f"),
                    _num(cost["ms_per_image"], ".2f"),
                    _num(cost["time_vs_fastest_one_pass"], ".2f", "×"),
                    _num(cost["time_vs_edue"], ".2f", "×"),
                ],
            )
        )
    table = Table(
        "Cost",
        [
            "members",
            "passes",
            "parameters",
            "ms / image",
            "time vs fastest one-pass",
            "time vs EDUE",
        ],
        rows,
        note="Median single-image inference time on the evaluation device; "
        "ratios divide by the fastest one-pass method and by EDUE.",
    )
    mark_best(table.column(2), False, 0)
    mark_best(table.column(3), False, 2)
    return table


def qc_ood_table(runs: Sequence[RunResult]) -> Table:
    """Table 3: quality-control d-AUC per structure and OOD separation AUROC at 50 %."""
    structures = all_structures(runs)
    table = _metric_table(
        runs, "Quality control and out-of-distribution detection", [QC_COLUMN], structures, ""
    )
    table.headers = list(structures)
    table.groups = [("QC d-AUC", len(structures))]
    gate_kinds = {
        kind
        for kind in ood_kinds(runs)
        if any(math.isfinite(ood_gate_auroc(run, kind)) for run in runs)
    }
    for kind in ood_kinds(runs):
        start = len(table.headers)
        for s in structures:
            table.headers += [f"{s} agreement", f"{s} SV"]
        gate = kind in gate_kinds
        table.headers += ["OOD gate"] if gate else []
        for run, (_, cells) in zip(runs, table.rows, strict=True):
            for s in structures:
                for score in ("agreement", "sv"):
                    value = ood_auroc(run, kind, score, s)
                    undefined = score == "agreement" and run.n_members < 2 and run.ood is not None
                    cells.append(Cell("n/a") if undefined else _num(value, ".2f"))
            if gate:
                cells.append(_num(ood_gate_auroc(run, kind), ".2f"))
        for i in range(start, len(table.headers)):
            mark_best(table.column(i), True, 2)
        table.groups.append((f"{kind} @ 50 %: AUROC", len(table.headers) - start))
    thresholds = _shared_levels(runs, structures, "qc_threshold", ".2f")
    poor = f" (poor: soft Dice below {', '.join(thresholds)})" if thresholds else ""
    table.note = (
        f"d-AUC: area between the QC curve and its ideal{poor}; {MISSING}: no image or "
        "every image poor, nothing to rank; AUROC: how well the "
        "per-image agreement variance or SV separates distorted from clean images "
        "when half of them are distorted (n/a: a single member has no agreement)"
        + (
            "; OOD gate: the distribution-shift score of `edue calibrate` (Mahalanobis "
            "distance of the pooled encoder features to the training images)."
            if gate_kinds
            else "."
        )
    )
    return table


def _shared_levels(
    runs: Sequence[RunResult], structures: Sequence[str], metric: str, fmt: str
) -> list[str]:
    """``"<structure> <value>"`` for each structure whose ``metric/<structure>`` is one
    finite value shared by every run that has it (a level to name in a note)."""
    shared = []
    for s in structures:
        values = {run.value(rk.key(metric, s)) for run in runs}
        values = {v for v in values if math.isfinite(v)}
        if len(values) == 1:
            shared.append(f"{s} {values.pop():{fmt}}")
    return shared


def _calibration_text(runs: Sequence[RunResult]) -> str:
    parts = set()
    for run in runs:
        info = run.info.get("referral") or {}
        if info:
            parts.add(
                f"{info.get('n_calibration', '?')} '{info.get('split', '?')}' images, "
                f"δ={info.get('delta', float('nan')):g}"
            )
    return "; ".join(sorted(parts)) or "unknown"


def referral_table(runs: Sequence[RunResult]) -> Table:
    """Referral with a guarantee: per structure and alpha, the share of test images
    referred and the realised share of poor among the accepted."""
    table = _metric_table(
        runs,
        "Referral with a guarantee",
        referral_columns(referral_alphas(runs)),
        all_structures(runs),
        "",
    )
    levels = _shared_levels(runs, all_structures(runs), "referral_poor_level", "g")
    poor = f"soft Dice below {', '.join(levels)}" if levels else "soft Dice below the level"
    table.note = (
        "Thresholds on the SV certified by Learn-then-Test on the calibration split "
        f"({_calibration_text(runs)}): with probability 1−δ at most α of the accepted "
        f"segmentations are poor ({poor}); the OOD gate refers images too. Referred: "
        f"share of test images (lower is better for the same guarantee); poor accepted: "
        f"realised share of poor among the accepted test images ({MISSING}: none accepted)."
    )
    return table


def sv_scale_table(runs: Sequence[RunResult]) -> Table:
    """The SV in the experts' units: linear fit against the experts' SV and the mean
    absolute error before and after the isotonic map of the calibration split."""
    return _metric_table(
        runs,
        "SV in the experts' units",
        SV_SCALE_COLUMNS,
        all_structures(runs),
        "Least-squares line model SV ≈ slope · expert SV + intercept over the test images "
        "(1 and 0 when the SV speaks the experts' units); MAE: mean |model SV − expert "
        "SV|, then after mapping the SV onto the experts' scale by the isotonic fit of the "
        "calibration split.",
    )


def comparison_tables(runs: Sequence[RunResult]) -> list[Table]:
    """All tables of the report, in order (the referral tables when any run has them)."""
    tables = [main_table(runs), cost_table(runs), qc_ood_table(runs)]
    if any(has_referral(r) for r in runs):
        tables += [referral_table(runs), sv_scale_table(runs)]
    return tables


def flat_csv(runs: Sequence[RunResult]) -> str:
    """One row per method with every raw number of every table (metric-key columns)."""
    structures, kinds = all_structures(runs), ood_kinds(runs)
    referral = referral_columns(referral_alphas(runs)) if any(map(has_referral, runs)) else []
    gate_kinds = [k for k in kinds if any(math.isfinite(ood_gate_auroc(r, k)) for r in runs)]
    rows = []
    for run, cost in zip(runs, cost_numbers(runs), strict=True):
        row: dict[str, object] = {
            "method": run.method,
            "label": run.label,
            "folder": str(run.folder),
        }
        for s in structures:
            for column in (*MAIN_COLUMNS, QC_COLUMN, *referral):
                row.update({k: run.value(k) for k in column.keys(s)})
            if referral:
                row.update({k: run.value(k) for c in SV_SCALE_COLUMNS for k in c.keys(s)})
        row.update(cost)
        for kind in kinds:
            for s in structures:
                for score in ("agreement", "sv"):
                    row[f"ood_auroc_{score}/{kind}/{s}"] = ood_auroc(run, kind, score, s)
            if kind in gate_kinds:
                row[f"ood_auroc_gate/{kind}"] = ood_gate_auroc(run, kind)
        rows.append(row)
    handle = io.StringIO()
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return handle.getvalue()
