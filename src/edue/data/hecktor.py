"""HECKTOR-style head-and-neck PET/CT with one or more annotators, format ``hecktor``.

Two layouts are recognised (see ``docs/datasets.md``):

Challenge (2022)::

    ROOT/imagesTr/<ID>__CT.nii.gz, <ID>__PT.nii.gz
    ROOT/labelsTr/<ID>.nii.gz                  (0 background, 1 GTVp, 2 GTVn)

IDs may be written ``CHUM-001`` or ``CHUM_001``; images and labels are matched
ignoring that difference. One annotator (``official``).

Per-patient folders (multi-annotator)::

    ROOT/<patient>/images/   CT and PET volumes (file names containing CT and PT/PET)
                             or 2D slices (one 2-channel file per slice, or a CT and a
                             PET file per slice)
    ROOT/<patient>/labels/<annotator>/   one label volume, or one file per slice
    ROOT/<patient>/labelsTs/ (or labels/labelsTs/)   the official label (optional rater)

Volumes: CT and PET are resampled onto the label grid with the NIfTI affines (linear
interpolation; voxels outside the scanned field take the image minimum); further
annotators whose grid differs are resampled with nearest neighbour. CT is windowed to
[0, 1] (default [-200, 250] HU) and PET divided by ``suv_max`` and clipped to [0, 1].
``mode: 3d`` gives one case per patient ``[2, X, Y, Z]`` in the label file's voxel
order (spacing and affine kept); ``mode: 2d`` gives the axial slices (the voxel axis
closest to world z) where at least one annotator drew something, ``[2, a, b]`` with
the two other axes in voxel order. Structures are ``("GTVp", "GTVn")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase
from edue.data.source import CaseSource
from edue.errors import ConfigError, DataError
from edue.io import IMAGE_2D_SUFFIXES, NIFTI_SUFFIXES, SUPPORTED_SUFFIXES, read_array, suffix_of

STRUCTURES = ("GTVp", "GTVn")
OFFICIAL = "labelsTs"
_MODALITY = re.compile(r"(?<![a-z])(ct|pt|pet)(?:res)?(?![a-z])", re.IGNORECASE)


@dataclass
class _Slice:
    key: str
    images: list[Path]
    labels: dict[str, Path]


@dataclass
class _Patient:
    pid: str
    ct: Path | None = None
    pet: Path | None = None
    annotators: list[tuple[str, Path]] = field(default_factory=list)  # volume layout
    slices: list[_Slice] | None = None  # slice layout
    error: DataError | None = None  # a problem found while listing, raised by load()


def modality_of(path: Path) -> str | None:
    """``"CT"``, ``"PET"`` or ``None`` from a file name (CT / PT / PET, any case)."""
    found = _MODALITY.findall(path.name[: -len(suffix_of(path)) or None])
    if not found:
        return None
    return "CT" if found[-1].lower() == "ct" else "PET"


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(suffix_of(path))]


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and suffix_of(p) in SUPPORTED_SUFFIXES)


def _norm_id(text: str) -> str:
    return text.upper().replace("_", "-")


# --------------------------------------------------------------------------- discovery
def _challenge_patients(root: Path, split: str) -> list[_Patient]:
    images, labels = root / f"images{split}", root / f"labels{split}"
    if not labels.is_dir():
        raise DataError(f"labels{split}/ not found next to images{split}/", root)
    by_id: dict[str, _Patient] = {}
    for label in _data_files(labels):
        pid = _stem(label)
        by_id[_norm_id(pid)] = _Patient(pid, annotators=[("official", label)])
    for path in _data_files(images):
        patient = by_id.get(_norm_id(_MODALITY.sub("", _stem(path)).strip("_- .")))
        kind = modality_of(path)
        if patient is not None and kind == "CT":
            patient.ct = path
        elif patient is not None and kind == "PET":
            patient.pet = path
    if not by_id:
        raise DataError("no label files", labels)
    return [by_id[k] for k in sorted(by_id)]


def _annotator_folders(folder: Path, include_official: bool) -> list[tuple[str, Path]]:
    found = []
    labels = folder / "labels"
    if labels.is_dir():
        found += [(d.name, d) for d in sorted(labels.iterdir()) if d.is_dir()]
    if (folder / OFFICIAL).is_dir():
        found.append((OFFICIAL, folder / OFFICIAL))
    if not include_official:
        found = [(n, d) for n, d in found if n.lower() != OFFICIAL.lower()]
    if not found:
        raise DataError("no annotator folders (expected labels/<annotator>/)", folder)
    return found


def _is_volume(path: Path) -> bool:
    """A NIfTI file with at least three non-singleton axes (a header read only)."""
    import nibabel as nib

    if suffix_of(path) not in NIFTI_SUFFIXES:
        return False
    try:
        shape = nib.load(str(path)).header.get_data_shape()  # type: ignore[attr-defined]
    except Exception as exc:
        raise DataError(f"cannot read NIfTI header ({exc})", path) from None
    return sum(s > 1 for s in shape) >= 3


def _folder_patient(folder: Path, include_official: bool) -> _Patient:
    files = _data_files(folder / "images")
    annotators = _annotator_folders(folder, include_official)
    kinds = [modality_of(p) for p in files]
    if sorted(map(str, kinds)) == ["CT", "PET"] and all(_is_volume(p) for p in files):
        patient = _Patient(folder.name, ct=files[kinds.index("CT")], pet=files[kinds.index("PET")])
        for name, d in annotators:
            label_files = _data_files(d)
            if len(label_files) != 1:
                raise DataError(f"expected one label volume, found {len(label_files)}", d)
            patient.annotators.append((name, label_files[0]))
        return patient
    groups: dict[str, tuple[str, list[Path]]] = {}
    for p in files:  # slice key = file stem without its modality token
        key = _MODALITY.sub("", _stem(p)).strip("_- .")
        groups.setdefault(key.lower(), (key, []))[1].append(p)
    index = {name: {_stem(p).lower(): p for p in _data_files(d)} for name, d in annotators}
    slices = []
    for low in sorted(groups):
        key, imgs = groups[low]
        imgs = sorted(imgs, key=lambda p: modality_of(p) != "CT")  # CT first
        # a missing file is kept as its expected name, so that load() reports it
        labels = {n: index[n].get(low, d / f"{key}.*") for n, d in annotators}
        slices.append(_Slice(key, imgs, labels))
    return _Patient(folder.name, slices=slices)


def discover(root: Path, split: str, include_official: bool) -> list[_Patient]:
    """Find the patients of either layout under ``root``."""
    if not root.is_dir():
        raise DataError("HECKTOR folder not found", root)
    if (root / f"images{split}").is_dir():
        return _challenge_patients(root, split)
    if (root / "images").is_dir():
        return [_folder_patient(root, include_official)]
    patients = []
    for d in sorted(root.iterdir()):
        if (d / "images").is_dir():
            try:
                patients.append(_folder_patient(d, include_official))
            except DataError as exc:  # one bad patient must not hide the others
                patients.append(_Patient(d.name, error=exc))
    if not patients:
        raise DataError(
            f"neither images{split}/ + labels{split}/ nor <patient>/images/ folders found", root
        )
    return patients


# --------------------------------------------------------------------------- geometry
def resample_to(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, ...],
    order: int,
) -> np.ndarray:
    """Resample a volume onto another voxel grid through world coordinates.

    Args:
        array: ``[X, Y, Z]`` on the grid of ``src_affine``.
        src_affine, dst_affine: 4×4 voxel-to-world matrices.
        dst_shape: target grid shape.
        order: 1 (linear, images) or 0 (nearest, labels).

    Returns:
        ``dst_shape`` array; outside the source field: 0 for labels, the minimum for images.
    """
    from scipy.ndimage import affine_transform

    if array.shape == tuple(dst_shape) and np.allclose(src_affine, dst_affine, atol=1e-4):
        return array
    matrix = np.linalg.inv(src_affine) @ dst_affine  # target voxel -> source voxel
    source = array.astype(np.float32) if order else array
    cval = float(array.min()) if order else 0.0
    return affine_transform(
        source,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=tuple(dst_shape),
        order=order,
        mode="constant",
        cval=cval,
    )


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis that moves most along world z (superior-inferior)."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def _volume(path: Path, what: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    array, meta = read_array(path)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or meta.affine is None:
        raise DataError(f"expected a 3D NIfTI {what} volume, got shape {array.shape}", path)
    return array, meta.affine, tuple(meta.spacing or (1.0, 1.0, 1.0))


def split_labels(label: np.ndarray, path: Path | str) -> tuple[np.ndarray, list[int]]:
    """Label map ``[*sp]`` (0/1/2) -> masks ``[2, *sp]`` (GTVp, GTVn) and values seen.

    Raises:
        DataError: values other than 0, 1, 2.
    """
    values = sorted(int(v) for v in np.unique(label))
    if not set(values) <= {0, 1, 2}:
        raise DataError(
            f"unexpected label values {values[:10]} (expected 0 background, 1 GTVp, 2 GTVn)", path
        )
    return np.stack([label == 1, label == 2]).astype(np.uint8), values


class HecktorSource(CaseSource):
    """Reader of HECKTOR-style PET/CT data (format ``hecktor``).

    Args:
        root: dataset folder (either layout).
        mode: ``2d`` (axial slices with an annotation; default) or ``3d`` (volumes).
        include_official: use the ``labelsTs`` official label as one more rater
            (default ``True``).
        ct_window: ``[low, high]`` HU mapped to [0, 1] (default ``[-200, 250]``);
            ``None`` keeps raw HU.
        suv_max: PET SUV divided by this and clipped to [0, 1] (default 10); ``None``
            keeps raw SUV.
        split: ``Tr`` (default) or ``Ts``: which ``images*/labels*`` folders of the
            challenge layout to read.
        window_slices: apply ``ct_window``/``suv_max`` to pre-made 2D slices too
            (default ``False``: slices are taken as stored, 8-bit images scaled to [0, 1]).
        keep_empty: in ``2d`` mode from volumes, keep slices nobody annotated too.
    """

    def __init__(
        self,
        root: str | Path,
        mode: str = "2d",
        include_official: bool = True,
        ct_window: tuple[float, float] | list[float] | None = (-200.0, 250.0),
        suv_max: float | None = 10.0,
        split: str = "Tr",
        window_slices: bool = False,
        keep_empty: bool = False,
        **_: Any,
    ) -> None:
        if mode not in ("2d", "3d"):
            raise ConfigError(f"hecktor mode must be '2d' or '3d', got '{mode}'")
        self.root, self.mode = Path(root), mode
        self.ct_window = None if ct_window is None else tuple(float(v) for v in ct_window)
        self.suv_max = None if suv_max is None else float(suv_max)
        self.window_slices, self.keep_empty = window_slices, keep_empty
        self.patients = discover(self.root, split, include_official)
        self.structures = STRUCTURES
        self.spatial_dims = 2 if mode == "2d" else 3
        self._cache: dict[str, tuple] = {}
        # (patient, None | slice index | _Slice | DataError raised by load)
        self._index: list[tuple[int, Any]] = []
        for i, p in enumerate(self.patients):
            if p.error is not None:
                self._index.append((i, p.error))
            elif p.slices is not None and mode == "3d":
                raise DataError(
                    "2D slice folders can only be read with mode: 2d", self.root / p.pid
                )
            elif p.slices is not None:
                self._index += [(i, s) for s in p.slices]
            elif mode == "3d":
                self._index.append((i, None))
            else:
                try:
                    self._index += [(i, z) for z in self._annotated_slices(i)]
                except DataError as exc:
                    self._index.append((i, exc))
        self.case_ids = [self._case_id(i, item) for i, item in self._index]
        self.patient_ids = [self.patients[i].pid for i, _ in self._index]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}  # DataLoader workers start with an empty cache
        return state

    def _case_id(self, patient: int, item: Any) -> str:
        pid = self.patients[patient].pid
        if item is None:
            return pid
        if isinstance(item, DataError):
            return f"{pid}_unreadable"
        return f"{pid}_{item.key}" if isinstance(item, _Slice) else f"{pid}_z{item:03d}"

    def _annotated_slices(self, patient: int) -> list[int]:
        labels, affine, _, _ = self._labels(self.patients[patient])
        axis = axial_axis(affine)
        if self.keep_empty:
            return list(range(labels.shape[axis + 1]))
        per_slice = np.moveaxis(labels > 0, axis + 1, 0).reshape(labels.shape[axis + 1], -1)
        return [int(z) for z in np.flatnonzero(per_slice.any(1))]

    def _labels(self, p: _Patient) -> tuple[np.ndarray, np.ndarray, tuple, list[str]]:
        """All annotators' label maps on the first one's grid ``[R, X, Y, Z]``."""
        ref, ref_affine, spacing = _volume(p.annotators[0][1], "label")
        maps = [ref]
        for _, path in p.annotators[1:]:
            label, affine, _ = _volume(path, "label")
            moved = resample_to(label, affine, ref_affine, ref.shape, order=0)
            if label.any() and not moved.any():
                raise DataError("annotation lies outside the first annotator's grid", path)
            maps.append(moved)
        return np.stack(maps), ref_affine, spacing, [str(a[1]) for a in p.annotators]

    def _patient_volume(self, patient: int) -> tuple:
        p = self.patients[patient]
        if p.pid in self._cache:
            return self._cache[p.pid]
        labels, affine, spacing, files = self._labels(p)
        masks, values = [], set()
        for r, label_file in enumerate(files):
            m, seen = split_labels(labels[r], label_file)
            masks.append(m)
            values.update(seen)
        channels = []
        for image_file, what in ((p.ct, "CT"), (p.pet, "PET")):
            if image_file is None:
                raise DataError(
                    f"no {what} image (file name containing "
                    f"{'CT' if what == 'CT' else 'PT or PET'})",
                    self.root / p.pid,
                )
            vol, vol_affine, _ = _volume(image_file, what)
            vol = resample_to(vol.astype(np.float32), vol_affine, affine, labels.shape[1:], 1)
            channels.append(self._normalise(vol, what))
        entry = (
            np.stack(channels).astype(np.float32),
            np.stack(masks),
            affine,
            spacing,
            sorted(values),
        )
        self._cache = {p.pid: entry}  # keep one patient: slices are read in patient order
        return entry

    def _normalise(self, image: np.ndarray, what: str) -> np.ndarray:
        if what == "CT" and self.ct_window is not None:
            low, high = self.ct_window
            return np.clip((image - low) / (high - low), 0.0, 1.0)
        if what == "PET" and self.suv_max is not None:
            return np.clip(image / self.suv_max, 0.0, 1.0)
        return image

    def load(self, index: int) -> MultiRaterCase:
        patient, item = self._index[index]
        p = self.patients[patient]
        if isinstance(item, DataError):
            raise item
        if isinstance(item, _Slice):
            return self._load_slice(patient, item, index)
        image, masks, affine, spacing, values = self._patient_volume(patient)
        meta = {
            "source": str(self.root / p.pid),
            "label_values": values,
            "raters": [a[0] for a in p.annotators],
        }
        if item is None:
            case = MultiRaterCase(
                image,
                masks,
                self.case_ids[index],
                STRUCTURES,
                p.pid,
                spacing=spacing,
                affine=affine,
                meta=meta,
            )
        else:
            axis = axial_axis(affine)
            image2 = np.take(image, item, axis=axis + 1)
            masks2 = np.take(masks, item, axis=axis + 2)
            meta["slice"] = int(item)
            case = MultiRaterCase(
                np.ascontiguousarray(image2),
                np.ascontiguousarray(masks2),
                self.case_ids[index],
                STRUCTURES,
                p.pid,
                spacing=tuple(s for a, s in enumerate(spacing) if a != axis),
                meta=meta,
            )
        return case.validate(str(self.root / p.pid))

    def _load_slice(self, patient: int, item: _Slice, index: int) -> MultiRaterCase:
        image = _read_slice_image(item.images)
        if self.window_slices and image.shape[0] == 2:
            image = np.stack([self._normalise(image[0], "CT"), self._normalise(image[1], "PET")])
        masks, values, names = [], set(), []
        for name, path in sorted(item.labels.items()):
            if not path.exists():
                raise DataError(
                    f"missing label file of annotator '{name}' for slice '{item.key}'", path
                )
            array, _ = read_array(path)
            array = array.reshape(tuple(s for s in array.shape if s != 1) or array.shape)
            if array.shape != image.shape[1:]:
                raise DataError(
                    f"label shape {array.shape} differs from image {image.shape[1:]}", path
                )
            m, seen = split_labels(array, path)
            masks.append(m)
            values.update(seen)
            names.append(name)
        case = MultiRaterCase(
            image.astype(np.float32),
            np.stack(masks),
            self.case_ids[index],
            STRUCTURES,
            self.patients[patient].pid,
            meta={"source": str(item.images[0]), "raters": names, "label_values": sorted(values)},
        )
        return case.validate(str(item.images[0]))


def _read_slice_image(paths: list[Path]) -> np.ndarray:
    """Read a 2D slice as ``[C, H, W]`` from one multi-channel file or one file per channel."""
    channels = []
    for path in paths:
        array, _ = read_array(path)
        array = array.reshape(tuple(s for s in array.shape if s != 1) or array.shape)
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype, 1.0)
        array = array.astype(np.float32) / (scale if suffix_of(path) in IMAGE_2D_SUFFIXES else 1.0)
        if array.ndim == 2:
            channels.append(array[None])
        elif array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
            channels.append(array)  # channels-first
        elif array.ndim == 3 and array.shape[-1] <= 4:
            channels.append(np.moveaxis(array, -1, 0))
        else:
            raise DataError(f"expected a 2D slice [H, W(, C)], got shape {array.shape}", path)
    if len({c.shape[1:] for c in channels}) != 1:
        raise DataError(
            f"CT and PET slices differ in size {[c.shape[1:] for c in channels]}", paths[-1]
        )
    image = np.concatenate(channels)
    if not np.isfinite(image).all():
        raise DataError("image contains NaN or Inf values", paths[0])
    return image
