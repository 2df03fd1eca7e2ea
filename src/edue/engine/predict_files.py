"""``edue predict``: files in, probability / uncertainty maps, overlays and SV out.

For each input ``NAME.ext`` the output folder receives

* ``NAME_probability.png`` / ``NAME_uncertainty.png`` per structure for 2D images
  (``…_<structure>.png``; probability scaled 0–1 → 0–255, uncertainty 0–0.25 → 0–255),
  or ``NAME_probability.nii.gz`` / ``NAME_uncertainty.nii.gz`` (structures in the last
  axis, the input's affine) for NIfTI input;
* ``NAME.npz`` with the raw arrays (members, mean, variance, uncertainty, entropy, sv);
* a picture per image when a figure writer is given (the command line passes
  :func:`edue.report.prediction_figures.write_prediction_figure`: ``NAME_overlay.png``
  for 2D input, ``NAME_slices.png`` for volumes);

and ``predictions.json`` lists every image's SV per structure and any failures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edue.engine.infer import Predictor
from edue.errors import DataError
from edue.io import (
    NIFTI_SUFFIXES,
    SUPPORTED_SUFFIXES,
    read_image,
    suffix_of,
    to_uint8,
    write_json,
    write_nifti,
    write_npz,
    write_png,
)
from edue.prediction import Prediction

UNCERTAINTY_PNG_MAX = 0.25  # a probability's variance never exceeds 1/4 for S → ∞


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Expand folders into their supported image files (sorted); keep files as given.

    A file named twice (directly, or also inside a named folder) is predicted once.

    Raises:
        DataError: an input that does not exist, a folder with no images, or two
            different inputs that would write outputs of the same name.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and suffix_of(p) in SUPPORTED_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                raise DataError("folder holds no supported image files", path)
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise DataError("input not found", path)
    unique = list({p.resolve(): p for p in reversed(files)}.values())[::-1]
    by_stem: dict[str, Path] = {}
    for path in unique:
        other = by_stem.setdefault(stem_of(path), path)
        if other is not path:
            raise DataError(
                f"would write its outputs under the same name '{stem_of(path)}' as {other}; "
                "predict them into different folders or rename one",
                path,
            )
    return unique


def stem_of(path: Path) -> str:
    """File name without its (possibly double) suffix."""
    name = path.name
    return name[: -len(suffix_of(path))] if suffix_of(path) else name


#: Draws the picture of one prediction: ``(image, prediction, out_dir, stem, title)``.
FigureWriter = Callable[[np.ndarray, Prediction, Path, str, str], object]


def write_prediction(
    pred: Prediction,
    source: Path,
    out: Path,
    affine: np.ndarray | None,
) -> dict[str, Any]:
    """Write the arrays and maps of one image; returns its summary entry."""
    stem = stem_of(source)
    names = pred.structures or tuple(f"s{k}" for k in range(pred.mean.shape[0]))
    arrays: dict[str, np.ndarray] = pred.to_numpy()
    write_npz(out / f"{stem}.npz", **arrays)  # type: ignore[arg-type]
    if suffix_of(source) in NIFTI_SUFFIXES:
        write_nifti(
            out / f"{stem}_probability.nii.gz",
            np.moveaxis(arrays["mean"], 0, -1).astype(np.float32),
            affine,
        )
        write_nifti(
            out / f"{stem}_uncertainty.nii.gz",
            np.moveaxis(arrays["uncertainty"], 0, -1).astype(np.float32),
            affine,
        )
    else:
        for k, name in enumerate(names):
            write_png(out / f"{stem}_probability_{name}.png", to_uint8(arrays["mean"][k], 1.0))
            write_png(
                out / f"{stem}_uncertainty_{name}.png",
                to_uint8(arrays["uncertainty"][k], UNCERTAINTY_PNG_MAX),
            )
    return {"input": str(source), "sv": {n: float(v) for n, v in zip(names, pred.sv, strict=True)}}


@dataclass
class PredictResult:
    """What ``predict_files`` did.

    Attributes:
        out_dir: the output folder.
        done: one entry per predicted image (``input``, ``sv`` per structure).
        failed: one entry per skipped input (``input``, ``reason``).
    """

    out_dir: Path
    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


def predict_files(
    checkpoint: str,
    inputs: Sequence[str],
    out_dir: str,
    device: str = "auto",
    skip_bad: bool = False,
    figure_writer: FigureWriter | None = None,
) -> PredictResult:
    """Predict every input and write its outputs and ``predictions.json``.

    Args:
        checkpoint: checkpoint file or run folder.
        inputs: image files or folders.
        out_dir: output folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        skip_bad: record unreadable inputs in ``failed`` and go on.
        figure_writer: draws a picture per image (``None``: no pictures).

    Raises:
        DataError / CheckpointError: the first bad input (unless ``skip_bad``) or a bad
            checkpoint.
    """
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    files = collect_inputs(inputs)
    result = PredictResult(Path(out_dir))
    result.out_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        try:
            # NIfTI tells its own dimensionality; 2D formats follow the model
            dims = None if suffix_of(path) in NIFTI_SUFFIXES else predictor.spatial_dims
            image, meta = read_image(path, dims)
            predictor.check_image(image, str(path))
            pred = predictor.predict(image, case_id=stem_of(path))
            result.done.append(write_prediction(pred, path, result.out_dir, meta.affine))
            if figure_writer is not None:
                figure_writer(image, pred, result.out_dir, stem_of(path), path.name)
        except DataError as exc:
            if not skip_bad:
                raise
            result.failed.append({"input": str(path), "reason": exc.reason})
    summary = {
        "checkpoint": str(checkpoint),
        "method": predictor.name,
        "structures": list(predictor.structures),
        "predictions": result.done,
        "failed": result.failed,
    }
    write_json(result.out_dir / "predictions.json", summary)
    return result
