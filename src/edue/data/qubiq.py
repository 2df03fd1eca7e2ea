"""QUBIQ challenge data (2020 slices, 2021 volumes), format ``qubiq``.

Layout::

    ROOT/<task>/Training/<case>/image.nii.gz
                               task01_seg01.nii.gz     (sub-task 01, rater 01)
                               task01_seg02.nii.gz ...

Raters and sub-tasks are found by globbing (never hard-coded). Each requested sub-task
is one structure named ``taskTT``. 2D (QUBIQ 2020 slices, some with a trailing
singleton axis) and 3D (QUBIQ 2021 volumes) are told apart from the masks'
dimensionality; an image with one more axis than the masks holds modalities in its
last axis, which become channels.

When sub-tasks of a case have different raters, only the raters present for *every*
requested sub-task are kept (a rater's masks must cover all structures); the dropped
ones are listed in ``case.meta['dropped_raters']``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edue.data.case import MultiRaterCase, binary_rater_masks
from edue.data.source import CaseSource
from edue.errors import DataError
from edue.io import read_array, read_label_map

SEG_PATTERN = re.compile(r"^task(\d+)_seg(\d+)\.nii(\.gz)?$", re.IGNORECASE)
IMAGE_PATTERN = re.compile(r"^image.*\.nii(\.gz)?$", re.IGNORECASE)


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``case2`` before ``case10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def squeeze_trailing(shape: tuple[int, ...], min_dims: int = 2) -> tuple[int, ...]:
    """Drop trailing singleton axes while more than ``min_dims`` remain."""
    shape = tuple(shape)
    while len(shape) > min_dims and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _list_case(folder: Path) -> tuple[Path | None, dict[int, dict[int, Path]]]:
    """The image file and ``{subtask: {rater: path}}`` of one case folder."""
    image: Path | None = None
    segs: dict[int, dict[int, Path]] = {}
    for p in folder.iterdir():
        match = SEG_PATTERN.match(p.name)
        if match:
            segs.setdefault(int(match.group(1)), {})[int(match.group(2))] = p
        elif IMAGE_PATTERN.match(p.name):
            image = p
    return image, segs


class QubiqSource(CaseSource):
    """Reader of a QUBIQ task folder.

    Args:
        root: the QUBIQ folder holding task folders, or one task folder.
        task: task folder name under ``root`` (e.g. ``prostate``); needed when
            ``root`` holds several tasks.
        subtasks: sub-task numbers to load (default: all found), e.g. ``[1, 2]``.
        split: sub-folder holding the cases (default ``Training``); cases directly
            under the task folder are also accepted.
    """

    def __init__(
        self,
        root: str | Path,
        task: str | None = None,
        subtasks: list[int] | None = None,
        split: str = "Training",
        **_: Any,
    ) -> None:
        self.root = Path(root)
        self.folder = self._case_folder(self.root, task, split)
        entries = []
        for p in sorted(self.folder.iterdir(), key=lambda q: natural_key(q.name)):
            if p.is_dir():
                image, segs = _list_case(p)
                if image is not None or segs:
                    entries.append((p, image, segs))
        if not entries:
            raise DataError("no case folders with image.nii.gz / taskTT_segRR.nii.gz", self.folder)
        found = sorted({t for _, _, segs in entries for t in segs})
        self.subtasks = [int(t) for t in subtasks] if subtasks else found
        unknown = sorted(set(self.subtasks) - set(found))
        if unknown or not self.subtasks:
            raise DataError(f"sub-tasks {unknown} not found (found {found})", self.folder)
        self._entries = entries
        self.case_ids = [p.name for p, _, _ in entries]
        self.patient_ids = [re.sub(r"-\d+$", "", p.name) for p, _, _ in entries]
        self.structures = tuple(f"task{t:02d}" for t in self.subtasks)
        self.spatial_dims = self._probe_dims()

    @staticmethod
    def _case_folder(root: Path, task: str | None, split: str) -> Path:
        if not root.is_dir():
            raise DataError("QUBIQ folder not found", root)
        base = root / task if task else root
        if not base.is_dir():
            raise DataError(f"task folder '{task}' not found", base)
        if (base / split).is_dir():
            return base / split
        if any(
            SEG_PATTERN.match(f.name) for d in base.iterdir() if d.is_dir() for f in d.iterdir()
        ):
            return base
        tasks = sorted(d.name for d in base.iterdir() if (d / split).is_dir())
        hint = f"; choose one with task: {tasks}" if tasks else ""
        raise DataError(f"no '{split}' folder with QUBIQ cases{hint}", base)

    def _probe_dims(self) -> int:
        import nibabel as nib

        for _, _, segs in self._entries:
            for t in self.subtasks:
                for path in segs.get(t, {}).values():
                    try:
                        header = nib.load(str(path)).header
                        shape = header.get_data_shape()  # type: ignore[attr-defined]
                    except Exception as exc:
                        raise DataError(f"cannot read NIfTI header ({exc})", path) from None
                    return len(squeeze_trailing(tuple(shape)))
        return 2

    def _raters(self, folder: Path, segs: dict[int, dict[int, Path]]) -> tuple[list[int], list]:
        per_task = []
        for t in self.subtasks:
            if not segs.get(t):
                raise DataError(f"no rater masks task{t:02d}_segRR.nii.gz for sub-task {t}", folder)
            per_task.append(set(segs[t]))
        common = sorted(set.intersection(*per_task))
        dropped = sorted(set.union(*per_task) - set(common))
        if not common:
            raise DataError("no rater has masks for every requested sub-task", folder)
        return common, dropped

    def load(self, index: int) -> MultiRaterCase:
        folder, image_path, segs = self._entries[index]
        if image_path is None:
            raise DataError("no image file (expected image.nii.gz)", folder)
        raters, dropped = self._raters(folder, segs)
        masks, values = [], set()
        for r in raters:
            per_structure: list[np.ndarray] = []
            for t in self.subtasks:
                path = segs[t][r]
                label, _ = read_label_map(path)
                label = label.reshape(squeeze_trailing(label.shape))
                if per_structure and label.shape != per_structure[0].shape:
                    raise DataError(
                        f"mask shape {label.shape} differs from "
                        f"{per_structure[0].shape} of the other masks",
                        path,
                    )
                binary, seen = binary_rater_masks(label[None], str(path))
                values.update(seen)
                per_structure.append(binary[0])
            masks.append(np.stack(per_structure))
        stacked = _stack_raters(masks, segs, raters, self.subtasks)
        image, meta = self._read_image(image_path, stacked.shape[2:])
        case = MultiRaterCase(
            image=image,
            masks=stacked,
            case_id=self.case_ids[index],
            structures=self.structures,
            patient_id=self.patient_ids[index],
            spacing=meta.spacing[: stacked.ndim - 2] if meta.spacing else None,
            affine=meta.affine if stacked.ndim == 5 else None,
            meta={
                "source": str(folder),
                "raters": [f"seg{r:02d}" for r in raters],
                "dropped_raters": [f"seg{r:02d}" for r in dropped],
                "label_values": sorted(values),
            },
        )
        return case.validate(str(folder))

    @staticmethod
    def _read_image(path: Path, spatial: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        array, meta = read_array(path)
        array = np.asarray(array, dtype=np.float32)
        dims = len(spatial)
        if array.shape[:dims] != spatial:
            raise DataError(f"image shape {array.shape} does not match mask shape {spatial}", path)
        rest = squeeze_trailing(array.shape, dims)[dims:]
        if not rest:
            image = array.reshape(spatial)[None]
        elif len(rest) == 1:  # modalities in the last axis -> channels
            image = np.moveaxis(array.reshape(*spatial, rest[0]), -1, 0)
        else:
            raise DataError(f"image shape {array.shape} has more than one channel axis", path)
        if not np.isfinite(image).all():
            raise DataError("image contains NaN or Inf values", path)
        return np.ascontiguousarray(image), meta


def _stack_raters(
    masks: list[np.ndarray],
    segs: dict[int, dict[int, Path]],
    raters: list[int],
    subtasks: list[int],
) -> np.ndarray:
    """Stack per-rater masks ``[K, *sp]``, naming the first file whose shape differs."""
    for r, m in zip(raters, masks, strict=True):
        if m.shape != masks[0].shape:
            raise DataError(
                f"mask shape {m.shape[1:]} differs from {masks[0].shape[1:]} of the first rater",
                segs[subtasks[0]][r],
            )
    return np.stack(masks)
