"""Cost of evaluation: seconds and memory of ``EvaluationAccumulator`` over many images.

No network: each image is a new ``(Prediction, MultiRaterCase)`` pair (own case id)
drawn from a small pool of synthetic cases whose member probabilities are the raters'
probability plus smooth noise. Both settings (HD95 on, off) run in one fresh process
and take turns on every image; live memory (RSS after ``malloc_trim``) is read along
the way and the high-water mark at the end. The accumulator streams, so its memory must
grow by only a kept row per image.

    .venv/bin/python benchmarks/bench_evaluate.py [--quick] [--images 1000]
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C
import numpy as np
import torch

POOL, MEMBERS, RATERS = 8, 4, 6
SLOPE_LIMIT_KB = 64.0
SETTINGS = (True, False)  # HD95 on, off


def child(images: int, size: int, threads: int, members: int) -> dict[str, Any]:
    """In a fresh process: ``images`` pairs fed to two accumulators (HD95 on and off)."""
    from scipy.ndimage import gaussian_filter

    from edue.data.synthetic import FundusConfig, generate_case
    from edue.metrics import EvaluationAccumulator
    from edue.prediction import Prediction

    C.setup_threads(threads)
    rng, pool = np.random.default_rng(0), []
    for i in range(POOL):
        case = generate_case(i, 0, FundusConfig(size=size, n_raters=RATERS))
        prob = np.clip(case.rater_probability, 1e-4, 1 - 1e-4)
        noise = gaussian_filter(rng.normal(0, 0.6, (members, *prob.shape)), (0, 0, 3, 3))
        member = 1 / (1 + np.exp(-(np.log(prob / (1 - prob))[None] + 3 * noise)))
        pool.append((case, torch.from_numpy(member.astype(np.float32))))
    method = C.roles().subject.name

    def pair(i: int) -> tuple[Any, Any]:
        case, member = pool[i % POOL]
        case = dataclasses.replace(case, case_id=f"img-{i:05d}", patient_id=None)
        return Prediction(member, case_id=case.case_id, method=method), case

    warm = [EvaluationAccumulator(hausdorff=h) for h in SETTINGS for _ in range(2)]
    for i, acc in enumerate(warm):
        acc.update(*pair(i))
    del warm
    gc.collect()
    marks_at = sorted({max(1, images // 4), max(1, images // 2), images})
    times: dict[bool, list[float]] = {h: [] for h in SETTINGS}
    marks, finish = [], {}
    with C.watch_rss(trim=True) as rss:
        accs = {h: EvaluationAccumulator(hausdorff=h) for h in SETTINGS}
        for i in range(images):
            for h in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
                prediction, case = pair(i)
                start = time.perf_counter()
                accs[h].update(prediction, case)
                times[h].append(time.perf_counter() - start)
            if i + 1 in marks_at:
                marks.append({"images": i + 1, "rss_mb": (C.trimmed_rss_bytes() - rss.base) / C.MB})
        for h, acc in accs.items():
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                assert int(acc.aggregate()["n_cases"]) == images
                acc.curves()
                acc.write_csv(Path(tmp) / "per_case.csv")
                finish[h] = time.perf_counter() - start
    span = marks[-1]["images"] - marks[0]["images"]
    slope = (marks[-1]["rss_mb"] - marks[0]["rss_mb"]) * 1024 / span if span else float("nan")
    acc = accs[True]
    return {
        "settings": {
            f"hausdorff_{'on' if h else 'off'}": {
                "update_seconds": sum(times[h]),
                "median_ms_per_image": 1000 * C.median(times[h]),
                "finish_seconds": finish[h],
            }
            for h in SETTINGS
        },
        "hd95_ratio": C.paired_ratio(times[True], times[False]),
        "marks": marks,
        "peak_rss_mb": rss.growth_mb(),
        "slope_kb_per_image": slope,
        "row_values": len(acc.rows[0]),
        "defaults": {"n_bins": acc.n_bins, "n_boot": acc.n_boot},
    }


def run(
    quick: bool = False,
    images: int | None = None,
    size: int = 256,
    threads: int = C.DEFAULT_THREADS,
    members: int = MEMBERS,
) -> dict[str, Any]:
    """Evaluation seconds (HD95 on and off, side by side) and memory growth."""
    bench = C.start(threads)
    images = images or (40 if quick else 1000)
    print(f"  evaluate: {images} images, HD95 on and off", file=sys.stderr, flush=True)
    r = C.in_child(child, images=images, size=size, threads=threads, members=members)
    on, off = r["settings"]["hausdorff_on"], r["settings"]["hausdorff_off"]
    keys = ("update_seconds", "median_ms_per_image", "finish_seconds")
    time_rows = [[h, images, *[s[k] for k in keys]] for h, s in (("on", on), ("off", off))]
    marks = r["marks"]
    map_kb = C.STRUCTURES * size * size * 4 / 1024
    targets = [
        C.target(
            "RSS growth per image (both accumulators)",
            r["slope_kb_per_image"],
            "<=",
            SLOPE_LIMIT_KB,
            note=f"a kept {C.STRUCTURES}×{size}² float32 map per image would be {map_kb:.0f} kB",
            unit="kB/image",
        )
    ]
    headers = [*[f"RSS +MB @{m['images']}" for m in marks], "peak RSS +MB", "kB/image"]
    memory_row = [*[m["rss_mb"] for m in marks], r["peak_rss_mb"], r["slope_kb_per_image"]]
    d = r["defaults"]
    return bench.result(
        "evaluate",
        f"Evaluation cost ({images} images, {size}²)",
        f"{size}×{size}, {members} members, {C.STRUCTURES} structures, {RATERS} raters, "
        f"{images} images, pool of {POOL} cases, `EvaluationAccumulator` defaults "
        f"({d['n_bins']} calibration bins, {d['n_boot']} bootstrap resamples), "
        f"{torch.get_num_threads()} torch threads.",
        [
            C.table(
                "EvaluationAccumulator.update over synthetic pairs",
                ["HD95", "images", "update s", "ms/image", "aggregate+curves+CSV s"],
                time_rows,
            ),
            C.table("Memory while accumulating (both accumulators)", headers, [memory_row]),
        ],
        targets,
        [
            f"An update with HD95 takes {C.ratio(r['hd95_ratio'])} one without (median "
            "per-image ratio).",
            f"Each kept row holds {r['row_values']} values.",
        ],
        result=r,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__)
    p.add_argument("--images", type=int, help="images per setting (default 1000)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--members", type=int, default=MEMBERS)
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
