"""Every reader through the prepared-case cache: cases/s cold and warm, loader vs model, epochs.

For each reader the benchmark writes a fake copy of realistic size into a temporary
folder (its own writers: the tests' helpers write a few fixed tiny cases and import
the CLI and pytest, so they are not reused; the folder format is written by
``write_folder_dataset``, as ``edue data synth`` does):

* ``riga-discregion`` and ``riga-plus``: 60 fundus-like 256² RGB TIFFs, 6 raters, the
  DiscRegion CSVs (GBK, rim 128/150, cup 255) and the RIGA+ CSVs (disc 255, cup 128);
  photographs and rater masks from the synthetic fundus generator;
* ``lidc-pickle`` and ``lidc-hdf5``: 200 nodule-like 128² crops, 4 raters (a fifth of
  rater masks empty), 4 slices per patient;
* ``qubiq``: 40 prostate-like 2D cases, 256², 6 raters, 2 sub-tasks, NIfTI (half with
  a trailing singleton axis);
* ``hecktor`` (``mode: 2d`` and ``mode: 3d``): 6 patients, CT int16 200×200×100, PET
  at half the resolution (resampled onto the CT/label grid when read), 2 or 3
  annotators, primary and nodal tumours;
* ``folder`` (128 synthetic 128² cases, PNG) and ``synthetic`` (128 cases, 128²).

Four measurements per reader, everything through the code the trainer runs
(``open_configured_source``, ``build_datasets``, ``training_dataset``, the DataLoader
as ``Trainer.fit`` builds it, ``Trainer`` itself):

1. **Prepared cases per second** with ``data.cache`` = ``off``, ``memory``, ``disk``:
   *first epoch* = ``build_datasets`` over every case (decode, resize, store, the
   bad-case check: what the trainer's set-up pays before epoch 1; with ``off`` the
   bad-case check decodes every case once); *later epochs* = one epoch of the training
   dataset's items in the trainer's epoch order (load from the store or, with ``off``,
   from the files; tensors, targets, patch sampling and flips; no DataLoader). With
   ``disk`` also *a later run*: ``build_datasets`` on a fresh source over the store the
   first run left (sizes and CRC-32 checked once per process). Modes take turns,
   rotated round by round, each with a fresh store. An ``off`` later epoch stops after
   a few seconds: HECKTOR 2D slices in shuffled order decode a whole patient each.
2. **Training loader / EDUE training step** (target ≥ 20×): samples per second of the
   trainer's DataLoader (``training_dataset``, ``EpochSampler``, ``collate_groups``,
   ``num_workers`` 0, whole epochs, warm store, memory and disk) over images (or
   patches) per second of EDUE's training step (``bench_training.TrainStep``: forward,
   loss, backward, Adam) on a real batch of that loader, at the reader's size (RIGA,
   QUBIQ 256², LIDC, folder, synthetic 128², HECKTOR 2D 200² slices, batch 16;
   HECKTOR 3D 64³ patches, ``patches_per_volume`` 4, batch 4, ``model.channels``
   16…128). Model step and each loader's epoch take turns round by round
   (``_common.interleaved``); the ratio is the median of per-round ratios; the target
   takes the lower of memory and disk.
3. **Epoch wall time / pure model-step time** (target ≤ 1.15): a real
   ``Trainer.fit`` (EDUE, 32 images or 4 volumes, 3 epochs, ``num_workers`` 0, the
   store ``auto`` picks for a full-size copy: memory for the 2D datasets, disk for
   HECKTOR 3D); each epoch after the first: its ``seconds`` in ``log.jsonl`` over the
   time spent in ``Trainer._step`` (wrapped with a timer) less the batch transfer
   (``_to_device``, also timed).
4. **Before/after** (RIGA, HECKTOR): milliseconds per case of a later epoch with
   ``data.cache=off`` (every epoch decodes, as before the cache) and warm from the
   store; the speed-up is paired per round.

    .venv/bin/python benchmarks/bench_readers.py [--quick] [--readers riga-plus hecktor-3d]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_training import TrainStep  # noqa: E402

from edue.methods import method_label  # noqa: E402

MODES = ("off", "memory", "disk")
CACHED = ("memory", "disk")
DEFAULT_CHANNELS_3D = (16, 32, 64, 128)
QUICK_CHANNELS = (8, 16, 32)
LOADER_TARGET, EPOCH_TARGET = 20.0, 1.15
#: Seconds an ``off`` later epoch may take before it stops (the rate is what it did).
OFF_BUDGET_S, QUICK_OFF_BUDGET_S = 5.0, 1.0
BEFORE_AFTER = ("riga-discregion", "riga-plus", "hecktor-2d", "hecktor-3d")


# --------------------------------------------------------------------------- sizes
@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the fake copies are (full run, or the tiny ones of ``--quick``)."""

    riga_cases: int = 60
    riga_size: int = 256
    lidc_cases: int = 200
    lidc_size: int = 128
    qubiq_cases: int = 40
    qubiq_size: int = 256
    hecktor_patients: int = 6
    hecktor_shape: tuple[int, int, int] = (200, 200, 100)
    patch: int = 64
    patches_per_volume: int = 4
    folder_cases: int = 128
    small_size: int = 128  # folder and synthetic
    batch_2d: int = 16
    batch_3d: int = 4
    train_cases_2d: int = 32
    train_volumes: int = 4
    epochs: int = 3
    rounds: int = 3  # loader vs model
    prepare_rounds: int = 2
    warm_epochs: int = 2
    channels_2d: tuple[int, ...] = C.DEFAULT_CHANNELS
    channels_3d: tuple[int, ...] = DEFAULT_CHANNELS_3D
    off_budget_s: float = OFF_BUDGET_S


FULL = Scale()
QUICK = Scale(
    riga_cases=6,
    riga_size=48,
    lidc_cases=12,
    lidc_size=32,
    qubiq_cases=4,
    qubiq_size=32,
    hecktor_patients=2,
    hecktor_shape=(40, 40, 24),
    patch=16,
    patches_per_volume=2,
    folder_cases=8,
    small_size=32,
    batch_2d=4,
    batch_3d=2,
    train_cases_2d=8,
    train_volumes=2,
    epochs=2,
    rounds=1,
    prepare_rounds=1,
    warm_epochs=1,
    channels_2d=QUICK_CHANNELS,
    channels_3d=QUICK_CHANNELS,
    off_budget_s=QUICK_OFF_BUDGET_S,
)


# --------------------------------------------------------------------------- fake copies
def _uint8(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` floats in [0, 1] as ``[H, W, C]`` bytes."""
    return (np.clip(np.moveaxis(image, 0, -1), 0, 1) * 255 + 0.5).astype(np.uint8)


def _fundus(n: int, size: int, n_raters: int, seed: int) -> list[Any]:
    """``n`` fundus-like cases (disc, cup nested) from the project's synthetic generator."""
    from edue.data.synthetic import FundusConfig, generate_cases

    return generate_cases(n, seed, FundusConfig(size=size, n_raters=n_raters))


def _disc_cup_map(masks: np.ndarray, rim: int, cup: int) -> np.ndarray:
    """One rater's ``[2, H, W]`` (disc, cup) as a grey label map."""
    out = np.where(masks[0] > 0, rim, 0)
    return np.where(masks[1] > 0, cup, out).astype(np.uint8)


RIGA_SITES = (("BinRushed", 128), ("MESSIDOR", 128), ("Magrabia", 150))  # (site, rim level)


def write_riga_discregion(root: Path, n: int, size: int, n_raters: int = 6, seed: int = 0) -> Path:
    """MRNet's DiscRegion layout: ``Glaucoma_multirater_<site>.csv`` + TIFFs per site."""
    import tifffile

    header = ",imgName,maskName,label,center,xmin,ymin,xmax,ymax,width,height,discFlag,rater"
    cases = iter(_fundus(n, size, n_raters, seed))
    for s, (site, rim) in enumerate(RIGA_SITES):
        folder = root / "DiscRegion" / site
        folder.mkdir(parents=True, exist_ok=True)
        rows = [header]
        for i in range(1, n // len(RIGA_SITES) + (s < n % len(RIGA_SITES)) + 1):
            case = next(cases)
            where = f"DiscRegion\\{site}\\image{i}"
            tifffile.imwrite(folder / f"image{i}.tif", _uint8(case.image))
            maps = [_disc_cup_map(m, rim, 255) for m in case.masks]
            tifffile.imwrite(folder / f"image{i}-FinalLabel.tif", maps[0])
            rows.append(f"0,{where}.tif,{where}-FinalLabel.tif,青光眼,0,1,2,3,4,5,6,1,0")
            for r, label in enumerate(maps, start=1):
                tifffile.imwrite(folder / f"image{i}-Rater{r}.tif", label)
                rows.append(f"{r},{where}.tif,{where}-Rater{r}.tif,青光眼,0,1,2,3,4,5,6,1,{r}")
        (root / f"Glaucoma_multirater_{site}.csv").write_bytes("\n".join(rows).encode("gbk"))
    return root


def write_riga_plus(root: Path, n: int, size: int, n_raters: int = 6, seed: int = 1) -> Path:
    """RIGA+ layout: ``<site>[_BaseN]_<subset>.csv`` (``image,mask``), ``<mask>-k.tif``."""
    import tifffile

    csvs = (("BinRushed_train", "BinRushed"), ("MESSIDOR_Base1_train", "MESSIDOR"))
    csvs += (("Magrabia_test", "Magrabia"),)
    cases = iter(_fundus(n, size, n_raters, seed))
    for s, (csv_name, site) in enumerate(csvs):
        (root / site / "images").mkdir(parents=True, exist_ok=True)
        (root / site / "masks").mkdir(parents=True, exist_ok=True)
        rows = ["image,mask"]
        for i in range(1, n // len(csvs) + (s < n % len(csvs)) + 1):
            case, name = next(cases), f"image{i}"
            tifffile.imwrite(root / site / "images" / f"{name}.tif", _uint8(case.image))
            for k, m in enumerate(case.masks, start=1):  # RIGA+: 255 disc rim, 128 cup
                tifffile.imwrite(
                    root / site / "masks" / f"{name}-{k}.tif", _disc_cup_map(m, 255, 128)
                )
            rows.append(f"{site}/images/{name}.tif,{site}/masks/{name}.tif")
        (root / f"{csv_name}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _smooth(rng: np.random.Generator, shape: Sequence[int], cells: int = 8) -> np.ndarray:
    """A smooth random field in about [0, 1] (coarse noise, linearly upsampled)."""
    from scipy.ndimage import zoom

    coarse = rng.random(tuple(max(2, int(s) // cells) for s in shape))
    factors = [s / c for s, c in zip(shape, coarse.shape, strict=True)]
    return np.asarray(zoom(coarse, factors, order=1), dtype=np.float32)


def _ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid (or ellipse) of ``shape``."""
    grids = np.ogrid[tuple(slice(0, int(s)) for s in shape)]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return np.asarray(distance <= 1.0)


def lidc_cases(n: int, size: int, n_raters: int = 4, seed: int = 2) -> list[dict[str, Any]]:
    """Nodule-like crops: key, image in [0, 1], ``n_raters`` masks (a fifth empty), patient."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        centre = size / 2 + rng.normal(0, size / 16, 2)
        radius = rng.uniform(size / 32, size / 8)
        nodule = _ellipsoid((size, size), centre, (radius, radius * rng.uniform(0.8, 1.2)))
        image = 0.5 * _smooth(rng, (size, size)) + 0.35 * nodule + rng.normal(0, 0.03, (size,) * 2)
        masks = []
        for _ in range(n_raters):
            m = np.zeros((size, size), np.uint8)
            if rng.random() > 0.2:
                jitter = centre + rng.normal(0, 1.0, 2)
                r = radius * rng.uniform(0.8, 1.2)
                m = _ellipsoid((size, size), jitter, (r, r * rng.uniform(0.85, 1.15)))
            masks.append(np.asarray(m, np.uint8))
        patient = i // 4
        out.append(
            {
                "key": f"LIDC-IDRI-{patient:04d}_slice_{i % 4}",
                "image": np.clip(image, 0, 1).astype(np.float32),
                "masks": masks,
                "patient": patient,
            }
        )
    return out


def write_lidc_pickle(path: Path, cases: Sequence[Mapping[str, Any]]) -> Path:
    """The Probabilistic U-Net pickle: ``key -> {image, masks, series_uid}``."""
    data = {
        c["key"]: {"image": c["image"], "masks": list(c["masks"]), "series_uid": f"1.3.6.{i}"}
        for i, c in enumerate(cases)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def write_lidc_hdf5(path: Path, cases: Sequence[Mapping[str, Any]]) -> Path:
    """PHiSeg's ``data_lidc.hdf5``: group ``train`` with images − 0.5, labels ``(N, H, W, R)``."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        g = fh.create_group("train")
        g["images"] = np.stack([c["image"] for c in cases]) - 0.5
        g["labels"] = np.stack([np.stack(c["masks"], -1) for c in cases]).astype(np.uint8)
        g["uids"] = np.array([c["patient"] for c in cases], np.int64)
    return path


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def write_qubiq(root: Path, n: int, size: int, n_raters: int = 6, seed: int = 3) -> Path:
    """QUBIQ 2020-like 2D task ``prostate``: ``image.nii.gz`` + ``task0T_seg0R.nii.gz``.

    Sub-task 1 is the disc-like outer structure, 2 the nested inner one; half of the
    cases store a trailing singleton axis, as some QUBIQ slices do.
    """
    for i, case in enumerate(_fundus(n, size, n_raters, seed), start=1):
        folder = root / "prostate" / "Training" / f"case{i:02d}"
        trailing = (lambda a: a[..., None]) if i % 2 else (lambda a: a)
        _nifti(folder / "image.nii.gz", trailing((case.image[1] * 1000).astype(np.float32)))
        for r, masks in enumerate(case.masks, start=1):
            for t, m in enumerate(masks, start=1):
                _nifti(folder / f"task{t:02d}_seg{r:02d}.nii.gz", trailing(m.astype(np.uint8)))
    return root


def write_hecktor(root: Path, patients: int, shape: tuple[int, int, int], seed: int = 4) -> Path:
    """Per-patient HECKTOR layout: CT (int16 HU) and PET (SUV, half resolution) volumes,
    ``labels/<annotator>/`` label volumes (0, 1 GTVp, 2 GTVn) on the CT grid; 2 or 3
    annotators per patient."""
    rng = np.random.default_rng(seed)
    ct_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    pet_affine = np.diag([2.0, 2.0, 4.0, 1.0])
    pet_affine[:3, 3] = 0.5, 0.5, 1.0  # PET voxel centres between pairs of CT voxels
    x, y, z = shape
    scale = np.array(shape, float) / np.array([200.0, 200.0, 100.0])
    for p in range(patients):
        pid = f"CHUV-{p:03d}"
        folder = root / pid
        body = _ellipsoid((x, y), (x / 2, y / 2), (0.45 * x, 0.38 * y))[..., None]
        primary = np.array([x / 2, y / 2, z / 2]) + rng.normal(0, 1, 3) * scale * [12, 12, 6]
        nodal = primary + np.array([rng.choice([-1, 1]) * 0.2 * x, 0.1 * y, -0.05 * z])
        radii_p = rng.uniform(0.8, 1.2) * scale * [16, 16, 12]
        radii_n = rng.uniform(0.8, 1.2) * scale * [9, 9, 7]
        gtvp, gtvn = _ellipsoid(shape, primary, radii_p), _ellipsoid(shape, nodal, radii_n)
        ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape) + 30.0 * gtvp
        _nifti(folder / "images" / f"{pid}__CT.nii.gz", ct.astype(np.int16), ct_affine)
        pet = (body * 1.0 + 8.0 * gtvp + 5.0 * gtvn) * (0.8 + 0.4 * _smooth(rng, shape))
        half = np.asarray(pet[::2, ::2, ::2], np.float32)
        _nifti(folder / "images" / f"{pid}__PT.nii.gz", half, pet_affine)
        for a in range(2 + p % 2):
            jitter_p = primary + rng.normal(0, 1.0, 3)
            jitter_n = nodal + rng.normal(0, 1.0, 3)
            label = np.zeros(shape, np.uint8)
            label[_ellipsoid(shape, jitter_p, radii_p * rng.uniform(0.85, 1.15, 3))] = 1
            label[_ellipsoid(shape, jitter_n, radii_n * rng.uniform(0.85, 1.15, 3))] = 2
            _nifti(folder / "labels" / f"annotator{a + 1}" / f"{pid}.nii.gz", label, ct_affine)
    return root


def write_folder(root: Path, n: int, size: int) -> Path:
    """The project's folder format (PNG), as ``edue data synth`` writes it."""
    from edue.data.folder import write_folder_dataset
    from edue.data.synthetic import FundusConfig, generate_cases

    cases = generate_cases(n, 5, FundusConfig(size=size, n_raters=6))
    return write_folder_dataset(cases, root, name="synthetic-folder")


# --------------------------------------------------------------------------- readers
@dataclasses.dataclass
class Reader:
    """One reader on its fake copy, and how the trainer would use it.

    Attributes:
        key: row name (``hecktor-2d``…).
        fmt: ``data.format``.
        copy: what the fake copy holds.
        model_size: what the model trains on (for the tables).
        batch: ``train.batch_size`` (images, or patches).
        channels: ``model.channels``.
        train_cases: cases of the trainer's small epoch.
        store: the store ``data.cache: auto`` picks for a full-size copy (the epoch
            measurement uses it): memory for the 2D datasets, disk for HECKTOR 3D.
        options: ``data.options``.
        extra: further overrides (patches…).
        root: ``data.root`` (``None`` for the generator).
        write_seconds: time writing the fake copy took.
    """

    key: str
    fmt: str
    copy: str
    model_size: str
    batch: int
    channels: tuple[int, ...]
    train_cases: int
    store: str = "memory"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: list[str] = dataclasses.field(default_factory=list)
    root: Path | None = None
    write_seconds: float = 0.0

    def config(self, cache: str, cache_dir: Path, *more: str) -> Any:
        """The run configuration with ``data.cache = cache`` (stores under ``cache_dir``)."""
        from edue.config import load_config

        overrides = [
            f"data.format={self.fmt}",
            f"data.options={json.dumps(self.options)}",
            f"data.cache={cache}",
            f"data.cache_dir={cache_dir}",
            "data.num_workers=0",
            "data.augment=true",
            f"method.name={C.roles().subject.name}",
            f"model.channels=[{C.channels_text(self.channels)}]",
            "model.norm=batch",
            f"train.batch_size={self.batch}",
            "train.device=cpu",
            *self.extra,
            *more,
        ]
        if self.root is not None:
            overrides.append(f"data.root={self.root}")
        return load_config(None, overrides)


def sq(n: int) -> str:
    """``128²``."""
    return f"{n}²"


def make_readers(work: Path, scale: Scale, keys: Sequence[str]) -> list[Reader]:
    """Write the fake copies the selected readers need; the readers, in order."""
    s = scale
    readers: list[Reader] = []
    lidc: list[dict[str, Any]] = []

    def add(reader: Reader, write: Callable[[], Path | None]) -> None:
        if reader.key in keys:
            reader.root, reader.write_seconds = C.timed_once(write)
            readers.append(reader)

    def two_d(key: str, fmt: str, copy: str, size: str, **more: Any) -> Reader:
        return Reader(key, fmt, copy, size, s.batch_2d, s.channels_2d, s.train_cases_2d, **more)

    def lidc_data() -> list[dict[str, Any]]:
        if not lidc:
            lidc.extend(lidc_cases(s.lidc_cases, s.lidc_size))
        return lidc

    def hecktor() -> Path:
        root = work / "hecktor"
        if not root.is_dir():
            write_hecktor(root, s.hecktor_patients, s.hecktor_shape)
        return root

    riga = f"{s.riga_cases} fundus-like {sq(s.riga_size)} RGB TIFFs, 6 raters"
    add(
        two_d("riga-discregion", "riga-discregion", riga + ", DiscRegion CSVs", sq(s.riga_size)),
        lambda: write_riga_discregion(work / "riga-discregion", s.riga_cases, s.riga_size),
    )
    add(
        two_d("riga-plus", "riga-plus", riga + ", RIGA+ CSVs", sq(s.riga_size)),
        lambda: write_riga_plus(work / "riga-plus", s.riga_cases, s.riga_size),
    )
    lidc_copy = f"{s.lidc_cases} nodule-like {sq(s.lidc_size)} crops, 4 raters"
    add(
        two_d("lidc-pickle", "lidc-pickle", lidc_copy + ", pickle", sq(s.lidc_size)),
        lambda: write_lidc_pickle(work / "lidc" / "data_lidc.pickle", lidc_data()),
    )
    add(
        two_d(
            "lidc-hdf5",
            "lidc-hdf5",
            lidc_copy + ", HDF5",
            sq(s.lidc_size),
            options={"group": "train"},
        ),
        lambda: write_lidc_hdf5(work / "lidc" / "data_lidc.hdf5", lidc_data()),
    )
    qubiq = f"{s.qubiq_cases} 2D cases {sq(s.qubiq_size)}, 6 raters, 2 sub-tasks, NIfTI"
    add(
        two_d("qubiq", "qubiq", qubiq, sq(s.qubiq_size), options={"task": "prostate"}),
        lambda: write_qubiq(work / "qubiq", s.qubiq_cases, s.qubiq_size),
    )
    shape = "×".join(map(str, s.hecktor_shape))
    volumes = (
        f"{s.hecktor_patients} patients, CT {shape} int16 + PET at half resolution, 2–3 annotators"
    )
    slices = f"{sq(s.hecktor_shape[0])} slices"
    add(
        two_d(
            "hecktor-2d",
            "hecktor",
            volumes + "; annotated axial slices",
            slices,
            options={"mode": "2d"},
        ),
        hecktor,
    )
    patches = [
        f"data.patch_size=[{s.patch},{s.patch},{s.patch}]",
        f"data.patches_per_volume={s.patches_per_volume}",
    ]
    add(
        Reader(
            "hecktor-3d",
            "hecktor",
            volumes,
            f"{s.patch}³ patches, {s.patches_per_volume} per volume",
            s.batch_3d,
            s.channels_3d,
            s.train_volumes,
            store="disk",
            options={"mode": "3d"},
            extra=patches,
        ),
        hecktor,
    )
    add(
        two_d(
            "folder",
            "folder",
            f"{s.folder_cases} synthetic {sq(s.small_size)} cases, 6 raters, PNG",
            sq(s.small_size),
        ),
        lambda: write_folder(work / "folder", s.folder_cases, s.small_size),
    )
    add(
        two_d(
            "synthetic",
            "synthetic",
            f"{s.folder_cases} generated {sq(s.small_size)} cases, 6 raters (no files)",
            sq(s.small_size),
            options={"size": s.small_size},
            extra=[f"data.split={{train: {s.folder_cases}, val: 0, test: 0}}"],
        ),
        lambda: None,
    )
    return readers


READER_KEYS = (
    "riga-discregion",
    "riga-plus",
    "lidc-pickle",
    "lidc-hdf5",
    "qubiq",
    "hecktor-2d",
    "hecktor-3d",
    "folder",
    "synthetic",
)


# --------------------------------------------------------------------------- 1. cases/s
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The trainer's order of an epoch (``EpochSampler``)."""
    from edue.engine.training.trainer import EpochSampler

    sampler = EpochSampler(n, seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def all_cases(source: Any) -> dict[str, list[int]]:
    """Every case as the training subset (the generator: its configured count)."""
    return {"train": list(range(len(source)))}


@dataclasses.dataclass
class Built:
    """A reader's training subset built with one cache mode (kept for the loader)."""

    config: Any
    subset: Any
    cache_dir: Path


def build(reader: Reader, mode: str, work: Path) -> tuple[Built, float, float]:
    """Open the reader and build its subset with ``data.cache = mode`` in a fresh store.

    Returns:
        The built subset, the seconds opening the source took and those of
        ``build_datasets`` (the first epoch's preparation).
    """
    from edue.data.pipeline import build_datasets, open_configured_source

    cache_dir = Path(tempfile.mkdtemp(prefix=f"store-{mode}-", dir=work))
    config = reader.config(mode, cache_dir)
    source, open_s = C.timed_once(lambda: open_configured_source(config.data))
    indices = all_cases(source)
    subsets, build_s = C.timed_once(lambda: build_datasets(config.data, source, indices))
    return Built(config, subsets["train"], cache_dir), open_s, build_s


def later_epoch(built: Built, epoch: int, budget_s: float | None) -> tuple[float, int]:
    """Seconds per case of one epoch of the training dataset's items (trainer's order).

    With ``budget_s`` the epoch stops once that long has passed (at least 3 cases).
    """
    from edue.data.pipeline import training_dataset

    dataset = training_dataset(built.config.data, built.config.train.seed, built.subset)
    order = epoch_order(len(dataset), built.config.train.seed, epoch)
    start = time.perf_counter()
    done = 0
    for i in order:
        dataset[i]
        done += 1
        if budget_s is not None and done >= 3 and time.perf_counter() - start > budget_s:
            break
    return (time.perf_counter() - start) / done, done


def reuse_setup(built: Built) -> float:
    """Seconds of a later run's ``build_datasets`` over the store this one left."""
    from edue.data.pipeline import build_datasets, open_configured_source

    source = open_configured_source(built.config.data)
    indices = all_cases(source)
    _, seconds = C.timed_once(lambda: build_datasets(built.config.data, source, indices))
    return seconds


def measure_cases(
    reader: Reader, scale: Scale, work: Path
) -> tuple[dict[str, Any], dict[str, Built]]:
    """Cold and warm cases/s per cache mode, modes rotated round by round.

    Returns:
        The figures, and the memory and disk subsets of the last round (kept for the
        loader measurement).
    """
    raw: dict[str, dict[str, list[float]]] = {
        m: {"open_s": [], "cold_s_per_case": [], "warm_s_per_case": [], "reuse_s_per_case": []}
        for m in MODES
    }
    kept: dict[str, Built] = {}
    cases = 0
    for r in range(scale.prepare_rounds):
        last = r == scale.prepare_rounds - 1
        for mode in MODES[r % 3 :] + MODES[: r % 3]:
            print(f"  {reader.key}: cases/s, {mode}, round {r + 1}", file=sys.stderr, flush=True)
            built, open_s, build_s = build(reader, mode, work)
            cases = len(built.subset)
            raw[mode]["open_s"].append(open_s)
            raw[mode]["cold_s_per_case"].append(build_s / cases)
            if mode == "off":  # one later epoch, cut short after a few seconds
                warm = [later_epoch(built, 1, scale.off_budget_s)[0]]
            else:
                warm = [later_epoch(built, 1 + e, None)[0] for e in range(scale.warm_epochs)]
            raw[mode]["warm_s_per_case"].append(C.median(warm))
            if mode == "disk":
                raw[mode]["reuse_s_per_case"].append(reuse_setup(built) / cases)
            if last and mode in CACHED:
                kept[mode] = built
            else:
                shutil.rmtree(built.cache_dir, ignore_errors=True)
    figures: dict[str, Any] = {"cases": cases, "raw": raw}
    for mode in MODES:
        m = raw[mode]
        figures[mode] = {
            "open_s": C.median(m["open_s"]),
            "cold_cases_per_s": 1.0 / C.median(m["cold_s_per_case"]),
            "warm_cases_per_s": 1.0 / C.median(m["warm_s_per_case"]),
            "warm_ms_per_case": 1000.0 * C.median(m["warm_s_per_case"]),
            "reuse_cases_per_s": 1.0 / C.median(m["reuse_s_per_case"])
            if m["reuse_s_per_case"]
            else float("nan"),
        }
    for mode in CACHED:  # before (off) / after (warm store), paired per round
        figures[mode]["speedup_vs_off"] = C.paired_ratio(
            raw["off"]["warm_s_per_case"], raw[mode]["warm_s_per_case"]
        )
    return figures, kept


# --------------------------------------------------------------------------- 2. loader/model
class LoaderEpochs:
    """One call = one whole epoch of the trainer's DataLoader (no model); samples seen."""

    def __init__(self, built: Built) -> None:
        from torch.utils.data import DataLoader

        from edue.data.pipeline import collate_groups, training_dataset
        from edue.engine.training.trainer import EpochSampler

        config = built.config
        self.dataset = training_dataset(config.data, config.train.seed, built.subset)
        repeats = getattr(self.dataset.transform, "repeats", 1)
        self.sampler = EpochSampler(len(self.dataset), config.train.seed)
        workers = config.data.num_workers
        self.loader = DataLoader(
            self.dataset,
            batch_size=max(1, config.train.batch_size // repeats),
            sampler=self.sampler,
            collate_fn=collate_groups,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(config.train.seed),
        )
        self.epoch = 0
        self.samples = len(self.dataset) * repeats

    def first_batch(self) -> dict[str, Any]:
        """A batch as the trainer's first step gets it."""
        self.sampler.set_epoch(0)
        return next(iter(self.loader))

    def __call__(self) -> int:
        self.epoch += 1
        self.sampler.set_epoch(self.epoch)
        seen = 0
        for batch in self.loader:
            seen += len(batch["case_id"])
        return seen


def model_step(reader: Reader, batch: dict[str, Any]) -> TrainStep:
    """EDUE's training step on ``batch`` (a model built for the reader's data)."""
    image, masks = batch["image"], batch["masks"]
    config = C.method_config(C.roles().subject.name, reader.channels)
    method = C.build(config, int(image.shape[1]), int(masks.shape[2]), image.ndim - 2, True)
    return TrainStep(method, batch, torch.device("cpu"))


def measure_loader(
    readers: Sequence[Reader], kept: Mapping[str, Mapping[str, Built]], rounds: int
) -> dict[str, dict[str, Any]]:
    """Loader samples/s (memory, disk) over EDUE images/s, per group of readers whose
    batches have one shape (one model step timed for the group), interleaved per round."""
    groups: dict[tuple, list[Reader]] = {}
    loaders: dict[str, LoaderEpochs] = {}
    batches: dict[str, dict[str, Any]] = {}
    for reader in readers:
        for mode in CACHED:
            loaders[f"{reader.key}|{mode}"] = LoaderEpochs(kept[reader.key][mode])
        batch = loaders[f"{reader.key}|memory"].first_batch()
        batches[reader.key] = batch
        shape = (tuple(batch["image"].shape), int(batch["masks"].shape[2]), reader.channels)
        groups.setdefault(shape, []).append(reader)
    out: dict[str, dict[str, Any]] = {}
    for members in groups.values():
        step = model_step(members[0], batches[members[0].key])
        batch_size = int(batches[members[0].key]["image"].shape[0])
        fns: dict[str, Callable[[], object]] = {"model": step}
        fns.update(
            {k: v for k, v in loaders.items() if k.split("|")[0] in [m.key for m in members]}
        )
        label = f"loader vs model: {', '.join(m.key for m in members)}"
        times = C.interleaved(fns, rounds, progress=label)
        model_s = times["model"]
        for reader in members:
            entry: dict[str, Any] = {
                "model_images_per_s": batch_size / C.median(model_s),
                "model_batch": batch_size,
                "model_s": model_s,
                "shared_model_with": [m.key for m in members if m is not reader],
            }
            for mode in CACHED:
                key = f"{reader.key}|{mode}"
                samples = loaders[key].samples
                loader_s = times[key]
                per_round = [
                    (samples / ls) / (batch_size / ms)
                    for ls, ms in zip(loader_s, model_s, strict=True)
                ]
                entry[mode] = {
                    "samples_per_s": samples / C.median(loader_s),
                    "ratio": C.median(per_round),
                    # noise check: the least disturbed loader epoch over the fastest step
                    "best_ratio": (samples / min(loader_s)) / (batch_size / min(model_s)),
                    "loader_s": loader_s,
                    "spread": C.spread(loader_s),
                }
            entry["ratio"] = min(entry[m]["ratio"] for m in CACHED)
            entry["best_ratio"] = min(entry[m]["best_ratio"] for m in CACHED)
            out[reader.key] = entry
    return out


# --------------------------------------------------------------------------- 3. epochs
@contextlib.contextmanager
def step_timer(trainer: Any) -> Iterator[list[dict[str, float]]]:
    """Time every ``trainer._step`` and the batch transfer inside it (``_to_device``)."""
    import edue.engine.training.trainer as train_module

    records: list[dict[str, float]] = []
    step, to_device = trainer._step, train_module._to_device

    def timed_transfer(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return to_device(batch, device)
        finally:
            records[-1]["transfer_s"] += time.perf_counter() - start

    def timed_step(batch: dict[str, Any]) -> Any:
        records.append({"epoch": trainer.epoch + 1, "step_s": 0.0, "transfer_s": 0.0})
        start = time.perf_counter()
        try:
            return step(batch)
        finally:
            records[-1]["step_s"] = time.perf_counter() - start

    trainer._step = timed_step
    train_module._to_device = timed_transfer
    try:
        yield records
    finally:
        train_module._to_device = to_device
        del trainer._step


def measure_epochs(
    reader: Reader, case_ids: Sequence[str], scale: Scale, work: Path
) -> dict[str, Any]:
    """A small ``Trainer.fit`` on the first cases of ``case_ids``: each later epoch's wall
    time over its pure step time."""
    from edue.data.splits import save_split
    from edue.engine.training.trainer import Trainer

    run = Path(tempfile.mkdtemp(prefix=f"train-{reader.key}-", dir=work))
    more = [f"train.epochs={scale.epochs}", f"out_dir={run / 'run'}"]
    if reader.fmt == "synthetic":
        more.append(f"data.split={{train: {reader.train_cases}, val: 0, test: 0}}")
    else:
        split = {"train": list(range(min(reader.train_cases, len(case_ids))))}
        save_split(run / "split.json", split, case_ids)
        more.append(f"data.split_file={run / 'split.json'}")
    config = reader.config(reader.store, run / "cache", *more)
    trainer = Trainer(config)
    _, setup_s = C.timed_once(trainer.setup)
    with step_timer(trainer) as records:
        trainer.fit()
    log = [json.loads(line) for line in (run / "run" / "log.jsonl").read_text().splitlines()]
    per_epoch = []
    for record in log[1:]:  # every epoch after the first
        steps = [s for s in records if s["epoch"] == record["epoch"]]
        pure = sum(s["step_s"] - s["transfer_s"] for s in steps)
        per_epoch.append(
            {
                "epoch": record["epoch"],
                "seconds": record["seconds"],
                "step_s": pure,
                "transfer_s": sum(s["transfer_s"] for s in steps),
                "steps": len(steps),
                "ratio": record["seconds"] / pure,
            }
        )
    store = trainer.subsets["train"].store
    shutil.rmtree(run, ignore_errors=True)
    return {
        "setup_s": setup_s,
        "store": getattr(store, "kind", "off"),
        "cases": len(trainer.subsets["train"]),
        "batch": config.train.batch_size,
        "epochs": per_epoch,
        "ratio": C.median([e["ratio"] for e in per_epoch]),
        "best_ratio": min(e["ratio"] for e in per_epoch),
        "epoch_s": C.median([e["seconds"] for e in per_epoch]),
        "step_s": C.median([e["step_s"] for e in per_epoch]),
    }


# --------------------------------------------------------------------------- report
def reader_table(reader: Reader, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The per-reader table: a row per figure, a column per cache mode."""
    cases, loader, epochs = entry["cases"], entry["loader"], entry["epochs"]
    dash = "–"

    def row(label: str, key: str, modes: Sequence[str] = MODES) -> list[Any]:
        return [label, *[cases[m][key] if m in modes else dash for m in MODES]]

    ratio = [f"{loader[m]['ratio']:.1f}×" if m in CACHED else dash for m in MODES]
    samples = "patches" if "patch" in reader.model_size else "images"
    rows = [
        row("opening the source, s", "open_s"),
        row("first epoch (store built), cases/s", "cold_cases_per_s"),
        row("later epochs, cases/s", "warm_cases_per_s"),
        row("later epochs, ms per case", "warm_ms_per_case"),
        row("a later run's set-up (store reused), cases/s", "reuse_cases_per_s", ("disk",)),
        ["training DataLoader, " + samples + "/s (no model)", dash]
        + [loader[m]["samples_per_s"] for m in CACHED],
        [f"DataLoader / {method_label(C.roles().subject.name)} training step", *ratio],
    ]
    store = epochs["store"]
    rows.append(
        [
            f"trainer epoch / pure step time (store: {store})",
            *[f"{epochs['ratio']:.3f}×" if m == store else dash for m in MODES],
        ]
    )
    title = (
        f"{reader.key} — {reader.copy}; {cases['cases']} cases; model at {reader.model_size}, "
        f"batch {reader.batch}: {loader['model_images_per_s']:.3g} {samples}/s"
    )
    return C.table(title, ["figure", *MODES], rows)


def summary_table(readers: Sequence[Reader], results: Mapping[str, Any]) -> dict[str, Any]:
    """One row per reader: the two targets' figures and what they come from."""
    rows = []
    for reader in readers:
        e = results[reader.key]
        loader, epochs = e["loader"], e["epochs"]
        rows.append(
            [
                reader.key,
                reader.model_size,
                loader["model_images_per_s"],
                min(loader[m]["samples_per_s"] for m in CACHED),
                f"{loader['ratio']:.1f}×",
                f"{loader['best_ratio']:.1f}×",
                f"{epochs['epoch_s']:.2f}",
                f"{epochs['step_s']:.2f}",
                f"{epochs['ratio']:.3f}×",
                f"{epochs['best_ratio']:.3f}×",
                epochs["store"],
                f"{epochs['setup_s']:.2f}",
            ]
        )
    headers = [
        "reader",
        "model input",
        "EDUE step samples/s",
        "loader samples/s (slower store)",
        "loader / step",
        "(fastest rounds)",
        "epoch s",
        "pure step s",
        "epoch / step",
        "(least disturbed epoch)",
        "epoch's store",
        "trainer set-up s (store built)",
    ]
    return C.table("Targets' figures per reader", headers, rows)


def before_after_table(readers: Sequence[Reader], results: Mapping[str, Any]) -> dict[str, Any]:
    """RIGA and HECKTOR: ms per case of a later epoch, ``off`` vs warm stores."""
    rows = []
    for reader in readers:
        if reader.key not in BEFORE_AFTER:
            continue
        c = results[reader.key]["cases"]
        rows.append(
            [
                reader.key,
                c["off"]["warm_ms_per_case"],
                c["memory"]["warm_ms_per_case"],
                f"{c['memory']['speedup_vs_off']:.1f}×",
                c["disk"]["warm_ms_per_case"],
                f"{c['disk']['speedup_vs_off']:.1f}×",
            ]
        )
    headers = [
        "reader",
        "before: cache off, ms/case",
        "after: memory, ms/case",
        "speed-up",
        "after: disk, ms/case",
        "speed-up",
    ]
    return C.table("Before / after: cost per case of a later epoch", headers, rows)


def targets_of(readers: Sequence[Reader], results: Mapping[str, Any]) -> list[dict[str, Any]]:
    subject = method_label(C.roles().subject.name)
    out = []
    for reader in readers:
        e = results[reader.key]
        out.append(
            C.target(
                f"{reader.key}: training DataLoader / {subject} training step (slower store)",
                e["loader"]["ratio"],
                ">=",
                LOADER_TARGET,
            )
        )
        out.append(
            C.target(
                f"{reader.key}: trainer epoch / pure step time ({e['epochs']['store']} store)",
                e["epochs"]["ratio"],
                "<=",
                EPOCH_TARGET,
            )
        )
    return out


def notes_of(
    readers: Sequence[Reader],
    results: Mapping[str, Any],
    scale: Scale,
    parts: Mapping[str, float],
) -> list[str]:
    worst = max(C.spread(results[r.key]["loader"][m]["loader_s"]) for r in readers for m in CACHED)
    writes = ", ".join(f"{r.key} {r.write_seconds:.1f} s" for r in readers if r.root)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"Cases/s: {scale.prepare_rounds} rounds of off, memory, disk (rotated), each with a "
        f"fresh store; cached later epochs: median of {scale.warm_epochs} per round; one "
        f"`off` later epoch per round, stopped after {scale.off_budget_s:g} s (HECKTOR 2D "
        "decodes a whole patient per shuffled slice). Medians over rounds; speed-ups paired "
        "per round.",
        f"Loader / step: {scale.rounds} rounds, model step and every loader's epoch "
        "interleaved (rotated); one model step is timed for readers whose batches have one "
        "shape. `num_workers` 0: the loader runs in the training process, on its torch "
        "threads. Noise check '(fastest rounds)': the fastest loader epoch over the fastest "
        "step.",
        f"Epoch / step: `Trainer.fit`, {scale.epochs} epochs, `num_workers` 0; an epoch's "
        "`seconds` (log.jsonl) over the time in `Trainer._step` less `_to_device`; median "
        "over the epochs after the first ('least disturbed': the smallest).",
        "On a busy machine the loader suffers more than the model: its many small torch "
        "ops each wait for the second intra-op thread to be scheduled, the model's few "
        "large ones amortise that wait.",
        f"Writing the fake copies: {writes}. Time per part: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in parts.items())
        + ".",
        C.spread_note(worst) + f" Load average at the end: {load:.2f}.",
    ]


def run(
    quick: bool = False,
    readers: Sequence[str] | None = None,
    threads: int = C.DEFAULT_THREADS,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Every selected reader: cases/s per cache mode, loader vs model, epoch vs step."""
    bench = C.start(threads)
    scale = QUICK if quick else FULL
    if rounds:
        scale = dataclasses.replace(scale, rounds=rounds)
    keys = list(readers or READER_KEYS)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edue-bench-") as tmp, warnings.catch_warnings():
        # torch notes once that a memory-mapped (read-only) array becomes a tensor
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        work = Path(tmp)
        print("  writing the fake copies", file=sys.stderr, flush=True)
        clock = time.perf_counter()
        chosen = make_readers(work, scale, keys)
        parts = {"writing the copies": time.perf_counter() - clock}
        kept: dict[str, dict[str, Built]] = {}
        clock = time.perf_counter()
        for reader in chosen:
            figures, kept[reader.key] = measure_cases(reader, scale, work)
            results[reader.key] = {"cases": figures}
        parts["cases/s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        loader = measure_loader(chosen, kept, scale.rounds)
        parts["loader vs step"] = time.perf_counter() - clock
        clock = time.perf_counter()
        for reader in chosen:
            results[reader.key]["loader"] = loader[reader.key]
            case_ids = kept[reader.key]["memory"].subset.case_ids
            for built in kept.pop(reader.key).values():
                shutil.rmtree(built.cache_dir, ignore_errors=True)
            print(f"  {reader.key}: trainer epochs", file=sys.stderr, flush=True)
            results[reader.key]["epochs"] = measure_epochs(reader, case_ids, scale, work)
        parts["trainer epochs"] = time.perf_counter() - clock
    tables = [reader_table(r, results[r.key]) for r in chosen]
    tables += [summary_table(chosen, results), before_after_table(chosen, results)]
    settings = (
        f"{'Tiny copies (--quick); ' if quick else ''}fake copies written to a temporary "
        f"folder; `data.augment=true`, `num_workers` 0, {torch.get_num_threads()} torch "
        f"threads; EDUE with `model.norm=batch`, 2D "
        f"`model.channels=[{C.channels_text(scale.channels_2d)}]`, 3D "
        f"`[{C.channels_text(scale.channels_3d)}]`; cpu."
    )
    return bench.result(
        "readers",
        "Readers through the prepared-case cache",
        settings,
        tables=tables,
        targets=targets_of(chosen, results),
        notes=notes_of(chosen, results, scale, parts),
        readers=results,
        parts_seconds=parts,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument(
        "--readers", nargs="+", choices=READER_KEYS, help="readers to run (default: all)"
    )
    parser.add_argument("--rounds", type=int, help="loader vs model rounds (default 3)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, readers=args.readers, threads=args.threads, rounds=args.rounds)
    return C.finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
