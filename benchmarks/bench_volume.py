"""Sliding-window prediction of a 128³ two-channel volume: EDUE against a 5-member Deep Ensemble.

Both methods are built by ``edue.methods.build_method`` from one 3D configuration
(default ``model.channels=[16,32,64,128]``, ``model.norm=batch``) and predict through
the project's ``Predictor.members`` — the call ``edue predict`` and ``edue evaluate``
make on a volume: MONAI sliding-window inference over ``infer.roi_size`` windows
(default 64³, overlap 0.25, 4 windows per pass, Gaussian blending) of the *member
stack*, so the variance across members is taken on the whole volume afterwards. EDUE
makes one pass per window, the Deep Ensemble five.

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
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = ("edue", "deep_ensemble")
IN_CHANNELS, STRUCTURES = 2, ("GTVp", "GTVn")
DEFAULT_CHANNELS_3D = (16, 32, 64, 128)
GIB = 1024.0**3


def predictor(
    name: str,
    channels: Sequence[int] = DEFAULT_CHANNELS_3D,
    roi: int | None = 64,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    seed: int = 0,
) -> Any:
    """A 3D ``Predictor`` for ``name`` with random weights (timing does not need training)."""
    from edue.config import load_config
    from edue.engine.infer import Predictor
    from edue.methods import build_method

    overrides = [
        f"method.name={name}",
        "method.ensemble_size=5",
        f"model.channels=[{','.join(str(int(c)) for c in channels)}]",
        "model.norm=batch",
        f"infer.overlap={overlap}",
        f"infer.sw_batch_size={sw_batch_size}",
        "infer.blend=gaussian",
    ]
    if roi:
        overrides.append(f"infer.roi_size=[{roi},{roi},{roi}]")
    config = load_config(None, overrides)
    torch.manual_seed(seed)
    method = build_method(config, IN_CHANNELS, len(STRUCTURES), 3, for_training=False)
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

    import edue.engine.infer  # noqa: F401

    gc.collect()
    base_rss = C.current_rss_bytes()
    reset = C.reset_peak_rss()
    pred = predictor(name, channels, roi or None)
    x = volume(size)
    started = time.perf_counter()
    with torch.no_grad():
        out = pred.members(x)
    seconds = time.perf_counter() - started
    peak = C.peak_rss_bytes()
    return {
        "method": name,
        "roi": roi,
        "peak_rss_mb": peak / C.MB,
        "base_rss_mb": base_rss / C.MB,
        "peak_delta_mb": (peak - base_rss) / C.MB,
        "output_mb": out.numel() * out.element_size() / C.MB,
        "members_shape": list(out.shape),
        "seconds": seconds,
        "peak_reset": reset,
    }


def measure_memory(
    size: int, roi: int, channels: Sequence[int], threads: int, whole: bool
) -> dict[str, dict[str, Any]]:
    """Peak memory of each method (and of a whole-volume EDUE pass), one subprocess each."""
    jobs = [(name, roi) for name in METHODS]
    if whole:
        jobs.append(("edue", 0))
    out = {}
    for name, r in jobs:
        key = name if r else f"{name}_whole"
        out[key] = C.run_child(
            Path(__file__),
            [
                "--child-memory",
                name,
                "--size",
                str(size),
                "--roi",
                str(r),
                "--channels",
                *[str(c) for c in channels],
                "--threads",
                str(threads),
            ],
            timeout=1800,
        )
    return out


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
    started = time.perf_counter()
    if quick:
        size, roi, channels = min(size, 48), min(roi, 32), tuple(channels)[:3]
    C.setup_threads(threads)
    info = C.machine()
    overlap = 0.25
    preds = {name: predictor(name, channels, roi, overlap) for name in METHODS}
    x = volume(size)
    fns = {name: (lambda p=p: p.members(x)) for name, p in preds.items()}
    r = rounds or (1 if quick else 3)
    with torch.no_grad():
        shapes = {name: list(fn().shape) for name, fn in fns.items()}  # also the warm-up
        times = C.interleaved(
            fns, r, warmup={n: (lambda: None) for n in fns}, progress=f"volume {size}³"
        )
    mem = measure_memory(size, roi, channels, threads, whole)
    from edue.metrics import count_parameters

    params = {name: count_parameters(p.method) for name, p in preds.items()}
    windows = n_windows(size, roi, overlap)
    ratio = C.paired_ratio(times["deep_ensemble"], times["edue"])
    rows = []
    for name in METHODS:
        rows.append(
            [
                C.METHOD_LABELS[name],
                shapes[name][0],
                params[name],
                windows * (5 if name == "deep_ensemble" else 1),
                C.median(times[name]),
                f"{C.paired_ratio(times[name], times['edue']):.2f}×",
                mem[name]["peak_rss_mb"],
                mem[name]["peak_delta_mb"],
                mem[name]["output_mb"],
            ]
        )
    if "edue_whole" in mem:
        w = mem["edue_whole"]
        rows.append(
            [
                "EDUE, whole volume in one pass (reference)",
                w["members_shape"][0],
                params["edue"],
                1,
                w["seconds"],
                "",
                w["peak_rss_mb"],
                w["peak_delta_mb"],
                w["output_mb"],
            ]
        )
    headers = [
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
    tables = [C.table(f"Sliding-window prediction of a {size}³ two-channel volume", headers, rows)]
    limit_mb = 2 * 1024.0
    targets = [
        C.target("Deep Ensemble (M=5) / EDUE seconds", ratio, ">=", 4.0),
        C.target(
            "EDUE peak resident memory (whole process)",
            mem["edue"]["peak_rss_mb"],
            "<=",
            limit_mb,
            unit="MB",
        ),
    ]
    notes = [
        f"Windows {roi}³, overlap {overlap}, Gaussian blending, 4 windows per pass: "
        f"{windows} windows per volume; the output is the blended member stack "
        f"[S, 1, {len(STRUCTURES)}, {size}, {size}, {size}] in float32.",
        "Peak RSS is the whole process's high-water mark (VmHWM reset after imports): "
        "Python and torch themselves account for the "
        f"{min(v['base_rss_mb'] for v in mem.values()):.0f} MB before the model is built.",
        f"Deep Ensemble's peak is "
        f"{mem['deep_ensemble']['peak_rss_mb'] / mem['edue']['peak_rss_mb']:.2f}× EDUE's "
        "(its members run one after another on each window: weights and the larger member "
        "stack add up, activations do not).",
    ]
    if "edue_whole" in mem:
        w, s = mem["edue_whole"]["peak_rss_mb"], mem["edue"]["peak_rss_mb"]
        notes.append(
            f"Without windows, one pass over the whole {size}³ volume peaks at {w:.0f} MB "
            f"(vs {s:.0f} MB with {roi}³ windows)"
            + (": memory follows the window, not the volume." if w > s else ".")
        )
    worst = max(C.spread(t) for t in times.values())
    notes.append(
        f"Timing spread (max−min)/median over rounds, worst method: {100 * worst:.0f} %"
        + (" — the machine was busy; the ratio is paired per round." if worst > 0.25 else ".")
    )
    settings = (
        f"{size}³ volume, {IN_CHANNELS} channels, {len(STRUCTURES)} structures; 3D "
        f"`model.channels=[{','.join(map(str, channels))}]`, `model.norm=batch`; eval mode, "
        f"`torch.no_grad`, `Predictor.members` (MONAI `sliding_window_inference`); device cpu, "
        f"{torch.get_num_threads()} torch threads; warm-up then median of {r} interleaved rounds."
    )
    return {
        "name": "volume",
        "title": f"3D sliding-window prediction ({size}³, cpu, {torch.get_num_threads()} threads)",
        "machine": info,
        "settings": settings,
        "size": size,
        "roi": roi,
        "channels": list(channels),
        "params": params,
        "raw_seconds": times,
        "memory": mem,
        "tables": tables,
        "targets": targets,
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_arguments(parser)
    parser.add_argument("--size", type=int, default=128, help="volume side (default 128)")
    parser.add_argument("--roi", type=int, default=64, help="window side (default 64)")
    parser.add_argument("--channels", type=int, nargs="+", default=list(DEFAULT_CHANNELS_3D))
    parser.add_argument("--rounds", type=int, help="timed rounds (default 3)")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-volume pass")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        print(
            json.dumps(
                child_memory(args.child_memory, args.size, args.roi, args.channels, args.threads)
            )
        )
        return 0
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
