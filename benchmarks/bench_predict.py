"""``edue predict`` end to end next to the model's own throughput (must be ≥ 0.7×).

A folder of RIGA-like images — fundus disc regions of the project's synthetic generator
(``edue.data.synthetic``), written as 8-bit RGB PNGs, 60 of 256² by default — is
predicted by an untrained checkpoint of the subject method (EDUE) built at that size
from the default benchmark U-Net (``model.channels=[16,32,64,128,256]``, batch norm,
``data.size`` = the image size) and written with ``save_checkpoint``. Four things are
timed side by side, interleaved round by round:

* **model**: ``Predictor.predict_batch`` over every image, already read into tensors,
  in batches of ``--batch`` (what the model alone can do);
* **predict, no figures**: ``predict_files`` on the folder (``edue predict
  --no-figures``): checkpoint loading, reading, checking, prediction, and the NPZ,
  probability and uncertainty PNGs of every image, ``predictions.json`` — written over
  the previous round's outputs;
* **predict, figures**: the same with the overlay picture of every image (``edue
  predict``);
* **writing alone**: ``write_prediction`` of up to 16 predictions made beforehand, one
  after the other (what the writer threads must do), to show the CPU each stage needs.

The ratios are images/s of each ``predict`` run over the model's, per round (median
over rounds). The NPZ's deflate dominates the writing; how long it takes depends on the
probabilities (an untrained network's are close to 0.5, with noisy low bits).

    .venv/bin/python benchmarks/bench_predict.py [--quick] [--images 60] [--size 256]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET = 0.7
MODEL, NO_FIGURES, FIGURES = "model", "predict, no figures", "predict, figures"
WRITING = "writing alone"
#: Predictions written by the "writing alone" run (made beforehand, held in memory).
WRITE_IMAGES = 16
IN_CHANNELS, STRUCTURES = 3, ("disc", "cup")


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` RIGA-like RGB PNGs of ``size``² (synthetic fundus disc regions)."""
    from PIL import Image

    from edue.data.synthetic import FundusConfig, generate_cases

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, case in enumerate(generate_cases(n, seed, FundusConfig(size=size, n_raters=2))):
        rgb = np.clip(np.moveaxis(case.image, 0, -1) * 255 + 0.5, 0, 255).astype(np.uint8)
        path = folder / f"image{i:03d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


def write_checkpoint(path: Path, name: str, size: int, channels: Sequence[int]) -> Path:
    """An untrained checkpoint of method ``name`` for ``size``² RGB images (disc, cup)."""
    from edue.config import load_config
    from edue.engine.checkpoint import save_checkpoint
    from edue.methods import build_method

    config = load_config(
        None,
        [
            f"method.name={name}",
            f"model.channels=[{C.channels_text(channels)}]",
            "model.norm=batch",
            f"data.size={size}",
        ],
    )
    torch.manual_seed(0)
    method = build_method(config, IN_CHANNELS, len(STRUCTURES), 2, for_training=False)
    info = {
        "in_channels": IN_CHANNELS,
        "structures": list(STRUCTURES),
        "spatial_dims": 2,
        "image_size": [size, size],
    }
    state = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    return save_checkpoint(path, {"model": state, "config": config.to_dict(), "data": info})


def model_pass(predictor: Any, images: list[torch.Tensor], batch: int) -> Callable[[], object]:
    """Every image through ``Predictor.predict_batch``, ``batch`` at a time."""

    def run() -> object:
        return [
            predictor.predict_batch(images[i : i + batch]) for i in range(0, len(images), batch)
        ]

    return run


def predict_run(
    checkpoint: Path, inputs: Sequence[Path], out: Path, device: str, batch: int, figures: bool
) -> Callable[[], object]:
    """``predict_files`` on ``inputs`` (as ``edue predict`` calls it)."""
    from edue.engine.inference.files import predict_files
    from edue.report.prediction_figures import write_prediction_figure

    def run() -> object:
        return predict_files(
            str(checkpoint),
            [str(p) for p in inputs],
            str(out),
            device=device,
            figure_writer=write_prediction_figure if figures else None,
            batch_size=batch,
        )

    return run


def writing_alone(
    predictor: Any, tensors: list[torch.Tensor], inputs: Sequence[Path], out: Path
) -> Callable[[], object]:
    """The outputs of ``inputs`` written one after the other on this thread, from their
    predictions made beforehand (what the writer threads have to do, without figures)."""
    from edue.engine.inference.files import write_prediction

    out.mkdir(parents=True, exist_ok=True)
    preds = [predictor.predict_batch([t])[0] for t in tensors[: len(inputs)]]

    def run() -> object:
        return [write_prediction(q, path, out, None) for q, path in zip(preds, inputs, strict=True)]

    return run


def with_cpu(fn: Callable[[], object], box: list[float]) -> Callable[[], object]:
    """``fn``, appending the CPU seconds of this process (all its threads) per call."""

    def run() -> object:
        start = time.process_time()
        result = fn()
        box.append(time.process_time() - start)
        return result

    return run


def run(
    quick: bool = False,
    n_images: int | None = None,
    size: int | None = None,
    batch: int = 8,
    rounds: int | None = None,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Images/s of the model alone and of ``predict_files`` with and without figures."""
    from edue.engine.inference.predictor import Predictor
    from edue.io import read_image

    bench = C.start(threads)
    n_images = n_images or (6 if quick else 60)
    size = size or (64 if quick else 256)
    rounds = rounds or (1 if quick else 3)
    subject = C.roles().subject
    with tempfile.TemporaryDirectory(prefix="edue-bench-predict-") as tmp:
        root = Path(tmp)
        inputs, write_s = C.timed_once(lambda: write_images(root / "in", n_images, size))
        checkpoint = write_checkpoint(root / "model.pt", subject.name, size, channels)
        predictor = Predictor.from_checkpoint(checkpoint, device=device)
        tensors = [torch.from_numpy(read_image(p, 2)[0]) for p in inputs]
        n_write = min(n_images, WRITE_IMAGES)
        counts = {MODEL: n_images, NO_FIGURES: n_images, FIGURES: n_images, WRITING: n_write}
        variants = {
            MODEL: model_pass(predictor, tensors, batch),
            NO_FIGURES: predict_run(checkpoint, inputs, root / "out", device, batch, False),
            FIGURES: predict_run(checkpoint, inputs, root / "out_figures", device, batch, True),
            WRITING: writing_alone(predictor, tensors, inputs[:n_write], root / "out_alone"),
        }
        few = inputs[: min(len(inputs), 2)]
        warmup = {
            MODEL: model_pass(predictor, tensors[:batch], batch),
            NO_FIGURES: predict_run(checkpoint, few, root / "warm", device, batch, False),
            FIGURES: predict_run(checkpoint, few, root / "warm", device, batch, True),
            WRITING: writing_alone(predictor, tensors, few, root / "warm"),
        }
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        timed = {name: with_cpu(fn, cpu[name]) for name, fn in variants.items()}
        times = C.interleaved(timed, rounds, warmup=warmup, device=device, progress="predict")
    per_image = {name: C.median(t) / counts[name] for name, t in times.items()}
    cpu_per_image = {name: C.median(c) / counts[name] for name, c in cpu.items()}
    ratios = {name: C.paired_ratio(times[MODEL], times[name]) for name in (NO_FIGURES, FIGURES)}
    # The model and the writing share the cores: predict cannot beat their CPU time over
    # the cores, nor the model alone; on busy cores, where this process gets a share of
    # them whatever it runs, not the model's share of that CPU time.
    cores = C.usable_cores()
    work = cpu_per_image[MODEL] + cpu_per_image[WRITING]
    bound_own_cores = per_image[MODEL] / max(per_image[MODEL], work / cores)
    bound_busy_cores = cpu_per_image[MODEL] / work
    rows = [
        [
            name,
            counts[name],
            C.median(t),
            1 / per_image[name],
            f"{ratios[name]:.2f}×" if name in ratios else ("1.00×" if name == MODEL else "-"),
            cpu_per_image[name],
            f"{100 * C.spread(t):.0f} %",
        ]
        for name, t in times.items()
    ]
    targets = [
        C.target(
            "predict (no figures) / model throughput",
            ratios[NO_FIGURES],
            ">=",
            TARGET,
            note=f"{subject.label}, {size}², batch {batch}",
        )
    ]
    worst = max(C.spread(t) for t in times.values())
    notes = [
        f"Images: {n_images} synthetic fundus disc regions, {size}² RGB PNG (writing them "
        f"took {write_s:.1f} s); checkpoint: untrained {subject.label}, "
        f"model.channels=[{C.channels_text(channels)}], data.size={size}.",
        "model: Predictor.predict_batch on the images already read (tensors), "
        f"batch {batch}; predict: predict_files end to end (checkpoint loading included), "
        "outputs written over the previous round's; writing alone: write_prediction of "
        f"{n_write} predictions made beforehand, one after the other on one thread.",
        "CPU s/image: CPU time of the whole process (every thread) per image. Writing "
        f"takes {cpu_per_image[WRITING]:.3f} CPU s per image, the model "
        f"{cpu_per_image[MODEL]:.3f}: predict does {work / cpu_per_image[MODEL]:.1f}× the "
        f"model's CPU work, so its ratio to the model cannot exceed {bound_own_cores:.2f}× "
        f"with the {cores} core(s) to itself, nor {bound_busy_cores:.2f}× on cores kept "
        f"busy by others (measured: {ratios[NO_FIGURES]:.2f}×).",
        f"(predict, figures) / model: {ratios[FIGURES]:.2f}× (no target: each picture is "
        "drawn by matplotlib, mostly holding the GIL).",
        C.spread_note(worst),
    ]
    settings = (
        f"{n_images} images of {size}², batch {batch}, {torch.get_num_threads()} torch "
        f"threads, device {device}; {rounds} interleaved round(s) after a warm-up on "
        f"{len(few)} image(s)."
    )
    headers = ["run", "images", "s per round", "images/s", "× model", "CPU s/image", "spread"]
    return bench.result(
        "predict",
        f"edue predict vs the model ({size}², batch {batch})",
        settings,
        tables=[C.table("Throughput of the model, of predict and of writing", headers, rows)],
        targets=targets,
        notes=notes,
        seconds_per_image=per_image,
        cpu_seconds_per_image=cpu_per_image,
        ratios_to_model=ratios,
        cpu_bound_ratio={"own cores": bound_own_cores, "busy cores": bound_busy_cores},
        raw_times=times,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--images", type=int, help="images in the folder (default 60)")
    parser.add_argument("--size", type=int, help="image height and width (default 256)")
    parser.add_argument("--batch", type=int, default=8, help="--batch-size of predict")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 3)")
    C.add_channels_argument(parser)
    C.add_device_argument(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        n_images=args.images,
        size=args.size,
        batch=args.batch,
        rounds=args.rounds,
        channels=args.channels,
        threads=args.threads,
        device=args.device,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
