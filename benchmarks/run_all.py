"""Run every benchmark and write ``BENCHMARKS.md`` (``make bench``).

The file keeps two runs: the new one under "Latest run" and the one it replaces under
"Previous run" (older ones are dropped), so a regression shows side by side. Each
benchmark also runs on its own: ``.venv/bin/python benchmarks/bench_NAME.py [--quick]``.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only inference training ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_backbones  # noqa: E402
import bench_evaluate  # noqa: E402
import bench_heads  # noqa: E402
import bench_inference  # noqa: E402
import bench_loader  # noqa: E402
import bench_memory  # noqa: E402
import bench_predict  # noqa: E402
import bench_readers  # noqa: E402
import bench_referral  # noqa: E402
import bench_training  # noqa: E402
import bench_volume  # noqa: E402

LATEST_BEGIN, LATEST_END = "<!-- LATEST-RUN:BEGIN -->", "<!-- LATEST-RUN:END -->"
PREVIOUS_BEGIN, PREVIOUS_END = "<!-- PREVIOUS-RUN:BEGIN -->", "<!-- PREVIOUS-RUN:END -->"
NO_GPU = (
    "No GPU was available in this environment; the GPU path is covered by CPU tests "
    "(the benchmarks take `--device cuda` where a CUDA device is present)."
)

INTRO = """# Benchmarks

Written by `make bench` (`benchmarks/run_all.py`); each script also runs on its own
(`.venv/bin/python benchmarks/bench_NAME.py [--quick]`). Benchmarks are not part of the
test suite. Everything compared is measured side by side in one run, on the same inputs,
with the methods interleaved round by round; a ratio is the median over rounds of the
per-round ratio, so it holds up on a shared, noisy machine far better than the absolute
figures, which are medians and depend on the machine and its load. The previous run is
kept below the latest one so that a regression shows.
"""


def plan(quick: bool, threads: int) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """(key, group, thunk) of every benchmark of a run, in order.

    The shorter runs measure only the plain U-Net and EDUE: the registry's one-pass
    reference and subject.
    """
    inference = partial(bench_inference.run, quick=quick, threads=threads)
    training = partial(bench_training.run, quick=quick, threads=threads)
    pair = C.reference_pair()
    pair_128 = partial(inference, size=128, methods=pair, batches=(1,), rounds=4 if quick else 15)
    pair_rounds = 2 if quick else 3
    steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("inference", "inference", partial(inference, size=256)),
        ("inference_128", "inference", pair_128),
        ("inference_128_1thread", "inference", partial(pair_128, threads=1, memory=False)),
        ("heads", "inference", partial(bench_heads.run, quick=quick, threads=threads)),
        ("training", "training", partial(training, size=128)),
        ("training_256", "training", partial(training, size=256, methods=pair, rounds=pair_rounds)),
        (
            "training_1thread",
            "training",
            partial(training, size=128, methods=pair, rounds=pair_rounds, threads=1),
        ),
        ("loader", "loader", partial(bench_loader.run, quick=quick, threads=threads)),
        ("readers", "readers", partial(bench_readers.run, quick=quick, threads=threads)),
        ("evaluate", "evaluate", partial(bench_evaluate.run, quick=quick, threads=threads)),
        ("volume", "volume", partial(bench_volume.run, quick=quick, threads=threads)),
        ("predict", "predict", partial(bench_predict.run, quick=quick, threads=threads)),
        ("memory", "predict", partial(bench_memory.run, quick=quick, threads=threads)),
        ("referral", "referral", partial(bench_referral.run, quick=quick, threads=threads)),
        # the smp half needs segmentation-models-pytorch (`.venv-backbones`); without it
        # that half is reported as skipped and the DynUNet half still runs
        ("backbones", "backbones", partial(bench_backbones.run, quick=quick, threads=threads)),
    ]
    if C.cuda_name():
        steps += [
            ("gpu_inference", "gpu", partial(inference, device="cuda")),
            ("gpu_training", "gpu", partial(training, size=256, device="cuda")),
        ]
    return steps


def run_all(
    quick: bool,
    only: Sequence[str] | None,
    threads: int,
    state: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the selected benchmarks; a failure is recorded, the others still run.

    After each benchmark the results so far are saved to ``state``; with ``resume`` the
    benchmarks already saved there (same ``quick`` and ``threads``) are not run again.
    """
    results: dict[str, Any] = {}
    started = time.perf_counter()
    C.setup_threads(threads)
    info = C.machine()
    if resume and state is not None and state.is_file():
        saved = json.loads(state.read_text(encoding="utf-8"))
        if saved.get("quick") == quick and saved.get("threads") == threads:
            results = {k: v for k, v in saved["results"].items() if "error" not in v}
            print(f"resuming: {', '.join(results) or 'nothing'} done", file=sys.stderr)
    C.setup_threads(threads)
    for key, group, thunk in plan(quick, threads):
        if only and group not in only and key not in only:
            continue
        if key in results:
            continue
        print(f"== {key}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            results[key] = thunk()
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            traceback.print_exc()
            results[key] = {
                "name": key,
                "title": key,
                "error": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - t,
            }
        print(f"== {key}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        if state is not None:
            state.write_text(
                json.dumps({"quick": quick, "threads": threads, "results": results}, default=str),
                encoding="utf-8",
            )
    C.setup_threads(threads)
    return {
        "machine": info,
        "quick": quick,
        "threads": threads,
        "results": results,
        "seconds": sum(float(r.get("seconds", 0.0)) for r in results.values()),
        "wall_seconds": time.perf_counter() - started,
    }


def render_run(run: dict[str, Any], heading: str = "Latest run") -> str:
    """The Markdown of one run (a ``## heading`` section)."""
    m = run["machine"]
    results = run["results"]
    lines = [
        f"## {heading} — {m['date']}",
        "",
        f"**Machine:** {C.machine_line(m)}.",
        "",
        f"Command: `benchmarks/run_all.py{' --quick' if run['quick'] else ''}` "
        f"({'quick smoke run: too few repeats to compare, ' if run['quick'] else ''}"
        f"{run['threads']} torch threads set explicitly; total {run['seconds']:.0f} s).",
        "",
    ]
    summary = []
    for res in results.values():
        for t in res.get("targets", []):
            summary.append([res["title"], t])
        if "error" in res:
            summary.append([res["title"], None])
    if summary:
        lines += [
            "### Targets",
            "",
            "| benchmark | target | measured | wanted | met |",
            "|---|---|---|---|---|",
        ]
        for title, t in summary:
            if t is None:
                lines.append(f"| {title} | (benchmark failed) | | | ✗ |")
                continue
            unit = t.get("unit", "×")
            value = f"{t['value']:.2f}×" if unit == "×" else f"{C.fmt(t['value'])} {unit}"
            wanted = f"{t['threshold']:g}×" if unit == "×" else f"{t['threshold']:g} {unit}"
            lines.append(
                f"| {title} | {t['name']} | {value} | {t['op']} {wanted} | "
                f"{'✓' if t['met'] else '✗'} |"
            )
        lines.append("")
    for key, res in results.items():
        if key.startswith("gpu_"):
            continue
        lines += _render_one(res)
    lines += ["### GPU", ""]
    gpu = [res for key, res in results.items() if key.startswith("gpu_")]
    if gpu:
        lines += [f"CUDA device: {m.get('cuda')}.", ""]
        for res in gpu:
            lines += _render_one(res, "####")
    else:
        lines += [NO_GPU if not m.get("cuda") else "GPU benchmarks not selected in this run.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _render_one(res: dict[str, Any], heading: str = "###") -> list[str]:
    if "error" in res:
        return [f"{heading} {res['title']}", "", f"**Failed:** `{res['error']}`", ""]
    text = C.render_result(res, heading)
    load = res.get("machine", {}).get("load_average_1min")
    if load is not None:
        text = text.rstrip() + f" _Load average when it started: {load}._\n"
    return [text]


def _between(text: str, begin: str, end: str) -> str | None:
    if begin in text and end in text.split(begin, 1)[1]:
        return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    return None


def compose(new_section: str, old_text: str | None) -> str:
    """The whole file: intro, the new run, and the run it replaces as the previous one."""
    previous = None
    if old_text:
        latest = _between(old_text, LATEST_BEGIN, LATEST_END)
        if latest is not None:
            previous = latest.replace("## Latest run", "## Previous run", 1)
        elif old_text.strip():  # a file without markers: keep it whole as the previous run
            previous = "## Previous run (file without run markers)\n\n" + old_text.strip()
    parts = [INTRO, LATEST_BEGIN, new_section.rstrip(), LATEST_END, ""]
    if previous:
        parts += [PREVIOUS_BEGIN, previous.rstrip(), PREVIOUS_END, ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_arguments(parser)
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="benchmarks to run: inference, training, loader, readers, evaluate, volume, gpu "
        "(or a key such as inference_128)",
    )
    parser.add_argument("--out", default=str(C.REPO / "BENCHMARKS.md"), help="Markdown file")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--state",
        default=str(Path(tempfile.gettempdir()) / "edue-bench-state.json"),
        help="results saved after each benchmark (for --resume)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="reuse the benchmarks already saved in --state"
    )
    args = parser.parse_args(argv)
    run = run_all(args.quick, args.only, args.threads, Path(args.state), args.resume)
    section = render_run(run)
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=2, default=str), encoding="utf-8")
    if not args.no_write:
        out = Path(args.out)
        old = out.read_text(encoding="utf-8") if out.is_file() else None
        out.write_text(compose(section, old), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    failed = [k for k, r in run["results"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
