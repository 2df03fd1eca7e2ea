"""Run the benchmarks and record them in ``BENCHMARKS.md`` (``make bench``).

The file holds one block per benchmark, each written from a run's result: the latest
result of every benchmark, and under "Previous results" the one it replaced, so that a
regression shows. A run of some benchmarks (``--only``) replaces their blocks alone.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only inference training ...]
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import _common as C
import bench_backbones
import bench_evaluate
import bench_export
import bench_heads
import bench_inference
import bench_loader
import bench_memory
import bench_predict
import bench_readers
import bench_referral
import bench_training
import bench_volume

LATEST_BEGIN, LATEST_END = "<!-- LATEST-RUN:BEGIN -->", "<!-- LATEST-RUN:END -->"
PREVIOUS_BEGIN, PREVIOUS_END = "<!-- PREVIOUS-RUN:BEGIN -->", "<!-- PREVIOUS-RUN:END -->"
BLOCK = re.compile(r"<!-- BENCH (\{.*?\}) -->\n(.*?)<!-- /BENCH -->\n", re.S)
INTRO = """# Benchmarks

Written by `make bench` (`benchmarks/run_all.py`); each script also runs on its own
(`.venv/bin/python benchmarks/bench_NAME.py [--quick]`). Everything compared is measured
side by side in one run, interleaved round by round; a ratio is the median over rounds of
the per-round ratio, an absolute figure the median over rounds.
"""


def plan(quick: bool, threads: int) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """(key, group, thunk) of every benchmark, in order; the shorter inference and
    training runs measure the one-pass reference and the subject alone."""
    inference = partial(bench_inference.run, quick=quick, threads=threads)
    training = partial(bench_training.run, quick=quick, threads=threads)
    pair, rounds = C.reference_pair(), 2 if quick else 3
    pair_128 = partial(inference, size=128, methods=pair, batches=(1,), rounds=4 if quick else 15)
    others = {
        "loader": bench_loader,
        "readers": bench_readers,
        "evaluate": bench_evaluate,
        "volume": bench_volume,
        "predict": bench_predict,
        "memory": bench_memory,
        "referral": bench_referral,
        "backbones": bench_backbones,
        "export": bench_export,
    }
    groups = {"heads": "inference", "memory": "predict", "export": "predict"}
    steps = [
        ("inference", "inference", partial(inference, size=256)),
        ("inference_128", "inference", pair_128),
        ("inference_128_1thread", "inference", partial(pair_128, threads=1, memory=False)),
        ("heads", "inference", partial(bench_heads.run, quick=quick, threads=threads)),
        ("training", "training", partial(training, size=128)),
        ("training_256", "training", partial(training, size=256, methods=pair, rounds=rounds)),
        ("training_1thread", "training", partial(training, methods=pair, rounds=rounds, threads=1)),
    ]
    steps += [
        (k, groups.get(k, k), partial(m.run, quick=quick, threads=threads))
        for k, m in others.items()
    ]
    if C.cuda_name():
        steps += [
            ("gpu_inference", "gpu", partial(inference, device="cuda")),
            ("gpu_training", "gpu", partial(training, size=256, device="cuda")),
        ]
    return steps


def run_all(
    quick: bool, only: Sequence[str] | None, threads: int, state: Path, resume: bool = False
) -> dict[str, Any]:
    """Run the selected benchmarks; a failure is recorded and the others still run. The
    results so far are saved to ``state`` after each; ``resume`` skips those saved there
    (same ``quick`` and ``threads``)."""
    results: dict[str, Any] = {}
    info = C.machine()
    if resume and state.is_file():
        saved = json.loads(state.read_text(encoding="utf-8"))
        if (saved.get("quick"), saved.get("threads")) == (quick, threads):
            results = {k: v for k, v in saved["results"].items() if "error" not in v}
    for key, group, thunk in plan(quick, threads):
        if (only and group not in only and key not in only) or key in results:
            continue
        print(f"== {key}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            results[key] = thunk()
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"
            results[key] = {"title": key, "error": error, "seconds": time.perf_counter() - started}
        print(f"== {key}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        snapshot = {"quick": quick, "threads": threads, "results": results}
        state.write_text(json.dumps(snapshot, default=str), encoding="utf-8")
    C.setup_threads(threads)
    return {
        "machine": info,
        "quick": quick,
        "threads": threads,
        "only": list(only or []),
        "results": results,
    }


def block(key: str, result: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """A benchmark's block: its key, title and targets (for the summary), the run's
    command and machine, and the result's Markdown."""
    meta = {"key": key, "title": result["title"], "targets": result.get("targets", [])}
    machine = result.get("machine") or run["machine"]
    command = "benchmarks/run_all.py" + " --quick" * run["quick"]
    command += f" --only {' '.join(run['only'])}" if run["only"] else ""
    lines = [f"<!-- BENCH {json.dumps(meta, ensure_ascii=True, default=str)} -->"]
    if "error" in result:
        lines += [f"### {result['title']}", "", f"**Failed:** `{result['error']}`", ""]
    else:
        lines.append(C.render_result(result).rstrip())
    lines += [
        "",
        f"_{machine['date']}, `{command}`, {run['threads']} torch threads: "
        f"{C.machine_line(machine)}._",
        "<!-- /BENCH -->",
        "",
    ]
    return "\n".join(lines)


def blocks_of(text: str, begin: str, end: str) -> dict[str, str]:
    """The blocks between two markers of a file, by key."""
    if begin not in text or end not in text:
        return {}
    inside = text.split(begin, 1)[1].split(end, 1)[0]
    return {json.loads(m.group(1))["key"]: m.group(0) for m in BLOCK.finditer(inside)}


def section(heading: str, blocks: Mapping[str, str], summary: bool) -> str:
    """A section of blocks, with the summary of their targets first."""
    lines = [heading, ""]
    metas = [json.loads(m.group(1)) for b in blocks.values() for m in BLOCK.finditer(b)]
    targets = [(meta["title"], t) for meta in metas for t in meta["targets"]]
    if summary and targets:
        table = C.render_targets([t for _, t in targets], [title for title, _ in targets])
        lines += ["### Targets", "", table, ""]
    lines += [b for b in blocks.values()]
    if summary and not any(k.startswith("gpu_") for k in blocks):
        lines += [
            "### GPU",
            "",
            "No GPU benchmark recorded (they run where a CUDA device is present).",
            "",
        ]
    return "\n".join(lines)


def compose(run: Mapping[str, Any], old: str | None) -> str:
    """The whole file: the run's blocks replace their keys' latest ones, which become
    the previous ones."""
    latest = blocks_of(old or "", LATEST_BEGIN, LATEST_END)
    previous = blocks_of(old or "", PREVIOUS_BEGIN, PREVIOUS_END)
    new = {key: block(key, r, run) for key, r in run["results"].items()}
    previous.update({k: v for k, v in latest.items() if k in new})
    order = [key for key, _, _ in plan(True, 1)]

    def by_plan(blocks: Mapping[str, str]) -> dict[str, str]:
        rank = {k: order.index(k) if k in order else len(order) for k in blocks}
        return {k: blocks[k] for k in sorted(blocks, key=rank.__getitem__)}

    latest, prev = by_plan({**latest, **new}), by_plan(previous)
    parts = [INTRO, LATEST_BEGIN, section("## Latest results", latest, True), LATEST_END, ""]
    if prev:
        heading = "## Previous results\n\nEach benchmark's result before its latest one."
        parts += [PREVIOUS_BEGIN, section(heading, prev, False), PREVIOUS_END, ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__)
    p.add_argument("--only", nargs="+", metavar="NAME", help="groups or keys to run")
    p.add_argument("--out", default=str(C.REPO / "BENCHMARKS.md"), help="Markdown file")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--state", default=str(Path(tempfile.gettempdir()) / "edue-bench-state.json"))
    p.add_argument("--resume", action="store_true", help="reuse the results saved in --state")
    args = p.parse_args(argv)
    run = run_all(args.quick, args.only, args.threads, Path(args.state), args.resume)
    new = {key: block(key, r, run) for key, r in run["results"].items()}
    text = section(f"## Run of {run['machine']['date']}", new, True)
    print(re.sub(r"<!-- /?BENCH.*?-->\n", "", text))
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=2, default=str), encoding="utf-8")
    if not args.no_write:
        out = Path(args.out)
        old = out.read_text(encoding="utf-8") if out.is_file() else None
        out.write_text(compose(run, old), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 1 if any("error" in r for r in run["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
