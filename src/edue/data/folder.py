"""The project's own dataset format: one folder per case, one mask file per rater.

Layout (documented in ``docs/dataset-format.md``)::

    ROOT/
      dataset.json
      <case_id>/
        image.png | image.tif | image.npy | image.nii.gz   (or image_0000.*, … per channel)
        rater_<name>.png | .tif | .npy | .nii.gz             (one label map per rater)
        rater_probability.npy                                 (optional, [K, *spatial])

``dataset.json`` names the structures and how each rater's label map encodes them::

    {"format": "edue-folder", "version": 1, "spatial_dims": 2,
     "structures": ["disc", "cup"],
     "labels": {"disc": [128, 255], "cup": [255]},
     "cases": [{"id": "case-001", "patient": "p01"}, ...]}     (optional list)

A pixel belongs to structure ``k`` when its value is in ``labels[k]`` (structures may
overlap, e.g. the cup lies inside the disc). Any value outside ``{0} ∪ labels`` is an
error. Without ``labels`` a single structure with values 0/1 or 0/255 is assumed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from edue.data.case import MultiRaterCase, distinct_values
from edue.data.source import CaseSource
from edue.errors import DataError
from edue.io import (
    SUPPORTED_SUFFIXES,
    read_image,
    read_label_map,
    suffix_of,
    write_json,
    write_nifti,
    write_png,
)

FORMAT_NAME = "edue-folder"


def _find(folder: Path, stem: str) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().startswith(stem) and suffix_of(p) in SUPPORTED_SUFFIXES
    )


def decode_labels(
    label_map: np.ndarray, labels: dict[str, list[int]], structures: Sequence[str], where: Path
) -> np.ndarray:
    """Turn a label map ``[*sp]`` into binary masks ``[K, *sp]`` using ``labels``.

    Raises:
        DataError: values outside ``{0} ∪ labels`` (named with the file).
    """
    allowed = {0} | {int(v) for s in structures for v in labels[s]}
    found = set(distinct_values(label_map).tolist())
    if not found <= allowed:
        raise DataError(
            f"mask has values {sorted(found - allowed)[:8]} but dataset.json allows only "
            f"{sorted(allowed)}",
            where,
        )
    masks = np.empty((len(structures), *label_map.shape), np.uint8)
    for k, name in enumerate(structures):
        values = labels[name]
        if len(values) == 1:
            masks[k] = label_map == values[0]
        elif label_map.dtype == np.uint8:  # a lookup table: one pass, no sorting
            table = np.zeros(256, np.uint8)
            table[[v for v in values if 0 <= v < 256]] = 1
            masks[k] = table[label_map]
        else:
            masks[k] = np.isin(label_map, values)
    return masks


class _CaseEntry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    id: StrictStr | StrictInt
    patient: StrictStr | StrictInt | None = None


class DatasetSpec(BaseModel):
    """The typed content of ``dataset.json`` (unknown keys are kept, not refused, so a
    file written by a newer edue still reads)."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: StrictStr = "edue-folder"
    version: StrictInt = 1
    spatial_dims: Literal[2, 3] = 2
    structures: Annotated[list[StrictStr], Field(min_length=1)] = Field(
        default_factory=lambda: ["foreground"]
    )
    labels: dict[str, Annotated[list[StrictInt], Field(min_length=1)]] | None = None
    cases: list[_CaseEntry] | None = None


def read_dataset_spec(values: Any, path: Path) -> DatasetSpec:
    """Check a parsed ``dataset.json`` (``"structures": "disc"`` is refused, not read as
    four one-letter structures).

    Raises:
        DataError: one line naming ``path`` and every key at fault.
    """
    if not isinstance(values, dict):
        raise DataError(
            f"must be a JSON object with 'structures', 'labels', …; got a JSON "
            f"{type(values).__name__} (see docs/dataset-format.md)",
            path,
        )
    try:
        return DatasetSpec.model_validate(values)
    except ValidationError as exc:
        raise DataError(_describe(exc), path) from None


def _describe(exc: ValidationError) -> str:
    """``key = value: what is wrong`` per key at fault, ``;``-joined (one line)."""
    clauses: dict[str, str] = {}
    for error in exc.errors():
        keys = [str(p) for p in error["loc"] if not isinstance(p, int) and "[" not in str(p)]
        key = ".".join(k for k in keys if k not in ("str", "int")) or "dataset.json"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        clauses.setdefault(key, f"{key}{shown}: {error['msg']}")
    return "; ".join(clauses.values())


class FolderSource(CaseSource):
    """Reader of the ``edue-folder`` format.

    Args:
        root: dataset folder holding ``dataset.json``.
    """

    def __init__(self, root: str | Path, **_: Any) -> None:
        self.root = Path(root)
        spec_path = self.root / "dataset.json"
        if not self.root.is_dir():
            raise DataError("dataset folder not found", self.root)
        if not spec_path.is_file():
            raise DataError("dataset.json not found (see docs/dataset-format.md)", spec_path)
        try:
            raw = json.loads(spec_path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text (byte {exc.start})", spec_path) from None
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot parse JSON ({exc})", spec_path) from None
        spec = read_dataset_spec(raw, spec_path)
        self.structures = tuple(spec.structures)
        self.labels: dict[str, list[int]] = spec.labels or {self.structures[0]: [1, 255]}
        missing = [s for s in self.structures if s not in self.labels]
        if missing:
            raise DataError(f"'labels' has no entry for structures {missing}", spec_path)
        self.spatial_dims = spec.spatial_dims
        entries = (
            [c.model_dump() for c in spec.cases]
            if spec.cases
            else [
                {"id": p.name, "patient": None} for p in sorted(self.root.iterdir()) if p.is_dir()
            ]
        )
        if not entries:
            raise DataError("no case folders found", self.root)
        self.case_ids = [str(e["id"]) for e in entries]
        self.patient_ids = [str(e.get("patient") or e["id"]) for e in entries]

    def load(self, index: int) -> MultiRaterCase:
        case_id = self.case_ids[index]
        folder = self.root / case_id
        if not folder.is_dir():
            raise DataError("case folder not found", folder)
        image_files = _find(folder, "image")
        if not image_files:
            raise DataError("no image file (expected image.<png|tif|npy|nii.gz>)", folder)
        images, metas = zip(*(read_image(p, self.spatial_dims) for p in image_files), strict=True)
        image = np.concatenate(images, axis=0)
        rater_files = _find(folder, "rater_")
        rater_files = [p for p in rater_files if not p.name.startswith("rater_probability")]
        if not rater_files:
            raise DataError("no rater masks (expected rater_<name>.<ext>)", folder)
        masks = []
        for path in rater_files:
            label_map, _ = read_label_map(path, self.spatial_dims)
            if label_map.shape != image.shape[1:]:
                raise DataError(
                    f"mask size {label_map.shape} differs from image size {image.shape[1:]}", path
                )
            masks.append(decode_labels(label_map, self.labels, self.structures, path))
        prob_path = folder / "rater_probability.npy"
        prob = np.load(prob_path, allow_pickle=False) if prob_path.is_file() else None
        case = MultiRaterCase(
            image=image,
            masks=np.stack(masks),
            case_id=case_id,
            structures=self.structures,
            patient_id=self.patient_ids[index],
            spacing=metas[0].spacing,
            affine=metas[0].affine,
            rater_probability=prob,
            meta={
                "raters": [p.name.split(".")[0][len("rater_") :] for p in rater_files],
                "image_files": [str(p) for p in image_files],
            },
        )
        return case.validate(str(folder))


def encode_labels(
    masks: np.ndarray, structures: Sequence[str], nested: bool
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Encode one rater's binary masks ``[K, *sp]`` as a uint8 label map.

    Nested structures (each inside the previous, like disc ⊃ cup) get the readable
    RIGA-style encoding: value ``255 * (k+1) // K`` for the innermost structure present;
    otherwise each structure is one bit.

    Returns:
        The label map ``[*sp]`` and the ``labels`` entry for ``dataset.json``.
    """
    k = masks.shape[0]
    if nested:
        values = [255 * (i + 1) // k for i in range(k)]
        label_map = np.zeros(masks.shape[1:], dtype=np.uint8)
        for i in range(k):
            label_map[masks[i] > 0] = values[i]
        return label_map, {s: values[i:] for i, s in enumerate(structures)}
    if k > 8:
        raise ValueError("bit encoding supports at most 8 structures")
    label_map = np.zeros(masks.shape[1:], dtype=np.uint8)
    for i in range(k):
        label_map |= (masks[i] > 0).astype(np.uint8) << i
    labels = {s: [v for v in range(1, 2**k) if v & (1 << i)] for i, s in enumerate(structures)}
    return label_map, labels


def write_folder_dataset(
    cases: Sequence[MultiRaterCase], root: str | Path, name: str = "dataset"
) -> Path:
    """Write cases in the ``edue-folder`` format (PNG for 2D, NIfTI for 3D).

    Every case must share structures; label encoding is chosen from the first case.

    Returns:
        The dataset folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[int]] | None = None
    entries = []
    nested = all(
        bool(np.all(c.masks[:, k + 1] <= c.masks[:, k]))
        for c in cases
        for k in range(c.masks.shape[1] - 1)
    )
    for case in cases:
        folder = root / case.case_id
        folder.mkdir(parents=True, exist_ok=True)
        if case.spatial_dims == 2:
            img = np.clip(np.moveaxis(case.image, 0, -1), 0, 1)
            img8 = (img * 255 + 0.5).astype(np.uint8)
            write_png(folder / "image.png", img8[..., 0] if img8.shape[-1] == 1 else img8)
        else:
            write_nifti(folder / "image.nii.gz", np.moveaxis(case.image, 0, -1), case.affine)
        for r in range(case.n_raters):
            label_map, case_labels = encode_labels(case.masks[r], case.structures, nested)
            labels = labels or case_labels
            if case.spatial_dims == 2:
                write_png(folder / f"rater_{r + 1}.png", label_map)
            else:
                write_nifti(folder / f"rater_{r + 1}.nii.gz", label_map, case.affine)
        if case.rater_probability is not None:
            np.save(folder / "rater_probability.npy", case.rater_probability.astype(np.float32))
        entries.append({"id": case.case_id, "patient": case.patient_id})
    spec = {
        "format": FORMAT_NAME,
        "version": 1,
        "name": name,
        "spatial_dims": cases[0].spatial_dims if cases else 2,
        "structures": list(cases[0].structures) if cases else [],
        "labels": labels or {},
        "cases": entries,
    }
    write_json(root / "dataset.json", spec)
    return root
