"""``edue predict``: files in, probability / uncertainty maps, overlays and SV out.

For each input ``NAME.ext`` the output folder receives

* ``NAME_probability.png`` / ``NAME_uncertainty.png`` per structure for 2D images
  (``…_<structure>.png``; probability scaled 0–1 → 0–255, uncertainty 0–0.25 → 0–255),
  or ``NAME_probability.nii.gz`` / ``NAME_uncertainty.nii.gz`` (structures in the last
  axis, the input's affine) for NIfTI input;
* ``NAME.npz`` with the raw arrays (members, mean, variance, uncertainty, entropy, sv);
* ``NAME_overlay.png`` (image, predicted contours, uncertainty heatmaps) for 2D input,
  ``NAME_slices.png`` (orthogonal slices through the most uncertain region) for volumes;

and ``predictions.json`` lists every image's SV per structure and any failures.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
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

    Raises:
        DataError: an input that does not exist, or a folder with no images.
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
    return files


def stem_of(path: Path) -> str:
    """File name without its (possibly double) suffix."""
    name = path.name
    return name[: -len(suffix_of(path))] if suffix_of(path) else name


def write_prediction(
    pred: Prediction,
    image: np.ndarray,
    source: Path,
    out: Path,
    affine: np.ndarray | None,
    figures: bool,
) -> dict[str, Any]:
    """Write every output of one image; returns its summary entry."""
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
    if figures and pred.spatial_dims == 3:
        from edue.report.volume_figures import orthogonal_slices_figure

        orthogonal_slices_figure(image, pred, out / f"{stem}_slices.png", title=source.name)
    elif figures:
        from edue.report.figures import overlay_figure

        overlay_figure(image, pred, out / f"{stem}_overlay.png", title=source.name)
    return {"input": str(source), "sv": {n: float(v) for n, v in zip(names, pred.sv, strict=True)}}


def predict_files(
    checkpoint: str,
    inputs: Sequence[str],
    out_dir: str,
    device: str = "auto",
    skip_bad: bool = False,
    figures: bool = True,
) -> int:
    """Predict every input; returns the exit status (0 all good, 1 some skipped).

    Raises:
        DataError / CheckpointError: the first bad input (unless ``skip_bad``) or a bad
            checkpoint.
    """
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    files = collect_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for path in files:
        try:
            # NIfTI tells its own dimensionality; 2D formats follow the model
            dims = None if suffix_of(path) in NIFTI_SUFFIXES else predictor.spatial_dims
            image, meta = read_image(path, dims)
            predictor.check_image(image, str(path))
            pred = predictor.predict(image, case_id=stem_of(path))
            done.append(write_prediction(pred, image, path, out, meta.affine, figures))
        except DataError as exc:
            if not skip_bad:
                raise
            failed.append({"input": str(path), "reason": exc.reason})
            print(f"edue: skipped {path}: {exc.reason}", file=sys.stderr)
    summary = {
        "checkpoint": str(checkpoint),
        "method": predictor.name,
        "structures": list(predictor.structures),
        "predictions": done,
        "failed": failed,
    }
    write_json(out / "predictions.json", summary)
    print(f"predicted {len(done)} image(s), {len(failed)} failed; outputs in {out}")
    for item in failed:
        print(f"  failed: {item['input']}: {item['reason']}")
    return 1 if failed else 0
