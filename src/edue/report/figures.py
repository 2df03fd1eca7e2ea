"""Figures of cases: the drawing primitives every figure shares (:func:`new_figure`,
:func:`save_figure`, the structure colours), the overlay ``predict`` writes per image and
the paper-style sample panel. The plots comparing evaluated runs are in
:mod:`edue.report.comparison_figures`. Every figure is written atomically.

Figures are plain :class:`matplotlib.figure.Figure` objects drawn on their own Agg
canvas: nothing here imports ``pyplot`` or calls ``matplotlib.use``, so importing edue
never changes the plotting backend a user (or a notebook) chose, no figure is registered
in pyplot's global figure list, and figures may be drawn from several threads at once
(one figure per thread).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from edue.data.case import MultiRaterCase, expert_variance
from edue.io import atomic_path
from edue.prediction import Prediction

STRUCTURE_COLOURS = ("#00e5ff", "#ffd000", "#ff4d6d", "#7cff6b", "#c77dff")
RATER_CMAP = "tab10"


def display_image(image: np.ndarray) -> np.ndarray:
    """A ``[C, H, W]`` image (or the middle slice of a volume) as RGB or grey ``[H, W(, 3)]``."""
    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]
    out = np.moveaxis(image, 0, -1) if image.shape[0] == 3 else image[0]
    lo, hi = np.percentile(out, [1, 99])
    return np.clip((out - lo) / (hi - lo + 1e-8), 0, 1)


def _middle(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Middle slice of a ``[..., D, H, W]`` volume along D; 2D arrays are returned as is."""
    return array[..., array.shape[-3] // 2, :, :] if spatial_dims == 3 else array


def new_figure(width: float, height: float) -> Figure:
    """A standalone figure of ``width`` × ``height`` inches on its own Agg canvas.

    Unlike ``pyplot.figure`` it touches no global state: the figure is not registered
    with pyplot, the backend is left alone, and it is freed like any other object.
    """
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: layout and PNG output
    return fig


def colormap(name: str) -> Colormap:
    """A registered colormap by name (without going through pyplot)."""
    return matplotlib.colormaps[name]


def save_figure(fig: Figure, path: str | Path, dpi: int = 110, tight: bool = True) -> Path:
    """Save and close a figure atomically (PNG); ``tight`` crops to the drawn content
    (costs a second layout pass).

    A figure made by :func:`new_figure` needs no closing; one that a caller made with
    ``pyplot`` is closed in pyplot's figure list as before.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None, format="png")
    if getattr(fig.canvas, "manager", None) is not None and "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return Path(path)


def overlay_figure(
    image: np.ndarray, prediction: Prediction, path: str | Path, title: str | None = None
) -> Path:
    """Image with predicted contours, and one uncertainty heatmap per structure.

    Args:
        image: ``[C, *sp]``.
        prediction: its prediction.
        path: output PNG.
    """
    d = prediction.spatial_dims
    mean = _middle(prediction.mean.numpy(), d)
    unc = _middle(prediction.uncertainty.numpy(), d)
    names = prediction.structures or tuple(f"s{k}" for k in range(mean.shape[0]))
    fig = new_figure(3.2 * (1 + len(names)), 3.4)
    axes = fig.subplots(1, 1 + len(names), squeeze=False)[0]
    base = display_image(image)
    axes[0].imshow(base, cmap="gray")
    for k, name in enumerate(names):
        colour = STRUCTURE_COLOURS[k % len(STRUCTURE_COLOURS)]
        if mean[k].max() > 0.5 > mean[k].min():
            axes[0].contour(mean[k], levels=[0.5], colors=[colour], linewidths=1.2)
        axes[k + 1].imshow(base, cmap="gray")
        heat = axes[k + 1].imshow(
            np.ma.masked_less(unc[k], 1e-4),
            cmap="inferno",
            alpha=0.75,
            vmin=0,
            vmax=max(float(unc[k].max()), 1e-6),
        )
        axes[k + 1].set_title(f"{name} uncertainty\nSV = {float(prediction.sv[k]):.1f}", fontsize=9)
        fig.colorbar(heat, ax=axes[k + 1], fraction=0.046, pad=0.04)
    axes[0].set_title(title or "prediction", fontsize=9)
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path)


def corner_text(ax: Axes, text: str, top: bool = False) -> None:
    ax.text(
        0.03,
        0.97 if top else 0.03,
        text,
        transform=ax.transAxes,
        fontsize=7,
        color="white",
        va="top" if top else "bottom",
        ha="left",
        bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "edgecolor": "none"},
    )


def _sample_row(
    axes: Sequence[Axes],
    case: MultiRaterCase,
    predictions: Mapping[str, Prediction],
    structure: int,
    titles: bool = True,
) -> None:
    """Draw one Figure-4 row (see :func:`sample_panel`) into ``2 + 2 M`` axes.

    SV values are those of the whole image or volume; volumes show their middle slice.
    """
    import torch

    d = case.spatial_dims
    ev_full = expert_variance(torch.from_numpy(case.masks)).numpy()[structure]
    ev, masks = _middle(ev_full, d), _middle(case.masks[:, structure], d)
    axes[0].imshow(display_image(case.image), cmap="gray")
    cmap = colormap(RATER_CMAP)
    for r in range(masks.shape[0]):
        if masks[r].any() and not masks[r].all():
            axes[0].contour(masks[r], levels=[0.5], colors=[cmap(r % 10)], linewidths=0.8)
    corner_text(
        axes[0], f"{case.case_id}\n{case.structures[structure]}, {case.n_raters} raters", top=True
    )
    axes[1].imshow(ev, cmap="inferno", vmin=0, vmax=max(float(ev.max()), 1e-6))
    corner_text(axes[1], f"SV {float(ev_full.sum()):.1f}")
    headers = ["input + raters", "expert variance"]
    col = 2
    for method, pred in predictions.items():
        unc = _middle(pred.uncertainty.numpy()[structure], d)
        axes[col].imshow(unc, cmap="inferno", vmin=0, vmax=max(float(unc.max()), 1e-6))
        corner_text(axes[col], f"SV {float(pred.sv[structure]):.1f}")
        axes[col + 1].imshow(
            _middle(pred.mean.numpy()[structure], d) > 0.5, cmap="gray", vmin=0, vmax=1
        )
        headers += [f"{method}\nuncertainty", f"{method}\nmask"]
        col += 2
    for ax, header in zip(axes, headers, strict=False):
        if titles:
            ax.set_title(header, fontsize=8)
    for ax in axes:
        ax.axis("off")


def sample_panel(
    case: MultiRaterCase,
    predictions: Mapping[str, Prediction],
    path: str | Path,
    structure: int = 0,
) -> Path:
    """The paper's Figure-4 layout for one case and one structure.

    Columns: the input with every rater's contour; the expert variance heatmap; then per
    method its uncertainty heatmap (titled with its SV, next to the expert SV) and its
    predicted mask. Volumes show their middle slice.
    """
    n = 2 + 2 * len(predictions)
    fig = new_figure(1.9 * n, 2.2)
    axes = fig.subplots(1, n, squeeze=False)
    _sample_row(axes[0], case, predictions, structure)
    return save_figure(fig, path)


def sample_grid(
    cases: Sequence[MultiRaterCase],
    predictions: Sequence[Mapping[str, Prediction]],
    path: str | Path,
) -> Path:
    """Several :func:`sample_panel` rows (every structure of every case) in one PNG.

    Rows with fewer methods than the widest row leave their last columns blank.
    """
    rows = [
        (case, preds, k)
        for case, preds in zip(cases, predictions, strict=True)
        for k in range(len(case.structures))
    ]
    if not rows:
        raise ValueError("sample_grid needs at least one case")
    n = 2 + 2 * max(len(preds) for _, preds, _ in rows)
    size, head = 1.7, 0.4
    fig = new_figure(size * n, size * len(rows) + head)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, (ax_row, (case, preds, k)) in enumerate(zip(axes, rows, strict=True)):
        _sample_row(ax_row, case, preds, k, titles=i == 0)
        for ax in ax_row[2 + 2 * len(preds) :]:
            ax.axis("off")
    fig.subplots_adjust(
        left=0.005,
        right=0.995,
        bottom=0.005,
        wspace=0.04,
        hspace=0.04,
        top=1 - head / (size * len(rows) + head),
    )
    return save_figure(fig, path, tight=False)
