"""DICOM out for ``edue predict --dicom-out``: a prediction written back as a DICOM
Segmentation and Parametric Maps that reference the source instances of its series
(:class:`~edue.engine.predict.dicom.DicomSeries`, read by
:func:`~edue.engine.predict.dicom.find_dicom_series`).

:func:`write_dicom_outputs` gives ``<stem>_seg.dcm``, a fractional (probability) DICOM
Segmentation with one segment per structure, and ``<stem>_uncertainty_<structure>.dcm``,
one float32 Parametric Map per structure; both derive frame by frame from the source
instances. highdicom (0.28) writes Parametric Maps only of images with a frame of
reference (CT, MR, PT, …), so a projection radiograph gets its Segmentation alone, and it
derives no Segmentation from Ophthalmic Photography instances (a multi-frame IOD without
functional groups): a one-line :class:`~edue.errors.DataError`. highdicom is imported
when first needed (``pip install 'edue[dicom]'``); nothing keeps state between calls:
safe in helper threads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edue.engine.predict.dicom import DicomSeries, _int_or_none, require
from edue.errors import DataError
from edue.io import atomic_path

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: the code every segment's property category and type carry (edue knows only names)
SEGMENT_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
SEGMENT_TYPE = ("85756007", "SCT", "Tissue")
#: the quantity of the Parametric Maps: the variance of the structure's probability
UNCERTAINTY_QUANTITY = ("C1711260", "UMLS", "Variance")
SEG_SERIES_OFFSET = 1000  # output series numbers: the source's plus these
UNCERTAINTY_SERIES_OFFSET = 2000


def write_dicom_outputs(
    series: DicomSeries,
    mean: np.ndarray,
    uncertainty: np.ndarray,
    structures: Sequence[str],
    out_dir: str | Path,
    stem: str,
    uncertainty_max: float = 0.25,
) -> dict[str, Any]:
    """Write one prediction as a DICOM Segmentation and Parametric Maps of its series.

    * ``<stem>_seg.dcm``: a FRACTIONAL Segmentation of type PROBABILITY with one segment
      per structure (label = the structure's name; property category SCT 91723000
      "Anatomical Structure", type SCT 85756007 "Tissue", since edue knows only names;
      algorithm type AUTOMATIC, family DCM 123110 "Artificial Intelligence"). The
      probability is the mean over the model's members, stored as
      ``round(p × 255)`` of ``MaximumFractionalValue`` 255: it reads back as
      ``round(p × 255) / 255``. Every source slice gets one frame per segment, empty or not.
    * ``<stem>_uncertainty_<structure>.dcm``: per structure, a Parametric Map of its
      uncertainty map (the values as float32), all in one series (instance ``k + 1``
      for structure ``k``): one map per file is what viewers display. Its Real World
      Value Mapping (LUT label ``uncertainty``) is the identity, unit UCUM ``1`` (no
      units), quantity UMLS C1711260 "Variance" (every edue uncertainty score is a
      variance); its window shows 0 to ``uncertainty_max`` like the PNG maps. Written
      only for a source with a frame of reference (highdicom 0.28 cannot derive
      Parametric Maps from projection radiographs or photographs).

    Both reference every source instance (per-frame derivation, frames in the source's
    slice order), copy its patient and study, and carry manufacturer ``edue`` with
    its version; their series numbers are the source's plus 1000 (SEG) and 2000.

    Args:
        series: the series the prediction is of.
        mean: probabilities ``[K, *spatial]`` in ``series.image[0]``'s order
            (``[K, X, Y, Z]`` for a volume, ``[K, rows, cols]`` for a 2D image).
        uncertainty: uncertainty maps, same shape.
        structures: the ``K`` structure names.
        out_dir: output folder.
        stem: the outputs' name relative to ``out_dir`` (may hold folders).
        uncertainty_max: the top of the Parametric Maps' display window.

    Returns:
        ``{"seg": path, "uncertainty": {structure: path}}``, paths relative to ``out_dir``
        (``"uncertainty"`` empty for a source without a frame of reference).

    Raises:
        ConfigError: pydicom or highdicom is not installed.
        DataError: highdicom cannot derive the objects from the source instances
            (missing attributes, Ophthalmic Photography); nothing is written then.
        ValueError: the arrays' shapes do not match the series or the structures.
    """
    require("pydicom", "writing DICOM")
    require("highdicom", "writing DICOM")
    out_dir = Path(out_dir)
    expected = (len(structures), *series.image.shape[1:])
    for what, array in (("mean", mean), ("uncertainty", uncertainty)):
        if tuple(array.shape) != expected:
            raise ValueError(f"{what} has shape {tuple(array.shape)}, expected {expected}")
    seg = _derive("Segmentation", series, _segmentation, _frames(series, mean), structures)
    maps: dict[str, Dataset] = {}
    if "FrameOfReferenceUID" in series.datasets[0]:
        maps = _uncertainty_maps(series, _frames(series, uncertainty), structures, uncertainty_max)
    seg_path = f"{stem}_seg.dcm"
    map_paths = {name: f"{stem}_uncertainty_{_safe(name)}.dcm" for name in maps}
    _save(seg, out_dir / seg_path)
    for name, pm in maps.items():
        _save(pm, out_dir / map_paths[name])
    return {"seg": seg_path, "uncertainty": map_paths}


def _uncertainty_maps(
    series: DicomSeries, frames: np.ndarray, structures: Sequence[str], uncertainty_max: float
) -> dict[str, Dataset]:
    """One Parametric Map per structure of ``frames`` ``[n, rows, cols, K]``, in one
    new series."""
    series_uid = _new_uid()
    return {
        structure: _derive(
            "Parametric Map",
            series,
            _parametric_map,
            frames[..., k],
            structure,
            k,
            series_uid,
            uncertainty_max,
        )
        for k, structure in enumerate(structures)
    }


def _derive(what: str, series: DicomSeries, build: Callable[..., Dataset], *args: Any) -> Dataset:
    """``build(series, *args)``; highdicom's complaints about the source instances
    (missing attributes, an IOD it cannot derive from) as one-line DataErrors."""
    try:
        return build(series, *args)
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise DataError(
            f"cannot derive a DICOM {what} from this {series.modality} image "
            f"({type(exc).__name__}: {exc})",
            series.files[0],
        ) from None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.") or "structure"


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _save(dataset: Dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)


def _frames(series: DicomSeries, maps: np.ndarray) -> np.ndarray:
    """``[K, *spatial]`` maps as frames ``[n, rows, cols, K]`` in the source's frame order."""
    maps = np.asarray(maps)
    if series.spatial_dims == 2:
        return np.moveaxis(maps, 0, -1)[None]
    frames = maps.transpose(3, 2, 1, 0)  # [K, col, row, slice] -> [slice, row, col, K]
    if series.frame_order is not None:
        in_file = np.empty_like(frames)
        in_file[list(series.frame_order)] = frames
        frames = in_file
    return np.ascontiguousarray(frames)


def _series_number(series: DicomSeries, offset: int) -> int:
    return (_int_or_none(series.datasets[0].get("SeriesNumber")) or 0) % 10000 + offset


def _equipment() -> dict[str, Any]:
    from edue._version import __version__

    return {
        "manufacturer": "edue",
        "manufacturer_model_name": "edue",
        "software_versions": __version__,
        "device_serial_number": "0",
    }


def _segmentation(series: DicomSeries, frames: np.ndarray, structures: Sequence[str]) -> Dataset:
    """The FRACTIONAL PROBABILITY Segmentation of ``frames`` ``[n, rows, cols, K]``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from edue._version import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="edue", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k + 1,
            segment_label=name[:64],
            segmented_property_category=Code(*SEGMENT_CATEGORY),
            segmented_property_type=Code(*SEGMENT_TYPE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(structures)
    ]
    quantised = np.around(np.clip(frames.astype(np.float64), 0.0, 1.0) * 255.0) / 255.0
    seg = hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=quantised,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        segment_descriptions=segments,
        series_instance_uid=_new_uid(),
        series_number=_series_number(series, SEG_SERIES_OFFSET),
        sop_instance_uid=_new_uid(),
        instance_number=1,
        content_description="mean probability over the model's members",
        content_label="EDUE",
        series_description="edue probability",
        omit_empty_frames=False,
        **_equipment(),
    )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "FrameOfReferenceUID" not in seg and "PixelMeasuresSequence" in shared:
        # without a frame of reference the pixel spacing is optional, and highdicom
        # cannot read back the Pixel Measures it writes without a SliceThickness
        del shared.PixelMeasuresSequence
    return seg


def _parametric_map(
    series: DicomSeries,
    frames: np.ndarray,
    structure: str,
    index: int,
    series_uid: str,
    uncertainty_max: float,
) -> Dataset:
    """The float32 Parametric Map of one structure's uncertainty ``[n, rows, cols]``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    mapping = hd.pm.RealWorldValueMapping(
        lut_label="uncertainty",
        lut_explanation=f"uncertainty of {structure}"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=Code(*UNCERTAINTY_QUANTITY),
    )
    window = hd.VOILUTTransformation(
        window_center=uncertainty_max / 2,
        window_width=uncertainty_max,
        window_explanation=f"0 to {uncertainty_max:g}",
    )
    return hd.pm.ParametricMap(
        source_images=series.datasets,
        pixel_array=np.ascontiguousarray(frames, dtype=np.float32),
        series_instance_uid=series_uid,
        series_number=_series_number(series, UNCERTAINTY_SERIES_OFFSET),
        sop_instance_uid=_new_uid(),
        instance_number=index + 1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_description=f"uncertainty of {structure}"[:64],
        content_label="UNCERTAINTY",
        series_description="edue uncertainty",
        **_equipment(),
    )
