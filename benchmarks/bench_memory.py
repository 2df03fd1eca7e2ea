"""Prediction memory under the ceiling ``infer.max_memory_mb``: 1k², 4k² and 8k² RGB images.

A 2D EDUE (the registry's subject) of the default size (``model.channels=[16,32,64,128]``,
batch norm, random weights: memory and time do not depend on training) predicts one
random RGB image of each size through ``Predictor.predict`` — the call ``edue predict``
makes, at the image's own size (``data.size: null``): one whole-image pass when the
pass fits the memory budget, else tile by tile (``edue.engine.inference.tiling``; docs/method.md,
"Memory ceiling: tiled prediction"). Each size is predicted twice:

* at the **default budget** (``infer.max_memory_mb: null``: half the machine's memory);
* at a **tight budget** (``--tight-mb``, default 4096 MB; 256 MB with ``--quick``) that
  forces tiles on the larger images.

Each measurement runs in a fresh subprocess. The network's probe passes (the halo, the
bytes per pixel; once per predictor) and the image are made first; then the RSS
high-water mark is reset (``/proc/self/clear_refs``) and one ``predict`` is timed. The
figures are the process's whole peak resident memory (``VmHWM``: Python, torch, the
model, the image, the member stack, activations) and its growth over the RSS before the
prediction (what the budget covers). Targets: at the default budget the whole process
stays within the budget; at the tight budget the prediction's growth does.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--sizes 1024 4096 8192]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from edue.methods import method_label  # noqa: E402

DEFAULT_CHANNELS_2D = (16, 32, 64, 128)
SIZES, QUICK_SIZES = (1024, 4096, 8192), (256, 512, 1024)
TIGHT_MB, QUICK_TIGHT_MB = 4096, 256
STRUCTURES = ("disc", "cup")


def subject() -> str:
    """The method measured: the registry's subject (EDUE)."""
    return C.roles().subject.name


def predictor(channels: Sequence[int], budget_mb: int | None, seed: int = 0) -> Any:
    """A 2D ``Predictor`` of the subject on RGB images at their own size."""
    from edue.engine.inference.predictor import Predictor

    extra = [] if budget_mb is None else [f"infer.max_memory_mb={int(budget_mb)}"]
    config = C.method_config(subject(), channels, extra)
    method = C.build(config, C.IMAGE_CHANNELS, len(STRUCTURES), 2, for_training=False, seed=seed)
    info = {
        "in_channels": C.IMAGE_CHANNELS,
        "structures": list(STRUCTURES),
        "spatial_dims": 2,
        "image_size": None,
    }
    return Predictor(method, config, info, torch.device("cpu"))


def image(size: int, seed: int = 0) -> np.ndarray:
    """A random RGB image ``[3, size, size]`` float32 in [0, 1)."""
    return np.random.default_rng(seed).random((C.IMAGE_CHANNELS, size, size), dtype=np.float32)


# --------------------------------------------------------------------------- child
def child_memory(
    size: int, budget_mb: int, channels: Sequence[int], threads: int
) -> dict[str, Any]:
    """Run in a fresh process: peak RSS and seconds of one prediction of a ``size``² image
    (``budget_mb`` 0: the default budget)."""
    from edue.errors import DataError

    C.setup_threads(threads)
    pred = predictor(channels, budget_mb or None)
    x = image(size)
    shape = (1, C.IMAGE_CHANNELS, size, size)
    out: dict[str, Any] = {"size": size, "budget_mb": pred.memory_budget_mb}
    try:
        plan = pred.memory_plan(shape)  # the probe passes happen here, before the watch
    except DataError as exc:
        return {**out, "error": exc.reason}
    profile = pred._profile
    from edue.engine.inference.tiling import MB, whole_pass_bytes

    if plan is None:
        estimate = (
            whole_pass_bytes((size, size), 1, C.IMAGE_CHANNELS, pred.size_divisor, profile)
            if profile is not None
            else float("nan")
        )
    else:
        estimate = plan.estimate_bytes
    with C.watch_rss() as rss:
        start = time.perf_counter()
        prediction = pred.predict(x)
        seconds = time.perf_counter() - start
    return {
        **out,
        "tiles": 1 if plan is None else len(plan),
        "tile": None if plan is None else list(plan.tile),
        "halo": None if profile is None else list(profile.halo),
        "bytes_per_pixel": None if profile is None else profile.bytes_per_pixel,
        "estimate_mb": estimate / MB,
        "peak_rss_mb": rss.peak / C.MB,
        "base_rss_mb": rss.base / C.MB,
        "peak_delta_mb": rss.growth_mb(),
        "stack_mb": C.tensor_mb(prediction.members),
        "image_mb": x.nbytes / C.MB,
        "seconds": seconds,
        "seconds_per_mpx": seconds / (size * size / 1e6),
        "peak_reset": rss.reset,
    }


def measure(
    sizes: Sequence[int], tight_mb: int, channels: Sequence[int], threads: int
) -> list[dict[str, Any]]:
    """One subprocess per (size, budget): the default budget, then the tight one."""
    out = []
    for size in sizes:
        for budget in (0, tight_mb) if tight_mb > 0 else (0,):
            options = {
                "child_memory": True,
                "size": size,
                "budget_mb": budget,
                "channels": list(channels),
                "threads": threads,
            }
            result = C.run_child(Path(__file__), options, timeout=3600)
            result["budget"] = "default" if budget == 0 else "tight"
            out.append(result)
            print(
                f"  memory {size}² ({result['budget']} budget): "
                f"{result.get('peak_rss_mb', float('nan')):.0f} MB peak",
                file=sys.stderr,
                flush=True,
            )
    return out


# --------------------------------------------------------------------------- report
HEADERS = [
    "image",
    "budget",
    "budget MB",
    "pass",
    "tile (+ halo)",
    "estimate MB",
    "peak RSS MB (whole process)",
    "peak growth MB",
    "member stack MB",
    "seconds",
    "s / megapixel",
]


def rows(results: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One row per measurement."""
    table = []
    for r in results:
        head = [f"{r['size']}²", r["budget"], r["budget_mb"]]
        if "error" in r:
            table.append([*head, "DataError (over budget)", "", "", "", "", "", "", ""])
            continue
        tiled = r["tiles"] > 1
        tile = f"{r['tile'][0]}² (+{r['halo'][0]})" if tiled else ""
        table.append(
            [
                *head,
                f"{r['tiles']} tiles" if tiled else "one pass",
                tile,
                r["estimate_mb"],
                r["peak_rss_mb"],
                r["peak_delta_mb"],
                r["stack_mb"],
                r["seconds"],
                r["seconds_per_mpx"],
            ]
        )
    return table


def targets(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Default budget: the whole process's peak RSS ≤ budget; tight budget: the
    prediction's peak growth ≤ budget."""
    out = []
    for r in results:
        if "error" in r:
            continue
        if r["budget"] == "default":
            out.append(
                C.target(
                    f"{r['size']}² peak RSS (whole process) ≤ default budget",
                    r["peak_rss_mb"],
                    "<=",
                    float(r["budget_mb"]),
                    unit="MB",
                )
            )
        else:
            out.append(
                C.target(
                    f"{r['size']}² peak RSS growth ≤ tight budget",
                    r["peak_delta_mb"],
                    "<=",
                    float(r["budget_mb"]),
                    unit="MB",
                )
            )
    return out


def notes(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the figures hold and the probe's findings."""
    found = [r for r in results if "error" not in r and r.get("halo")]
    out = [
        "Peak RSS is the process's high-water mark after a reset just before `predict`; "
        f"Python, torch, the model and the image already held "
        f"{min((r['base_rss_mb'] for r in results if 'base_rss_mb' in r), default=0):.0f} MB "
        "(the growth column is the prediction's own memory, what the budget covers).",
    ]
    if found:
        from edue.engine.inference.tiling import OVERHEAD_BYTES, SAFETY

        r = found[0]
        out.append(
            f"Probe: halo {r['halo'][0]} px (analytic receptive-field bound), "
            f"{r['bytes_per_pixel']:.0f} bytes of live tensors per pixel per pass "
            f"(estimates use {SAFETY:g}× that, plus the member stack, the image and "
            f"{OVERHEAD_BYTES / C.MB:.0f} MB)."
        )
    errors = [r for r in results if "error" in r]
    for r in errors:
        out.append(f"{r['size']}² at {r['budget_mb']} MB: `{r['error']}`")
    out.append("Timings come from one prediction each, on a machine that may be busy: indicative.")
    return out


def run(
    quick: bool = False,
    sizes: Sequence[int] | None = None,
    tight_mb: int | None = None,
    channels: Sequence[int] = DEFAULT_CHANNELS_2D,
    threads: int = C.DEFAULT_THREADS,
) -> dict[str, Any]:
    """Peak memory and seconds per megapixel of each size at both budgets."""
    sizes = list(sizes or (QUICK_SIZES if quick else SIZES))
    tight = int(tight_mb or (QUICK_TIGHT_MB if quick else TIGHT_MB))  # -1: default budget only
    bench = C.start(threads)
    results = measure(sizes, tight, channels, threads)
    threads_now = torch.get_num_threads()
    label = method_label(subject())
    settings = (
        f"{label}, 2D `model.channels=[{C.channels_text(channels)}]`, `model.norm=batch`, "
        f"{len(STRUCTURES)} structures, random weights; one random RGB image per size "
        "predicted by `Predictor.predict` at its own size (`data.size: null`); default "
        f"budget (`infer.max_memory_mb: null`)"
        + (f" and a tight one ({tight} MB)" if tight > 0 else "")
        + "; device cpu, "
        f"{threads_now} torch threads; each measurement in a fresh process."
    )
    return bench.result(
        "memory",
        f"Prediction memory ceiling ({', '.join(f'{s}²' for s in sizes)}; cpu)",
        settings,
        tables=[C.table(f"{label}: one RGB image per size and budget", HEADERS, rows(results))],
        targets=targets(results),
        notes=notes(results),
        sizes=sizes,
        tight_mb=tight,
        channels=list(channels),
        measurements=results,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", help="image sides (default 1024 4096 8192)")
    parser.add_argument(
        "--tight-mb", type=int, help="the tight budget (default 4096; quick 256; -1: none)"
    )
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=int, default=0, help=argparse.SUPPRESS)
    C.add_channels_argument(parser, DEFAULT_CHANNELS_2D)
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        return C.child_answer(child_memory(args.size, args.budget_mb, args.channels, args.threads))
    result = run(
        quick=args.quick,
        sizes=args.sizes,
        tight_mb=args.tight_mb,
        channels=args.channels,
        threads=args.threads,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
