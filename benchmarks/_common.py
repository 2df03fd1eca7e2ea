"""What the benchmark scripts share: methods by role, machine facts, timing, memory,
fresh processes, results and their Markdown.

Everything a benchmark compares is timed side by side by
:func:`edue.engine.inference.timing.time_calls_interleaved`, the order rotating round by
round; a ratio is the median over rounds of the per-round ratio, an absolute figure the
median over rounds. The methods are the registry's, chosen by role (:func:`roles`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(p) for p in (HERE, REPO) if str(p) not in sys.path]  # ``tests.fake_layouts``

from edue.engine.inference.timing import time_calls_interleaved  # noqa: E402
from edue.methods.registry import MethodSpec, get_method, method_names, method_specs  # noqa: E402
from edue.report.roles import method_with_role  # noqa: E402

DEFAULT_THREADS = 2
DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
IMAGE_CHANNELS, STRUCTURES = 3, 2  # of the 2D benchmarks (the synthetic fundus data)
MB = 1024.0**2
T = TypeVar("T")


# --------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class Roles:
    """The registered methods compared: the ``subject`` (EDUE), the one-pass reference
    every ratio is taken to, the ensemble of separately trained members and the sampler
    of one network (``None`` when not registered)."""

    subject: MethodSpec
    one_pass_reference: MethodSpec
    ensemble_reference: MethodSpec | None
    sampler: MethodSpec | None

    def ensemble(self) -> MethodSpec:
        """The ensemble reference (``RuntimeError`` when none is registered)."""
        if self.ensemble_reference is None:
            raise RuntimeError("no registered method has the role 'ensemble_reference'")
        return self.ensemble_reference


def roles() -> Roles:
    """The registered methods playing each role (``RuntimeError`` without a subject or a
    one-pass reference)."""
    subject, reference = method_with_role("subject"), method_with_role("one_pass_reference")
    if subject is None or reference is None:
        raise RuntimeError(f"no subject or one-pass reference among {method_names()}")
    multi = [s for s in method_specs() if not s.one_pass and not s.trains_members_separately]
    return Roles(
        subject, reference, method_with_role("ensemble_reference"), next(iter(multi), None)
    )


def reference_pair() -> tuple[str, str]:
    """Names of the one-pass reference and the subject."""
    r = roles()
    return r.one_pass_reference.name, r.subject.name


def reference_first(methods: Sequence[str]) -> list[str]:
    """``methods`` with the one-pass reference first (added when missing)."""
    reference = roles().one_pass_reference.name
    return [reference, *[m for m in methods if m != reference]]


def label(name: str) -> str:
    """The registry's label of a method."""
    return get_method(name).label


def channels_text(channels: Sequence[int]) -> str:
    """``16,32,64`` as written in ``model.channels=[...]``."""
    return ",".join(str(int(c)) for c in channels)


def method_config(
    name: str, channels: Sequence[int] = DEFAULT_CHANNELS, extra: Sequence[str] = ()
) -> Any:
    """The run configuration of ``name`` with ``model.channels`` and batch norm."""
    from edue.config import load_config

    base = [f"method.name={name}", f"model.channels=[{channels_text(channels)}]"]
    return load_config(None, [*base, "model.norm=batch", *extra])


def passes(name: str, channels: Sequence[int] = DEFAULT_CHANNELS) -> int:
    """Forward passes per prediction of ``name`` (the registry's count)."""
    return get_method(name).passes(method_config(name, channels))


def build(
    config: Any,
    in_channels: int = IMAGE_CHANNELS,
    out_channels: int = STRUCTURES,
    spatial_dims: int = 2,
    for_training: bool = False,
    seed: int = 0,
) -> Any:
    """``edue.methods.build_method`` of ``config`` (weights drawn from ``seed``)."""
    from edue.methods import build_method

    torch.manual_seed(seed)
    return build_method(config, in_channels, out_channels, spatial_dims, for_training)


def build_2d(
    name: str, channels: Sequence[int] = DEFAULT_CHANNELS, for_training: bool = False, seed: int = 0
) -> Any:
    """A 2D method of the default config for the fundus images."""
    return build(method_config(name, channels), for_training=for_training, seed=seed)


def predictor(config: Any, in_channels: int, structures: Sequence[str], dims: int) -> Any:
    """A CPU ``Predictor`` of ``config``'s method (random weights), images at their size."""
    from edue.engine.inference.predictor import Predictor

    method = build(config, in_channels, len(structures), dims)
    info = {"in_channels": in_channels, "structures": list(structures), "spatial_dims": dims}
    return Predictor(method, config, {**info, "image_size": None}, torch.device("cpu"))


# --------------------------------------------------------------------------- machine
def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def setup_threads(threads: int) -> int:
    """Set torch's intra-op threads explicitly."""
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def cuda_name() -> str | None:
    """Name of the first CUDA device, or ``None``."""
    return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None


def load_average() -> float:
    """The 1-minute load average (``nan`` where unknown)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def machine() -> dict[str, Any]:
    """Facts about the machine and the torch build of a run."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [
            ln
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1min": load_average(),
        "cuda": cuda_name(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def machine_line(m: Mapping[str, Any]) -> str:
    """One line describing the machine of :func:`machine`."""
    return (
        f"{m['cpu']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), "
        f"torch {m['torch']}, {m['threads']} torch threads, Python {m['python']}, load average "
        f"{m['load_average_1min']} at start, "
        + (f"GPU {m['cuda']}" if m.get("cuda") else "no CUDA device")
    )


# --------------------------------------------------------------------------- timing
def interleaved(
    fns: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: Mapping[str, Callable[[], object]] | None = None,
    device: torch.device | str = "cpu",
    progress: str | None = None,
    repeats: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each callable per round, interleaved (the library's timer);
    ``progress`` labels a line on stderr after each round."""

    def report(r: int) -> None:
        print(f"  {progress}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)

    return time_calls_interleaved(
        fns, rounds, repeats, warmup, device, report if progress else None
    )


def clock(device: torch.device | str = "cpu") -> float:
    """``time.perf_counter()`` once the queued CUDA work of ``device`` is done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed_once(fn: Callable[[], T]) -> tuple[T, float]:
    """Result and wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    """Median (``nan`` when empty)."""
    return float(statistics.median(values)) if values else float("nan")


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]``."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True) if b > 0])


def spread(values: Sequence[float]) -> float:
    """Relative spread of repeated timings: (max − min) / median."""
    m = median(values)
    return (max(values) - min(values)) / m if len(values) > 1 and m else 0.0


def spread_note(times: Mapping[str, Sequence[float]]) -> str:
    """The worst relative spread over rounds of some timings, and whose it is."""
    name = max(times, key=lambda k: spread(times[k]))
    worst = 100 * spread(times[name])
    return f"Worst timing spread over {len(times[name])} rounds: {worst:.0f} % ({name})."


def ratio(value: float, digits: int = 2) -> str:
    """``1.23×``."""
    return f"{value:.{digits}f}×"


# --------------------------------------------------------------------------- memory
def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def trimmed_rss_bytes() -> int:
    """RSS after a garbage collection and glibc's ``malloc_trim(0)`` (live memory)."""
    import ctypes

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return current_rss_bytes()


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS (``VmHWM``) since start or the last reset."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def tensor_mb(tensor: torch.Tensor) -> float:
    """Megabytes of a tensor's elements."""
    return tensor.numel() * tensor.element_size() / MB


def module_mb(module: torch.nn.Module) -> float:
    """Megabytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / MB


@dataclasses.dataclass
class RssWatch:
    """Resident memory around a measurement (:func:`watch_rss`), in bytes: whether the
    high-water mark was reset, the RSS and the mark at the start, the mark at the end."""

    reset: bool
    base: int
    base_peak: int
    peak: int = 0

    def growth_mb(self, value: int | None = None) -> float:
        """Megabytes of ``value`` (default: the peak) above the starting RSS."""
        return ((self.peak if value is None else value) - self.base) / MB


@contextlib.contextmanager
def watch_rss(trim: bool = False) -> Iterator[RssWatch]:
    """Reset the RSS high-water mark (``/proc/self/clear_refs``), read the RSS (after
    ``malloc_trim`` with ``trim``), run the block, read the mark; in a fresh process
    (:func:`in_child`) the mark is the measurement's."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    base = trimmed_rss_bytes() if trim else current_rss_bytes()
    watch = RssWatch(reset, base, peak_rss_bytes())
    yield watch
    watch.peak = peak_rss_bytes()


def in_child(function: Callable[..., Any], timeout: float = 3600, **kwargs: Any) -> Any:
    """``function(**kwargs)`` run in a fresh Python process; its JSON-able result."""
    module = Path(str(sys.modules[function.__module__].__file__)).stem
    call = [sys.executable, str(HERE / "_common.py"), f"{module}:{function.__name__}"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [*call, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{call[-1]}({kwargs}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- results
def target(
    name: str, value: float, op: str, threshold: float, note: str = "", unit: str = "×"
) -> dict[str, Any]:
    """A target and whether it is met (``op``: ``<=`` or ``>=``; ``nan`` is not met)."""
    met = bool(value <= threshold if op == "<=" else value >= threshold)
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
    """A table of a result (rendered by :func:`render_table`)."""
    return {"title": title, "headers": list(headers), "rows": [list(r) for r in rows]}


def fmt(value: Any, digits: int = 3) -> str:
    """Compact number formatting."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return (
            f"{value:,.0f}"
            if abs(value) >= 1000
            else f"{value:.1f}"
            if abs(value) >= 100
            else f"{value:.{digits}g}"
        )
    return "" if value is None else str(value)


def render_table(tab: Mapping[str, Any]) -> str:
    """Markdown of one :func:`table`."""
    lines = ["| " + " | ".join(tab["headers"]) + " |", "|" + "---|" * len(tab["headers"])]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in tab["rows"]])


def render_targets(targets: Sequence[Mapping[str, Any]], benchmarks: Sequence[str] = ()) -> str:
    """Markdown table of targets with ✓ / ✗ (``benchmarks``: a first column)."""

    def unit(value: float, t: Mapping[str, Any]) -> str:
        return ratio(value) if t["unit"] == "×" else f"{fmt(value)} {t['unit']}"

    rows = [
        [
            *benchmarks[i : i + 1],
            t["name"],
            unit(t["value"], t),
            f"{t['op']} {unit(t['threshold'], t)}",
            "✓" if t["met"] else "✗",
            t.get("note", ""),
        ]
        for i, t in enumerate(targets)
    ]
    headers = [
        *(["benchmark"] if benchmarks else []),
        "target",
        "measured",
        "wanted",
        "met",
        "note",
    ]
    return render_table(table("", headers, rows))


def render_result(result: Mapping[str, Any], heading: str = "###") -> str:
    """Markdown of a benchmark's result: settings, tables, targets, notes."""
    parts = [f"{heading} {result['title']}", "", result.get("settings", ""), ""]
    for tab in result.get("tables", []):
        parts += ([f"**{tab['title']}**", ""] if tab.get("title") else []) + [render_table(tab), ""]
    if result.get("targets"):
        parts += ["**Targets**", "", render_targets(result["targets"]), ""]
    parts += [f"- {note}" for note in result.get("notes", [])]
    parts += ["", f"_Run time of this benchmark: {result.get('seconds', float('nan')):.0f} s._"]
    return "\n".join(parts).replace("\n\n\n", "\n\n").strip() + "\n"


@dataclasses.dataclass(frozen=True)
class Bench:
    """A benchmark under way: its start time and machine."""

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
    ) -> dict:
        """The result of a benchmark's ``run()``: what :func:`render_result` reads, the
        raw ``figures`` and the seconds so far."""
        seconds = time.perf_counter() - self.started
        return {
            "name": name,
            "title": title,
            "machine": self.machine,
            "settings": settings,
            **figures,
            "tables": list(tables),
            "targets": list(targets),
            "notes": list(notes),
            "seconds": seconds,
        }


def start(threads: int) -> Bench:
    """Start a benchmark: the clock, torch's threads, the machine's facts."""
    started = time.perf_counter()
    setup_threads(threads)
    return Bench(started, machine())


# --------------------------------------------------------------------------- command line
def parser(doc: str | None, *options: str) -> argparse.ArgumentParser:
    """A script's parser: ``--quick``, ``--threads``, ``--json`` and the shared options
    named (``channels``, ``methods``, ``device``, ``rounds``)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    shared = {
        "channels": dict(type=int, nargs="+", help="model.channels"),
        "methods": dict(nargs="+", choices=list(method_names())),
        "device": dict(default="cpu", help="cpu or cuda"),
        "rounds": dict(type=int, help="timed rounds"),
    }
    for name in options:
        p.add_argument(f"--{name}", **shared[name])  # type: ignore[arg-type]
    return p


def options(args: argparse.Namespace, *skip: str) -> dict[str, Any]:
    """The parsed arguments as ``run()`` keywords (those not given left out)."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("json", *skip)}


def finish(result: Mapping[str, Any], json_path: str | None) -> int:
    """Print a result as Markdown (the machine first), write its JSON when asked; 0
    (targets are reported, not enforced)."""
    print(f"Machine: {machine_line(result['machine'])}\n\n{render_result(result)}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":  # a fresh process of :func:`in_child`: module:function kwargs
    module, function = sys.argv[1].split(":")
    print(json.dumps(getattr(importlib.import_module(module), function)(**json.loads(sys.argv[2]))))
