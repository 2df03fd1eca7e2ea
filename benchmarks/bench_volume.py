"""Sliding-window prediction of a 128³ two-channel volume: EDUE against a 5-member Deep Ensemble.

Both methods are built by ``edue.methods.build_method`` from one 3D configuration
(default ``model.channels=[16,32,64,128]``, ``model.norm=batch``) and predict through
the project's ``Predictor.members`` — the call ``edue predict`` and ``edue evaluate``
make on a volume: MONAI sliding-window inference over ``infer.roi_size`` windows
(default 64³, overlap 0.25, 4 windows per pass, Gaussian blending) of the *member
stack*, so the variance across members is taken on the whole volume afterwards. EDUE
makes one pass per window, the Deep Ensemble five.

The two methods are the registry's subject (EDUE) and its ensemble reference (the Deep
Ensemble, ``method.ensemble_size=5``).

Seconds: both methods timed in this process, interleaved round by round on the same
volume; the ratio is the median of per-round ratios.

Peak memory: each configuration runs in a fresh subprocess; the figure is the process's
whole resident-set high-water mark (``VmHWM``: Python, torch, weights, the volume,
windows, activations and the blended full-size output stack) after one prediction. A
whole-volume pass of EDUE without windows is measured the same way for reference: it
shows what the window saves.

    .venv/bin/python benchmarks/bench_volume.py [--quick] [--size 128] [--roi 64]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from edue.methods import get_method, method_label  # noqa: E402

IN_CHANNELS, STRUCTURES = 2, ("GTVp", "GTVn")
DEFAULT_CHANNELS_3D = (16, 32, 64, 128)
GIB = 1024.0**3


OVERLAP = 0.25


def compared_methods() -> tuple[str, str]:
    """EDUE and the Deep Ensemble: the registry's subject and ensemble reference."""
    r = C.roles()
    return r.subject.name, r.ensemble().name


def volume_config(
    name: str,
    channels: Sequence[int] = DEFAULT_CHANNELS_3D,
    roi: int | None = 64,
    overlap: float = OVERLAP,
    sw_batch_size: int = 4,
) -> Any:
    """The 3D run configuration of ``name``: 5 ensemble members, Gaussian-blended windows."""
    extra = [
        "method.ensemble_size=5",
        f"infer.overlap={overlap}",
        f"infer.sw_batch_size={sw_batch_size}",
        "infer.blend=gaussian",
    ]
    if roi:
        extra.append(f"infer.roi_size=[{roi},{roi},{roi}]")
    return C.method_config(name, channels, extra)


def predictor(
    name: str,
    channels: Sequence[int] = DEFAULT_CHANNELS_3D,
    roi: int | None = 64,
    overlap: float = OVERLAP,
    sw_batch_size: int = 4,
    seed: int = 0,
) -> Any:
    """A 3D ``Predictor`` for ``name`` with random weights (timing does not need training)."""
    from edue.engine.inference.predictor import Predictor

    config = volume_config(name, channels, roi, overlap, sw_batch_size)
    method = C.build(config, IN_CHANNELS, len(STRUCTURES), 3, for_training=False, seed=seed)
    info = {
        "in_channels": IN_CHANNELS,
        "structures": list(STRUCTURES),
        "spatial_dims": 3,
        "image_size": None,
    }
    return Predictor(method, config, info, torch.device("cpu"))


def volume(size: int, seed: int = 0) -> torch.Tensor:
    """A random two-channel volume ``[1, 2, size, size, size]``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, IN_CHANNELS, size, size, size, generator=gen)


def n_windows(size: int, roi: int, overlap: float) -> int:
    """Windows MONAI visits on a cube of side ``size`` (its interval rule)."""
    if roi >= size:
        return 1
    step = max(int(roi * (1 - overlap)), 1)
    per_axis = -(-(size - roi) // step) + 1
    return int(per_axis**3)


# --------------------------------------------------------------------------- memory
def child_memory(
    name: str, size: int, roi: int, channels: Sequence[int], threads: int
) -> dict[str, Any]:
    """Run in a fresh process: whole-process peak RSS of one prediction of the volume."""
    C.setup_threads(threads)
    import monai.inferers  # noqa: F401  (imports before the measurement)

    import edue.engine.inference.predictor  # noqa: F401

    with C.watch_rss() as rss:
        pred = predictor(name, channels, roi or None)
        x = volume(size)
        with torch.no_grad():
            out, seconds = C.timed_once(lambda: pred.members(x))
    return {
        "method": name,
        "roi": roi,
        "peak_rss_mb": rss.peak / C.MB,
        "base_rss_mb": rss.base / C.MB,
        "peak_delta_mb": rss.growth_mb(),
        "output_mb": C.tensor_mb(out),
        "members_shape": list(out.shape),
        "seconds": seconds,
        "peak_reset": rss.reset,
    }


def measure_memory(
    size: int, roi: int, channels: Sequence[int], threads: int, whole: bool
) -> dict[str, dict[str, Any]]:
    """Peak memory of each method (and of a whole-volume EDUE pass), one subprocess each."""
    jobs = [(name, roi) for name in compared_methods()]
    if whole:
        jobs.append((compared_methods()[0], 0))
    out = {}
    for name, r in jobs:
        key = name if r else f"{name}_whole"
        options = {
            "child_memory": name,
            "size": size,
            "roi": r,
            "channels": list(channels),
            "threads": threads,
        }
        out[key] = C.run_child(Path(__file__), options, timeout=1800)
    return out


# --------------------------------------------------------------------------- seconds
def time_volume(
    preds: Mapping[str, Any], x: torch.Tensor, rounds: int, size: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds per round of each predictor on ``x`` (interleaved) and the output shapes."""
    fns = {name: (lambda p=p: p.members(x)) for name, p in preds.items()}
    with torch.no_grad():
        shapes = {name: list(fn().shape) for name, fn in fns.items()}  # also the warm-up
        times = C.interleaved(
            fns, rounds, warmup={n: (lambda: None) for n in fns}, progress=f"volume {size}³"
        )
    return times, shapes


# --------------------------------------------------------------------------- report
HEADERS = [
    "method",
    "members S",
    "parameters",
    "network passes",
    "seconds / volume",
    "× EDUE",
    "peak RSS MB (whole process)",
    "peak growth MB",
    "member stack MB",
]


def volume_rows(
    preds: Mapping[str, Any],
    times: Mapping[str, list[float]],
    shapes: Mapping[str, list[int]],
    mem: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, int],
    windows: int,
) -> list[list[Any]]:
    """A row per method, then the whole-volume EDUE pass when measured."""
    subject = compared_methods()[0]
    rows = []
    for name, pred in preds.items():
        passes = get_method(name).passes(pred.config)
        rows.append(
            [
                method_label(name),
                shapes[name][0],
                params[name],
                windows * passes,
                C.median(times[name]),
                f"{C.paired_ratio(times[name], times[subject]):.2f}×",
                mem[name]["peak_rss_mb"],
                mem[name]["peak_delta_mb"],
                mem[name]["output_mb"],
            ]
        )
    if f"{subject}_whole" in mem:
        w = mem[f"{subject}_whole"]
        rows.append(
            [
                f"{method_label(subject)}, whole volume in one pass (reference)",
                w["members_shape"][0],
                params[subject],
                1,
                w["seconds"],
                "",
                w["peak_rss_mb"],
                w["peak_delta_mb"],
                w["output_mb"],
            ]
        )
    return rows


def volume_targets(
    times: Mapping[str, list[float]], mem: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Deep Ensemble ≥ 4× EDUE's seconds; EDUE's whole process ≤ 2 GiB resident."""
    subject, ensemble = compared_methods()
    passes = get_method(ensemble).passes(volume_config(ensemble))
    ratio = C.paired_ratio(times[ensemble], times[subject])
    return [
        C.target(
            f"{method_label(ensemble)} (M={passes}) / {method_label(subject)} seconds",
            ratio,
            ">=",
            4.0,
        ),
        C.target(
            f"{method_label(subject)} peak resident memory (whole process)",
            mem[subject]["peak_rss_mb"],
            "<=",
            2 * 1024.0,
            unit="MB",
        ),
    ]


def volume_notes(
    size: int, roi: int, windows: int, times: Mapping[str, list[float]], mem: Mapping[str, Any]
) -> list[str]:
    """Windows and output, what the peak RSS holds, the ensemble's and the window's share."""
    subject, ensemble = compared_methods()
    notes = [
        f"Windows {roi}³, overlap {OVERLAP}, Gaussian blending, 4 windows per pass: "
        f"{windows} windows per volume; the output is the blended member stack "
        f"[S, 1, {len(STRUCTURES)}, {size}, {size}, {size}] in float32.",
        "Peak RSS is the whole process's high-water mark (VmHWM reset after imports): "
        "Python and torch themselves account for the "
        f"{min(v['base_rss_mb'] for v in mem.values()):.0f} MB before the model is built.",
        f"{method_label(ensemble)}'s peak is "
        f"{mem[ensemble]['peak_rss_mb'] / mem[subject]['peak_rss_mb']:.2f}× "
        f"{method_label(subject)}'s (its members run one after another on each window: weights "
        "and the larger member stack add up, activations do not).",
    ]
    if f"{subject}_whole" in mem:
        w, s = mem[f"{subject}_whole"]["peak_rss_mb"], mem[subject]["peak_rss_mb"]
        notes.append(
            f"Without windows, one pass over the whole {size}³ volume peaks at {w:.0f} MB "
            f"(vs {s:.0f} MB with {roi}³ windows)"
            + (": memory follows the window, not the volume." if w > s else ".")
        )
    worst = max(C.spread(t) for t in times.values())
    notes.append(C.spread_note(worst, "the ratio is"))
    return notes


# --------------------------------------------------------------------------- run
def run(
    quick: bool = False,
    size: int = 128,
    roi: int = 64,
    channels: Sequence[int] = DEFAULT_CHANNELS_3D,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    whole: bool = True,
) -> dict[str, Any]:
    """Seconds, ratio and peak memory of sliding-window prediction; returns the figures."""
    if quick:
        size, roi, channels = min(size, 48), min(roi, 32), tuple(channels)[:3]
    bench = C.start(threads)
    preds = {name: predictor(name, channels, roi, OVERLAP) for name in compared_methods()}
    r = rounds or (1 if quick else 3)
    times, shapes = time_volume(preds, volume(size), r, size)
    mem = measure_memory(size, roi, channels, threads, whole)
    from edue.metrics import count_parameters

    params = {name: count_parameters(p.method) for name, p in preds.items()}
    windows = n_windows(size, roi, OVERLAP)
    rows = volume_rows(preds, times, shapes, mem, params, windows)
    threads_now = torch.get_num_threads()
    settings = (
        f"{size}³ volume, {IN_CHANNELS} channels, {len(STRUCTURES)} structures; 3D "
        f"`model.channels=[{C.channels_text(channels)}]`, `model.norm=batch`; eval mode, "
        f"`torch.no_grad`, `Predictor.members` (MONAI `sliding_window_inference`); device cpu, "
        f"{threads_now} torch threads; warm-up then median of {r} interleaved rounds."
    )
    return bench.result(
        "volume",
        f"3D sliding-window prediction ({size}³, cpu, {threads_now} threads)",
        settings,
        tables=[
            C.table(f"Sliding-window prediction of a {size}³ two-channel volume", HEADERS, rows)
        ],
        targets=volume_targets(times, mem),
        notes=volume_notes(size, roi, windows, times, mem),
        size=size,
        roi=roi,
        channels=list(channels),
        params=params,
        raw_seconds=times,
        memory=mem,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--size", type=int, default=128, help="volume side (default 128)")
    parser.add_argument("--roi", type=int, default=64, help="window side (default 64)")
    C.add_channels_argument(parser, DEFAULT_CHANNELS_3D)
    parser.add_argument("--rounds", type=int, help="timed rounds (default 3)")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-volume pass")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        return C.child_answer(
            child_memory(args.child_memory, args.size, args.roi, args.channels, args.threads)
        )
    result = run(
        quick=args.quick,
        size=args.size,
        roi=args.roi,
        channels=args.channels,
        rounds=args.rounds,
        threads=args.threads,
        whole=not args.no_whole,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
