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

from pathlib import Path
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase
from edue.data.hecktor_layout import PatientFiles, SliceFiles, discover
from edue.data.source import CaseSource
from edue.errors import ConfigError, DataError
from edue.io import float_intensities, read_array

STRUCTURES = ("GTVp", "GTVn")


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
        # (patient, None | slice index | SliceFiles | DataError raised by load)
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
        return f"{pid}_{item.key}" if isinstance(item, SliceFiles) else f"{pid}_z{item:03d}"

    def _annotated_slices(self, patient: int) -> list[int]:
        labels, affine, _, _ = self._labels(self.patients[patient])
        axis = axial_axis(affine)
        if self.keep_empty:
            return list(range(labels.shape[axis + 1]))
        per_slice = np.moveaxis(labels > 0, axis + 1, 0).reshape(labels.shape[axis + 1], -1)
        return [int(z) for z in np.flatnonzero(per_slice.any(1))]

    def _labels(self, p: PatientFiles) -> tuple[np.ndarray, np.ndarray, tuple, list[str]]:
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
        if isinstance(item, SliceFiles):
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

    def _load_slice(self, patient: int, item: SliceFiles, index: int) -> MultiRaterCase:
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
        array = float_intensities(array, path)
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
