"""Cost of evaluation: seconds and memory of ``EvaluationAccumulator`` over many images.

No network is involved: each image is a ``(Prediction, MultiRaterCase)`` pair at 256²
(4 members — EDUE's decoder heads —, 2 structures, 6 raters), built from a small pool
of synthetic cases whose predictions are the analytic rater probability plus noise; a
new ``Prediction`` and a new case object (own ``case_id``) are made for every image,
so nothing is cached between images and nothing but the accumulator keeps them.

Both settings (HD95 on / off) run in one fresh subprocess and take turns on every image,
so their times are side by side; its live resident memory (RSS after ``malloc_trim``)
is read after 1/4, 1/2 and all of the images, and its high-water mark (``VmHWM``, reset
after the warm-up) at the end. The accumulator is meant to stream: calibration is
binned sums, only one small row of floats per case is kept — so RSS must not grow by
more than a few kB per image. ``aggregate()``, ``curves()`` and ``write_csv()`` are
timed at the end.

    .venv/bin/python benchmarks/bench_evaluate.py [--quick] [--images 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

POOL = 8
MEMBERS = 4
#: A kept float32 [2, 256, 256] map per image would add 512 kB; rows are ~ 2 kB.
SLOPE_LIMIT_KB = 64.0


def make_pool(size: int, members: int, seed: int = 0) -> list[tuple[Any, torch.Tensor]]:
    """``POOL`` synthetic cases at ``size``² with member probabilities ``[S, K, H, W]``."""
    from scipy.ndimage import gaussian_filter

    from edue.data.synthetic import FundusConfig, generate_case

    rng = np.random.default_rng(seed)
    pool = []
    for i in range(POOL):
        case = generate_case(i, seed, FundusConfig(size=size, n_raters=6))
        prob = case.rater_probability
        noise = gaussian_filter(rng.normal(0, 0.6, (members, *prob.shape)), (0, 0, 3, 3))
        logit = np.log(np.clip(prob, 1e-4, 1 - 1e-4) / np.clip(1 - prob, 1e-4, 1))
        member = 1 / (1 + np.exp(-(logit[None] + 3 * noise)))
        pool.append((case, torch.from_numpy(member.astype(np.float32))))
    return pool


SETTINGS = (True, False)  # HD95 on, off


def warm_up(pair: Callable[[int], tuple[Any, Any]]) -> None:
    """Two images through throw-away accumulators of both settings (imports, caches)."""
    from edue.metrics import EvaluationAccumulator

    warm = {h: EvaluationAccumulator(hausdorff=h) for h in SETTINGS}
    for i in range(2):
        for h in SETTINGS:
            warm[h].update(*pair(i))
    del warm
    gc.collect()


def feed(
    accs: Mapping[bool, Any], pair: Callable[[int], tuple[Any, Any]], n_images: int, base: int
) -> tuple[dict[bool, list[float]], list[dict[str, float]]]:
    """Seconds of every update per setting (taking turns, order alternating) and live RSS
    above ``base`` after 1/4, 1/2 and all of the images."""
    checkpoints = sorted({max(1, n_images // 4), max(1, n_images // 2), n_images})
    times: dict[bool, list[float]] = {h: [] for h in SETTINGS}
    marks = []
    for i in range(n_images):
        for h in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
            prediction, case = pair(i)
            t = time.perf_counter()
            accs[h].update(prediction, case)
            times[h].append(time.perf_counter() - t)
        if i + 1 in checkpoints:
            marks.append({"images": i + 1, "rss_mb": (C.trimmed_rss_bytes() - base) / C.MB})
    return times, marks


def finish_accumulator(acc: Any, n_images: int) -> float:
    """Seconds of ``aggregate()``, ``curves()`` and ``write_csv()`` of one accumulator."""

    def finish() -> Any:
        summary = acc.aggregate()
        acc.curves()
        with tempfile.TemporaryDirectory() as tmp:
            acc.write_csv(Path(tmp) / "per_case.csv")
        return summary

    summary, seconds = C.timed_once(finish)
    assert int(summary["n_cases"]) == n_images
    return seconds


def child(n_images: int, size: int, threads: int, members: int) -> dict[str, Any]:
    """Run in a fresh process: feed ``n_images`` pairs to two accumulators (HD95 on, off).

    The two settings take turns on every image (the order alternates), so their times
    are side by side; each gets its own fresh ``Prediction`` (no shared cache).
    """
    from edue.metrics import EvaluationAccumulator
    from edue.prediction import Prediction

    C.setup_threads(threads)
    pool = make_pool(size, members)
    method = C.roles().subject.name

    def pair(i: int) -> tuple[Any, Any]:
        case, member = pool[i % POOL]
        case = dataclasses.replace(case, case_id=f"img-{i:05d}", patient_id=None)
        return Prediction(member, case_id=case.case_id, method=method), case

    warm_up(pair)
    with C.watch_rss(trim=True) as rss:
        accs = {h: EvaluationAccumulator(hausdorff=h) for h in SETTINGS}
        times, marks = feed(accs, pair, n_images, rss.base)
        finish = {h: finish_accumulator(acc, n_images) for h, acc in accs.items()}
    first, last = marks[0], marks[-1]
    span = last["images"] - first["images"]
    slope_kb = (last["rss_mb"] - first["rss_mb"]) * 1024 / span if span else float("nan")
    return {
        "images": n_images,
        "settings": {
            ("hausdorff_on" if h else "hausdorff_off"): {
                "update_seconds": sum(times[h]),
                "median_ms_per_image": 1000 * C.median(times[h]),
                "finish_seconds": finish[h],
            }
            for h in SETTINGS
        },
        "hd95_ratio": C.paired_ratio(times[True], times[False]),
        "marks": marks,
        "peak_rss_mb": rss.growth_mb(),
        "slope_kb_per_image": slope_kb,
        "row_values": len(accs[True].rows[0]),
    }


def evaluation_tables(r: Mapping[str, Any], n_images: int) -> list[dict[str, Any]]:
    """Seconds per setting; memory while accumulating."""
    on, off = r["settings"]["hausdorff_on"], r["settings"]["hausdorff_off"]
    time_rows = [
        [label, n_images, s["update_seconds"], s["median_ms_per_image"], s["finish_seconds"]]
        for label, s in (("on", on), ("off", off))
    ]
    marks = r["marks"]
    memory_rows = [[*[m["rss_mb"] for m in marks], r["peak_rss_mb"], r["slope_kb_per_image"]]]
    return [
        C.table(
            "EvaluationAccumulator.update over synthetic pairs",
            ["HD95", "images", "update s", "ms/image", "aggregate+curves+CSV s"],
            time_rows,
        ),
        C.table(
            "Memory while accumulating (both accumulators)",
            [*[f"RSS +MB @{m['images']}" for m in marks], "peak RSS +MB", "kB/image"],
            memory_rows,
        ),
    ]


def evaluation_notes(r: Mapping[str, Any]) -> list[str]:
    """How the settings are timed side by side; what the RSS figures cover."""
    marks = r["marks"]
    return [
        "Both settings run in one fresh subprocess and take turns on every image (order "
        "alternating), each on its own new Prediction, so their times are side by side; "
        f"with HD95 an update takes {r['hd95_ratio']:.2f}× as long (median per-image ratio).",
        "RSS is live memory (after gc and malloc_trim) relative to the RSS after a 2-image "
        f"warm-up (pool of {POOL} cases and predictions already in memory); it covers both "
        f"accumulators; kB/image is the slope between {marks[0]['images']} and "
        f"{marks[-1]['images']} images; each kept row has {r['row_values']} values; the "
        "peak is the high-water mark (VmHWM) over the whole loop, transient per-image "
        "tensors included.",
    ]


def run(
    quick: bool = False,
    n_images: int | None = None,
    size: int = 256,
    threads: int = C.DEFAULT_THREADS,
    members: int = MEMBERS,
) -> dict[str, Any]:
    """Evaluation seconds (HD95 on and off, side by side) and memory growth."""
    bench = C.start(threads)
    n_images = n_images or (40 if quick else 1000)
    print(f"  evaluate: {n_images} images, HD95 on and off", file=sys.stderr, flush=True)
    options = {"child": True, "images": n_images, "size": size, "threads": threads}
    r = C.run_child(Path(__file__), {**options, "members": members}, timeout=3600)
    targets = [
        C.target(
            "RSS growth per image (both accumulators)",
            r["slope_kb_per_image"],
            "<=",
            SLOPE_LIMIT_KB,
            note="one kept 2×256² float32 map per image would be 512 kB",
            unit="kB/image",
        )
    ]
    settings = (
        f"{size}×{size}, {members} members, 2 structures, 6 raters, {n_images} images, "
        "EvaluationAccumulator defaults (15 calibration bins, 1000 bootstrap resamples), "
        f"{torch.get_num_threads()} torch threads."
    )
    return bench.result(
        "evaluate",
        f"Evaluation cost ({n_images} images, {size}²)",
        settings,
        tables=evaluation_tables(r, n_images),
        targets=targets,
        notes=evaluation_notes(r),
        result=r,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--images", type=int, help="images per setting (default 1000)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--members", type=int, default=MEMBERS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return C.child_answer(child(args.images, args.size, args.threads, args.members))
    result = run(
        quick=args.quick,
        n_images=args.images,
        size=args.size,
        threads=args.threads,
        members=args.members,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
