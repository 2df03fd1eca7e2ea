"""Helpers shared by the benchmark scripts (not part of the package or the test suite).

Every benchmark measures the things it compares side by side in one run, on the same
inputs, interleaving them round by round (round ``r`` starts with a different method)
so that a slow patch of a shared machine hits every method alike. Ratios are the
median over rounds of the per-round ratio (paired), absolute figures the median over
rounds.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_THREADS = 2
DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
METHOD_LABELS = {
    "plain": "plain U-Net",
    "edue": "EDUE",
    "layer_ensembles": "Layer Ensembles",
    "mc_dropout": "MC dropout",
    "deep_ensemble": "Deep Ensemble",
}


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to :mod:`platform`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def setup_threads(threads: int) -> int:
    """Set torch's intra-op threads explicitly (the benchmarks never rely on the default)."""
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def cuda_name() -> str | None:
    """Name of the first CUDA device, or ``None`` when there is none."""
    if torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return None


def machine() -> dict[str, Any]:
    """Facts about the machine and the torch build a run used."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1min": round(load[0], 2),
        "cuda": cuda_name(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def machine_line(info: Mapping[str, Any] | None = None) -> str:
    """One line describing the machine, e.g. for the top of a benchmark's output."""
    m = dict(info or machine())
    gpu = f"GPU {m['cuda']}" if m.get("cuda") else "no CUDA device"
    return (
        f"{m['cpu']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), "
        f"torch {m['torch']}, {m['threads']} torch threads, Python {m['python']}, "
        f"load average {m['load_average_1min']} at start, {gpu}"
    )


# --------------------------------------------------------------------------- timing
def synchronize(device: torch.device | str = "cpu") -> None:
    """Wait for queued CUDA work (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: Mapping[str, Callable[[], object]] | None = None,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> dict[str, list[float]]:
    """Seconds of each callable per round, methods interleaved within every round.

    Args:
        fns: name -> zero-argument callable to time.
        rounds: timed rounds; in round ``r`` the order is rotated by ``r`` so that no
            method always runs first (or right after the same neighbour).
        warmup: untimed calls made once before the first round (default: ``fns``).
        device: CUDA work is synchronised before each clock reading.
        progress: label printed (to stderr) after each round, when given.

    Returns:
        name -> list of ``rounds`` durations in seconds.
    """
    names = list(fns)
    for name in names:
        (warmup or fns).get(name, fns[name])()
    synchronize(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        if progress:
            print(f"  {progress}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (``nan`` when empty)."""
    return float(statistics.median(values)) if values else float("nan")


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]``."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True) if b > 0])


def spread(values: Sequence[float]) -> float:
    """Relative spread of repeated timings: (max − min) / median."""
    if len(values) < 2:
        return 0.0
    m = median(values)
    return (max(values) - min(values)) / m if m else float("nan")


# --------------------------------------------------------------------------- memory
def current_rss_bytes() -> int:
    """Resident set size of this process now (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def trimmed_rss_bytes() -> int:
    """RSS after a garbage collection and ``malloc_trim(0)`` (glibc), i.e. live memory.

    Freed blocks that the allocator still holds would otherwise make RSS wander by a few
    MB from one reading to the next.
    """
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return current_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``/proc/self/clear_refs``).

    Returns whether it worked. ``getrusage``'s ``ru_maxrss`` cannot be used in a
    subprocess: Linux carries the parent's high-water mark across ``fork``/``exec``.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS since start or :func:`reset_peak_rss`.

    ``VmHWM`` of ``/proc/self/status`` on Linux; ``getrusage`` elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


MB = 1024.0**2


def run_child(script: Path, args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process; parse the JSON on its last line."""
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{script.name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- results
def target(
    name: str, value: float, op: str, threshold: float, note: str = "", unit: str = "×"
) -> dict[str, Any]:
    """A target and whether it is met (``op`` is ``<=`` or ``>=``; ``unit`` for display)."""
    if op not in ("<=", ">="):
        raise ValueError(op)
    met = bool(value <= threshold) if op == "<=" else bool(value >= threshold)
    if value != value:  # nan
        met = False
    return {
        "name": name,
        "value": value,
        "op": op,
        "threshold": threshold,
        "met": met,
        "note": note,
        "unit": unit,
    }


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """A table of a benchmark's result (rendered to Markdown by :func:`render_table`)."""
    return {"title": title, "headers": list(headers), "rows": [list(r) for r in rows]}


def fmt(value: Any, digits: int = 3) -> str:
    """Compact number formatting for tables."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def render_table(tab: Mapping[str, Any]) -> str:
    """Markdown for one :func:`table`."""
    headers = tab["headers"]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in tab["rows"]:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def render_targets(targets: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of targets with ✓ / ✗."""
    if not targets:
        return ""

    def with_unit(value: float, unit: str) -> str:
        return f"{value:.2f}×" if unit == "×" else f"{fmt(value)} {unit}"

    rows = [
        [
            t["name"],
            with_unit(t["value"], t.get("unit", "×")),
            f"{t['op']} {with_unit(t['threshold'], t.get('unit', '×'))}",
            "✓" if t["met"] else "✗",
            t.get("note", ""),
        ]
        for t in targets
    ]
    return render_table(table("", ["target", "measured", "wanted", "met", "note"], rows))


def render_result(result: Mapping[str, Any], heading: str = "###") -> str:
    """Markdown of a benchmark's ``run()`` result: settings, tables, targets, notes."""
    parts = [f"{heading} {result['title']}", ""]
    if result.get("settings"):
        parts += [result["settings"], ""]
    for tab in result.get("tables", []):
        if tab.get("title"):
            parts += [f"**{tab['title']}**", ""]
        parts += [render_table(tab), ""]
    if result.get("targets"):
        parts += ["**Targets**", "", render_targets(result["targets"]), ""]
    for note in result.get("notes", []):
        parts.append(f"- {note}")
    if result.get("notes"):
        parts.append("")
    parts.append(f"_Run time of this benchmark: {result.get('seconds', float('nan')):.0f} s._")
    return "\n".join(parts).rstrip() + "\n"


def print_result(result: Mapping[str, Any]) -> None:
    """Print a result to stdout as Markdown, with the machine line first."""
    print(f"Machine: {machine_line(result.get('machine'))}")
    print()
    print(render_result(result))


def add_common_arguments(parser: Any) -> None:
    """``--quick`` and ``--threads`` (every script)."""
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"torch intra-op threads (default {DEFAULT_THREADS})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")


def finish(result: Mapping[str, Any], json_path: str | None) -> int:
    """End of a script's ``main``: print the result, write its JSON when asked; exit 0.

    Targets are reported, not enforced: a missed target is a finding, not a crash.
    """
    print_result(result)
    write_json(json_path, result)
    return 0


def write_json(path: str | None, result: Mapping[str, Any]) -> None:
    """Write a result as JSON when a path is given."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
