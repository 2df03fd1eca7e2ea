"""The picture ``edue predict`` draws for each image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edue.prediction import Prediction


def write_prediction_figure(
    image: np.ndarray, pred: Prediction, out_dir: Path, stem: str, title: str
) -> Path:
    """Draw one prediction: contours and uncertainty over a 2D image
    (``STEM_overlay.png``), or orthogonal slices through the most uncertain region of a
    volume (``STEM_slices.png``).

    Args:
        image: the input ``[C, *spatial]``.
        pred: its prediction (members ``[S, K, *spatial]``).
        out_dir: output folder.
        stem: file name stem.
        title: figure title (usually the input's file name).

    Returns:
        The PNG written.
    """
    if pred.spatial_dims == 3:
        from edue.report.volume_figures import orthogonal_slices_figure

        path = out_dir / f"{stem}_slices.png"
        orthogonal_slices_figure(image, pred, path, title=title)
    else:
        from edue.report.figures import overlay_figure

        path = out_dir / f"{stem}_overlay.png"
        overlay_figure(image, pred, path, title=title)
    return path
