"""Data-loader throughput next to the model's training throughput.

The training DataLoader as ``Trainer.fit`` builds it (``bench_readers.LoaderEpochs``),
over whole epochs (iterator and worker start-up included), for a folder-format dataset
(PNG, written as ``edue data synth`` does), the synthetic source with its cases cached
and the synthetic source generating them on the fly (no target: the trainer reads it
cached); every loader and EDUE's training step on one of its batches are interleaved
round by round.

    .venv/bin/python benchmarks/bench_loader.py [--quick] [--cases 128]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C
import bench_readers as R
import torch

TARGET = 3.0
SOURCES = {  # label -> (reader, data.options beyond the size)
    "folder (PNG on disk)": ("folder", {}),
    "synthetic, in memory": ("synthetic", {}),
    "synthetic, generated on the fly": ("synthetic", {"cache": False}),
}


def run(
    quick: bool = False,
    size: int = 128,
    cases: int | None = None,
    batch: int = 16,
    workers: Sequence[int] = (0, 2),
    rounds: int | None = None,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    threads: int = C.DEFAULT_THREADS,
) -> dict[str, Any]:
    """Loader cases/s per source and worker count, the subject's images/s, their ratios."""
    bench = C.start(threads)
    cases = cases or (32 if quick else 128)
    rounds = rounds or (2 if quick else 3)
    scale = dataclasses.replace(R.FULL, folder_cases=cases, small_size=size, batch_2d=batch)
    scale = dataclasses.replace(scale, channels_2d=tuple(channels))
    with tempfile.TemporaryDirectory(prefix="edue-bench-") as tmp:
        readers = {r.key: r for r in R.make_readers(Path(tmp), scale, ["folder", "synthetic"])}
        fns: dict[str, Any] = {}
        for label, (key, options) in SOURCES.items():
            reader = dataclasses.replace(readers[key], options={**readers[key].options, **options})
            built = R.build(reader, "off", Path(tmp))[0]  # the sources' own reading, no store
            for w in workers:
                fns[f"{label}|{w}"] = R.LoaderEpochs(built, w)
        first = next(iter(fns.values())).first_batch()
        model = R.model_step(channels, first)
        times = C.interleaved({"model": model, **fns}, rounds, progress="loader vs model")
    n, model_s = int(first["image"].shape[0]), times["model"]
    subject = C.roles().subject.label
    rows, targets, entries = [], [], {}
    for key, loader in fns.items():
        label, w = key.split("|")
        per_round = [
            (loader.samples / t) / (n / m) for t, m in zip(times[key], model_s, strict=True)
        ]
        entry = entries[key] = {"cases_per_s": loader.samples / C.median(times[key])}
        entry.update(
            first_batch_s=C.median(loader.first_batch_s), ratio_to_model=C.median(per_round)
        )
        rows.append(
            [
                label,
                int(w),
                entry["cases_per_s"],
                entry["first_batch_s"],
                C.ratio(entry["ratio_to_model"], 1),
            ]
        )
        if SOURCES[label][1].get("cache", True):
            name = f"loader / {subject} training throughput: {label}, {w} workers"
            targets.append(C.target(name, entry["ratio_to_model"], ">=", TARGET))
    model_rate = n / C.median(model_s)
    rows.append([f"{subject} training step (model)", "-", model_rate, "-", "1.0×"])
    settings = (
        f"{cases} cases of {size}², batch {batch}, `model.channels=[{C.channels_text(channels)}]`; "
        f"`num_workers` {', '.join(map(str, workers))}; {rounds} interleaved rounds (an epoch "
        f"of each loader, a step of the model); {torch.get_num_threads()} torch threads."
    )
    notes = [
        f"Writing the folder dataset took {readers['folder'].write_seconds:.1f} s.",
        C.spread_note(times),
    ]
    headers = ["source", "workers", "cases/s", "first batch s", "× model"]
    return bench.result(
        "loader",
        f"Data loader vs model ({size}², batch {batch})",
        settings,
        [C.table("Cases per second read by the training DataLoader", headers, rows)],
        targets,
        notes,
        model_images_per_s=model_rate,
        loaders=entries,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "channels", "rounds")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--cases", type=int, help="cases in the dataset (default 128)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
