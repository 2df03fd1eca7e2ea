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

With a calibration (``calibration.json`` beside the checkpoint, written by ``edue
calibrate``, or a file given explicitly), each image's entry also holds its referral
decision (:meth:`edue.engine.referral.calibration.Calibration.decide`): per structure the SV, its
percentile among the calibration images, ``refer`` with the reasons, and the expected
experts' SV with a range; the distribution-shift gate's score is read from the same
forward pass (hooks on the encoder blocks). ``predictions.json`` then has a ``referral``
summary (how many images were referred and why). A gallery writer, when given, makes a
page of the run from ``predictions.json`` (the command line passes
:func:`edue.report.gallery.write_gallery`: ``predictions.html``).

The work runs as a pipeline of three stages, so that the model never waits for files:

* a reader thread reads the inputs ahead of the model, in input order, into a bounded
  read-ahead;
* the calling thread checks each image, groups consecutive images of equal type (NIfTI
  or not) and shape into batches of up to ``batch_size`` and runs the model on them
  (:meth:`~edue.engine.inference.predictor.Predictor.predict_batch`), derives every array of each
  prediction (mean, variance, entropy, SV), and hands them over;
* a small pool of writer threads writes the files (zlib and PNG compression, fsync; all
  of which release the GIL) and draws the pictures, behind a bounded backlog.

The model and every tensor computation stay on the calling thread, so its results do
not depend on the helper threads: with ``batch_size=1`` the outputs are those of
predicting the images one by one. A batch of several images gives the same outputs
when the backend's kernels do not depend on the batch size, which PyTorch does not
promise (on the CPU it picks another convolution kernel for a single small image), and
a method that samples its members at random (MC dropout) draws them per batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edue.engine.inference.predictor import Predictor
from edue.engine.predict.pipeline import DEFAULT_WRITER_THREADS, _Pipeline
from edue.engine.predict.writers import (
    FigureWriter,
    output_structures,
    prediction_entry,
    stem_of,
    write_arrays,
    write_prediction,
)
from edue.errors import ConfigError, DataError
from edue.io import SUPPORTED_SUFFIXES, suffix_of, write_json

if TYPE_CHECKING:
    from edue.engine.predict.dicom import DicomSeries
    from edue.engine.referral.calibration import Calibration

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FigureWriter",
    "GalleryWriter",
    "PredictResult",
    "collect_inputs",
    "predict_files",
    "prediction_entry",
    "stem_of",
    "output_structures",
    "write_arrays",
    "write_prediction",
]

#: Images per forward pass unless told otherwise (``edue predict --batch-size``).
DEFAULT_BATCH_SIZE = 8

#: Makes a page of a finished run: ``(out_dir, content of predictions.json)`` -> its path.
GalleryWriter = Callable[[Path, Mapping[str, Any]], Path]


def collect_inputs(inputs: Sequence[str], dicom: list[Path] | None = None) -> list[Path]:
    """Expand folders into their supported image files (sorted); keep files as given.

    With ``dicom`` (a list), the folders holding DICOM files and the DICOM files given
    are appended to it (:func:`~edue.engine.predict.dicom.holds_dicom`), for
    :func:`dicom_inputs` to read as series, and a folder holding only DICOM is no error.

    A folder in the project's own dataset layout (it holds ``dataset.json``) gives each
    case's ``image.*`` file, not the raters' masks. A file named twice (directly, or
    also inside a named folder) is predicted once.

    Raises:
        DataError: an input that does not exist, a folder with no images, or two
            different inputs that would write outputs of the same name.
    """
    from edue.engine.predict.dicom import holds_dicom  # pydicom is imported on reading

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            dataset = (path / "dataset.json").is_file()  # the project's own layout
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and suffix_of(p) in SUPPORTED_SUFFIXES
                and not p.name.startswith(".")
                and (not dataset or stem_of(p) == "image")  # not the raters' masks
            )
            is_dicom = dicom is not None and holds_dicom(path)
            if is_dicom:
                dicom.append(path)  # type: ignore[union-attr]
            if not found and not is_dicom:
                raise DataError("folder holds no supported image files", path)
            files.extend(found)
        elif path.exists():
            if dicom is not None and holds_dicom(path):
                dicom.append(path)
            else:
                files.append(path)
        else:
            raise DataError("input not found", path)
    unique = list({p.resolve(): p for p in reversed(files)}.values())[::-1]
    output_names(unique)  # two inputs that cannot be told apart fail here, before work
    return unique


def dicom_inputs(
    roots: Sequence[Path], failed: list[dict[str, str]] | None = None
) -> dict[Path, DicomSeries]:
    """The DICOM series of folders (and files) of DICOM, each under the path its outputs
    are named after: ``<folder>/<series name>`` (a name made of the series number,
    modality, description and a hash of its UID; see
    :func:`~edue.engine.predict.dicom.find_dicom_series`).

    Args:
        roots: folders holding DICOM files, and DICOM files.
        failed: when given (``--skip-bad``), an unreadable file or a series that cannot
            be stacked is appended to it (``input``, ``reason``) and left out.

    Raises:
        ConfigError: pydicom is not installed (names the ``edue[dicom]`` extra).
        DataError: an unreadable DICOM file or a series that cannot be stacked (mixed
            orientations, uneven or repeated slice positions), naming the file.
    """
    from edue.engine.predict.dicom import find_dicom_series

    found: dict[Path, DicomSeries] = {}
    for root in roots:
        folder = root if root.is_dir() else root.parent
        errors: list[DataError] = []
        for series in find_dicom_series(root, None if failed is None else errors):
            found[folder / series.name] = series
        if failed is not None:
            failed += [{"input": str(e.path or root), "reason": e.reason} for e in errors]
    return found


def output_names(files: Sequence[Path]) -> list[str]:
    """The name each input's outputs are written under, relative to the output folder.

    Inputs whose file stems differ keep their stem (``scan1.png`` → ``scan1``). When two
    share a stem — a dataset in the project's own layout, ``case_a/image.png`` and
    ``case_b/image.png`` — every output mirrors the inputs' folder tree below their
    common folder (``case_a/image``, ``case_b/image``), so a whole dataset predicts in
    one call.

    Raises:
        DataError: two inputs would still write under the same name (``a.png`` and
            ``a.tif`` in one folder).
    """
    stems = [stem_of(p) for p in files]
    if len(set(stems)) == len(stems):
        return stems
    parents = [str(p.resolve().parent) for p in files]
    common = Path(os.path.commonpath(parents)) if parents else Path()
    names = [(p.resolve().parent.relative_to(common) / stem_of(p)).as_posix() for p in files]
    seen: dict[str, Path] = {}
    for path, name in zip(files, names, strict=True):
        other = seen.setdefault(name, path)
        if other is not path:
            raise DataError(
                f"would write its outputs under the same name '{name}' as {other}; "
                "predict them into different folders or rename one",
                path,
            )
    return names


@dataclass
class PredictResult:
    """What ``predict_files`` did.

    Attributes:
        out_dir: the output folder.
        done: one entry per predicted image (``input``, ``sv`` per structure; with a
            calibration also the referral decision).
        failed: one entry per skipped input (``input``, ``reason``).
        referral: how many images were referred and why (``None`` without calibration).
        calibration: the calibration file used, if any.
        gallery: the page written by the gallery writer, if any.
        grid: the training grid inputs were resampled to, in words (see
            :mod:`edue.engine.inference.grid`); the entries of resampled inputs hold
            ``resampled``.
    """

    out_dir: Path
    done: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    referral: dict[str, Any] | None = None
    calibration: Path | None = None
    gallery: Path | None = None
    grid: str = ""

    @property
    def resampled(self) -> int:
        """How many inputs were predicted on the training grid and resampled back."""
        return sum("resampled" in entry for entry in self.done)


def predict_files(
    checkpoint: str,
    inputs: Sequence[str],
    out_dir: str,
    device: str = "auto",
    skip_bad: bool = False,
    figure_writer: FigureWriter | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    writer_threads: int = DEFAULT_WRITER_THREADS,
    calibration: str | Path | None = None,
    use_calibration: bool = True,
    gallery_writer: GalleryWriter | None = None,
    dicom_out: bool = False,
) -> PredictResult:
    """Predict every input and write its outputs and ``predictions.json``.

    Reading, prediction and writing overlap (see the module's description).
    ``predictions.json`` lists the inputs in their order; with ``batch_size=1`` every
    output is, byte for byte, that of predicting the inputs one by one, and larger
    batches give the same where the backend's kernels do not depend on the batch size.

    Args:
        checkpoint: checkpoint file or run folder.
        inputs: image files or folders.
        out_dir: output folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        skip_bad: record unreadable inputs in ``failed`` and go on.
        figure_writer: draws a picture per image (``None``: no pictures); called from a
            writer thread, so it must not use global state such as ``pyplot``.
        batch_size: at most this many consecutive images of equal type and shape per
            forward pass (1: one image per pass).
        writer_threads: threads writing outputs and drawing pictures.
        calibration: a calibration file to use (it must exist); by default the
            ``calibration.json`` beside the checkpoint, when there is one.
        use_calibration: ``False``: no referral decisions, whatever file exists.
        gallery_writer: makes a page of the run once ``predictions.json`` is written.
        dicom_out: for each DICOM series also a DICOM Segmentation and Parametric Maps
            (:func:`~edue.engine.predict.dicom_out.write_dicom_outputs`), listed in its
            entry under ``dicom``.

    Raises:
        DataError / CheckpointError: the first bad input (unless ``skip_bad``) or a bad
            checkpoint. The pipeline is stopped first: the outputs of the inputs before
            the bad one are all written (an unreadable input stops it before anything
            after it is predicted), ``predictions.json`` is not written, and no helper
            thread is left running.
        ConfigError: ``batch_size`` or ``writer_threads`` below 1.
        EdueError: the calibration file is missing (when given), unreadable, malformed
            or fitted for another model; nothing is predicted then.
    """
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    if writer_threads < 1:
        raise ConfigError(f"writer threads must be at least 1, got {writer_threads}")
    predictor = load_predictor(checkpoint, device)
    referral = _checked_calibration(predictor, checkpoint, calibration) if use_calibration else None
    roots: list[Path] = []
    files = collect_inputs(inputs, roots)
    unreadable: list[dict[str, str]] = []
    series = dicom_inputs(roots, unreadable if skip_bad else None)
    files = [*files, *series]
    if dicom_out and not series and not unreadable:
        raise ConfigError("--dicom-out: none of the inputs is DICOM")
    result = PredictResult(Path(out_dir), grid=predictor.grid.describe())
    result.out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = _Pipeline(
        predictor,
        result.out_dir,
        skip_bad,
        figure_writer,
        batch_size,
        writer_threads,
        calibration=referral,
        dicom=series,
        dicom_out=dicom_out,
    )
    done, failed = pipeline.run(files, output_names(files))
    result.done.extend(done)
    result.failed.extend([*unreadable, *failed])
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "method": predictor.name,
        "structures": list(predictor.structures),
        "training_grid": predictor.grid.to_dict(),
        "predictions": result.done,
        "failed": result.failed,
    }
    if referral is not None:
        from edue.engine.referral.calibration import referral_summary

        result.calibration = referral.path
        result.referral = {
            "calibration": str(referral.path),
            "alpha": referral.alpha,
            "delta": referral.delta,
            "poor": referral.poor_levels,
            "n_calibration": len(referral.case_ids),
            "gate": referral.gate is not None,
            **referral_summary(result.done),
        }
        summary["referral"] = result.referral
    write_json(result.out_dir / "predictions.json", summary)
    if gallery_writer is not None:
        result.gallery = gallery_writer(result.out_dir, summary)
    return result


def load_predictor(model: str | Path, device: str = "auto") -> Predictor:
    """A checkpoint's :class:`Predictor`, or an exported ``.onnx`` model's
    :class:`~edue.engine.predict.onnx_model.OnnxPredictor` (ONNX Runtime, CPU).

    Raises:
        CheckpointError: a missing or unreadable checkpoint, model or sidecar.
        ConfigError: an ONNX model without ``onnxruntime`` installed.
    """
    from edue.engine.predict.onnx_model import OnnxPredictor, is_onnx_model

    if is_onnx_model(model):
        return OnnxPredictor(model)  # type: ignore[return-value]  # the same interface
    return Predictor.from_checkpoint(model, device=device)


def _checked_calibration(
    predictor: Predictor, checkpoint: str | Path, explicit: str | Path | None
) -> Calibration | None:
    """The calibration to decide with, checked against the model (see ``predict_files``)."""
    from edue.engine.referral.calibration import find_calibration

    found = find_calibration(checkpoint, explicit)
    if found is not None:
        found.check_model(predictor)
    return found
