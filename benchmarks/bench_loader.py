"""Data-loader throughput next to the model's training throughput (must be ≥ 3×).

The loader is the training DataLoader exactly as ``Trainer.fit`` builds it
(``training_dataset`` over a ``PreparedSource``, ``EpochSampler``, ``collate_cases``,
batch 16, ``num_workers`` 0 and 2), timed over whole epochs — iterator creation and
worker start-up included, as the trainer pays them every epoch — for:

* a dataset in the project's folder format written by ``write_folder_dataset`` (what
  ``edue data synth`` does), 128² PNGs, read back by ``FolderSource`` (page cache warm:
  the trainer reads every case once when it drops bad cases);
* the in-memory synthetic source (``data.format=synthetic``; cases cached at set-up);
* the synthetic source without its cache (cases generated on the fly; informational).

The model's throughput is the EDUE training step of ``bench_training`` (batch 16, 128²,
same machine, same run, measured separately — loader and model never overlap here).

    .venv/bin/python benchmarks/bench_loader.py [--quick] [--cases 128]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_training import make_batch, training_steps  # noqa: E402

from edue.methods import method_label  # noqa: E402


def _config(overrides: Sequence[str]) -> Any:
    from edue.config import load_config

    return load_config(None, list(overrides))


def folder_dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """Write ``n`` synthetic cases in the folder format (as ``edue data synth`` does)."""
    from edue.data.folder import write_folder_dataset
    from edue.data.synthetic import FundusConfig, generate_cases

    cases = generate_cases(n, seed, FundusConfig(size=size, n_raters=6))
    return write_folder_dataset(cases, root, name=f"synthetic-fundus-seed{seed}")


def training_dataset_for(config: Any) -> Any:
    """The training ``CaseDataset`` the trainer would build for ``config`` (all cases)."""
    from edue.data.pipeline import (
        PreparedSource,
        open_configured_source,
        split_indices,
        training_dataset,
    )
    from edue.data.source import open_source

    if config.data.format == "synthetic":
        source = open_configured_source(config.data)
        indices = split_indices(config.data, source)["train"]
    else:
        source = open_source(config.data.format, config.data.root, **config.data.options)
        indices = list(range(len(source)))
    subset = PreparedSource(source, indices, config.data.size, config.data.strict)
    subset.drop_bad()  # the trainer's set-up pass: reads (and caches) every case once
    return training_dataset(config.data, config.train.seed, subset)


def loader_rate(dataset: Any, batch: int, workers: int, epochs: int) -> dict[str, float]:
    """Cases per second over whole epochs of the trainer's DataLoader."""
    from torch.utils.data import DataLoader

    from edue.data.case import collate_cases
    from edue.engine.training.trainer import EpochSampler

    sampler = EpochSampler(len(dataset), seed=0)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        collate_fn=collate_cases,
        num_workers=workers,
        pin_memory=False,
        drop_last=False,
    )
    rates, first_batch = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        seen = 0
        for i, item in enumerate(loader):
            if i == 0:
                first_batch.append(time.perf_counter() - start)
            seen += len(item["case_id"])
        rates.append(seen / (time.perf_counter() - start))
    return {
        "cases_per_s": C.median(rates),
        "first_batch_s": C.median(first_batch),
        "spread": C.spread(rates),
    }


def model_throughput(
    size: int, batch_size: int, channels: Sequence[int], rounds: int
) -> tuple[float, str]:
    """Images/s of EDUE's training step (the registry's subject) and its name."""
    subject = C.roles().subject.name
    batch = make_batch(size, batch_size)
    steps = training_steps([subject], batch, channels, torch.device("cpu"))
    label = f"{method_label(subject)} training step"
    times = C.interleaved(steps, rounds, progress=label)[subject]
    return batch_size / C.median(times), subject


def source_configs(root: Path, n_cases: int, size: int) -> dict[str, Any]:
    """The three sources compared: folder on disk, synthetic in memory, synthetic on the fly."""
    split = f"data.split={{train: {n_cases}, val: 0, test: 0}}"
    return {
        "folder (PNG on disk)": _config(
            ["data.format=folder", f"data.root={root}", "data.num_workers=0"]
        ),
        "synthetic, in memory": _config(
            ["data.format=synthetic", f"data.options={{size: {size}}}", split]
        ),
        "synthetic, generated on the fly": _config(
            ["data.format=synthetic", f"data.options={{size: {size}, cache: false}}", split]
        ),
    }


def measure_loaders(
    n_cases: int, size: int, batch_size: int, workers: Sequence[int], epochs: int
) -> tuple[dict[str, dict[str, Any]], float]:
    """Loader rates per source and worker count, and the seconds writing the folder took."""
    loaders: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edue-bench-") as tmp:
        root, write_seconds = C.timed_once(
            lambda: folder_dataset(Path(tmp) / "synth", n_cases, size)
        )
        for label, config in source_configs(root, n_cases, size).items():
            dataset = training_dataset_for(config)
            for w in workers:
                print(f"  loader: {label}, {w} workers", file=sys.stderr, flush=True)
                loaders[f"{label}|{w}"] = {
                    "source": label,
                    "workers": w,
                    **loader_rate(dataset, batch_size, w, epochs),
                }
    return loaders, write_seconds


def loader_rows_and_targets(
    loaders: Mapping[str, dict[str, Any]], model_rate: float, subject: str
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """Table rows (ratio to the model added to each entry) and the ≥ 3× targets."""
    rows, targets = [], []
    for entry in loaders.values():
        ratio = entry["cases_per_s"] / model_rate
        entry["ratio_to_model"] = ratio
        source, workers = entry["source"], entry["workers"]
        rows.append(
            [source, workers, entry["cases_per_s"], entry["first_batch_s"], f"{ratio:.1f}×"]
        )
        if "on the fly" not in source:
            name = (
                f"loader / {method_label(subject)} training throughput: {source}, {workers} workers"
            )
            targets.append(C.target(name, ratio, ">=", 3.0))
    rows.append([f"{method_label(subject)} training step (model)", "-", model_rate, "-", "1.0×"])
    return rows, targets


def run(
    quick: bool = False,
    size: int = 128,
    n_cases: int | None = None,
    batch_size: int = 16,
    workers: Sequence[int] = (0, 2),
    epochs: int | None = None,
    rounds: int | None = None,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    threads: int = C.DEFAULT_THREADS,
) -> dict[str, Any]:
    """Loader cases/s per source and worker count, EDUE images/s, and their ratios."""
    bench = C.start(threads)
    n_cases = n_cases or (32 if quick else 128)
    epochs = epochs or (2 if quick else 3)
    rounds = rounds or (1 if quick else 3)
    # The model: EDUE training at batch 16 (the comparison the loader must keep up with).
    model_rate, subject = model_throughput(size, batch_size, channels, rounds)
    loaders, write_seconds = measure_loaders(n_cases, size, batch_size, workers, epochs)
    rows, targets = loader_rows_and_targets(loaders, model_rate, subject)
    notes = [
        f"Model: {method_label(subject)} training (forward, loss, backward, Adam) at batch "
        f"{batch_size}, {size}², {model_rate:.2f} images/s (median of {rounds} steps after a "
        "warm-up).",
        f"Loader: {n_cases} cases, {epochs} epochs per setting, median epoch rate; each epoch "
        "creates a fresh iterator (worker processes start again, as `persistent_workers` is "
        "off in the trainer); 'first batch s' is that start-up latency.",
        f"Writing the folder dataset ({n_cases} cases, PNG) took {write_seconds:.1f} s.",
        "The on-the-fly synthetic row is informational: the trainer always reads the "
        "synthetic source through its cache.",
    ]
    settings = (
        f"{size}×{size}, 3 channels, 6 raters, 2 structures; batch {batch_size}; "
        f"num_workers {', '.join(map(str, workers))}; {torch.get_num_threads()} torch threads "
        "in the main process; loader and model timed one after the other in the same run."
    )
    headers = ["source", "workers", "cases/s", "first batch s", "× model"]
    return bench.result(
        "loader",
        f"Data loader vs model ({size}², batch {batch_size})",
        settings,
        tables=[C.table("Cases per second read by the training DataLoader", headers, rows)],
        targets=targets,
        notes=notes,
        model_images_per_s=model_rate,
        loaders=loaders,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cases", type=int, help="cases in the dataset (default 128)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, help="epochs per loader setting (default 3)")
    C.add_channels_argument(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        size=args.size,
        n_cases=args.cases,
        batch_size=args.batch,
        workers=args.workers,
        epochs=args.epochs,
        channels=args.channels,
        threads=args.threads,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
