"""Where the files of a HECKTOR-style dataset are: patients, modalities, annotators.

Discovery only lists files (see :mod:`edue.data.hecktor` for the two layouts and for
reading them): a problem found while listing one patient is kept with that patient and
raised when it is loaded, so one bad folder never hides the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edue.errors import DataError
from edue.io import NIFTI_SUFFIXES, SUPPORTED_SUFFIXES, suffix_of

OFFICIAL = "labelsTs"
_MODALITY = re.compile(r"(?<![a-z])(ct|pt|pet)(?:res)?(?![a-z])", re.IGNORECASE)


@dataclass
class SliceFiles:
    """The files of one 2D slice: image file(s) and one label file per annotator."""

    key: str
    images: list[Path]
    labels: dict[str, Path]


@dataclass
class PatientFiles:
    """What discovery found for one patient (volume layout or slice layout)."""

    pid: str
    ct: Path | None = None
    pet: Path | None = None
    annotators: list[tuple[str, Path]] = field(default_factory=list)  # volume layout
    slices: list[SliceFiles] | None = None  # slice layout
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
def _challenge_patients(root: Path, split: str) -> list[PatientFiles]:
    images, labels = root / f"images{split}", root / f"labels{split}"
    if not labels.is_dir():
        raise DataError(f"labels{split}/ not found next to images{split}/", root)
    by_id: dict[str, PatientFiles] = {}
    for label in _data_files(labels):
        pid = _stem(label)
        by_id[_norm_id(pid)] = PatientFiles(pid, annotators=[("official", label)])
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


def _folder_patient(folder: Path, include_official: bool) -> PatientFiles:
    files = _data_files(folder / "images")
    annotators = _annotator_folders(folder, include_official)
    kinds = [modality_of(p) for p in files]
    if sorted(map(str, kinds)) == ["CT", "PET"] and all(_is_volume(p) for p in files):
        patient = PatientFiles(
            folder.name, ct=files[kinds.index("CT")], pet=files[kinds.index("PET")]
        )
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
        slices.append(SliceFiles(key, imgs, labels))
    return PatientFiles(folder.name, slices=slices)


def discover(root: Path, split: str, include_official: bool) -> list[PatientFiles]:
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
                patients.append(PatientFiles(d.name, error=exc))
    if not patients:
        raise DataError(
            f"neither images{split}/ + labels{split}/ nor <patient>/images/ folders found", root
        )
    return patients
