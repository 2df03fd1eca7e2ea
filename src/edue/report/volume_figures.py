"""Figures for volumes: orthogonal slices through the most uncertain region.

Like :mod:`edue.report.figures`, this draws on standalone figures (no ``pyplot``, no
backend switch), so it is safe to import in a notebook and to call from several threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

from edue.prediction import Prediction
from edue.report.figures import STRUCTURE_COLOURS, new_figure, save_figure


def most_uncertain_voxel(uncertainty: np.ndarray, window: int = 5) -> tuple[int, int, int]:
    """Centre of the ``window³`` neighbourhood with the largest total uncertainty.

    Args:
        uncertainty: ``[K, D, H, W]`` (summed over structures).
    """
    total = uniform_filter(uncertainty.sum(0).astype(np.float64), size=window, mode="constant")
    index = np.unravel_index(int(np.argmax(total)), total.shape)
    return (int(index[0]), int(index[1]), int(index[2]))


def _normalise(volume: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(volume, [1, 99])
    return np.clip((volume - lo) / (hi - lo + 1e-8), 0, 1)


def orthogonal_slices_figure(
    image: np.ndarray, prediction: Prediction, path: str | Path, title: str | None = None
) -> Path:
    """Three orthogonal slices through the most uncertain region of a volume.

    Top row: the first image channel with the predicted contours of every structure;
    bottom row: the uncertainty (summed over structures) as a heatmap.

    Args:
        image: ``[C, D, H, W]``.
        prediction: members ``[S, K, D, H, W]``.
        path: output PNG.
    """
    mean = prediction.mean.numpy()
    uncertainty = prediction.uncertainty.numpy()
    centre = most_uncertain_voxel(uncertainty)
    base = _normalise(image[0])
    total = uncertainty.sum(0)
    vmax = max(float(total.max()), 1e-6)
    fig = new_figure(10, 6.6)
    axes = fig.subplots(2, 3)
    names = prediction.structures or tuple(f"s{k}" for k in range(mean.shape[0]))
    for col, axis in enumerate(range(3)):
        take: list[slice | int] = [slice(None)] * 3
        take[axis] = centre[axis]
        sl = tuple(take)
        axes[0, col].imshow(base[sl].T, cmap="gray", origin="lower")
        for k in range(mean.shape[0]):
            plane = mean[k][sl].T
            if plane.max() > 0.5 > plane.min():
                axes[0, col].contour(
                    plane,
                    levels=[0.5],
                    linewidths=1.0,
                    colors=[STRUCTURE_COLOURS[k % len(STRUCTURE_COLOURS)]],
                )
        axes[0, col].set_title(f"axis {axis} at {centre[axis]}", fontsize=9)
        heat = axes[1, col].imshow(total[sl].T, cmap="inferno", vmin=0, vmax=vmax, origin="lower")
        for ax in axes[:, col]:
            ax.axis("off")
    fig.colorbar(heat, ax=axes[1, :].tolist(), fraction=0.02, pad=0.02, label="uncertainty")
    sv = ", ".join(f"{n} SV {float(v):.1f}" for n, v in zip(names, prediction.sv, strict=True))
    fig.suptitle(
        f"{title or 'volume'} — most uncertain region at voxel {centre}\n{sv}", fontsize=10
    )
    return save_figure(fig, path, tight=False)
