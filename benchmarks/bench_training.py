"""Training throughput (images/s) of each method relative to the plain U-Net.

One training step is what ``edue.engine.training.trainer.Trainer._step`` does in full precision:
forward, ``Method.loss`` (EDUE: BCE of the final head on the soft vote, BCE of each
auxiliary head on a freshly drawn rater, disagreement guidance), the finiteness check,
``zero_grad``, backward, Adam step. Every method trains on the same real batch from
``SyntheticSource`` + ``collate_cases`` (masks ``[B, R, K, H, W]``, ``rater_valid``,
``soft_vote``, ``expert_variance``); methods are interleaved step by step.

The methods are the registered ones (``edue.methods.method_names()``, or ``--methods``);
ratios are taken to the one-pass reference of the registry (the plain U-Net). A method
whose members train separately (``MethodSpec.trains_members_separately``: the Deep
Ensemble trains its ``M`` members as independent plain U-Nets) costs ``M ×`` one member:
one member (``build_method(..., for_training=True)``) is measured and the whole
ensemble's throughput is that divided by ``M = 5``.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--size 256] [--batch 16]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from edue.methods import get_method, method_names, method_specs  # noqa: E402

PHASES = ("forward", "loss", "backward", "adam")


def make_batch(
    size: int, batch: int, seed: int = 0, n_raters: int = 6, dims: int = 2
) -> dict[str, Any]:
    """A real training batch: synthetic cases (2D fundus or 3D volumes) through
    ``CaseDataset`` and ``collate_cases``."""
    from edue.data.case import CaseDataset, collate_cases
    from edue.data.synthetic_source import Synthetic3DSource, SyntheticSource

    kind = SyntheticSource if dims == 2 else Synthetic3DSource
    source = kind(n=batch, seed=seed, size=size, n_raters=n_raters)
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
        method = C.build_2d(name, channels, for_training=True, seed=i)
        steps[name] = TrainStep(method, batch, device, seed=0)
    return steps


HEADERS = [
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


def step_figures(
    steps: Mapping[str, TrainStep], times: Mapping[str, list[float]], batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per method: images/s, ms/step, paired throughput ratio to the plain U-Net, phases."""
    from edue.metrics import count_parameters

    reference = C.roles().one_pass_reference.name
    per_method: dict[str, dict[str, Any]] = {}
    for name, step in steps.items():
        seconds = C.median(times[name])
        per_method[name] = {
            "images_per_s": batch_size / seconds,
            "ms_per_step": 1000 * seconds,
            "throughput_ratio": C.paired_ratio(times[reference], times[name]),
            "spread": C.spread(times[name]),
            "phases_ms": {p: 1000 * C.median(step.phases[p][1:]) for p in PHASES},
            "parameters": count_parameters(step.method),
        }
    return per_method


def ensemble_members(name: str, channels: Sequence[int]) -> int:
    """Members ``M`` of a method whose members train separately (its configuration's)."""
    return get_method(name).members(C.method_config(name, channels))


def training_rows(
    per_method: Mapping[str, Mapping[str, Any]], channels: Sequence[int]
) -> list[list[Any]]:
    """A row per method; an ensemble of separately trained members adds an ``M ×`` row."""
    rows = []
    for name, e in per_method.items():
        spec = get_method(name)
        one_member = spec.trains_members_separately
        ratio = f"{e['throughput_ratio']:.2f}×"
        phases = [e["phases_ms"][p] for p in PHASES]
        label = spec.label + (" (one member)" if one_member else "")
        rows.append([label, e["images_per_s"], ratio, e["ms_per_step"], *phases, e["parameters"]])
        if one_member:
            m = ensemble_members(name, channels)
            rows.append(
                [
                    f"{spec.label} (all M={m}, = M × one member)",
                    e["images_per_s"] / m,
                    f"{e['throughput_ratio'] / m:.2f}×",
                    e["ms_per_step"] * m,
                    *[ms * m for ms in phases],
                    e["parameters"] * m,
                ]
            )
    return rows


def training_targets(
    per_method: Mapping[str, Mapping[str, Any]], size: int, batch_size: int
) -> list[dict[str, Any]]:
    """EDUE's training throughput ≥ 0.8× the plain U-Net's."""
    r = C.roles()
    if r.subject.name not in per_method:
        return []
    name = (
        f"{r.subject.label} / {C.reference_wording(r.one_pass_reference)} training throughput "
        f"({size}², batch {batch_size})"
    )
    return [C.target(name, per_method[r.subject.name]["throughput_ratio"], ">=", 0.8)]


def training_notes(
    per_method: Mapping[str, Mapping[str, Any]],
    steps: Mapping[str, TrainStep],
    channels: Sequence[int],
) -> list[str]:
    """How ratios and ensembles are counted; EDUE's loss and backward; a busy machine."""
    r = C.roles()
    reference = r.one_pass_reference.name
    notes = [
        "Throughput ratio = median over rounds of (plain step time / method step time), "
        "same batch, methods interleaved step by step."
    ]
    for spec in method_specs():
        if spec.trains_members_separately:
            m = ensemble_members(spec.name, channels)
            member = C.reference_wording(get_method(str(spec.member_method)))
            notes.append(
                f"{spec.label} training = {m} independent {member}s: one member is "
                f"measured, the ensemble row is {m} × its cost."
            )
    subject = r.subject.name
    if subject in per_method:
        e, p = per_method[subject]["phases_ms"], per_method[reference]["phases_ms"]
        notes.append(
            f"{r.subject.label} loss (BCE of {steps[subject].method.n_members} heads + random "
            f"raters + guidance) takes {e['loss']:.0f} ms vs the plain BCE's {p['loss']:.0f} ms; "
            f"its backward {e['backward']:.0f} ms vs {p['backward']:.0f} ms."
        )
    worst = max(e["spread"] for e in per_method.values())
    if worst > 0.25:
        notes.append(
            f"Step times varied by up to {100 * worst:.0f} % between rounds (busy machine); "
            "the ratios are paired per round."
        )
    return notes


def run(
    quick: bool = False,
    size: int = 128,
    batch_size: int | None = None,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    methods: Sequence[str] | None = None,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Images/s per method, ratios to the plain U-Net, per-phase milliseconds.

    ``methods`` defaults to every registered method; the plain U-Net (the one-pass
    reference) is always measured, first.
    """
    bench = C.start(threads)
    dev = torch.device(device)
    methods = C.reference_first(methods or method_names())
    batch_size = batch_size or (4 if quick else 16)
    rounds = rounds or (2 if quick else (5 if size <= 128 else 3))
    steps = training_steps(methods, make_batch(size, batch_size), channels, dev)
    times = C.interleaved(steps, rounds, device=dev, progress=f"training {size}²")
    per_method = step_figures(steps, times, batch_size)
    threads_now = torch.get_num_threads()
    settings = (
        f"{size}×{size}, batch {batch_size} real synthetic cases (3 channels, 6 raters, 2 "
        f"structures), `model.channels=[{C.channels_text(channels)}]`, `model.norm=batch`, "
        f"Adam lr 1e-3, fp32, device {dev.type}, {threads_now} torch threads; "
        f"one warm-up step then the median of {rounds} interleaved steps per method."
    )
    return bench.result(
        f"training_{size}",
        f"Training throughput ({size}², batch {batch_size}, {dev.type}, {threads_now} threads)",
        settings,
        tables=[
            C.table(f"Training step at {size}×{size}", HEADERS, training_rows(per_method, channels))
        ],
        targets=training_targets(per_method, size, batch_size),
        notes=training_notes(per_method, steps, channels),
        size=size,
        batch_size=batch_size,
        per_method=per_method,
        raw_seconds=times,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--size", type=int, default=128, help="image size: 128 (default) or 256")
    parser.add_argument("--batch", type=int, help="batch size (default 16; 4 with --quick)")
    C.add_channels_argument(parser)
    C.add_methods_argument(parser)
    parser.add_argument("--rounds", type=int, help="timed steps per method")
    C.add_device_argument(parser)
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
