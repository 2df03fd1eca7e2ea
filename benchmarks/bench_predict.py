"""``edue predict`` end to end next to the model's own throughput.

A folder of fundus-like RGB PNGs (the synthetic generator's) is predicted by an
untrained checkpoint of the subject method. Timed side by side, interleaved round by
round: the model alone (``Predictor.predict_batch`` on the images already read),
``predict_files`` without and with the overlay pictures (what ``edue predict`` runs,
checkpoint loading included; the pictures are drawn with array operations,
:mod:`edue.report.prediction_pictures`), and ``write_prediction`` alone on predictions made
beforehand (the writer threads' work). The ratios are images/s of each ``predict`` run
over the model's, per round.

    .venv/bin/python benchmarks/bench_predict.py [--quick] [--images 60] [--size 256]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common as C
import numpy as np
import torch

TARGET = 0.7
MODEL, NO_FIGURES, FIGURES, WRITING = (
    "model",
    "predict, no figures",
    "predict, figures",
    "writing alone",
)
WRITE_IMAGES = 16  # predictions held in memory for the writing-alone run
STRUCTURES = ("disc", "cup")


def write_images(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` fundus-like RGB PNGs of ``size``²."""
    from edue.data.synthetic import FundusConfig, generate_cases
    from tests.fake_layouts import save_image

    cases = generate_cases(n, 0, FundusConfig(size=size, n_raters=2))
    rgb = [(np.clip(np.moveaxis(c.image, 0, -1), 0, 1) * 255 + 0.5).astype(np.uint8) for c in cases]
    return [save_image(folder / f"image{i:03d}.png", image) for i, image in enumerate(rgb)]


def write_checkpoint(path: Path, name: str, size: int, channels: Sequence[int]) -> Path:
    """An untrained checkpoint of ``name`` for ``size``² RGB images (disc, cup)."""
    from edue.engine.checkpoint import save_checkpoint

    config = C.method_config(name, channels, [f"data.size={size}"])
    method = C.build(config, C.IMAGE_CHANNELS, len(STRUCTURES), 2)
    info = {"in_channels": C.IMAGE_CHANNELS, "structures": list(STRUCTURES), "spatial_dims": 2}
    state = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    data = {**info, "image_size": [size, size]}
    return save_checkpoint(path, {"model": state, "config": config.to_dict(), "data": data})


def with_cpu(fn: Callable[[], object], box: list[float]) -> Callable[[], object]:
    """``fn``, appending the CPU seconds of this process (every thread) per call."""

    def call() -> object:
        start = time.process_time()
        result = fn()
        box.append(time.process_time() - start)
        return result

    return call


def run(
    quick: bool = False,
    images: int | None = None,
    size: int | None = None,
    batch: int = 8,
    rounds: int | None = None,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Images/s of the model alone and of ``predict_files`` with and without figures."""
    from edue.engine.inference.predictor import Predictor
    from edue.engine.predict.files import predict_files, write_prediction
    from edue.io import read_image
    from edue.report.prediction_figures import write_prediction_figure

    bench = C.start(threads)
    n, size, rounds = (
        images or (6 if quick else 60),
        size or (64 if quick else 256),
        rounds or (1 if quick else 3),
    )
    subject = C.roles().subject
    with tempfile.TemporaryDirectory(prefix="edue-bench-predict-") as tmp:
        root = Path(tmp)
        inputs, write_s = C.timed_once(lambda: write_images(root / "in", n, size))
        checkpoint = write_checkpoint(root / "model.pt", subject.name, size, channels)
        predictor = Predictor.from_checkpoint(checkpoint, device=device)
        tensors = [torch.from_numpy(read_image(p, 2)[0]) for p in inputs]
        n_write = min(n, WRITE_IMAGES)
        preds = [predictor.predict_batch([t])[0] for t in tensors[:n_write]]

        def model(count: int) -> Callable[[], object]:
            return lambda: [
                predictor.predict_batch(tensors[i : i + batch]) for i in range(0, count, batch)
            ]

        def predict(paths: Sequence[Path], out: str, figures: bool) -> Callable[[], object]:
            figure = write_prediction_figure if figures else None
            files = [str(p) for p in paths]
            return lambda: predict_files(
                str(checkpoint),
                files,
                str(root / out),
                device=device,
                figure_writer=figure,
                batch_size=batch,
            )

        def writing(count: int, out: Path) -> Callable[[], object]:
            out.mkdir(parents=True, exist_ok=True)
            return lambda: [
                write_prediction(q, p, out, None)
                for q, p in zip(preds[:count], inputs, strict=False)
            ]

        few = inputs[: min(n, 2)]
        variants = {
            MODEL: model(n),
            NO_FIGURES: predict(inputs, "out", False),
            FIGURES: predict(inputs, "out_figures", True),
            WRITING: writing(n_write, root / "alone"),
        }
        warmup = {
            MODEL: model(min(n, batch)),
            NO_FIGURES: predict(few, "warm", False),
            FIGURES: predict(few, "warm", True),
            WRITING: writing(len(few), root / "warm"),
        }
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        timed = {name: with_cpu(fn, cpu[name]) for name, fn in variants.items()}
        times = C.interleaved(timed, rounds, warmup, device, "predict")
    counts = {MODEL: n, NO_FIGURES: n, FIGURES: n, WRITING: n_write}
    per_image = {name: C.median(t) / counts[name] for name, t in times.items()}
    cpu_per_image = {name: C.median(c[-rounds:]) / counts[name] for name, c in cpu.items()}
    ratios = {name: C.paired_ratio(times[MODEL], times[name]) for name in (NO_FIGURES, FIGURES)}
    # predict cannot beat the model, nor the model's and the writing's CPU time over the
    # cores; on cores kept busy by others, not the model's share of that CPU time
    cores, work = C.usable_cores(), cpu_per_image[MODEL] + cpu_per_image[WRITING]
    own = per_image[MODEL] / max(per_image[MODEL], work / cores)
    busy = cpu_per_image[MODEL] / work
    rows = [
        [
            name,
            counts[name],
            C.median(t),
            1 / per_image[name],
            C.ratio(ratios.get(name, 1.0)) if name != WRITING else "-",
            cpu_per_image[name],
            f"{100 * C.spread(t):.0f} %",
        ]
        for name, t in times.items()
    ]
    note = f"{subject.label}, {size}², batch {batch}"
    targets = [
        C.target("predict (no figures) / model throughput", ratios[NO_FIGURES], ">=", TARGET, note),
        C.target(
            "predict with its pictures / model throughput", ratios[FIGURES], ">=", TARGET, note
        ),
    ]
    notes = [
        f"Writing the {n} images took {write_s:.1f} s.",
        f"CPU s per image: writing {cpu_per_image[WRITING]:.3f}, model {cpu_per_image[MODEL]:.3f}: "
        f"predict does {work / cpu_per_image[MODEL]:.1f}× the model's CPU work, so its ratio to "
        f"the model is bounded by {own:.2f}× with the {cores} core(s) to itself and by "
        f"{busy:.2f}× on cores kept busy by others (measured: {C.ratio(ratios[NO_FIGURES])}).",
        C.spread_note(times),
    ]
    headers = ["run", "images", "s per round", "images/s", "× model", "CPU s/image", "spread"]
    return bench.result(
        "predict",
        f"edue predict vs the model ({size}², batch {batch})",
        f"{n} images of {size}², batch {batch}, untrained {subject.label} with `model.channels="
        f"[{C.channels_text(channels)}]`, {torch.get_num_threads()} torch threads, {device}; "
        f"{rounds} interleaved round(s) after a warm-up on {len(few)} image(s).",
        [C.table("Throughput of the model, of predict and of writing", headers, rows)],
        targets,
        notes,
        seconds_per_image=per_image,
        cpu_seconds_per_image=cpu_per_image,
        ratios_to_model=ratios,
        cpu_bound_ratio={"own cores": own, "busy cores": busy},
        raw_times=times,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "channels", "device", "rounds")
    p.add_argument("--images", type=int, help="images in the folder (default 60)")
    p.add_argument("--size", type=int, help="image height and width (default 256)")
    p.add_argument("--batch", type=int, default=8, help="--batch-size of predict")
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
