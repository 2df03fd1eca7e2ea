"""Fake copies of the public datasets' on-disk layouts, for the tests and the benchmarks.

Each writer knows one layout (folder names, file names, CSV rows, encodings) and takes
the content from its caller: the tests write a few tiny cases with known pixels, the
benchmarks copies of realistic size. No other module writes these layouts.

* RIGA: :func:`write_discregion` (MRNet's DiscRegion CSVs) and :func:`write_riga_plus`;
* LIDC: :func:`write_lidc_pickle` (Probabilistic U-Net) and :func:`write_lidc_hdf5`
  (PHiSeg);
* QUBIQ: :func:`write_qubiq_case`;
* HECKTOR: :func:`write_hecktor_patient` (per-patient folders) and
  :func:`write_hecktor_challenge` (``imagesTr/`` + ``labelsTr/``);
* the project's folder format with raw label maps: :func:`write_folder_case`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: a volume and its affine (``None``: the identity)
Volume = tuple[np.ndarray, np.ndarray | None]
#: a NIfTI file: file name, array, affine (``None``: the identity)
Nii = tuple[str, np.ndarray, np.ndarray | None]


def save_image(path: Path, array: np.ndarray) -> Path:
    """Write an image (``[H, W]`` or ``[H, W, 3]``): TIFF by ``tifffile``, else PIL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array)
    else:
        from PIL import Image

        options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
        Image.fromarray(array).save(path, **options)
    return path


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` as a NIfTI file (identity affine by default)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


# --------------------------------------------------------------------------- RIGA
DISCREGION_HEADER = ",imgName,maskName,label,center,xmin,ymin,xmax,ymax,width,height,discFlag,rater"


@dataclass(frozen=True)
class RigaImage:
    """One RIGA photograph and its raters' grey disc/cup maps.

    Attributes:
        photo: ``[H, W, 3]`` uint8.
        raters: one ``[H, W]`` label map per rater.
        final: DiscRegion's ``FinalLabel`` map (default: the first rater's).
    """

    photo: np.ndarray
    raters: Sequence[np.ndarray]
    final: np.ndarray | None = None


def write_discregion(
    root: Path, sites: Mapping[str, Sequence[RigaImage]], suffix: str = ".png"
) -> Path:
    """MRNet's DiscRegion layout: ``Glaucoma_multirater_<site>.csv`` (GBK), a block of
    rows per image (rater 0: image and ``FinalLabel``, then raters 1…n) and the files in
    ``DiscRegion/<site>/image<i>[-FinalLabel|-Rater<r>]<suffix>``."""
    for site, images in sites.items():
        rows = [DISCREGION_HEADER]
        for i, riga in enumerate(images, start=1):
            stem = f"image{i}"
            where = f"DiscRegion\\{site}\\{stem}"
            folder = root / "DiscRegion" / site
            save_image(folder / f"{stem}{suffix}", riga.photo)
            final = riga.raters[0] if riga.final is None else riga.final
            save_image(folder / f"{stem}-FinalLabel{suffix}", final)
            rows.append(f"0,{where}{suffix},{where}-FinalLabel{suffix},青光眼,0,1,2,3,4,5,6,1,0")
            for r, label in enumerate(riga.raters, start=1):
                save_image(folder / f"{stem}-Rater{r}{suffix}", label)
                rows.append(
                    f"{r},{where}{suffix},{where}-Rater{r}{suffix},青光眼,0,1,2,3,4,5,6,1,{r}"
                )
        (root / f"Glaucoma_multirater_{site}.csv").write_bytes("\n".join(rows).encode("gbk"))
    return root


def write_riga_plus(
    root: Path,
    csvs: Mapping[str, tuple[str, Mapping[str, RigaImage]]],
    unlabeled: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """The RIGA+ layout: ``<csv>.csv`` (``image,mask`` rows) per ``csvs`` key, naming
    ``<site>/images/<name>.tif`` and ``<site>/masks/<name>.tif``, whose rater ``k`` is
    ``<site>/masks/<name>-<k>.tif``; ``unlabeled``: CSVs listing images without masks."""
    for csv_name, (site, images) in csvs.items():
        rows = ["image,mask"]
        for name, riga in images.items():
            save_image(root / site / "images" / f"{name}.tif", riga.photo)
            (root / site / "masks").mkdir(parents=True, exist_ok=True)
            for k, label in enumerate(riga.raters, start=1):
                save_image(root / site / "masks" / f"{name}-{k}.tif", label)
            rows.append(f"{site}/images/{name}.tif,{site}/masks/{name}.tif")
        (root / f"{csv_name}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for csv_name, listed in (unlabeled or {}).items():
        text = "\n".join(["image,mask", *[f"{image}," for image in listed]]) + "\n"
        (root / f"{csv_name}.csv").write_text(text, encoding="utf-8")
    return root


# --------------------------------------------------------------------------- LIDC
def write_lidc_pickle(
    path: Path, entries: Mapping[str, Mapping[str, Any]], protocol: int = 4
) -> Path:
    """The Probabilistic U-Net's pickle: ``{key: {image, masks, series_uid}}``; keys
    ``<patient>_<slice>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({k: dict(v) for k, v in entries.items()}, protocol=protocol))
    return path


def write_lidc_hdf5(path: Path, groups: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """PHiSeg's ``data_lidc.hdf5``: a group per split holding ``images`` (centred on 0),
    ``labels`` (``(N, H, W, R)`` or ``(N, R, H, W)``) and optionally ``uids``."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        for name, datasets in groups.items():
            group = fh.create_group(name)
            for key, value in datasets.items():
                group[key] = value
    return path


# --------------------------------------------------------------------------- QUBIQ
def write_qubiq_case(
    root: Path,
    task: str,
    case: str,
    image: np.ndarray,
    masks: Mapping[tuple[int, int], np.ndarray],
    affine: np.ndarray | None = None,
) -> Path:
    """One QUBIQ case: ``<task>/Training/<case>/image.nii.gz`` and
    ``task<TT>_seg<RR>.nii.gz`` per ``(sub-task, rater)`` of ``masks``."""
    folder = root / task / "Training" / case
    write_nifti(folder / "image.nii.gz", image, affine)
    for (subtask, rater), mask in masks.items():
        write_nifti(folder / f"task{subtask:02d}_seg{rater:02d}.nii.gz", mask, affine)
    return folder


# --------------------------------------------------------------------------- HECKTOR
def write_hecktor_patient(
    root: Path,
    patient: str,
    images: Sequence[Nii],
    annotators: Mapping[str, Nii],
    official: Nii | None = None,
) -> Path:
    """The per-patient layout: ``<patient>/images/`` (CT and PET), one label volume per
    annotator in ``<patient>/labels/<annotator>/``, the official one in
    ``<patient>/labelsTs/``."""
    folder = root / patient
    for name, array, affine in images:
        write_nifti(folder / "images" / name, array, affine)
    for annotator, (name, array, affine) in annotators.items():
        write_nifti(folder / "labels" / annotator / name, array, affine)
    if official is not None:
        write_nifti(folder / "labelsTs" / official[0], official[1], official[2])
    return folder


def write_hecktor_challenge(
    root: Path, image_id: str, ct: Volume, pet: Volume, label: Nii, split: str = "Tr"
) -> Path:
    """The challenge's layout: ``images<split>/<id>__CT.nii.gz`` and ``__PT.nii.gz``, one
    label volume per case in ``labels<split>/``."""
    write_nifti(root / f"images{split}" / f"{image_id}__CT.nii.gz", *ct)
    write_nifti(root / f"images{split}" / f"{image_id}__PT.nii.gz", *pet)
    write_nifti(root / f"labels{split}" / label[0], label[1], label[2])
    return root


# --------------------------------------------------------------------------- folder format
def write_folder_case(
    root: Path,
    case: str,
    image: np.ndarray,
    raters: Mapping[str, np.ndarray],
    spec: Mapping[str, Any],
) -> Path:
    """One case of the project's folder format written by hand (raw label maps, any
    values): ``dataset.json`` (``spec``), ``<case>/image.png``, ``<case>/rater_<name>.png``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(spec))
    save_image(root / case / "image.png", image)
    for name, label in raters.items():
        save_image(root / case / f"rater_{name}.png", label)
    return root
