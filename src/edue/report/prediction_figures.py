"""The picture ``edue predict`` draws for each image (with array operations:
:mod:`edue.report.prediction_pictures`)."""

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
    from edue.report.prediction_pictures import overlay_picture, slices_picture

    if pred.spatial_dims == 3:
        return slices_picture(image, pred, out_dir / f"{stem}_slices.png", title)
    return overlay_picture(image, pred, out_dir / f"{stem}_overlay.png", title)
