"""Every reader through the prepared-case cache: cases/s cold and warm, loader vs model,
trainer epochs.

Each reader reads a fake copy (``tests.fake_layouts``, filled by the synthetic
generators) through the code the trainer runs (``open_configured_source``,
``build_datasets``, ``training_dataset``, its DataLoader, ``Trainer`` itself):

1. prepared cases per second with ``data.cache`` off, memory and disk: the first epoch
   (``build_datasets``), later epochs (the training dataset's items in the trainer's
   order) and, on disk, a later run's set-up over the store left behind; the modes take
   turns round by round, each with a fresh store;
2. the training DataLoader's samples per second over EDUE's training step's on one of
   its batches, interleaved round by round;
3. a small ``Trainer.fit``: each later epoch's wall time over its pure step time (the
   steps' seconds less their batch transfer, from a training callback).

    .venv/bin/python benchmarks/bench_readers.py [--quick] [--readers riga-plus hecktor-3d]
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import _common as C
import numpy as np
import torch
from bench_training import TrainStep

from edue.engine.training.callbacks import StepRecord, TrainingCallback
from tests import fake_layouts as fake

MODES, CACHED = ("off", "memory", "disk"), ("memory", "disk")
LOADER_TARGET, EPOCH_TARGET = 20.0, 1.15
BEFORE_AFTER = ("riga-discregion", "riga-plus", "hecktor-2d", "hecktor-3d")
RIGA_SITES = {"BinRushed": 128, "MESSIDOR": 128, "Magrabia": 150}  # site: rim level
RIGA_PLUS = {"BinRushed_train": "BinRushed", "MESSIDOR_Base1_train": "MESSIDOR"}
RIGA_PLUS["Magrabia_test"] = "Magrabia"
RATERS, LIDC_RATERS = 6, 4


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the fake copies are and how long each part runs."""

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
    channels_3d: tuple[int, ...] = (16, 32, 64, 128)
    off_budget_s: float = 5.0  # an ``off`` later epoch stops after this long


FULL = Scale()
QUICK = Scale(
    *(6, 48, 12, 32, 4, 32),  # RIGA, LIDC, QUBIQ: cases and side
    *(2, (40, 40, 24), 16, 2),  # HECKTOR: patients, shape, patch, patches per volume
    *(8, 32, 4, 2, 8, 2),  # folder and synthetic, batches, training cases
    *(2, 1, 1, 1),  # epochs, loader rounds, preparation rounds, warm epochs
    *((8, 16, 32), (8, 16, 32), 1.0),  # channels, off budget
)


# --------------------------------------------------------------------------- fake copies
def fundus(n: int, size: int, seed: int) -> list[Any]:
    """``n`` fundus-like cases (disc, cup nested) of the synthetic generator."""
    from edue.data.synthetic import FundusConfig, generate_cases

    return generate_cases(n, seed, FundusConfig(size=size, n_raters=RATERS))


def riga_image(case: Any, rim: int, cup: int) -> fake.RigaImage:
    """A synthetic case as a RIGA photograph with grey disc/cup maps."""
    photo = (np.clip(np.moveaxis(case.image, 0, -1), 0, 1) * 255 + 0.5).astype(np.uint8)
    maps = [np.where(m[1] > 0, cup, np.where(m[0] > 0, rim, 0)) for m in case.masks]
    return fake.RigaImage(photo, [m.astype(np.uint8) for m in maps])


def write_riga(root: Path, n: int, size: int, plus: bool) -> Path:
    """A DiscRegion copy (TIFFs over three sites, rim 128 or 150, cup 255) or a RIGA+ one
    (three CSVs, rim 255, cup 128)."""
    groups = RIGA_PLUS if plus else {site: site for site in RIGA_SITES}
    cases = fundus(n, size, int(plus))
    parts = {name: cases[i :: len(groups)] for i, name in enumerate(groups)}
    if not plus:
        sites = {s: [riga_image(c, RIGA_SITES[s], 255) for c in part] for s, part in parts.items()}
        return fake.write_discregion(root, sites, suffix=".tif")
    csvs = {
        name: (groups[name], {f"image{i}": riga_image(c, 255, 128) for i, c in enumerate(part)})
        for name, part in parts.items()
    }
    return fake.write_riga_plus(root, csvs)


def write_lidc(path: Path, n: int, size: int) -> Path:
    """The LIDC pickle (``.pickle``) or PHiSeg's HDF5: a channel of fundus cases, four
    raters' cups, four slices per patient, a fifth of the rater masks empty."""
    rng = np.random.default_rng(2)
    cases = fundus(n, size, 2)
    images = [c.image[1].astype(np.float32) for c in cases]
    masks = [
        c.masks[:LIDC_RATERS, 1] * (rng.random(LIDC_RATERS) > 0.2)[:, None, None] for c in cases
    ]
    keys = [f"LIDC-IDRI-{i // 4:04d}_slice_{i % 4}" for i in range(n)]
    if path.suffix == ".pickle":
        entries = {
            k: {"image": im, "masks": list(m.astype(np.uint8)), "series_uid": k}
            for k, im, m in zip(keys, images, masks, strict=True)
        }
        return fake.write_lidc_pickle(path, entries)
    labels = np.stack([np.moveaxis(m, 0, -1) for m in masks]).astype(np.uint8)
    uids = np.arange(n) // 4
    return fake.write_lidc_hdf5(
        path, {"train": {"images": np.stack(images) - 0.5, "labels": labels, "uids": uids}}
    )


def write_qubiq(root: Path, n: int, size: int) -> Path:
    """QUBIQ task ``prostate``: a channel of fundus cases, sub-tasks disc and cup; every
    other case with a trailing singleton axis."""
    for i, case in enumerate(fundus(n, size, 3)):
        end = (lambda a: a[..., None]) if i % 2 else (lambda a: a)
        masks = {(t + 1, r + 1): end(case.masks[r, t]) for r in range(RATERS) for t in range(2)}
        image = end((case.image[1] * 1000).astype(np.float32))
        fake.write_qubiq_case(root, "prostate", f"case{i + 1:02d}", image, masks)
    return root


def write_hecktor(root: Path, patients: int, shape: tuple[int, int, int]) -> Path:
    """Per-patient CT (int16 HU-like) and PET (half resolution) of the 3D PET/CT
    generator, and the labels (1 primary, 2 nodal) of 2 or 3 annotators on the CT grid."""
    from edue.data.synthetic3d import Volume3DConfig, generate_volume

    x, _, z = shape
    ct_affine, pet_affine = np.diag([1.0, 1.0, 2.0, 1.0]), np.diag([2.0, 2.0, 4.0, 1.0])
    pet_affine[:3, 3] = 0.5, 0.5, 1.0  # PET voxel centres between pairs of CT voxels
    for p in range(patients):
        config = Volume3DConfig(size=x, n_raters=2 + p % 2, spacing=(2.0, 1.0, 1.0))
        case = generate_volume(p, 4, config)
        lo = (x - z) // 2

        def xyz(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.transpose(a[lo : lo + z], (2, 1, 0)))  # noqa: B023

        pid = f"CHUV-{p:03d}"
        ct = (xyz(case.image[0]) * 2000 - 1000).astype(np.int16)
        pet = (xyz(case.image[1])[::2, ::2, ::2] * 10).astype(np.float32)
        images = [(f"{pid}__CT.nii.gz", ct, ct_affine), (f"{pid}__PT.nii.gz", pet, pet_affine)]
        labels = [xyz(np.where(m[1] > 0, 2, m[0]).astype(np.uint8)) for m in case.masks]
        annotators = {
            f"annotator{a + 1}": (f"{pid}.nii.gz", lab, ct_affine) for a, lab in enumerate(labels)
        }
        fake.write_hecktor_patient(root, pid, images, annotators)
    return root


def write_folder(root: Path, n: int, size: int) -> Path:
    """The project's folder format (PNG), as ``edue data synth`` writes it."""
    from edue.data.folder import write_folder_dataset

    return write_folder_dataset(fundus(n, size, 5), root, name="synthetic")


# --------------------------------------------------------------------------- readers
FORMATS = {  # reader: data.format, data.options, what the copy is
    "riga-discregion": ("riga-discregion", {}, "DiscRegion CSVs, RGB TIFFs"),
    "riga-plus": ("riga-plus", {}, "RIGA+ CSVs, RGB TIFFs"),
    "lidc-pickle": ("lidc-pickle", {}, "pickle"),
    "lidc-hdf5": ("lidc-hdf5", {"group": "train"}, "HDF5"),
    "qubiq": ("qubiq", {"task": "prostate"}, "NIfTI"),
    "hecktor-2d": ("hecktor", {"mode": "2d"}, "CT int16 + PET at half resolution, NIfTI"),
    "hecktor-3d": ("hecktor", {"mode": "3d"}, "CT int16 + PET at half resolution, NIfTI"),
    "folder": ("folder", {}, "PNG"),
    "synthetic": ("synthetic", {}, "generated"),
}
READER_KEYS = tuple(FORMATS)


@dataclasses.dataclass
class Reader:
    """One reader on its fake copy and how the trainer uses it: ``data.format``, what the
    copy holds, ``data.options``, ``train.batch_size``, ``model.channels``, the cases of
    the trainer's run, the store ``data.cache: auto`` picks for a full-size copy, further
    overrides, ``data.root`` and the seconds writing the copy took."""

    key: str
    fmt: str
    copy: str
    options: dict[str, Any]
    batch: int
    channels: tuple[int, ...]
    train_cases: int
    store: str = "memory"
    extra: list[str] = dataclasses.field(default_factory=list)
    root: Path | None = None
    write_seconds: float = 0.0

    def config(self, cache: str, cache_dir: Path, *more: str) -> Any:
        """The run configuration with ``data.cache = cache`` (stores under ``cache_dir``)."""
        data = [f"data.format={self.fmt}", f"data.options={json.dumps(self.options)}"]
        data += [f"data.cache={cache}", f"data.cache_dir={cache_dir}", "data.num_workers=0"]
        data += [f"data.root={self.root}"] * bool(self.root) + ["data.augment=true"]
        data += [f"train.batch_size={self.batch}", "train.device=cpu", *self.extra, *more]
        return C.method_config(C.roles().subject.name, self.channels, data)


def make_readers(work: Path, s: Scale, keys: Sequence[str]) -> list[Reader]:
    """The selected readers, in order, with their fake copies written."""
    hecktor = work / "hecktor"

    def volumes() -> Path:
        done = hecktor.is_dir()
        return hecktor if done else write_hecktor(hecktor, s.hecktor_patients, s.hecktor_shape)

    writers: dict[str, Callable[[], Path | None]] = {
        "riga-discregion": lambda: write_riga(work / "dr", s.riga_cases, s.riga_size, False),
        "riga-plus": lambda: write_riga(work / "plus", s.riga_cases, s.riga_size, True),
        "lidc-pickle": lambda: write_lidc(work / "lidc.pickle", s.lidc_cases, s.lidc_size),
        "lidc-hdf5": lambda: write_lidc(work / "lidc.hdf5", s.lidc_cases, s.lidc_size),
        "qubiq": lambda: write_qubiq(work / "qubiq", s.qubiq_cases, s.qubiq_size),
        "hecktor-2d": volumes,
        "hecktor-3d": volumes,
        "folder": lambda: write_folder(work / "folder", s.folder_cases, s.small_size),
        "synthetic": lambda: None,
    }
    readers = []
    for key in (k for k in READER_KEYS if k in keys):
        fmt, options, copy = FORMATS[key]
        reader = Reader(key, fmt, copy, dict(options), s.batch_2d, s.channels_2d, s.train_cases_2d)
        if key == "hecktor-3d":
            patch = f"data.patch_size=[{s.patch},{s.patch},{s.patch}]"
            reader = dataclasses.replace(reader, batch=s.batch_3d, channels=s.channels_3d)
            reader = dataclasses.replace(reader, train_cases=s.train_volumes, store="disk")
            reader.extra = [patch, f"data.patches_per_volume={s.patches_per_volume}"]
        if key == "synthetic":
            reader.options["size"] = s.small_size
            reader.extra = [f"data.split={{train: {s.folder_cases}, val: 0, test: 0}}"]
        reader.root, reader.write_seconds = C.timed_once(writers[key])
        readers.append(reader)
    return readers


# --------------------------------------------------------------------------- 1. cases/s
@dataclasses.dataclass
class Built:
    """A reader's training subset built with one cache mode."""

    config: Any
    subset: Any
    cache_dir: Path


def build(
    reader: Reader, mode: str, work: Path, cache_dir: Path | None = None
) -> tuple[Built, float, float]:
    """The reader's training subset (every case) in a fresh store (or ``cache_dir``'s);
    the seconds opening the source and building it (``build_datasets``) took."""
    from edue.data.pipeline import build_datasets, open_configured_source

    cache_dir = cache_dir or Path(tempfile.mkdtemp(prefix=f"store-{mode}-", dir=work))
    config = reader.config(mode, cache_dir)
    source, open_s = C.timed_once(lambda: open_configured_source(config.data))
    indices = {"train": list(range(len(source)))}
    subsets, build_s = C.timed_once(lambda: build_datasets(config.data, source, indices))
    return Built(config, subsets["train"], cache_dir), open_s, build_s


def later_epoch(built: Built, epoch: int, budget_s: float | None) -> float:
    """Seconds per case of an epoch of the training dataset's items in the trainer's
    order (stopped after ``budget_s``, at least 3 cases done)."""
    from edue.data.pipeline import training_dataset
    from edue.engine.training.trainer import EpochSampler

    dataset = training_dataset(built.config.data, built.config.train.seed, built.subset)
    sampler = EpochSampler(len(dataset), built.config.train.seed)
    sampler.set_epoch(epoch)
    start, done = time.perf_counter(), 0
    for i in sampler:
        dataset[i]
        done += 1
        if budget_s is not None and done >= 3 and time.perf_counter() - start > budget_s:
            break
    return (time.perf_counter() - start) / done


def measure_cases(reader: Reader, s: Scale, work: Path) -> tuple[dict, dict[str, Built]]:
    """Cold and warm cases/s per cache mode, the modes rotated round by round; the memory
    and disk subsets of the last round are kept (for the loader)."""
    raw: dict[str, dict[str, list[float]]] = {
        m: {"open": [], "cold": [], "warm": [], "reuse": []} for m in MODES
    }
    kept: dict[str, Built] = {}
    for r in range(s.prepare_rounds):
        for mode in MODES[r % 3 :] + MODES[: r % 3]:
            print(f"  {reader.key}: cases/s, {mode}, round {r + 1}", file=sys.stderr, flush=True)
            built, open_s, build_s = build(reader, mode, work)
            n = len(built.subset)
            raw[mode]["open"].append(open_s)
            raw[mode]["cold"].append(build_s / n)
            epochs, budget = (1, s.off_budget_s) if mode == "off" else (s.warm_epochs, None)
            raw[mode]["warm"].append(
                C.median([later_epoch(built, 1 + e, budget) for e in range(epochs)])
            )
            if mode == "disk":  # a later run's set-up over the store this one left
                raw[mode]["reuse"].append(build(reader, mode, work, built.cache_dir)[2] / n)
            if r == s.prepare_rounds - 1 and mode in CACHED:
                kept[mode] = built
            else:
                shutil.rmtree(built.cache_dir, ignore_errors=True)
    figures: dict[str, Any] = {"cases": n, "raw": raw}
    for mode in MODES:
        m = {k: C.median(v) for k, v in raw[mode].items()}
        figures[mode] = {
            "open_s": m["open"],
            "cold_cases_per_s": 1 / m["cold"],
            "warm_cases_per_s": 1 / m["warm"],
            "warm_ms_per_case": 1000 * m["warm"],
            "reuse_cases_per_s": 1 / m["reuse"],
        }
    for mode in CACHED:  # before (off) / after (a warm store), paired per round
        figures[mode]["speedup_vs_off"] = C.paired_ratio(raw["off"]["warm"], raw[mode]["warm"])
    return figures, kept


# --------------------------------------------------------------------------- 2. loader/model
class LoaderEpochs:
    """One call = one whole epoch of the trainer's DataLoader (no model) over ``built``,
    with ``workers`` (default: the configuration's ``num_workers``)."""

    def __init__(self, built: Built, workers: int | None = None) -> None:
        from torch.utils.data import DataLoader

        from edue.data.pipeline import collate_groups, training_dataset
        from edue.engine.training.trainer import EpochSampler

        config = built.config
        dataset = training_dataset(config.data, config.train.seed, built.subset)
        repeats = getattr(dataset.transform, "repeats", 1)
        self.sampler = EpochSampler(len(dataset), config.train.seed)
        workers = config.data.num_workers if workers is None else workers
        self.loader = DataLoader(
            dataset,
            batch_size=max(1, config.train.batch_size // repeats),
            sampler=self.sampler,
            collate_fn=collate_groups,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(config.train.seed),
        )
        self.epoch, self.samples, self.first_batch_s = 0, len(dataset) * repeats, []

    def first_batch(self) -> dict[str, Any]:
        """A batch as the trainer's first step gets it."""
        self.sampler.set_epoch(0)
        return next(iter(self.loader))

    def __call__(self) -> int:
        self.epoch += 1
        self.sampler.set_epoch(self.epoch)
        start, seen = time.perf_counter(), 0
        for batch in self.loader:
            if not seen:
                self.first_batch_s.append(time.perf_counter() - start)
            seen += len(batch["case_id"])
        return seen


def model_step(channels: Sequence[int], batch: dict[str, Any]) -> TrainStep:
    """The subject's training step on ``batch`` (a model built for its data)."""
    image, masks = batch["image"], batch["masks"]
    config = C.method_config(C.roles().subject.name, channels)
    method = C.build(config, int(image.shape[1]), int(masks.shape[2]), image.ndim - 2, True)
    return TrainStep(method, batch, "cpu")


def measure_loader(
    readers: Sequence[Reader], kept: Mapping[str, Mapping[str, Built]], rounds: int
) -> dict:
    """Loader samples/s (memory, disk) over the subject's images/s, interleaved, per group
    of readers whose batches have one shape (one model step timed for the group)."""
    loaders = {f"{r.key}|{m}": LoaderEpochs(kept[r.key][m]) for r in readers for m in CACHED}
    batches = {r.key: loaders[f"{r.key}|memory"].first_batch() for r in readers}
    groups: dict[tuple, list[str]] = {}
    for r in readers:
        b = batches[r.key]
        groups.setdefault(
            (tuple(b["image"].shape), int(b["masks"].shape[2]), r.channels), []
        ).append(r.key)
    out: dict[str, dict[str, Any]] = {}
    for (_, _, channels), keys in groups.items():
        fns: dict[str, Callable[[], object]] = {"model": model_step(channels, batches[keys[0]])}
        fns.update({k: v for k, v in loaders.items() if k.split("|")[0] in keys})
        times = C.interleaved(fns, rounds, progress=f"loader vs model: {', '.join(keys)}")
        size, model_s = int(batches[keys[0]]["image"].shape[0]), times["model"]
        shape = batches[keys[0]]["image"].shape[2:]
        model_input = f"{shape[0]}²" if len(shape) == 2 else f"{shape[0]}³ patches"
        for key in keys:
            entry: dict[str, Any] = {"model_input": model_input, "model_s": model_s}
            entry["model_images_per_s"] = size / C.median(model_s)
            for mode in CACHED:
                n, loader_s = loaders[f"{key}|{mode}"].samples, times[f"{key}|{mode}"]
                per_round = [(n / t) / (size / m) for t, m in zip(loader_s, model_s, strict=True)]
                best = (n / min(loader_s)) / (size / min(model_s))  # the least disturbed rounds
                entry[mode] = {
                    "samples_per_s": n / C.median(loader_s),
                    "ratio": C.median(per_round),
                    "best_ratio": best,
                    "loader_s": loader_s,
                }
            entry["ratio"] = min(entry[m]["ratio"] for m in CACHED)
            entry["best_ratio"] = min(entry[m]["best_ratio"] for m in CACHED)
            out[key] = entry
    return out


# --------------------------------------------------------------------------- 3. epochs
class EpochTimer(TrainingCallback):
    """The steps of every epoch and every epoch's record, as the trainer reports them."""

    def __init__(self) -> None:
        self.steps: dict[int, list[StepRecord]] = {}
        self.epochs: list[dict[str, Any]] = []

    def on_step_end(self, trainer: Any, step: StepRecord) -> None:
        """Keep the step under its epoch (``trainer.epoch`` counts completed epochs)."""
        self.steps.setdefault(trainer.epoch + 1, []).append(step)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """Keep the epoch's record (its ``seconds`` included)."""
        self.epochs.append(record)


def measure_epochs(reader: Reader, case_ids: Sequence[str], s: Scale, work: Path) -> dict:
    """A small ``Trainer.fit``: each later epoch's wall time over its pure step time."""
    from edue.data.splits import save_split
    from edue.engine.training.trainer import Trainer

    run = Path(tempfile.mkdtemp(prefix=f"train-{reader.key}-", dir=work))
    more = [f"train.epochs={s.epochs}", f"out_dir={run / 'run'}"]
    if reader.fmt == "synthetic":
        more.append(f"data.split={{train: {reader.train_cases}, val: 0, test: 0}}")
    else:
        save_split(
            run / "split.json",
            {"train": list(range(min(reader.train_cases, len(case_ids))))},
            case_ids,
        )
        more.append(f"data.split_file={run / 'split.json'}")
    timer = EpochTimer()
    trainer = Trainer(reader.config(reader.store, run / "cache", *more), callbacks=[timer])
    setup_s = C.timed_once(trainer.setup)[1]
    trainer.fit()
    epochs = []
    for record in timer.epochs[1:]:  # every epoch after the first
        steps = timer.steps[record["epoch"]]
        pure = sum(step.seconds - step.transfer_seconds for step in steps)
        epochs.append(
            {
                "epoch": record["epoch"],
                "seconds": record["seconds"],
                "step_s": pure,
                "steps": len(steps),
                "transfer_s": sum(step.transfer_seconds for step in steps),
                "ratio": record["seconds"] / pure,
            }
        )
    store = getattr(trainer.subsets["train"].store, "kind", "off")
    shutil.rmtree(run, ignore_errors=True)
    return {
        "setup_s": setup_s,
        "store": store,
        "epochs": epochs,
        "ratio": C.median([e["ratio"] for e in epochs]),
        "best_ratio": min(e["ratio"] for e in epochs),
        "epoch_s": C.median([e["seconds"] for e in epochs]),
        "step_s": C.median([e["step_s"] for e in epochs]),
    }


# --------------------------------------------------------------------------- report
def tables_of(readers: Sequence[Reader], results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A table per reader (a column per cache mode), the targets' figures, before/after."""
    subject, dash = C.roles().subject.label, "–"
    tables, summary, before_after = [], [], []
    for reader in readers:
        cases, loader, epochs = (results[reader.key][k] for k in ("cases", "loader", "epochs"))
        samples = "patches" if "patches" in loader["model_input"] else "images"
        store = epochs["store"]
        rows = [
            [label, *[cases[m][key] if m in modes else dash for m in MODES]]
            for label, key, modes in (
                ("opening the source, s", "open_s", MODES),
                ("first epoch (store built), cases/s", "cold_cases_per_s", MODES),
                ("later epochs, cases/s", "warm_cases_per_s", MODES),
                ("later epochs, ms per case", "warm_ms_per_case", MODES),
                ("a later run's set-up (store reused), cases/s", "reuse_cases_per_s", ("disk",)),
            )
        ]
        rows.append(
            [
                f"training DataLoader, {samples}/s (no model)",
                dash,
                *[loader[m]["samples_per_s"] for m in CACHED],
            ]
        )
        rows.append(
            [
                f"DataLoader / {subject} training step",
                dash,
                *[C.ratio(loader[m]["ratio"], 1) for m in CACHED],
            ]
        )
        rows.append(
            [
                f"trainer epoch / pure step time (store: {store})",
                *[C.ratio(epochs["ratio"], 3) if m == store else dash for m in MODES],
            ]
        )
        title = (
            f"{reader.key} — {reader.copy}; {cases['cases']} cases; model at "
            f"{loader['model_input']}, batch {reader.batch}: "
            f"{loader['model_images_per_s']:.3g} {samples}/s"
        )
        tables.append(C.table(title, ["figure", *MODES], rows))
        summary.append(
            [
                reader.key,
                loader["model_input"],
                loader["model_images_per_s"],
                min(loader[m]["samples_per_s"] for m in CACHED),
                C.ratio(loader["ratio"], 1),
                C.ratio(loader["best_ratio"], 1),
                epochs["epoch_s"],
                epochs["step_s"],
                C.ratio(epochs["ratio"], 3),
                C.ratio(epochs["best_ratio"], 3),
                store,
                epochs["setup_s"],
            ]
        )
        if reader.key in BEFORE_AFTER:
            ms, up = (
                [cases[m]["warm_ms_per_case"] for m in MODES],
                [C.ratio(cases[m]["speedup_vs_off"], 1) for m in CACHED],
            )
            before_after.append([reader.key, ms[0], ms[1], up[0], ms[2], up[1]])
    headers = [
        "reader",
        "model input",
        f"{subject} step samples/s",
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
    tables.append(C.table("Targets' figures per reader", headers, summary))
    headers = [
        "reader",
        "before: cache off, ms/case",
        "after: memory, ms/case",
        "speed-up",
        "after: disk, ms/case",
        "speed-up",
    ]
    return tables + [
        C.table("Before / after: cost per case of a later epoch", headers, before_after)
    ]


def run(
    quick: bool = False,
    readers: Sequence[str] | None = None,
    threads: int = C.DEFAULT_THREADS,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Every selected reader: cases/s per cache mode, loader vs model, epoch vs step."""
    bench = C.start(threads)
    s = dataclasses.replace(QUICK if quick else FULL, **({"rounds": rounds} if rounds else {}))
    results: dict[str, Any] = {}
    parts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edue-bench-") as tmp, warnings.catch_warnings():
        # torch notes once that a memory-mapped (read-only) array becomes a tensor
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        work = Path(tmp)
        chosen, parts["writing the copies"] = C.timed_once(
            lambda: make_readers(work, s, readers or READER_KEYS)
        )
        clock, kept = time.perf_counter(), {}
        for reader in chosen:
            figures, kept[reader.key] = measure_cases(reader, s, work)
            results[reader.key] = {"cases": figures}
        parts["cases/s"] = time.perf_counter() - clock
        loader, parts["loader vs step"] = C.timed_once(
            lambda: measure_loader(chosen, kept, s.rounds)
        )
        clock = time.perf_counter()
        for reader in chosen:
            results[reader.key]["loader"] = loader[reader.key]
            case_ids = kept[reader.key]["memory"].subset.case_ids
            for built in kept.pop(reader.key).values():
                shutil.rmtree(built.cache_dir, ignore_errors=True)
            print(f"  {reader.key}: trainer epochs", file=sys.stderr, flush=True)
            results[reader.key]["epochs"] = measure_epochs(reader, case_ids, s, work)
        parts["trainer epochs"] = time.perf_counter() - clock
    targets = []
    for reader in chosen:
        e, subject = results[reader.key], C.roles().subject.label
        name = f"{reader.key}: training DataLoader / {subject} training step (slower store)"
        targets.append(C.target(name, e["loader"]["ratio"], ">=", LOADER_TARGET))
        name = f"{reader.key}: trainer epoch / pure step time ({e['epochs']['store']} store)"
        targets.append(C.target(name, e["epochs"]["ratio"], "<=", EPOCH_TARGET))
    loader_s = {
        f"{r.key} {m}": results[r.key]["loader"][m]["loader_s"] for r in chosen for m in CACHED
    }
    notes = [
        "Writing the fake copies: "
        + ", ".join(f"{r.key} {r.write_seconds:.1f} s" for r in chosen if r.root)
        + ".",
        "Time per part: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in parts.items())
        + ".",
        C.spread_note(loader_s) + f" Load average at the end: {C.load_average()}.",
    ]
    settings = (
        f"{'Tiny copies (--quick): ' if quick else ''}RIGA {s.riga_cases} × {s.riga_size}², LIDC "
        f"{s.lidc_cases} × {s.lidc_size}², QUBIQ {s.qubiq_cases} × {s.qubiq_size}², HECKTOR "
        f"{s.hecktor_patients} × {'×'.join(map(str, s.hecktor_shape))}, folder and synthetic "
        f"{s.folder_cases} × {s.small_size}², {RATERS} raters (LIDC {LIDC_RATERS}); "
        f"`data.augment=true`, `num_workers` 0, {torch.get_num_threads()} torch threads; "
        f"{C.roles().subject.label}, `model.norm=batch`, 2D "
        f"`model.channels=[{C.channels_text(s.channels_2d)}]`, 3D "
        f"`[{C.channels_text(s.channels_3d)}]`; cases/s: {s.prepare_rounds} round(s), "
        f"{s.warm_epochs} later epoch(s) each (`off`: one, stopped after {s.off_budget_s:g} s); "
        f"loader vs step: {s.rounds} round(s); trainer: {s.epochs} epochs; cpu."
    )
    title = "Readers through the prepared-case cache"
    tables = tables_of(chosen, results)
    return bench.result(
        "readers", title, settings, tables, targets, notes, readers=results, parts_seconds=parts
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "rounds")
    p.add_argument("--readers", nargs="+", choices=READER_KEYS, help="readers (default: all)")
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
