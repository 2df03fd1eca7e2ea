"""DICOM in for ``edue predict``: the series of a folder of DICOM files as images.

Reading (:func:`find_dicom_series`) walks a folder, groups the instances by
SeriesInstanceUID and turns each series into one :class:`DicomSeries`:

* a *volume* (CT, MR, PT, … of several single-frame slices, or one enhanced
  multi-frame instance with per-frame plane positions) becomes ``[1, X, Y, Z]`` indexed
  ``[column, row, slice]`` with slices sorted along the slice normal, and a 4×4 affine
  from that index to RAS world millimetres — the array and affine edue reads from a
  NIfTI written with this geometry by ITK/SimpleITK (dcm2niix, by default, stores the
  rows in reverse order with a matching affine: the same world positions, the second
  axis flipped);
* a *2D image* (a projection or photograph — CR, DX, MG, XA, US, OP, XC, SM, … — or a
  volume modality's series of a single slice) becomes ``[C, rows, cols]`` (``C`` = 3 for
  RGB) with no affine; a projection series of several instances gives one image each.

Values: grayscale images keep their modality values (RescaleSlope / RescaleIntercept
applied; Hounsfield units for CT; MONOCHROME1 is not inverted); photographs (OP, XC, SM,
ES, GM, or any RGB image) are scaled to [0, 1] like 8- and 16-bit PNG files
(:func:`edue.io.float_intensities`).

Writing the prediction back as DICOM is :mod:`edue.engine.predict.dicom_out`. Reading
uses pydicom (``pip install 'edue[dicom]'``), imported when first needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edue.errors import ConfigError, DataError
from edue.io import SUPPORTED_SUFFIXES, suffix_of

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_INSTALL = "pip install 'edue[dicom]'"

#: file suffixes (besides none and numeric ones) read as DICOM without a preamble check
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
#: modalities whose images are photographs: scaled to [0, 1] like PNG files
PHOTO_MODALITIES = frozenset({"OP", "XC", "SM", "ES", "GM"})
#: modalities whose series are sets of 2D images, never one volume
PLANAR_MODALITIES = PHOTO_MODALITIES | {"CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF", "US"}
#: objects that are not images to predict on (annotations, reports, plans, derived maps)
SKIPPED_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
)
SKIPPED_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
        "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    }
)
ORIENTATION_TOL = 1e-4  # direction cosines of one series agree to this
SPACING_TOL = 0.01  # relative: slice gaps and pixel spacings agree to 1 %


def require(module: str, purpose: str) -> None:
    """Raise a one-line :class:`~edue.errors.ConfigError` naming the extra when
    ``module`` (pydicom, highdicom) is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{purpose} needs the '{module}' package: {_INSTALL}")


@dataclass
class DicomSeries:
    """One image read from DICOM: a volume or a 2D image, with its source instances.

    Attributes:
        uid: the SeriesInstanceUID.
        datasets: the source instances (pydicom datasets), in slice order.
        files: their files, in the same order.
        image: float32 ``[1, X, Y, Z]`` (``[column, row, slice]``) for a volume,
            ``[C, rows, cols]`` for a 2D image.
        spacing: millimetres per pixel along each spatial axis of ``image``:
            ``(column step, row step, slice step)`` for a volume, ``(between rows,
            between columns)`` for a 2D image (PixelSpacing, else ImagerPixelSpacing;
            ``None`` when neither is given).
        affine: 4×4 map from ``(i, j, k, 1)`` of a volume to RAS millimetres;
            ``None`` for 2D images.
        name: a file-name-safe stem for the outputs, unique within the folder read.
        spatial_dims: 2 or 3.
        modality: the DICOM Modality (``CT``, ``OP``, …).
        frame_order: for a multi-frame instance, the index of each slice's frame in
            the file (``None``: one instance per slice).
    """

    uid: str
    datasets: list[Dataset]
    files: list[Path]
    image: np.ndarray
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    name: str
    spatial_dims: int
    modality: str
    frame_order: tuple[int, ...] | None = None


@dataclass
class _Plane:
    """The geometry of one slice (a single-frame instance or one frame)."""

    path: Path
    orientation: np.ndarray  # [6]: row then column direction cosines (LPS)
    position: np.ndarray  # [3]: centre of the first pixel (LPS mm)
    pixel_spacing: np.ndarray  # [2]: (between rows, between columns) mm
    shape: tuple[int, int]  # (rows, columns)


# ------------------------------------------------------------------------------- reading
def find_dicom_series(
    folder: str | Path, failed: list[DataError] | None = None
) -> list[DicomSeries]:
    """Every image in a folder of DICOM files (searched recursively), one per series
    (or the image of one DICOM file).

    Files with a DICOM preamble, no suffix, a numeric suffix or ``.dcm`` (``.dicom``,
    ``.dic``, ``.ima``) are read; other files (``.json``, ``.png``, …) and hidden ones
    are ignored, as are instances without pixel data or of annotation objects (SEG,
    RTSTRUCT, SR, PR, Parametric Maps, …).

    Args:
        folder: the folder.
        failed: when given, a file that cannot be read and a series that cannot be
            stacked are appended to it (one :class:`DataError` each) and left out,
            instead of raising (``edue predict --skip-bad``).

    Returns:
        The series sorted by (SeriesNumber, SeriesInstanceUID); a projection series of
        several instances gives one :class:`DicomSeries` per instance.

    Raises:
        ConfigError: pydicom is not installed.
        DataError: the folder holds no DICOM image, a DICOM-looking file cannot be
            parsed or decoded, or a series cannot be stacked into one volume.
    """
    require("pydicom", "reading DICOM")
    folder = Path(folder)
    if not folder.exists():
        raise DataError("expected a folder of DICOM files (or one DICOM file)", folder)
    paths = sorted(folder.rglob("*")) if folder.is_dir() else [folder]
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in paths:
        hidden = folder.is_dir() and any(
            part.startswith(".") for part in path.relative_to(folder).parts
        )
        if hidden or not path.is_file():
            continue
        try:
            dataset = _read_instance(path)
        except DataError as exc:
            if failed is None:
                raise
            failed.append(exc)
            continue
        if dataset is not None:
            groups.setdefault(str(dataset.SeriesInstanceUID), []).append((path, dataset))
    if not groups:
        if failed:
            return []
        raise DataError("no DICOM image found in the folder", folder)
    series: list[DicomSeries] = []
    for uid in sorted(groups, key=lambda u: _series_sort_key(u, groups[u][0][1])):
        try:
            series.extend(_series_images(uid, groups[uid]))
        except DataError as exc:
            if failed is None:
                raise
            failed.append(exc)
    _make_names_unique(series)
    return series


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file by its name (``.dcm``, ``.dicom``, ``.dic``,
    ``.ima``) or, for a file without one of edue's image suffixes, its DICM preamble."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix_of(path) in SUPPORTED_SUFFIXES or suffix in (".json", ".txt", ".csv", ".md"):
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def holds_dicom(path: str | Path) -> bool:
    """Whether a file is DICOM, or a folder holds a DICOM file (at any depth, hidden
    files and folders left out): what ``edue predict`` reads as DICOM series."""
    path = Path(path)
    if path.is_file():
        return is_dicom_file(path)
    return any(
        p.is_file()
        and is_dicom_file(p)
        and not any(x.startswith(".") for x in p.relative_to(path).parts)
        for p in path.rglob("*")
    )


def _series_sort_key(uid: str, dataset: Dataset) -> tuple[bool, int, str]:
    number = _int_or_none(dataset.get("SeriesNumber"))
    return (number is None, number or 0, uid)


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _looks_like_dicom(path: Path) -> tuple[bool, bool]:
    """``(should be read, has the DICM preamble)``."""
    try:
        with open(path, "rb") as fh:
            preamble = fh.read(132)
    except OSError as exc:
        raise DataError(f"cannot read file ({type(exc).__name__}: {exc})", path) from None
    has_preamble = len(preamble) == 132 and preamble[128:] == b"DICM"
    suffix = path.suffix.lower()
    plain = suffix in ("", *DICOM_SUFFIXES) or suffix[1:].isdigit()
    return has_preamble or plain, has_preamble


def _read_instance(path: Path) -> Dataset | None:
    """The parsed image instance in ``path``; ``None`` for files and objects to skip."""
    from pydicom import dcmread

    read, has_preamble = _looks_like_dicom(path)
    if not read:
        return None
    try:  # force: older files without the preamble and file meta are still DICOM
        dataset = dcmread(path, force=not has_preamble)
        _check_complete(dataset)
        for _ in dataset.iterall():  # parse every element now: a corrupt one fails here
            pass
    except Exception as exc:
        raise DataError(f"cannot read DICOM file ({type(exc).__name__}: {exc})", path) from None
    meta = getattr(dataset, "file_meta", None)
    if "SOPClassUID" not in dataset and (meta is None or "MediaStorageSOPClassUID" not in meta):
        raise DataError("not a readable DICOM file (no SOP Class UID)", path)
    if not any(k in dataset for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Image" in _sop_class_name(dataset):
            raise DataError("DICOM image without pixel data (a truncated file?)", path)
        return None  # reports, structure sets, presentation states, DICOMDIR, …
    if (
        str(dataset.get("Modality", "")).upper() in SKIPPED_MODALITIES
        or str(dataset.get("SOPClassUID", "")) in SKIPPED_SOP_CLASSES
    ):
        return None
    if not dataset.get("SeriesInstanceUID"):
        raise DataError("DICOM image without a SeriesInstanceUID", path)
    return dataset


def _check_complete(dataset: Dataset) -> None:
    """Raise ``EOFError`` when an element is shorter than its declared length (pydicom
    reads a truncated file without complaint)."""
    from pydicom.dataelem import RawDataElement

    for tag in list(dataset.keys()):  # the tags: iterating a Dataset converts elements
        raw = dataset.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and isinstance(raw.value, bytes)
            and raw.length != 0xFFFFFFFF
            and len(raw.value) < raw.length
        ):
            raise EOFError(
                f"the file ends inside element {raw.tag} ({len(raw.value)} of {raw.length} "
                "bytes): truncated"
            )


def _sop_class_name(dataset: Dataset) -> str:
    """The SOP class's name (``CT Image Storage``), from the dataset or its file meta."""
    from pydicom.uid import UID

    meta = getattr(dataset, "file_meta", None)
    uid = dataset.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    return UID(str(uid or "")).name


def _n_frames(dataset: Dataset) -> int:
    return _int_or_none(dataset.get("NumberOfFrames")) or 1


def _series_images(uid: str, items: list[tuple[Path, Dataset]]) -> list[DicomSeries]:
    """The images of one series: one volume, or one image per instance."""
    items = sorted(items, key=lambda it: (_int_or_none(it[1].get("InstanceNumber")) or 0, it[0]))
    modality = str(items[0][1].get("Modality", "OT")).upper()
    multi = any(_n_frames(ds) > 1 for _, ds in items)
    has_geometry = any("ImagePositionPatient" in ds for _, ds in items)
    if len(items) > 1 and not multi and has_geometry and modality not in PLANAR_MODALITIES:
        return [_stacked_volume(uid, items, modality)]
    images = []
    for index, (path, dataset) in enumerate(items):
        suffix = f"i{_int_or_none(dataset.get('InstanceNumber')) or index + 1}"
        name = _series_name(dataset, uid, suffix if len(items) > 1 else None)
        if _n_frames(dataset) > 1:
            images.append(_multiframe_volume(uid, path, dataset, modality, name))
        else:
            images.append(_planar_image(uid, path, dataset, modality, name))
    return images


def _series_name(dataset: Dataset, uid: str, suffix: str | None) -> str:
    """``<SeriesNumber>_<Modality>[_<description>]_<uid hash>[_<suffix>]``."""
    number = _int_or_none(dataset.get("SeriesNumber"))
    description = re.sub(r"[^A-Za-z0-9+-]+", "-", str(dataset.get("SeriesDescription", "")))
    parts = [
        "x" if number is None else str(number),
        re.sub(r"[^A-Za-z0-9]+", "", str(dataset.get("Modality", "OT"))) or "OT",
        description.strip("-.")[:40],
        hashlib.sha1(uid.encode()).hexdigest()[:8],
        suffix or "",
    ]
    return "_".join(p for p in parts if p)


def _make_names_unique(series: list[DicomSeries]) -> None:
    seen: dict[str, int] = {}
    for item in series:
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}-{count + 1}"


def _pixels(dataset: Dataset, path: Path, photographic: bool) -> np.ndarray:
    """The decoded pixel values as float32 (modality LUT applied, or photo-scaled)."""
    from pydicom.pixels import apply_modality_lut

    if str(dataset.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        raise DataError("PALETTE COLOR images are not supported; convert them to RGB", path)
    try:
        raw = dataset.pixel_array
    except Exception as exc:
        raise DataError(
            f"cannot decode the pixel data ({type(exc).__name__}: {exc})", path
        ) from None
    if photographic:
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(raw.dtype, 1.0)
        return raw.astype(np.float32) / np.float32(scale)
    if _n_frames(dataset) > 1:
        return raw.astype(np.float32)  # rescaled per frame by the caller
    return np.asarray(apply_modality_lut(raw, dataset), dtype=np.float32)


def _planar_image(uid: str, path: Path, dataset: Dataset, modality: str, name: str) -> DicomSeries:
    """A single-frame instance as a 2D image ``[C, rows, cols]``."""
    samples = _int_or_none(dataset.get("SamplesPerPixel")) or 1
    photographic = modality in PHOTO_MODALITIES or samples > 1
    pixels = _pixels(dataset, path, photographic)
    image = np.moveaxis(pixels, -1, 0) if samples > 1 else pixels[None]
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    return DicomSeries(
        uid=uid,
        datasets=[dataset],
        files=[path],
        image=_finite(np.ascontiguousarray(image), path),
        spacing=None if not spacing else (float(spacing[0]), float(spacing[1])),
        affine=None,
        name=name,
        spatial_dims=2,
        modality=modality,
    )


def _finite(image: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(image).all():
        raise DataError("image contains NaN or Inf values", path)
    return image


def _plane_of(path: Path, source: Any, shape: tuple[int, int], uid: str) -> _Plane:
    """The plane of a single-frame instance (``source`` is the dataset) or one frame
    (``source`` merges its per-frame and shared functional groups)."""
    values = {}
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        value = source.get(key)
        if value is None:
            raise DataError(f"series {uid}: no {key}; edue needs it to stack the slices", path)
        values[key] = np.asarray([float(v) for v in value], dtype=np.float64)
    return _Plane(
        path,
        values["ImageOrientationPatient"],
        values["ImagePositionPatient"],
        values["PixelSpacing"],
        shape,
    )


def _stacked_volume(uid: str, items: list[tuple[Path, Dataset]], modality: str) -> DicomSeries:
    """A series of single-frame slices as one volume ``[1, X, Y, Z]``."""
    planes = [_plane_of(path, ds, (int(ds.Rows), int(ds.Columns)), uid) for path, ds in items]
    order, spacing, affine = _stack_geometry(uid, planes)
    slices = [_pixels(items[i][1], items[i][0], modality in PHOTO_MODALITIES) for i in order]
    volume = np.stack(slices).transpose(2, 1, 0)[None]  # [slice, row, col] -> [1, col, row, slice]
    first = items[order[0]]
    return DicomSeries(
        uid=uid,
        datasets=[items[i][1] for i in order],
        files=[items[i][0] for i in order],
        image=_finite(np.ascontiguousarray(volume), first[0]),
        spacing=spacing,
        affine=affine,
        name=_series_name(first[1], uid, None),
        spatial_dims=3,
        modality=modality,
    )


def _stack_geometry(
    uid: str, planes: list[_Plane]
) -> tuple[list[int], tuple[float, float, float], np.ndarray]:
    """Check that the planes stack into one evenly spaced volume.

    Returns:
        The planes' indices in slice order, the spacing ``(column step, row step,
        slice step)`` and the 4×4 RAS affine of ``[column, row, slice]``.
    """
    # the reference is a slice of the most common orientation, so that the error names
    # the odd one out rather than the first file read
    keys = [tuple(np.round(p.orientation, 3)) for p in planes]
    ref = planes[max(range(len(planes)), key=lambda i: (keys.count(keys[i]), -i))]
    for plane in planes:
        if plane is not ref:
            _check_same(uid, ref, plane)
    row, col = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row, col)
    positions = np.array([p.position @ normal for p in planes])
    order = [int(i) for i in np.argsort(positions, kind="stable")]
    steps = np.diff(positions[order])
    for n, step in enumerate(steps):
        if step < 1e-3:
            raise DataError(
                f"series {uid}: two slices at the same position "
                f"({positions[order[n]]:.3f} mm along the slice normal)",
                planes[order[n + 1]].path,
            )
    step = float((positions[order[-1]] - positions[order[0]]) / max(len(planes) - 1, 1))
    if len(steps) and np.abs(steps - step).max() > SPACING_TOL * step:
        worst = int(np.abs(steps - step).argmax())
        raise DataError(
            f"series {uid}: uneven slice spacing ({steps.min():.4g} to {steps.max():.4g} mm; "
            "a missing slice?); edue predicts evenly spaced series",
            planes[order[worst + 1]].path,
        )
    first = planes[order[0]]
    for plane in planes:
        drift = np.abs((plane.position - first.position) @ np.stack([row, col], 1)).max()
        if drift > 0.05 * ref.pixel_spacing.min():
            raise DataError(
                f"series {uid}: slices are not stacked along the slice normal "
                f"(shifted by {drift:.3g} mm in-plane; gantry tilt?)",
                plane.path,
            )
    dy, dx = float(ref.pixel_spacing[0]), float(ref.pixel_spacing[1])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dx, col * dy, normal * step
    lps[:3, 3] = first.position
    return order, (dx, dy, step), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _check_same(uid: str, ref: _Plane, plane: _Plane) -> None:
    """Raise naming ``plane``'s file when its orientation, size or pixel spacing
    differs from ``ref``'s."""
    if np.abs(plane.orientation - ref.orientation).max() > ORIENTATION_TOL:
        raise DataError(
            f"series {uid} mixes image orientations ({_fmt(ref.orientation)} and "
            f"{_fmt(plane.orientation)}); edue predicts one orientation per series",
            plane.path,
        )
    if plane.shape != ref.shape:
        raise DataError(
            f"series {uid} mixes image sizes ({ref.shape[0]}×{ref.shape[1]} and "
            f"{plane.shape[0]}×{plane.shape[1]} pixels)",
            plane.path,
        )
    if not np.allclose(plane.pixel_spacing, ref.pixel_spacing, rtol=SPACING_TOL, atol=0):
        raise DataError(
            f"series {uid} mixes pixel spacings ({_fmt(ref.pixel_spacing)} and "
            f"{_fmt(plane.pixel_spacing)} mm)",
            plane.path,
        )


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


#: the functional group macros a frame's plane and rescale are read from
_FRAME_MACROS = (
    ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
    ("PlanePositionSequence", ("ImagePositionPatient",)),
    ("PixelMeasuresSequence", ("PixelSpacing",)),
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
)


def _frame_groups(dataset: Dataset, index: int) -> dict[str, Any]:
    """The plane attributes and rescale of frame ``index`` (0-based) of an enhanced
    multi-frame instance: per-frame functional groups over the shared ones."""
    shared = dataset.get("SharedFunctionalGroupsSequence")
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    items = [shared[0]] if shared else []
    if per_frame and index < len(per_frame):
        items.append(per_frame[index])  # last: per-frame values win
    found: dict[str, Any] = {}
    for item in items:
        for macro_name, keys in _FRAME_MACROS:
            macro = item.get(macro_name)
            if macro:
                found.update({key: macro[0].get(key) for key in keys if key in macro[0]})
    return found


def _multiframe_volume(
    uid: str, path: Path, dataset: Dataset, modality: str, name: str
) -> DicomSeries:
    """An enhanced multi-frame instance with per-frame plane positions as one volume."""
    n = _n_frames(dataset)
    shape = (int(dataset.Rows), int(dataset.Columns))
    groups = [_frame_groups(dataset, i) for i in range(n)]
    if (_int_or_none(dataset.get("SamplesPerPixel")) or 1) > 1 or any(
        "ImagePositionPatient" not in g for g in groups
    ):
        raise DataError(
            "multi-frame DICOM without per-frame plane positions (cine, colour, "
            "tiled) is not supported",
            path,
        )
    planes = [_plane_of(path, g, shape, uid) for g in groups]
    order, spacing, affine = _stack_geometry(uid, planes)
    frames = _pixels(dataset, path, modality in PHOTO_MODALITIES)
    if modality not in PHOTO_MODALITIES:
        slopes = [float(g.get("RescaleSlope", dataset.get("RescaleSlope", 1.0))) for g in groups]
        intercepts = [
            float(g.get("RescaleIntercept", dataset.get("RescaleIntercept", 0.0))) for g in groups
        ]
        frames = (
            frames * np.asarray(slopes, np.float32)[:, None, None]
            + np.asarray(intercepts, np.float32)[:, None, None]
        )
    volume = frames[order].transpose(2, 1, 0)[None]
    return DicomSeries(
        uid=uid,
        datasets=[dataset],
        files=[path],
        image=_finite(np.ascontiguousarray(volume, dtype=np.float32), path),
        spacing=spacing,
        affine=affine,
        name=name,
        spatial_dims=3,
        modality=modality,
        frame_order=tuple(order),
    )
