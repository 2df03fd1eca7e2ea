"""Decathlon-style MONAI datalists with one label file per rater, format ``monai-datalist``.

A datalist is a JSON file (``load_decathlon_datalist``'s input)::

    {"labels": {"0": "background", "1": "GTVp", "2": "GTVn"},
     "training": [{"image": "imagesTr/a.nii.gz",
                   "label": ["labelsTr/a_r1.nii.gz", "labelsTr/a_r2.nii.gz"],
                   "patient": "P1"}, ...],
     "validation": [...], "test": [...]}

``image`` is a file or a list of channel files (stacked as channels); ``label`` (or
``labels``) is one integer label map, or a list of them, one per rater. Relative paths
are resolved against the JSON file's folder (or the ``base_dir`` option), absolute ones
kept. Structures come from the reader option ``labels`` (``{name: value | [values]}``),
else from a top-level ``edue_structures`` map of the same form (written by
:func:`write_monai_datalist` for nested structures), else from the top-level
``labels`` map (value → name; value 0 is the background; values sharing a name form
one region). A structure's mask is "label ∈ values".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edue.data.case import MultiRaterCase
from edue.data.nnunet_raw import (
    StructureValues,
    check_writable,
    encode_label_map,
    geometry,
    label_dims,
    label_regions,
    parse_structures,
    read_channels,
    read_rater_masks,
    warn_single_rater,
    write_channel,
    write_label,
)
from edue.data.source import CaseSource
from edue.errors import DataError, EdueError
from edue.io import read_json, suffix_of, write_json

#: the structure used when neither the file nor the options name any
DEFAULT_STRUCTURES: StructureValues = {"foreground": (1,)}


@dataclass(frozen=True)
class _Entry:
    """One datalist entry: where it is listed and its files."""

    list_name: str
    index: int
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    case_id: str
    patient_id: str

    @property
    def name(self) -> str:
        return f"entry {self.index} of '{self.list_name}'"


def datalist_path(root: Path) -> Path:
    """The datalist JSON: ``root`` itself, or ``root/dataset.json`` for a folder.

    Raises:
        DataError: neither exists.
    """
    path = root / "dataset.json" if root.is_dir() else root
    if not path.is_file():
        raise DataError(
            "datalist JSON not found (a .json file or a folder with dataset.json)", path
        )
    return path


def _strip_suffix(name: str) -> str:
    suffix = suffix_of(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def _paths(value: Any, base: Path) -> tuple[Path, ...] | None:
    """A path or a list of paths, resolved against ``base`` (``None``: not paths)."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        return None
    return tuple(base / v for v in items)  # an absolute v replaces base


def structures_of(spec: dict[str, Any], option: Any, path: Path) -> StructureValues:
    """The structures: the ``labels`` option, else ``edue_structures``, else the file's
    ``labels`` map (value → name), else :data:`DEFAULT_STRUCTURES`.

    Raises:
        DataError: a malformed map (naming ``path``).
    """
    if option is not None:
        return parse_structures(option, "reader option 'labels'", path)
    if "edue_structures" in spec:
        return parse_structures(spec["edue_structures"], "'edue_structures'", path)
    by_value = spec.get("labels")
    if by_value is None:
        return dict(DEFAULT_STRUCTURES)
    if not isinstance(by_value, dict):
        raise DataError(
            f"'labels' must map label values to names, got {type(by_value).__name__}", path
        )
    regions: dict[str, list[int]] = {}
    for key in sorted(by_value, key=lambda k: int(k) if str(k).strip().isdigit() else -1):
        if not str(key).strip().isdigit():
            raise DataError(f"'labels' keys must be label values, got {key!r}", path)
        if int(key) != 0:
            regions.setdefault(str(by_value[key]), []).append(int(key))
    return parse_structures(regions, "'labels'", path)


class MonaiDatalistSource(CaseSource):
    """Reader of a Decathlon-style datalist with one label file per rater.

    Images come out as ``[C, *sp]`` float32 (8/16-bit 2D files scaled to [0, 1], NIfTI
    and ``.npy`` values kept), masks ``[R, K, *sp]``; ``R`` may differ between entries.

    Args:
        root: the datalist JSON file, or a folder holding ``dataset.json``.
        lists: the lists to read (default ``["training"]``); their entries all become
            cases (splits are made by edue). Every entry needs a label.
        labels: structures ``{name: value | [values]}``, overriding the file's.
        base_dir: folder that relative paths start from (default: the JSON's folder).
        varying_raters: accept entries with label lists of different lengths (raters
            who read only some cases, as in LIDC-IDRI); by default they are refused,
            since a missing file in a list is the likelier cause. The file's
            ``edue_varying_raters: true`` (written by :func:`write_monai_datalist` for
            such cases) sets it too.
    """

    def __init__(
        self,
        root: str | Path,
        lists: str | Sequence[str] = ("training",),
        labels: dict[str, Any] | None = None,
        base_dir: str | Path | None = None,
        varying_raters: bool = False,
        **_: Any,
    ) -> None:
        self.path = datalist_path(Path(root))
        try:
            spec = read_json(self.path, "a readable JSON file")
        except EdueError as exc:
            raise DataError(exc.reason, self.path) from None
        if not isinstance(spec, dict):
            raise DataError(f"must be a JSON object, got a JSON {type(spec).__name__}", self.path)
        self.base = Path(base_dir) if base_dir is not None else self.path.parent
        self.values = structures_of(spec, labels, self.path)
        self.declared_in = (
            "the reader option 'labels'"
            if labels is not None
            else f"the structures of {self.path.name}"
        )
        self.structures = tuple(self.values)
        self.lists = [lists] if isinstance(lists, str) else [str(n) for n in lists]
        if not self.lists:
            raise DataError("no lists to read (option 'lists')", self.path)
        self._entries: list[_Entry] = []
        for list_name in self.lists:
            items = spec.get(list_name)
            if not isinstance(items, list):
                present = [k for k, v in spec.items() if isinstance(v, list)]
                raise DataError(f"no '{list_name}' list (lists in the file: {present})", self.path)
            self._entries += [self._entry(list_name, i, item) for i, item in enumerate(items)]
        if not self._entries:
            raise DataError(f"lists {self.lists} are empty", self.path)
        self._check_ids()
        self._check_rater_counts(varying_raters or spec.get("edue_varying_raters") is True)
        self.case_ids = [e.case_id for e in self._entries]
        self.patient_ids = [e.patient_id for e in self._entries]
        self.spatial_dims = label_dims(self._entries[0].labels[0])
        if all(len(e.labels) == 1 for e in self._entries):
            warn_single_rater(self.path)

    def _check_rater_counts(self, varying: bool) -> None:
        """Refuse label lists of different lengths unless raters may vary by case.

        Raises:
            DataError: names the first entry whose list differs from the first entry's.
        """
        first = len(self._entries[0].labels)
        odd = next((e for e in self._entries if len(e.labels) != first), None)
        if odd is not None and not varying:
            raise DataError(
                f"label lists of different lengths: case '{odd.case_id}' lists "
                f"{len(odd.labels)} rater file(s), case '{self._entries[0].case_id}' "
                f"{first}; give every entry one file per rater, or set the reader option "
                "varying_raters: true if raters truly differ between cases",
                self.path,
            )

    def _entry(self, list_name: str, index: int, item: Any) -> _Entry:
        where = f"entry {index} of '{list_name}'"
        if not isinstance(item, dict):
            raise DataError(f"{where} must be an object with 'image' and 'label'", self.path)
        images = _paths(item.get("image"), self.base)
        if images is None:
            raise DataError(f"{where} has no 'image' (a path or a list of paths)", self.path)
        raw_label = item.get("label", item.get("labels"))
        if raw_label is None or raw_label == []:
            raise DataError(
                f"{where} has no 'label': every entry of the lists read needs one label "
                "file per rater",
                self.path,
            )
        label_files = _paths(raw_label, self.base)
        if label_files is None:
            raise DataError(f"{where}: 'label' must be a path or a list of paths", self.path)
        for kind, files in (("image", images), ("label", label_files)):
            for path in files:
                if not path.is_file():
                    raise DataError(f"{where}: {kind} file not found", path)
        raw_id = item.get("id", item.get("case_id"))
        case_id = str(raw_id) if raw_id is not None else _strip_suffix(images[0].name)
        patient = item.get("patient", item.get("patient_id"))
        return _Entry(
            list_name,
            index,
            images,
            label_files,
            case_id,
            str(patient) if patient is not None else case_id,
        )

    def _check_ids(self) -> None:
        first: dict[str, _Entry] = {}
        for entry in self._entries:
            if entry.case_id in first:
                raise DataError(
                    f"duplicate case id '{entry.case_id}': {first[entry.case_id].name} and "
                    f"{entry.name} (give each entry an 'id')",
                    self.path,
                )
            first[entry.case_id] = entry

    def load(self, index: int) -> MultiRaterCase:
        """Read case ``index``: image ``[C, *sp]`` and masks ``[R, K, *sp]``."""
        entry = self._entries[index]
        dims = self.spatial_dims
        image, meta = read_channels(entry.images, dims)
        masks, seen = read_rater_masks(
            entry.labels, self.values, image.shape[1:], dims, self.declared_in
        )
        spacing, affine = geometry(meta, dims)
        case = MultiRaterCase(
            image=image,
            masks=masks,
            case_id=entry.case_id,
            structures=self.structures,
            patient_id=entry.patient_id,
            spacing=spacing,
            affine=affine,
            meta={
                "source": str(entry.labels[0]),
                "list": entry.list_name,
                "raters": [f"rater{r + 1}" for r in range(len(entry.labels))],
                "label_files": [str(p) for p in entry.labels],
                "image_files": [str(p) for p in entry.images],
                "label_values": seen,
            },
        )
        return case.validate(str(entry.labels[0]))


def write_monai_datalist(
    cases: Sequence[MultiRaterCase], out_dir: str | Path, *, list_name: str = "training"
) -> Path:
    """Write cases as a datalist ``out_dir/dataset.json`` with one label file per rater.

    2D cases: each image channel as a float32 ``imagesTr/<case>_XXXX.npy`` (values kept
    exactly), each rater's label map as ``labelsTr/<case>_r<r>.png`` (uint8). 3D cases:
    NIfTI files (float32 images, uint8 labels) with the case's affine (else
    ``diag(spacing)``). Label values follow
    :func:`~edue.data.nnunet_raw.label_regions`; the top-level ``labels`` map names
    value ``k`` after structure ``k``, and nested structures (regions) are written
    under ``edue_structures`` (``{"disc": [1, 2], "cup": [2]}``), which the reader
    prefers. Where the number of raters differs between cases the file says so
    (``edue_varying_raters: true``), so that it reads back.

    Args:
        cases: cases with the same structures, channels and dimensions.
        out_dir: the folder to write.
        list_name: the list the entries go to.

    Returns:
        The datalist JSON file.

    Raises:
        DataError: cases that do not fit one dataset, or partly overlapping structures.
    """
    check_writable(cases)
    out = Path(out_dir)
    regions = label_regions(cases)
    image_ending = ".npy" if cases[0].spatial_dims == 2 else ".nii.gz"
    label_ending = ".png" if cases[0].spatial_dims == 2 else ".nii.gz"
    entries = []
    for case in cases:
        images = []
        for c in range(case.image.shape[0]):
            rel = f"imagesTr/{case.case_id}_{c:04d}{image_ending}"
            write_channel(out / rel, case.image[c], case)
            images.append(rel)
        labels = []
        for r in range(case.n_raters):
            rel = f"labelsTr/{case.case_id}_r{r + 1}{label_ending}"
            write_label(out / rel, encode_label_map(case.masks[r]), case)
            labels.append(rel)
        entries.append(
            {
                "id": case.case_id,
                "patient": str(case.patient_id),
                "image": images[0] if len(images) == 1 else images,
                "label": labels[0] if len(labels) == 1 else labels,
            }
        )
    spec: dict[str, Any] = {
        "name": "edue",
        "tensorImageSize": f"{cases[0].spatial_dims}D",
        "labels": {"0": "background", **{str(k + 1): s for k, s in enumerate(regions)}},
    }
    if any(len(v) > 1 for v in regions.values()):
        spec["edue_structures"] = regions
    if len({case.n_raters for case in cases}) > 1:
        spec["edue_varying_raters"] = True
    spec["numTraining"] = len(cases)
    spec[list_name] = entries
    path = out / "dataset.json"
    write_json(path, spec)
    return path
