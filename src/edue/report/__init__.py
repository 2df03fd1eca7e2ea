"""The comparison report: tables, claims, figures and the self-contained HTML page.

The public names below are imported on first use, so ``import edue.report`` is cheap:
it loads neither matplotlib nor torch, and nothing in this package ever imports
``pyplot`` or changes matplotlib's backend (figures are drawn on standalone
:class:`matplotlib.figure.Figure` objects).

* :func:`compare_runs` — the whole ``edue compare``: tables, ``claims.json``, figures
  and ``report.html`` from evaluated runs (:func:`load_runs`, :class:`RunResult`).
* tables (:func:`comparison_tables`, :func:`to_markdown`, :func:`to_latex`,
  :func:`to_html`, :func:`flat_csv`) and claims (:func:`compute_claims`).
* the page (:func:`render_report` of a :class:`ReportContent`).
* figures: the comparison plots, the sample panel, and the pictures ``edue predict``
  draws (:func:`overlay_figure`, :func:`orthogonal_slices_figure`,
  :func:`write_prediction_figure`) and its gallery page (:func:`write_gallery`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from edue.report.claims import compute_claims
    from edue.report.compare import compare_runs, write_figures
    from edue.report.comparison_figures import (
        method_colours,
        ood_boxplot_figure,
        qc_curves_figure,
        reliability_figure,
        sv_scatter_figure,
    )
    from edue.report.figures import (
        new_figure,
        overlay_figure,
        sample_grid,
        sample_panel,
        save_figure,
    )
    from edue.report.gallery import write_gallery
    from edue.report.html import FigureEntry, ReportContent, render_report
    from edue.report.prediction_figures import write_prediction_figure
    from edue.report.render import to_html, to_latex, to_markdown
    from edue.report.runs import RunResult, load_run, load_runs
    from edue.report.tables import Cell, Table, comparison_tables, flat_csv
    from edue.report.volume_figures import orthogonal_slices_figure

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "compare_runs": "compare",
    "write_figures": "compare",
    "RunResult": "runs",
    "load_run": "runs",
    "load_runs": "runs",
    "compute_claims": "claims",
    "Cell": "tables",
    "Table": "tables",
    "comparison_tables": "tables",
    "flat_csv": "tables",
    "to_html": "render",
    "to_latex": "render",
    "to_markdown": "render",
    "FigureEntry": "html",
    "ReportContent": "html",
    "render_report": "html",
    "method_colours": "comparison_figures",
    "new_figure": "figures",
    "ood_boxplot_figure": "comparison_figures",
    "overlay_figure": "figures",
    "qc_curves_figure": "comparison_figures",
    "reliability_figure": "comparison_figures",
    "sample_grid": "figures",
    "sample_panel": "figures",
    "save_figure": "figures",
    "sv_scatter_figure": "comparison_figures",
    "orthogonal_slices_figure": "volume_figures",
    "write_prediction_figure": "prediction_figures",
    "write_gallery": "gallery",
}

__all__ = [
    "Cell",
    "FigureEntry",
    "ReportContent",
    "RunResult",
    "Table",
    "compare_runs",
    "comparison_tables",
    "compute_claims",
    "flat_csv",
    "load_run",
    "load_runs",
    "method_colours",
    "new_figure",
    "ood_boxplot_figure",
    "orthogonal_slices_figure",
    "overlay_figure",
    "qc_curves_figure",
    "reliability_figure",
    "render_report",
    "sample_grid",
    "sample_panel",
    "save_figure",
    "sv_scatter_figure",
    "to_html",
    "to_latex",
    "to_markdown",
    "write_figures",
    "write_gallery",
    "write_prediction_figure",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
