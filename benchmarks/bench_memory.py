"""Prediction memory under the ceiling ``infer.max_memory_mb``, on large RGB images.

A 2D EDUE (random weights) predicts one random RGB image per size through
``Predictor.predict`` at the image's own size: in one pass when it fits the memory
budget, else tile by tile. Each size is predicted at the default budget and at a tight
one, each in a fresh process: the network's probe passes and the image come first, then
the RSS high-water mark is reset and one prediction timed. At the default budget the
whole process must stay within it, at the tight budget the prediction's growth.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--sizes 1024 4096 8192]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import _common as C
import numpy as np
import torch

DEFAULT_CHANNELS_2D = (16, 32, 64, 128)
SIZES, QUICK_SIZES = (1024, 4096, 8192), (256, 512, 1024)
TIGHT_MB, QUICK_TIGHT_MB = 4096, 256
STRUCTURES = ("disc", "cup")


def child_memory(size: int, budget_mb: int, channels: list[int], threads: int) -> dict:
    """In a fresh process: peak RSS and seconds of one prediction of a ``size``² image
    (``budget_mb`` 0: the default budget)."""
    from edue.engine.inference.tiling import whole_pass_bytes
    from edue.errors import DataError

    C.setup_threads(threads)
    extra = [f"infer.max_memory_mb={budget_mb}"] if budget_mb else []
    config = C.method_config(C.roles().subject.name, channels, extra)
    pred = C.predictor(config, C.IMAGE_CHANNELS, STRUCTURES, 2)
    x = np.random.default_rng(0).random((C.IMAGE_CHANNELS, size, size), dtype=np.float32)
    out: dict[str, Any] = {"size": size, "budget_mb": pred.memory_budget_mb}
    try:
        plan = pred.memory_plan((1, C.IMAGE_CHANNELS, size, size))
    except DataError as exc:
        return {**out, "error": exc.reason}
    profile = pred.network_profile  # the probe passes happen here, before the watch
    if plan is None:
        estimate = whole_pass_bytes((size, size), 1, C.IMAGE_CHANNELS, pred.size_divisor, profile)
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
        "halo": list(profile.halo),
        "bytes_per_pixel": profile.bytes_per_pixel,
        "estimate_mb": estimate / C.MB,
        "peak_rss_mb": rss.peak / C.MB,
        "base_rss_mb": rss.base / C.MB,
        "peak_delta_mb": rss.growth_mb(),
        "stack_mb": C.tensor_mb(prediction.members),
        "seconds": seconds,
        "seconds_per_mpx": seconds / (size * size / 1e6),
    }


def run(
    quick: bool = False,
    sizes: Sequence[int] | None = None,
    tight_mb: int | None = None,
    channels: Sequence[int] = DEFAULT_CHANNELS_2D,
    threads: int = C.DEFAULT_THREADS,
) -> dict[str, Any]:
    """Peak memory and seconds per megapixel of each size at both budgets."""
    from edue.engine.inference.tiling import OVERHEAD_BYTES, SAFETY

    bench = C.start(threads)
    sizes = list(sizes or (QUICK_SIZES if quick else SIZES))
    tight = int(tight_mb or (QUICK_TIGHT_MB if quick else TIGHT_MB))  # -1: default budget only
    results, rows, targets = [], [], []
    for size in sizes:
        for budget in (0, tight) if tight > 0 else (0,):
            r = C.in_child(
                child_memory, size=size, budget_mb=budget, channels=list(channels), threads=threads
            )
            r["budget"] = "tight" if budget else "default"
            results.append(r)
            print(
                f"  memory {size}² ({r['budget']}): {r.get('peak_rss_mb', float('nan')):.0f} MB",
                file=sys.stderr,
                flush=True,
            )
            head = [f"{size}²", r["budget"], r["budget_mb"]]
            if "error" in r:
                rows.append([*head, "DataError (over budget)", *[""] * 7])
                continue
            tiled = r["tiles"] > 1
            tile = f"{r['tile'][0]}² (+{r['halo'][0]})" if tiled else ""
            rows.append([*head, f"{r['tiles']} tiles" if tiled else "one pass", tile])
            rows[-1] += [r[k] for k in ("estimate_mb", "peak_rss_mb", "peak_delta_mb", "stack_mb")]
            rows[-1] += [r["seconds"], r["seconds_per_mpx"]]
            whole = r["budget"] == "default"
            what = "(whole process)" if whole else "growth"
            name = f"{size}² peak RSS {what} ≤ {r['budget']} budget"
            value = r["peak_rss_mb"] if whole else r["peak_delta_mb"]
            targets.append(C.target(name, value, "<=", float(r["budget_mb"]), unit="MB"))
    done = [r for r in results if "error" not in r]
    notes = [
        f"{r['size']}² at {r['budget_mb']} MB: `{r['error']}`" for r in results if "error" in r
    ]
    if done:
        notes.insert(
            0,
            f"Before `predict` the process held {min(r['base_rss_mb'] for r in done):.0f} MB; "
            f"the probe found a halo of {done[0]['halo'][0]} px and "
            f"{done[0]['bytes_per_pixel']:.0f} bytes of live tensors per pixel per pass "
            f"(estimates: {SAFETY:g}× that, the member stack, the image and "
            f"{OVERHEAD_BYTES / C.MB:.0f} MB).",
        )
    label = C.roles().subject.label
    headers = [
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
    return bench.result(
        "memory",
        f"Prediction memory ceiling ({', '.join(f'{s}²' for s in sizes)}; cpu)",
        f"{label}, 2D `model.channels=[{C.channels_text(channels)}]`, `model.norm=batch`, "
        f"{len(STRUCTURES)} structures, random weights; `Predictor.predict` at the image's size; "
        f"default budget{f' and {tight} MB' if tight > 0 else ''}; cpu, "
        f"{torch.get_num_threads()} torch threads; one prediction per fresh process.",
        [C.table(f"{label}: one RGB image per size and budget", headers, rows)],
        targets,
        notes,
        sizes=sizes,
        tight_mb=tight,
        measurements=results,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "channels")
    p.add_argument("--sizes", type=int, nargs="+", help="image sides (default 1024 4096 8192)")
    p.add_argument("--tight-mb", type=int, help="the tight budget (quick 256; -1: none)")
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
