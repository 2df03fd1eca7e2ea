"""Helpers shared by the benchmark scripts (not part of the package or the test suite).

Every benchmark measures the things it compares side by side in one run, on the same
inputs, interleaving them round by round (round ``r`` starts with a different method)
so that a slow patch of a shared machine hits every method alike. Ratios are the
median over rounds of the per-round ratio (paired), absolute figures the median over
rounds.

The methods come from the registry (``edue.methods.registry``): the default list is
``method_names()``, labels and pass counts are the registry's, and the pairs a ratio
compares are chosen by role (:func:`roles`), never by name.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from edue.methods.registry import (
    MethodSpec,
    get_method,
    method_names,
    method_specs,
    method_with_role,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_THREADS = 2
DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
#: Image channels and structures of the 2D benchmarks (the synthetic fundus data).
IMAGE_CHANNELS, STRUCTURES = 3, 2
T = TypeVar("T")


# --------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class Roles:
    """The methods the benchmarks compare, by the role the registry gives them.

    Attributes:
        subject: the method the claims are about (EDUE).
        one_pass_reference: the one-pass reference (the plain U-Net); every ratio of a
            latency or a throughput is taken to it.
        ensemble_reference: the multi-pass reference whose members train separately
            (Deep Ensemble), if one is registered.
        sampler: the other multi-pass method, one network sampled several times
            (MC dropout): not one-pass, members not trained separately; if registered.
    """

    subject: MethodSpec
    one_pass_reference: MethodSpec
    ensemble_reference: MethodSpec | None
    sampler: MethodSpec | None

    def ensemble(self) -> MethodSpec:
        """The ensemble reference (for the benchmarks that need one)."""
        if self.ensemble_reference is None:
            raise RuntimeError(_missing_role("ensemble_reference"))
        return self.ensemble_reference


def _missing_role(role: str) -> str:
    return f"no registered method has the role {role!r} (registered: {', '.join(method_names())})"


def roles() -> Roles:
    """The registered methods playing each role.

    Raises:
        RuntimeError: no method has the role ``subject`` or ``one_pass_reference`` (the
            benchmarks compare those two).
    """
    subject, reference = method_with_role("subject"), method_with_role("one_pass_reference")
    if subject is None or reference is None:
        raise RuntimeError(_missing_role("subject" if subject is None else "one_pass_reference"))
    sampler = next(
        (s for s in method_specs() if not s.one_pass and not s.trains_members_separately), None
    )
    return Roles(subject, reference, method_with_role("ensemble_reference"), sampler)


def name_of(spec: MethodSpec | None) -> str | None:
    """A spec's name, ``None`` for no spec."""
    return spec.name if spec else None


def reference_pair() -> tuple[str, str]:
    """Names of the one-pass reference and the subject (the plain U-Net and EDUE)."""
    r = roles()
    return r.one_pass_reference.name, r.subject.name


def reference_first(methods: Sequence[str]) -> list[str]:
    """``methods`` with the one-pass reference first (added when missing): ratios use it."""
    reference = roles().one_pass_reference.name
    return [reference, *[m for m in methods if m != reference]]


def reference_wording(spec: MethodSpec) -> str:
    """How targets and notes call the one-pass reference: the word plain, then its label."""
    return f"plain {spec.label}"


def channels_text(channels: Sequence[int]) -> str:
    """``16,32,64`` as written in ``model.channels=[...]``."""
    return ",".join(str(int(c)) for c in channels)


def method_config(
    name: str, channels: Sequence[int] = DEFAULT_CHANNELS, extra: Sequence[str] = ()
) -> Any:
    """The run configuration of ``name`` with ``model.channels`` and batch norm."""
    from edue.config import load_config

    overrides = [
        f"method.name={name}",
        f"model.channels=[{channels_text(channels)}]",
        "model.norm=batch",
        *extra,
    ]
    return load_config(None, overrides)


def passes(name: str, channels: Sequence[int] = DEFAULT_CHANNELS) -> int:
    """Forward passes per prediction of ``name`` (the registry's count for its config)."""
    return get_method(name).passes(method_config(name, channels))


def build(
    config: Any,
    in_channels: int = IMAGE_CHANNELS,
    out_channels: int = STRUCTURES,
    spatial_dims: int = 2,
    for_training: bool = False,
    seed: int = 0,
) -> Any:
    """The method ``edue.methods.build_method`` makes of ``config`` (weights from ``seed``)."""
    from edue.methods import build_method

    torch.manual_seed(seed)
    return build_method(config, in_channels, out_channels, spatial_dims, for_training)


def build_2d(
    name: str,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    for_training: bool = False,
    seed: int = 0,
) -> Any:
    """A 2D method on 3-channel images with 2 structures, from the default config."""
    return build(method_config(name, channels), for_training=for_training, seed=seed)


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


def timed_once(fn: Callable[[], T]) -> tuple[T, float]:
    """Result and wall-clock seconds of one call of ``fn`` (no warm-up).

    Timed by ``edue.metrics.cost.time_per_image`` (one repeat, one "image"); for a
    one-off measurement, not for the paired ratios (:func:`interleaved` does those).
    """
    from edue.metrics.cost import time_per_image

    box: list[T] = []
    seconds = time_per_image(lambda _: box.append(fn()), None, warmup=0, repeats=1, n_images=1)
    return box[0], seconds


def spread_note(worst: float, paired: str = "ratios are") -> str:
    """The note on the worst timing spread of a benchmark's methods."""
    return f"Timing spread (max−min)/median over rounds, worst method: {100 * worst:.0f} %" + (
        f" — the machine was busy; {paired} paired per round." if worst > 0.25 else "."
    )


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


def tensor_mb(tensor: torch.Tensor) -> float:
    """Megabytes of a tensor's elements."""
    return tensor.numel() * tensor.element_size() / MB


def module_mb(module: torch.nn.Module) -> float:
    """Megabytes of a module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / MB


@dataclasses.dataclass
class RssWatch:
    """Resident memory of this process around a measurement (:func:`watch_rss`).

    Attributes:
        reset: whether the high-water mark could be reset at the start.
        base: RSS in bytes at the start (after a garbage collection).
        base_peak: high-water mark in bytes at the start (above ``base`` when the reset
            failed: the peak of the imports before).
        peak: high-water mark in bytes at the end.
    """

    reset: bool
    base: int
    base_peak: int
    peak: int = 0

    def growth_mb(self, value: int | None = None) -> float:
        """Megabytes of ``value`` (default: the peak) above the starting RSS."""
        return ((self.peak if value is None else value) - self.base) / MB


@contextlib.contextmanager
def watch_rss(trim: bool = False) -> Iterator[RssWatch]:
    """Reset the RSS high-water mark, read the RSS, run the block, read the peak.

    Run it in a fresh process (:func:`run_child`): the peak is the process's.

    Args:
        trim: read the starting RSS after ``malloc_trim`` (:func:`trimmed_rss_bytes`,
            live memory) instead of as it is.
    """
    gc.collect()
    reset = reset_peak_rss()
    base = trimmed_rss_bytes() if trim else current_rss_bytes()
    watch = RssWatch(reset, base, peak_rss_bytes())
    yield watch
    watch.peak = peak_rss_bytes()


def cli_args(options: Mapping[str, Any]) -> list[str]:
    """Command-line arguments of ``options``: ``--key value`` (``_`` becomes ``-``).

    ``True`` gives the bare flag, ``False`` and ``None`` nothing, a list or tuple one
    flag followed by its values.
    """
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def run_child(script: Path, options: Mapping[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run ``python script --option value ...`` in a fresh process; parse its JSON line.

    The child answers through :func:`child_answer` (the JSON on its last line).
    """
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    args = cli_args(options)
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


def child_answer(result: Mapping[str, Any]) -> int:
    """End of a child process's ``main``: its result as one JSON line; exit 0."""
    print(json.dumps(result))
    return 0


@dataclasses.dataclass(frozen=True)
class Bench:
    """A benchmark run under way: its start time and the machine it runs on."""

    started: float
    machine: dict[str, Any]

    def result(
        self,
        name: str,
        title: str,
        settings: str,
        tables: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        notes: Sequence[str],
        **figures: Any,
    ) -> dict[str, Any]:
        """The result dict of a benchmark's ``run()`` (what :func:`render_result` reads).

        ``figures`` (the measured values, raw timings...) go between the settings and
        the tables; ``seconds`` is the run time so far.
        """
        return {
            "name": name,
            "title": title,
            "machine": self.machine,
            "settings": settings,
            **figures,
            "tables": list(tables),
            "targets": list(targets),
            "notes": list(notes),
            "seconds": time.perf_counter() - self.started,
        }


def start(threads: int) -> Bench:
    """Start a benchmark: the clock, torch's threads, the machine's facts."""
    started = time.perf_counter()
    setup_threads(threads)
    return Bench(started, machine())


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's argument parser: its docstring's first paragraph, the common options."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    add_common_arguments(p)
    return p


def add_channels_argument(
    parser: argparse.ArgumentParser, default: Sequence[int] = DEFAULT_CHANNELS
) -> None:
    """``--channels``: the U-Net's ``model.channels``."""
    parser.add_argument("--channels", type=int, nargs="+", default=list(default))


def add_methods_argument(
    parser: argparse.ArgumentParser, default: Sequence[str] | None = None
) -> None:
    """``--methods``: registered method names (default: all of them)."""
    names = list(method_names())
    parser.add_argument("--methods", nargs="+", default=list(default or names), choices=names)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: ``cpu`` or ``cuda``."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


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
