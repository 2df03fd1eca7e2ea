"""nnU-Net v2 raw datasets with one label folder per rater, format ``nnunet-raw``.

Layout (as nnU-Net reads it, plus sibling label folders for further raters)::

    ROOT/dataset.json
    ROOT/imagesTr/<case>_0000<file_ending>     (one file per channel: _0000, _0001, …)
    ROOT/labelsTr/<case><file_ending>          (rater 1: an integer label map)
    ROOT/labelsTr_rater2/<case><file_ending>   (rater 2)
    ROOT/labelsTr_<anything>/…                 (one more rater per folder)

``dataset.json`` holds ``channel_names`` (``{"0": "CT", "1": "PET"}``), ``labels``
(``{"background": 0, "GTVp": 1, "GTVn": 2}``; a value may be a list of labels, a
*region* as in nnU-Net's region-based training: ``{"tumour": [1, 2]}``) and
``file_ending`` (``".nii.gz"``, ``".png"``, ``".tif"``). Each entry of ``labels`` other
than the background is one structure; its mask is "label ∈ values". Every folder named
``labelsTr`` or ``labelsTr_<anything>`` is one rater, in natural order (``labelsTr``
first); every case needs a label file in each of them. An optional top-level
``edue_patients`` map (``{case: patient}``, ignored by nnU-Net) gives patient ids.

The helpers shared with :mod:`edue.data.monai_datalist` live here too: parsing a
structure map, decoding a label map into binary masks and choosing the label values
that encode overlapping (nested) structures in one label map.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase, distinct_values
from edue.data.qubiq import natural_key
from edue.data.source import CaseSource
from edue.errors import DataError, EdueError
from edue.io import (
    IMAGE_2D_SUFFIXES,
    NIFTI_SUFFIXES,
    atomic_path,
    read_image,
    read_json,
    read_label_map,
    suffix_of,
    write_json,
    write_nifti,
    write_png,
)

#: structure name -> the label values that make up the structure
StructureValues = dict[str, tuple[int, ...]]

SINGLE_RATER_WARNING = "only one rater per case: disagreement cannot be learned from it"
RATER_FOLDER = re.compile(r"^labelsTr(_.+)?$")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------- structures
def parse_structures(raw: Any, what: str, where: str | Path) -> StructureValues:
    """Check a ``{name: value | [values]}`` map of structures.

    Entries whose value is 0 (the background) are left out.

    Args:
        raw: the parsed map.
        what: how the map is named in messages (e.g. ``"'labels' of dataset.json"``).
        where: the file named in messages.

    Returns:
        ``{name: (values, …)}`` in the map's order.

    Raises:
        DataError: not a map, a value that is not a non-negative integer (or a non-empty
            list of them), a region holding 0, or no structure at all.
    """
    if not isinstance(raw, Mapping):
        raise DataError(
            f"{what} must map structure names to label values, got {type(raw).__name__}", where
        )
    out: StructureValues = {}
    for name, value in raw.items():
        values = value if isinstance(value, list | tuple) else [value]
        if not values or not all(_is_label(v) for v in values):
            raise DataError(
                f"{what}: '{name}' must be a label value or a non-empty list of them, "
                f"got {value!r}",
                where,
            )
        if list(values) == [0]:
            continue  # the background
        if 0 in values:
            raise DataError(f"{what}: region '{name}' must not hold the background 0", where)
        out[str(name)] = tuple(int(v) for v in values)
    if not out:
        raise DataError(f"{what} names no structure besides the background", where)
    return out


def _is_label(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31 - 1


def decode_label_map(
    label_map: np.ndarray, structures: StructureValues, where: Path, declared_in: str
) -> tuple[np.ndarray, list[int]]:
    """Binary masks of the structures in a label map.

    Args:
        label_map: integer labels ``[*sp]``.
        structures: ``{name: values}``; structure ``k`` is ``label ∈ values[k]``.
        where: the label file (named in the error).
        declared_in: where the label values are declared, for the error message.

    Returns:
        uint8 masks ``[K, *sp]`` and the label values found.

    Raises:
        DataError: a value other than 0 that no structure declares.
    """
    found = distinct_values(label_map).tolist()
    allowed = {0} | {v for values in structures.values() for v in values}
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise DataError(
            f"label values {unknown[:8]} are not declared in {declared_in} "
            f"(declared: {sorted(allowed)})",
            where,
        )
    masks = np.empty((len(structures), *label_map.shape), np.uint8)
    small = label_map.dtype == np.uint8
    for k, values in enumerate(structures.values()):
        if len(values) == 1:
            masks[k] = label_map == values[0]
        elif small:  # a lookup table: one pass
            table = np.zeros(256, np.uint8)
            table[[v for v in values if v < 256]] = 1
            masks[k] = table[label_map]
        else:
            masks[k] = np.isin(label_map, values)
    return masks, [int(v) for v in found]


def label_regions(cases: Sequence[MultiRaterCase]) -> dict[str, list[int]]:
    """The label values that encode the cases' structures in one label map each.

    A voxel gets the label ``k + 1`` of the highest-index structure ``k`` holding it.
    Structures that never overlap are then labels ``1 … K``; a structure lying inside a
    lower-index one (the cup inside the disc) makes that one a region: disc ``[1, 2]``,
    cup ``[2]``. Each pair of structures must be disjoint in every rater mask of every
    case, or the higher-index one must lie inside the other in all of them.

    Args:
        cases: cases sharing their structures (masks ``[R, K, *sp]``).

    Returns:
        ``{structure: [label values]}`` in the structures' order.

    Raises:
        DataError: different structures between cases, more than 255 structures, or
            two structures overlapping without one lying inside the other.
    """
    if not cases:
        raise DataError("no cases to write")
    names = cases[0].structures
    k_total = len(names)
    if k_total > 255:
        raise DataError(f"{k_total} structures do not fit an 8-bit label map (at most 255)")
    inside_everywhere = np.ones((k_total, k_total), bool)
    apart_everywhere = np.ones((k_total, k_total), bool)
    witness: dict[tuple[int, int, str], str] = {}
    for case in cases:
        if case.structures != names:
            raise DataError(
                f"structures {list(case.structures)} differ from {list(names)} of the first case",
                case.case_id,
            )
        masks = case.masks.astype(bool)
        for k in range(1, k_total):
            for j in range(k):
                overlap = bool((masks[:, k] & masks[:, j]).any())
                outside = bool((masks[:, k] & ~masks[:, j]).any())
                if overlap and outside:
                    raise DataError(
                        f"structures '{names[j]}' and '{names[k]}' overlap without "
                        f"'{names[k]}' lying inside '{names[j]}': one label map cannot "
                        "hold them",
                        case.case_id,
                    )
                if overlap:
                    apart_everywhere[k, j] = False
                    witness.setdefault((k, j, "inside"), case.case_id)
                if outside:
                    inside_everywhere[k, j] = False
                    witness.setdefault((k, j, "apart"), case.case_id)
                if not inside_everywhere[k, j] and not apart_everywhere[k, j]:
                    raise DataError(
                        f"'{names[k]}' lies inside '{names[j]}' in case "
                        f"{witness[k, j, 'inside']} but not in case {witness[k, j, 'apart']}: "
                        "one label map cannot hold both",
                        case.case_id,
                    )
    regions: dict[str, list[int]] = {name: [] for name in names}
    for k in range(k_total):
        regions[names[k]].append(k + 1)
        for j in range(k):
            if inside_everywhere[k, j] and not apart_everywhere[k, j]:
                regions[names[j]].append(k + 1)
    return regions


def encode_label_map(masks: np.ndarray) -> np.ndarray:
    """One rater's masks ``[K, *sp]`` as a uint8 label map ``[*sp]``: each voxel holds
    ``k + 1`` for the highest-index structure ``k`` containing it (0: none)."""
    label_map = np.zeros(masks.shape[1:], np.uint8)
    for k in range(masks.shape[0]):
        label_map[masks[k] > 0] = k + 1
    return label_map


def warn_single_rater(where: str | Path) -> None:
    """Warn (``UserWarning``) that a dataset has a single rater per case."""
    warnings.warn(f"{where}: {SINGLE_RATER_WARNING}", UserWarning, stacklevel=3)


def label_dims(path: Path) -> int:
    """Spatial dimensions of a label file, read from its header where it has one.

    NIfTI and ``.npy`` files give their shape without trailing singleton axes (a 2D
    slice stored as ``[X, Y, 1]`` is 2D); image files (PNG, TIFF, …) are 2D.

    Raises:
        DataError: unreadable header or more than three spatial axes.
    """
    suffix = suffix_of(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            shape = tuple(nib.load(str(path)).header.get_data_shape())  # type: ignore[attr-defined]
        elif suffix == ".npy":
            shape = tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        else:
            return 2
    except Exception as exc:
        raise DataError(f"cannot read the label file's header ({exc})", path) from None
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise DataError(f"label map must be 2D or 3D, got shape {shape}", path)
    return len(shape)


def read_channels(paths: Sequence[Path], dims: int) -> tuple[np.ndarray, Any]:
    """Read image files and stack their channels.

    Args:
        paths: one file per channel (a file may hold several channels, e.g. RGB).
        dims: spatial dimensions (2 or 3).

    Returns:
        float32 image ``[C, *sp]`` and the first file's :class:`~edue.io.ArrayMeta`.

    Raises:
        DataError: unreadable file or a channel whose spatial shape differs.
    """
    arrays: list[np.ndarray] = []
    metas: list[Any] = []
    for path in paths:
        array, meta = read_image(path, dims)
        if arrays and array.shape[1:] != arrays[0].shape[1:]:
            raise DataError(
                f"channel shape {array.shape[1:]} differs from {arrays[0].shape[1:]} of "
                f"{paths[0].name}",
                path,
            )
        arrays.append(array)
        metas.append(meta)
    return np.concatenate(arrays, axis=0), metas[0]


def read_rater_masks(
    paths: Sequence[Path],
    structures: StructureValues,
    image_shape: tuple[int, ...],
    dims: int,
    declared_in: str,
) -> tuple[np.ndarray, list[int]]:
    """Read one label map per rater and decode it.

    Args:
        paths: one label file per rater.
        structures: ``{name: values}`` of the ``K`` structures.
        image_shape: spatial shape ``[*sp]`` the labels must have.
        dims: spatial dimensions (2 or 3).
        declared_in: where the label values are declared, for messages.

    Returns:
        uint8 masks ``[R, K, *sp]`` and the sorted label values seen.

    Raises:
        DataError: unreadable file, a shape differing from the image's, or undeclared
            label values (naming the label file).
    """
    masks, seen = [], set()
    for path in paths:
        label_map, _ = read_label_map(path, dims)
        if label_map.shape != image_shape:
            raise DataError(
                f"label shape {label_map.shape} differs from image shape {image_shape}", path
            )
        binary, found = decode_label_map(label_map, structures, path, declared_in)
        masks.append(binary)
        seen.update(found)
    return np.stack(masks), sorted(seen)


def geometry(meta: Any, dims: int) -> tuple[tuple[float, ...] | None, np.ndarray | None]:
    """Spacing (one value per spatial axis) and affine (volumes only) of a file's meta."""
    spacing = tuple(meta.spacing[:dims]) if meta.spacing and len(meta.spacing) >= dims else None
    return spacing, meta.affine if dims == 3 else None


def _load_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError("dataset.json not found", path)
    try:
        raw = read_json(path, "a readable JSON file")
    except EdueError as exc:
        raise DataError(exc.reason, path) from None
    if not isinstance(raw, dict):
        raise DataError(f"must be a JSON object, got a JSON {type(raw).__name__}", path)
    return raw


def _bands(path: Path) -> int:
    """Channels of a 2D image file, from its header (0: not a 2D image file)."""
    if suffix_of(path) not in IMAGE_2D_SUFFIXES:
        return 0
    try:
        from PIL import Image

        with Image.open(path) as image:
            return len(image.getbands())
    except Exception:
        return 0


# --------------------------------------------------------------------------- reader
class NnunetRawSource(CaseSource):
    """Reader of an nnU-Net v2 raw dataset folder with one ``labelsTr*`` folder per rater.

    Images come out as ``[C, *sp]`` float32 (one channel per ``channel_names`` entry,
    8/16-bit 2D files scaled to [0, 1], NIfTI values kept), masks ``[R, K, *sp]`` for
    the ``K`` entries of ``labels`` besides the background.

    Args:
        root: the dataset folder (``Dataset001_Name``) holding ``dataset.json``.
    """

    def __init__(self, root: str | Path, **_: Any) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError("nnU-Net dataset folder not found", self.root)
        spec_path = self.root / "dataset.json"
        self.spec_path = spec_path
        spec = _load_spec(spec_path)
        for key in ("labels", "channel_names", "file_ending"):
            if key not in spec:
                raise DataError(f"no '{key}' (nnU-Net v2 dataset.json)", spec_path)
        ending = spec["file_ending"]
        if not isinstance(ending, str) or not ending.startswith("."):
            raise DataError(
                f"'file_ending' must be a string like '.nii.gz', got {ending!r}", spec_path
            )
        self.file_ending = ending
        channels = spec["channel_names"]
        if not isinstance(channels, dict) or not channels:
            raise DataError('\'channel_names\' must be a non-empty map like {"0": "CT"}', spec_path)
        self.channel_names = [str(channels[k]) for k in sorted(channels, key=natural_key)]
        labels = spec["labels"]
        if isinstance(labels, dict) and "ignore" in labels:
            raise DataError(
                "the 'ignore' label (partly annotated cases) is not supported: masks are binary",
                spec_path,
            )
        self.values = parse_structures(labels, "'labels' of dataset.json", spec_path)
        self.structures = tuple(self.values)
        images_dir = self.root / "imagesTr"
        if not images_dir.is_dir():
            raise DataError("imagesTr folder not found", images_dir)
        self.rater_dirs = sorted(
            (d for d in self.root.iterdir() if d.is_dir() and RATER_FOLDER.match(d.name)),
            key=lambda d: natural_key(d.name),
        )
        if not self.rater_dirs:
            raise DataError("no labelsTr folder (one labelsTr* folder per rater)", self.root)
        channel_files = self._channel_files(images_dir)
        self.case_ids = sorted(channel_files, key=natural_key)
        if not self.case_ids:
            raise DataError(f"no image files <case>_0000{ending}", images_dir)
        self._images = [channel_files[c] for c in self.case_ids]
        self._labels = [self._label_files(c) for c in self.case_ids]
        self._check_orphan_labels()
        patients = spec.get("edue_patients") or {}
        if not isinstance(patients, dict):
            raise DataError("'edue_patients' must map case ids to patient ids", spec_path)
        self.patient_ids = [str(patients.get(c, c)) for c in self.case_ids]
        expected = spec.get("numTraining")
        if isinstance(expected, int) and expected != len(self.case_ids):
            warnings.warn(
                f"{spec_path}: numTraining is {expected} but imagesTr holds "
                f"{len(self.case_ids)} cases (all are read)",
                UserWarning,
                stacklevel=2,
            )
        self.spatial_dims = (
            2 if suffix_of(ending) in IMAGE_2D_SUFFIXES else label_dims(self._labels[0][0])
        )
        if len(self.rater_dirs) == 1:
            warn_single_rater(self.root)

    def _channel_files(self, images_dir: Path) -> dict[str, list[Path]]:
        """``{case: [channel files]}``, checking each case has every channel."""
        ending, n = self.file_ending, len(self.channel_names)
        found: dict[str, dict[int, Path]] = {}
        for path in images_dir.iterdir():
            if not path.name.endswith(ending):
                continue
            match = _CHANNEL_FILE.match(path.name[: -len(ending)])
            if match:
                found.setdefault(match["case"], {})[int(match["channel"])] = path
        out = {}
        for case, files in found.items():
            extra = sorted(c for c in files if c >= n)
            if extra:
                raise DataError(
                    f"channel {extra[0]:04d} of case '{case}' is beyond the {n} channels "
                    "of channel_names",
                    files[extra[0]],
                )
            if sorted(files) == [0] and n > 1 and _bands(files[0]) == n:
                out[case] = [files[0]]  # one file holding every channel (an RGB PNG)
                continue
            for c in range(n):
                if c not in files:
                    raise DataError(
                        f"channel file of case '{case}' missing (channel {c}: "
                        f"'{self.channel_names[c]}')",
                        images_dir / f"{case}_{c:04d}{ending}",
                    )
            out[case] = [files[c] for c in range(n)]
        return out

    def _label_files(self, case: str) -> list[Path]:
        paths = [d / f"{case}{self.file_ending}" for d in self.rater_dirs]
        for path in paths:
            if not path.is_file():
                raise DataError(
                    f"case '{case}' has no label file in rater folder '{path.parent.name}'", path
                )
        return paths

    def _check_orphan_labels(self) -> None:
        known = set(self.case_ids)
        ending = self.file_ending
        for folder in self.rater_dirs:
            for path in folder.iterdir():
                if path.name.endswith(ending) and path.name[: -len(ending)] not in known:
                    case = path.name[: -len(ending)]
                    raise DataError(
                        f"label of case '{case}' has no image file {case}_0000{ending} in imagesTr",
                        path,
                    )

    def load(self, index: int) -> MultiRaterCase:
        """Read case ``index``: image ``[C, *sp]`` and masks ``[R, K, *sp]``."""
        dims = self.spatial_dims
        image_files = self._images[index]
        image, meta = read_channels(image_files, dims)
        if image.shape[0] != len(self.channel_names):
            raise DataError(
                f"image has {image.shape[0]} channels but channel_names declares "
                f"{len(self.channel_names)}",
                image_files[0],
            )
        masks, seen = read_rater_masks(
            self._labels[index], self.values, image.shape[1:], dims, "'labels' of dataset.json"
        )
        spacing, affine = geometry(meta, dims)
        case = MultiRaterCase(
            image=image,
            masks=masks,
            case_id=self.case_ids[index],
            structures=self.structures,
            patient_id=self.patient_ids[index],
            spacing=spacing,
            affine=affine,
            meta={
                "source": str(self._labels[index][0]),
                "raters": [d.name for d in self.rater_dirs],
                "image_files": [str(p) for p in image_files],
                "label_values": seen,
                "channel_names": list(self.channel_names),
            },
        )
        return case.validate(str(self._labels[index][0]))


# --------------------------------------------------------------------------- writer
def check_writable(cases: Sequence[MultiRaterCase]) -> None:
    """Refuse cases that cannot be written as one dataset: none, mixed dimensions, mixed
    channel counts, duplicate ids or ids unusable as file names.

    Raises:
        DataError: the first problem, naming the case.
    """
    if not cases:
        raise DataError("no cases to write")
    first = cases[0]
    seen: set[str] = set()
    for case in cases:
        if not _SAFE_ID.match(case.case_id):
            raise DataError(
                "case id is not usable as a file name (letters, digits, '_', '.', '-')",
                case.case_id,
            )
        if case.case_id in seen:
            raise DataError("duplicate case id", case.case_id)
        seen.add(case.case_id)
        if case.spatial_dims != first.spatial_dims or case.image.shape[0] != first.image.shape[0]:
            raise DataError(
                f"image {case.image.shape} differs in channels or dimensions from "
                f"{first.image.shape} of the first case",
                case.case_id,
            )


def case_affine(case: MultiRaterCase) -> np.ndarray | None:
    """A volume's affine: its own, else ``diag(spacing)``, else ``None`` (identity)."""
    if case.affine is not None:
        return np.asarray(case.affine, dtype=np.float64)
    if case.spacing is not None and len(case.spacing) == 3:
        return np.diag([*case.spacing, 1.0])
    return None


def write_channel(path: Path, channel: np.ndarray, case: MultiRaterCase) -> None:
    """Write one image channel ``[*sp]`` exactly: NIfTI float32, TIFF float32, ``.npy``
    float32, or an 8-bit PNG when the values are exactly ``n / 255``.

    Raises:
        DataError: a PNG asked for values that 8 bits cannot hold exactly.
    """
    suffix = suffix_of(path)
    data = np.ascontiguousarray(channel, dtype=np.float32)
    if suffix in NIFTI_SUFFIXES:
        write_nifti(path, data, case_affine(case))
    elif suffix in (".npy", ".tif", ".tiff"):
        _write_array(path, data)
    elif suffix == ".png":
        levels = np.round(data * 255.0)
        if (
            levels.min() < 0
            or levels.max() > 255
            or not np.array_equal(levels.astype(np.float32) / np.float32(255.0), data)
        ):
            raise DataError(
                "image values are not 8-bit levels n/255: a PNG would change them "
                "(write '.tif' instead)",
                case.case_id,
            )
        write_png(path, levels.astype(np.uint8))
    else:
        raise DataError(f"cannot write images as '{suffix}'", path)


def write_label(path: Path, label_map: np.ndarray, case: MultiRaterCase) -> None:
    """Write a uint8 label map ``[*sp]`` (PNG, TIFF, ``.npy`` or NIfTI)."""
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        write_nifti(path, label_map, case_affine(case))
    elif suffix in (".npy", ".tif", ".tiff"):
        _write_array(path, label_map)
    else:
        write_png(path, label_map)


def _write_array(path: Path, array: np.ndarray) -> None:
    """Write an array as ``.npy`` or TIFF (values kept exactly), atomically."""
    with atomic_path(path) as tmp:
        if suffix_of(path) == ".npy":
            np.save(tmp, array, allow_pickle=False)
        else:
            import tifffile

            tifffile.imwrite(tmp, array)


def rater_folder(r: int) -> str:
    """Name of rater ``r``'s (0-based) label folder: ``labelsTr``, ``labelsTr_rater2``, …"""
    return "labelsTr" if r == 0 else f"labelsTr_rater{r + 1}"


def write_nnunet_raw(
    cases: Sequence[MultiRaterCase],
    out_dir: str | Path,
    file_ending: str | None = None,
    *,
    channel_names: Sequence[str] | None = None,
    name: str = "edue",
) -> Path:
    """Write cases as an nnU-Net v2 raw dataset with one ``labelsTr*`` folder per rater.

    Images go to ``imagesTr/<case>_XXXX<file_ending>`` (one float32 file per channel;
    8-bit PNG only when the values are exactly ``n / 255``), rater ``r``'s label maps to
    ``labelsTr`` (``r = 1``) or ``labelsTr_rater<r>``. Label values follow
    :func:`label_regions`: ``1 … K`` for structures that do not overlap; nested ones
    become regions in ``labels`` (``{"disc": [1, 2], "cup": [2]}``, with
    ``regions_class_order``). Volumes keep their affine (else ``diag(spacing)``).

    Args:
        cases: cases with the same structures, channels, dimensions and rater count.
        out_dir: the dataset folder to write (e.g. ``Dataset101_Fundus``).
        file_ending: ``".nii.gz"`` (default for 3D), ``".tif"`` (default for 2D,
            float32 images), ``".png"`` (8-bit images) or ``".nii"``.
        channel_names: one name per channel (default ``channel0``, ``channel1``, …);
            nnU-Net picks its normalisation from them (``CT``: CT windowing).
        name: the dataset's ``name`` in ``dataset.json``.

    Returns:
        The dataset folder.

    Raises:
        DataError: cases that do not fit one dataset, different rater counts, partly
            overlapping structures, or images a PNG cannot hold exactly.
    """
    check_writable(cases)
    out = Path(out_dir)
    first = cases[0]
    dims = first.spatial_dims
    ending = file_ending or (".nii.gz" if dims == 3 else ".tif")
    allowed = (".nii.gz", ".nii") if dims == 3 else (".tif", ".png", ".nii.gz", ".nii")
    if ending not in allowed:
        raise DataError(f"file_ending '{ending}' cannot hold {dims}D cases (use one of {allowed})")
    n_channels = first.image.shape[0]
    names = list(channel_names) if channel_names else [f"channel{c}" for c in range(n_channels)]
    if len(names) != n_channels:
        raise DataError(f"{len(names)} channel names for {n_channels} channels")
    for case in cases:
        if case.n_raters != first.n_raters:
            raise DataError(
                f"{case.n_raters} raters but the first case has {first.n_raters}: the "
                "nnU-Net layout needs a label file in every rater folder for every case",
                case.case_id,
            )
    regions = label_regions(cases)
    for case in cases:
        for c in range(n_channels):
            write_channel(out / "imagesTr" / f"{case.case_id}_{c:04d}{ending}", case.image[c], case)
        for r in range(case.n_raters):
            label_map = encode_label_map(case.masks[r])
            write_label(out / rater_folder(r) / f"{case.case_id}{ending}", label_map, case)
    nested = any(len(v) > 1 for v in regions.values())
    labels: dict[str, Any] = {"background": 0}
    labels.update({s: (v if nested else v[0]) for s, v in regions.items()})
    spec: dict[str, Any] = {
        "name": name,
        "channel_names": {str(c): n for c, n in enumerate(names)},
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ending,
    }
    if nested:
        spec["regions_class_order"] = list(range(1, len(regions) + 1))
    patients = {c.case_id: str(c.patient_id) for c in cases if str(c.patient_id) != c.case_id}
    if patients:
        spec["edue_patients"] = patients
    write_json(out / "dataset.json", spec)
    return out
