"""The plots comparing evaluated runs (:class:`~edue.report.runs.RunResult`), every method
in one colour throughout (:func:`method_colours`): quality-control curves (the paper's
Figure 2), agreement box plots under distortion (Figure 3), reliability diagrams,
model-vs-expert SV scatter plots and the referral rate against the guarantee level.
Drawn with the primitives of :mod:`edue.report.figures`, written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from edue import result_keys as rk
from edue.report.figures import colormap, new_figure, save_figure
from edue.report.runs import RunResult

METHOD_CMAP = "tab10"
OOD_STRUCTURE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")
OOD_GROUPS = (
    ("0 %", 0.0, False),
    ("50 % clean", 0.5, False),
    ("50 % distorted", 0.5, True),
    ("100 %", 1.0, True),
)


def method_colours(runs: Sequence[RunResult]) -> dict[str, tuple[float, ...]]:
    """One colour per run label, in run order."""
    cmap = colormap(METHOD_CMAP)
    return {run.label: cmap(i % 10) for i, run in enumerate(runs)}


def _grid(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = new_figure(width * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _no_data(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def qc_curves_figure(
    runs: Sequence[RunResult], structures: Sequence[str], path: str | Path
) -> Path:
    """Quality-control curves, one panel per structure, all methods (the paper's Figure 2).

    Solid: the method's curve; dashed: its ideal; dotted: its random-ranking expectation
    (both depend on the method, since "poor" is judged on its own Dice). d-AUC in the legend.
    """
    from matplotlib.lines import Line2D

    colours = method_colours(runs)
    fig, axes = _grid(1, len(structures), 4.3, 3.7)
    for ax, s in zip(axes[0], structures, strict=True):
        handles = []
        for run in runs:
            curve = (run.curves or {}).get("qc", {}).get(s)
            if not curve:
                continue
            c, x = colours[run.label], curve["fraction_flagged"]
            (line,) = ax.plot(
                x,
                curve["fraction_poor_remaining"],
                color=c,
                lw=1.8,
                label=f"{run.label} (d-AUC {_d_auc_text(curve)})",
            )
            ax.plot(x, curve["ideal"], color=c, ls="--", lw=1, alpha=0.7)
            ax.plot(x, curve["random"], color=c, ls=":", lw=1, alpha=0.6)
            handles.append(line)
        if not handles:
            _no_data(ax)
        handles += [
            Line2D([], [], color="k", ls="--", lw=1, label="ideal"),
            Line2D([], [], color="k", ls=":", lw=1, label="random"),
        ]
        threshold = next(
            (
                r.value(rk.key(rk.QC_THRESHOLD, s))
                for r in runs
                if np.isfinite(r.value(rk.key(rk.QC_THRESHOLD, s)))
            ),
            np.nan,
        )
        poor = f" (poor: Dice < {threshold:g})" if np.isfinite(threshold) else ""
        ax.set(
            title=f"{s}{poor}",
            xlabel="fraction flagged for review",
            ylabel="fraction of poor segmentations remaining",
            xlim=(0, 1),
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def _ood_groups(entry: dict, column: str, k: int) -> list[np.ndarray]:
    values = np.asarray(entry.get(column, []), dtype=np.float64)
    flags = np.asarray(entry.get("is_distorted", []), dtype=bool)
    if values.ndim != 2 or k >= values.shape[1] or len(flags) != len(values):
        return []
    v = values[:, k]
    return [v[(flags == distorted) & np.isfinite(v)] for distorted in (False, True)]


def ood_boxplot_figure(
    runs: Sequence[RunResult],
    kinds: Sequence[str],
    path: str | Path,
    score: str = "agreement_variance",
) -> Path | None:
    """Per-image ``score`` under 0 / 50 / 100 % distortion (the paper's Figure 3).

    One row per method (methods without ``ood.json`` are left out, and for the agreement
    variance also single-member methods), one column per distortion kind; in each panel
    boxes per structure for: all images at 0 %, the clean and the distorted half at 50 %,
    and all images at 100 %. Returns ``None`` when no method has data.
    """
    shown = [
        r for r in runs if r.ood is not None and (score != "agreement_variance" or r.n_members >= 2)
    ]
    if not shown or not kinds:
        return None
    fig, axes = _grid(len(shown), len(kinds), 4.6, 2.7)
    for row, run in zip(axes, shown, strict=True):
        for i, (ax, kind) in enumerate(zip(row, kinds, strict=True)):
            _ood_panel(ax, run, kind, score, legend=i == 0)
        row[0].set_ylabel(
            "pairwise-Dice variance" if score == "agreement_variance" else "SV", fontsize=8
        )
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def _ood_panel(ax: Axes, run: RunResult, kind: str, score: str, legend: bool) -> None:
    """Boxes per structure and distortion group of one method and distortion kind."""
    results = (run.ood or {}).get("results", {})
    width = 0.8 / max(len(run.structures), 1)
    drawn = False
    for k, s in enumerate(run.structures):
        data, positions = [], []
        for g, (_, fraction, distorted) in enumerate(OOD_GROUPS):
            split = _ood_groups(results.get(rk.ood_condition(kind, fraction), {}), score, k)
            if split and split[int(distorted)].size:
                data.append(split[int(distorted)])
                positions.append(g - 0.4 + width * (k + 0.5))
        if data:
            drawn = True
            colour = OOD_STRUCTURE_COLOURS[k % len(OOD_STRUCTURE_COLOURS)]
            ax.boxplot(
                data,
                positions=positions,
                widths=width * 0.85,
                patch_artist=True,
                boxprops={"facecolor": colour, "alpha": 0.8},
                medianprops={"color": "k"},
                flierprops={"markersize": 2},
                manage_ticks=False,
            )
            ax.plot([], [], "s", color=colour, label=s)
    ax.set_xticks(range(len(OOD_GROUPS)), [g[0] for g in OOD_GROUPS], fontsize=7)
    ax.set_xlim(-0.6, len(OOD_GROUPS) - 0.4)
    ax.set_title(f"{run.label} — {kind}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if drawn:
        ax.set_ylim(bottom=0)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if legend:
            ax.legend(fontsize=7, loc="upper left")
    else:
        _no_data(ax, f"no {kind} distortion")


def reliability_figure(
    runs: Sequence[RunResult], structures: Sequence[str], path: str | Path
) -> Path | None:
    """Reliability diagrams per structure, all methods: vs the soft vote, and vs the
    analytic rater probability when any run has it. ``None`` when no run has curves."""
    references = [
        r
        for r in ("soft_vote", "rater_probability")
        if any(f"reliability_{r}" in (run.curves or {}) for run in runs)
    ]
    if not references:
        return None
    colours = method_colours(runs)
    fig, axes = _grid(len(references), len(structures), 3.8, 3.6)
    for row, ref in zip(axes, references, strict=True):
        for ax, s in zip(row, structures, strict=True):
            ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
            for run in runs:
                diagram = (run.curves or {}).get(f"reliability_{ref}", {}).get(s)
                if not diagram:
                    continue
                x = np.asarray(diagram["mean_predicted"], dtype=np.float64)
                y = np.asarray(diagram["observed_frequency"], dtype=np.float64)
                ok = np.isfinite(x) & np.isfinite(y)
                ece = run.value(f"ece_{ref}/{s}")
                ax.plot(
                    x[ok],
                    y[ok],
                    "o-",
                    ms=3,
                    lw=1.3,
                    color=colours[run.label],
                    label=f"{run.label} (ECE {ece:.3f})",
                )
            name = ref.replace("_", " ")
            ax.set(
                xlim=(0, 1),
                ylim=(0, 1),
                xlabel="mean predicted probability",
                ylabel=f"observed {name}",
                title=f"{s} vs {name}",
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def _run_spearman(run: RunResult, x: np.ndarray, y: np.ndarray, s: str) -> float:
    """The run's recorded image-level Spearman, else computed from its per-case SVs."""
    rho = run.value(rk.key(rk.IMAGE_SPEARMAN, s))
    if np.isfinite(rho):
        return rho
    from edue.metrics.disagreement import spearman  # the metrics import MONAI: only here

    return spearman(x, y)


def sv_scatter_figure(
    runs: Sequence[RunResult], structures: Sequence[str], path: str | Path
) -> Path | None:
    """Model SV against expert SV per image: one row per method, one column per structure,
    Spearman in each title. ``None`` when no run has ``per_case.csv``."""
    shown = [r for r in runs if r.per_case is not None]
    if not shown:
        return None
    colours = method_colours(runs)
    fig, axes = _grid(len(shown), len(structures), 3.3, 2.9)
    for row, run in zip(axes, shown, strict=True):
        for ax, s in zip(row, structures, strict=True):
            x = run.per_case.get(rk.key(rk.EXPERT_SV, s))  # type: ignore[union-attr]
            y = run.per_case.get(rk.key(rk.MODEL_SV, s))  # type: ignore[union-attr]
            if x is None or y is None:
                _no_data(ax)
                ax.set_title(f"{run.label} · {s}", fontsize=9)
                continue
            ax.scatter(x, y, s=10, alpha=0.7, color=colours[run.label], edgecolors="none")
            ax.set_title(
                f"{run.label} · {s}\nSpearman ρ = {_run_spearman(run, x, y, s):.2f}", fontsize=9
            )
            ax.set(xlabel="expert SV", ylabel="model SV")
            ax.ticklabel_format(style="sci", scilimits=(-2, 4))
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def referral_figure(
    runs: Sequence[RunResult], structures: Sequence[str], path: str | Path
) -> Path | None:
    """Share of test images referred against the guarantee level alpha, one panel per
    structure, all methods (``None`` when no run has a referral outcome).

    Solid: the thresholds certified on the calibration split, applied to the test
    images (the gate's referrals included); dotted: the least any threshold on the SV
    could refer on the test images in hindsight. Lower is better for the same alpha.
    """
    from matplotlib.lines import Line2D

    from edue.report.runs import referral_alphas

    alphas = referral_alphas(runs)
    if not alphas:
        return None
    colours = method_colours(runs)
    fig, axes = _grid(1, len(structures), 4.3, 3.7)
    for ax, s in zip(axes[0], structures, strict=True):
        handles = []
        for run in runs:
            rates = [run.value(rk.alpha_key(rk.REFERRAL_RATE, s, a)) for a in alphas]
            if not np.isfinite(rates).any():
                continue
            c = colours[run.label]
            (line,) = ax.plot(alphas, rates, color=c, lw=1.8, marker="o", label=run.label)
            oracle = [run.value(rk.alpha_key(rk.REFERRAL_ORACLE_RATE, s, a)) for a in alphas]
            ax.plot(alphas, oracle, color=c, lw=1, ls=":", alpha=0.8)
            handles.append(line)
        if not handles:
            _no_data(ax)
        handles.append(Line2D([], [], color="k", ls=":", lw=1, label="hindsight (test)"))
        ax.set(
            title=s,
            xlabel="α (largest share of poor among accepted)",
            ylabel="share of test images referred",
            ylim=(-0.03, 1.03),
            xticks=list(alphas),
        )
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def _d_auc_text(curve: Mapping[str, object]) -> str:
    """d-AUC for a legend; "n/a" when no image or every image is poor."""
    value = float(curve.get("d_auc", float("nan")))  # type: ignore[arg-type]
    if value != value:
        return f"n/a, {curve.get('n_poor', '?')}/{curve.get('n', '?')} poor"
    return f"{value:.3f}"
