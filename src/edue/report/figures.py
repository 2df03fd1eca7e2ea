"""Figures: overlays for ``predict`` and the paper-style sample panel.

Matplotlib runs headless (Agg); every figure is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edue.data.case import MultiRaterCase, expert_variance  # noqa: E402
from edue.io import atomic_path  # noqa: E402
from edue.prediction import Prediction  # noqa: E402

STRUCTURE_COLOURS = ("#00e5ff", "#ffd000", "#ff4d6d", "#7cff6b", "#c77dff")
RATER_CMAP = "tab10"


def display_image(image: np.ndarray) -> np.ndarray:
    """A ``[C, H, W]`` image (or the middle slice of a volume) as RGB or grey ``[H, W(, 3)]``."""
    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]
    if image.shape[0] == 3:
        out = np.moveaxis(image, 0, -1)
    else:
        out = image[0]
    lo, hi = np.percentile(out, [1, 99])
    return np.clip((out - lo) / (hi - lo + 1e-8), 0, 1)


def _middle(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Middle slice of a ``[..., D, H, W]`` volume along D; 2D arrays are returned as is."""
    return array[..., array.shape[-3] // 2, :, :] if spatial_dims == 3 else array


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save and close a figure atomically (PNG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def overlay_figure(image: np.ndarray, prediction: Prediction, path: str | Path,
                   title: str | None = None) -> Path:
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
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.2 * (1 + len(names)), 3.4))
    base = display_image(image)
    axes[0].imshow(base, cmap="gray")
    for k, name in enumerate(names):
        colour = STRUCTURE_COLOURS[k % len(STRUCTURE_COLOURS)]
        if mean[k].max() > 0.5 > mean[k].min():
            axes[0].contour(mean[k], levels=[0.5], colors=[colour], linewidths=1.2)
        axes[k + 1].imshow(base, cmap="gray")
        heat = axes[k + 1].imshow(np.ma.masked_less(unc[k], 1e-4), cmap="inferno", alpha=0.75,
                                  vmin=0, vmax=max(float(unc[k].max()), 1e-6))
        axes[k + 1].set_title(f"{name} uncertainty\nSV = {float(prediction.sv[k]):.1f}",
                              fontsize=9)
        fig.colorbar(heat, ax=axes[k + 1], fraction=0.046, pad=0.04)
    axes[0].set_title(title or "prediction", fontsize=9)
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path)


def sample_panel(case: MultiRaterCase, predictions: Mapping[str, Prediction],
                 path: str | Path, structure: int = 0) -> Path:
    """The paper's Figure-4 layout for one case and one structure.

    Columns: the input with every rater's contour; the expert variance heatmap; then per
    method its variance heatmap and predicted mask, titled with model SV next to expert SV.
    """
    import torch

    d = case.spatial_dims
    ev = _middle(expert_variance(torch.from_numpy(case.masks)).numpy()[structure], d)
    masks = _middle(case.masks[:, structure], d)
    n = 2 + 2 * len(predictions)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9))
    axes[0].imshow(display_image(case.image), cmap="gray")
    cmap = plt.get_cmap(RATER_CMAP)
    for r in range(masks.shape[0]):
        if masks[r].any() and not masks[r].all():
            axes[0].contour(masks[r], levels=[0.5], colors=[cmap(r % 10)], linewidths=0.8)
    name = case.structures[structure]
    axes[0].set_title(f"{case.case_id}\n{case.n_raters} raters ({name})", fontsize=8)
    vmax = max(float(ev.max()), 1e-6)
    axes[1].imshow(ev, cmap="inferno", vmin=0, vmax=vmax)
    axes[1].set_title(f"expert variance\nSV = {float(ev.sum()):.1f}", fontsize=8)
    col = 2
    for method, pred in predictions.items():
        unc = _middle(pred.uncertainty.numpy()[structure], d)
        axes[col].imshow(unc, cmap="inferno", vmin=0, vmax=max(float(unc.max()), 1e-6))
        axes[col].set_title(f"{method} uncertainty\nSV = {float(unc.sum()):.1f}", fontsize=8)
        axes[col + 1].imshow(_middle(pred.mean.numpy()[structure], d) > 0.5, cmap="gray")
        axes[col + 1].set_title(f"{method} mask", fontsize=8)
        col += 2
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path)


def sample_grid(cases: Sequence[MultiRaterCase], predictions: Sequence[Mapping[str, Prediction]],
                path: str | Path) -> Path:
    """Several :func:`sample_panel` rows (every structure of every case) in one PNG."""
    import tempfile

    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (case, preds) in enumerate(zip(cases, predictions, strict=True)):
            for k in range(len(case.structures)):
                p = sample_panel(case, preds, Path(tmp) / f"{i}_{k}.png", structure=k)
                with Image.open(p) as im:
                    rows.append(np.asarray(im.convert("RGB")))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    from edue.io import write_png

    write_png(path, np.concatenate(rows, axis=0))
    return Path(path)
