"""Training throughput (images/s) of each method relative to the plain U-Net.

One training step is what ``edue.engine.train.Trainer._step`` does in full precision:
forward, ``Method.loss`` (EDUE: BCE of the final head on the soft vote, BCE of each
auxiliary head on a freshly drawn rater, disagreement guidance), the finiteness check,
``zero_grad``, backward, Adam step. Every method trains on the same real batch from
``SyntheticSource`` + ``collate_cases`` (masks ``[B, R, K, H, W]``, ``rater_valid``,
``soft_vote``, ``expert_variance``); methods are interleaved step by step.

A Deep Ensemble trains its ``M`` members as independent plain U-Nets, so its cost is
``M ×`` one member: one member (``build_method(deep_ensemble, for_training=True)``) is
measured and the whole ensemble's throughput is that divided by ``M = 5``.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--size 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_inference import build  # noqa: E402

METHODS = ("plain", "edue", "layer_ensembles", "mc_dropout", "deep_ensemble")
ENSEMBLE_SIZE = 5
PHASES = ("forward", "loss", "backward", "adam")


def make_batch(size: int, batch: int, seed: int = 0, n_raters: int = 6) -> dict[str, Any]:
    """A real training batch: synthetic cases through ``CaseDataset`` and ``collate_cases``."""
    from edue.data.case import CaseDataset, collate_cases
    from edue.data.synthetic_source import SyntheticSource

    source = SyntheticSource(n=batch, seed=seed, size=size, n_raters=n_raters)
    dataset = CaseDataset(source.loaders())
    return collate_cases([dataset[i] for i in range(batch)])


class TrainStep:
    """One optimisation step of a method on a fixed batch, with per-phase timings.

    Args:
        method: a method from ``build_method(..., for_training=True)``.
        batch: a collated batch.
        device: where to train.
        lr: Adam learning rate (the configuration's default).
        seed: seed of the rater draws.
    """

    def __init__(
        self,
        method: Any,
        batch: dict[str, Any],
        device: torch.device,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        self.device = device
        self.method = method.to(device).train()
        self.optimizer = torch.optim.Adam(self.method.parameters(), lr=lr)
        self.batch = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }
        self.generator = torch.Generator(device=device).manual_seed(seed * 7919)
        self.phases: dict[str, list[float]] = {p: [] for p in PHASES}

    def __call__(self) -> float:
        sync, clock = C.synchronize, time.perf_counter
        t0 = clock()
        logits = self.method(self.batch["image"])
        sync(self.device)
        t1 = clock()
        loss, _parts = self.method.loss(logits.float(), self.batch, self.generator)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.method.name}: non-finite loss in the benchmark")
        sync(self.device)
        t2 = clock()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(self.device)
        t3 = clock()
        self.optimizer.step()
        sync(self.device)
        t4 = clock()
        for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self.phases[name].append(seconds)
        return float(loss.detach())


def training_steps(
    methods: Sequence[str],
    batch: dict[str, Any],
    channels: Sequence[int],
    device: torch.device,
) -> dict[str, TrainStep]:
    """A :class:`TrainStep` per method, all from the same configuration and batch."""
    steps = {}
    for i, name in enumerate(methods):
        method = build(name, channels, for_training=True, seed=i)
        steps[name] = TrainStep(method, batch, device, seed=0)
    return steps


def run(
    quick: bool = False,
    size: int = 128,
    batch_size: int | None = None,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    methods: Sequence[str] = METHODS,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Images/s per method, ratios to the plain U-Net, per-phase milliseconds."""
    started = time.perf_counter()
    C.setup_threads(threads)
    info = C.machine()
    dev = torch.device(device)
    methods = ["plain", *[m for m in methods if m != "plain"]]
    batch_size = batch_size or (4 if quick else 16)
    rounds = rounds or (2 if quick else (5 if size <= 128 else 3))
    batch = make_batch(size, batch_size)
    steps = training_steps(methods, batch, channels, dev)
    times = C.interleaved(steps, rounds, device=dev, progress=f"training {size}²")
    from edue.metrics import count_parameters

    per_method: dict[str, dict[str, Any]] = {}
    for name, step in steps.items():
        seconds = C.median(times[name])
        per_method[name] = {
            "images_per_s": batch_size / seconds,
            "ms_per_step": 1000 * seconds,
            "throughput_ratio": C.paired_ratio(times["plain"], times[name]),
            "spread": C.spread(times[name]),
            "phases_ms": {p: 1000 * C.median(step.phases[p][1:]) for p in PHASES},
            "parameters": count_parameters(step.method),
        }
    rows = []
    for name in methods:
        e = per_method[name]
        label = C.METHOD_LABELS[name] + (" (one member)" if name == "deep_ensemble" else "")
        rows.append(
            [
                label,
                e["images_per_s"],
                f"{e['throughput_ratio']:.2f}×",
                e["ms_per_step"],
                *[e["phases_ms"][p] for p in PHASES],
                e["parameters"],
            ]
        )
        if name == "deep_ensemble":
            rows.append(
                [
                    f"Deep Ensemble (all M={ENSEMBLE_SIZE}, = M × one member)",
                    e["images_per_s"] / ENSEMBLE_SIZE,
                    f"{e['throughput_ratio'] / ENSEMBLE_SIZE:.2f}×",
                    e["ms_per_step"] * ENSEMBLE_SIZE,
                    *[e["phases_ms"][p] * ENSEMBLE_SIZE for p in PHASES],
                    e["parameters"] * ENSEMBLE_SIZE,
                ]
            )
    headers = [
        "method",
        "images/s",
        "× plain throughput",
        "ms/step",
        "forward ms",
        "loss ms",
        "backward ms",
        "Adam ms",
        "parameters",
    ]
    targets = []
    if "edue" in per_method:
        targets.append(
            C.target(
                f"EDUE / plain U-Net training throughput ({size}², batch {batch_size})",
                per_method["edue"]["throughput_ratio"],
                ">=",
                0.8,
            )
        )
    notes = [
        "Throughput ratio = median over rounds of (plain step time / method step time), "
        "same batch, methods interleaved step by step.",
        f"Deep Ensemble training = {ENSEMBLE_SIZE} independent plain U-Nets: one member is "
        f"measured, the ensemble row is {ENSEMBLE_SIZE} × its cost.",
    ]
    if "edue" in per_method:
        e, p = per_method["edue"]["phases_ms"], per_method["plain"]["phases_ms"]
        notes.append(
            f"EDUE loss (BCE of {steps['edue'].method.n_members} heads + random raters + "
            f"guidance) takes {e['loss']:.0f} ms vs the plain BCE's {p['loss']:.0f} ms; "
            f"its backward {e['backward']:.0f} ms vs {p['backward']:.0f} ms."
        )
    worst = max(e["spread"] for e in per_method.values())
    if worst > 0.25:
        notes.append(
            f"Step times varied by up to {100 * worst:.0f} % between rounds (busy machine); "
            "the ratios are paired per round."
        )
    settings = (
        f"{size}×{size}, batch {batch_size} real synthetic cases (3 channels, 6 raters, 2 "
        f"structures), `model.channels=[{','.join(map(str, channels))}]`, `model.norm=batch`, "
        f"Adam lr 1e-3, fp32, device {dev.type}, {torch.get_num_threads()} torch threads; "
        f"one warm-up step then the median of {rounds} interleaved steps per method."
    )
    return {
        "name": f"training_{size}",
        "title": (
            f"Training throughput ({size}², batch {batch_size}, {dev.type}, "
            f"{torch.get_num_threads()} threads)"
        ),
        "machine": info,
        "settings": settings,
        "size": size,
        "batch_size": batch_size,
        "per_method": per_method,
        "raw_seconds": times,
        "tables": [C.table(f"Training step at {size}×{size}", headers, rows)],
        "targets": targets,
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_arguments(parser)
    parser.add_argument("--size", type=int, default=128, help="image size: 128 (default) or 256")
    parser.add_argument("--batch", type=int, help="batch size (default 16; 4 with --quick)")
    parser.add_argument("--channels", type=int, nargs="+", default=list(C.DEFAULT_CHANNELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rounds", type=int, help="timed steps per method")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        size=args.size,
        batch_size=args.batch,
        channels=args.channels,
        methods=args.methods,
        rounds=args.rounds,
        threads=args.threads,
        device=args.device,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
