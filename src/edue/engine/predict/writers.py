"""What ``edue predict`` writes for one image: the NPZ of every array, the probability and
uncertainty maps (PNG, or NIfTI with the input's affine) and its ``predictions.json``
entry. Only NumPy, zlib, PNG and NIfTI encoding: safe in helper threads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edue.io import NIFTI_SUFFIXES, suffix_of, to_uint8, write_nifti, write_npz, write_png
from edue.prediction import Prediction, structure_names

UNCERTAINTY_PNG_MAX = 0.25  # a probability's variance never exceeds 1/4 for S → ∞


def stem_of(path: Path) -> str:
    """File name without its (possibly double) suffix."""
    name = path.name
    return name[: -len(suffix_of(path))] if suffix_of(path) else name


#: Draws the picture of one prediction: ``(image, prediction, out_dir, stem, title)``.
FigureWriter = Callable[[np.ndarray, Prediction, Path, str, str], object]


def output_structures(pred: Prediction) -> tuple[str, ...]:
    """The prediction's structure names (:func:`~edue.prediction.structure_names`)."""
    return structure_names(pred.mean.shape[0], pred.structures)


def prediction_entry(pred: Prediction, source: Path, output: str | None = None) -> dict[str, Any]:
    """The summary entry of one image in ``predictions.json``: its input, the name its
    outputs are written under (relative to the output folder) and its SV."""
    names = output_structures(pred)
    return {
        "input": str(source),
        "output": output if output is not None else stem_of(source),
        "sv": {n: float(v) for n, v in zip(names, pred.sv, strict=True)},
    }


def write_arrays(
    arrays: dict[str, np.ndarray],
    names: Sequence[str],
    source: Path,
    out: Path,
    affine: np.ndarray | None,
    stem: str | None = None,
    volume: bool | None = None,
) -> None:
    """Write the NPZ and the probability / uncertainty maps of one image.

    Only NumPy, zlib, PNG and NIfTI encoding: safe in a helper thread.

    Args:
        arrays: :meth:`Prediction.to_numpy` of the image's prediction.
        names: its structure names.
        source: the input file (its name gives the outputs' names, its type their format).
        out: output folder.
        affine: the input's affine (NIfTI), else ``None``.
        stem: the outputs' name relative to ``out`` (default: the input's stem); a name
            with folders (``case_a/image``) mirrors the inputs' tree.
        volume: NIfTI maps (``True``) or PNG maps per structure (``False``); default:
            NIfTI for NIfTI input.
    """
    stem = stem or stem_of(source)
    (out / stem).parent.mkdir(parents=True, exist_ok=True)
    # stored, not deflated: float maps shrink ~10 % for ~30x the CPU time of writing
    write_npz(out / f"{stem}.npz", compress=False, **arrays)  # type: ignore[arg-type]
    if volume is None:
        volume = suffix_of(source) in NIFTI_SUFFIXES
    if volume:
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


def write_prediction(
    pred: Prediction,
    source: Path,
    out: Path,
    affine: np.ndarray | None,
) -> dict[str, Any]:
    """Write the arrays and maps of one image; returns its summary entry."""
    write_arrays(pred.to_numpy(), output_structures(pred), source, out, affine)
    return prediction_entry(pred, source)
