"""Training throughput of each registered method next to the one-pass reference.

One step (forward, ``Method.loss``, backward, Adam; full precision) of every method on
the same real batch of synthetic cases, the methods interleaved step by step. A method
whose members train separately is measured as one member; its ensemble's row is that
times its member count.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--size 256] [--batch 16]
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import _common as C
import torch

from edue.methods import get_method, method_names

PHASES = ("forward", "loss", "backward", "adam")
TARGET = 0.8


def make_batch(size: int, batch: int, seed: int = 0, n_raters: int = 6, dims: int = 2) -> dict:
    """A collated batch of synthetic cases (2D fundus or 3D volumes)."""
    from edue.data.case import CaseDataset, collate_cases
    from edue.data.synthetic_source import Synthetic3DSource, SyntheticSource

    kind = SyntheticSource if dims == 2 else Synthetic3DSource
    dataset = CaseDataset(kind(n=batch, seed=seed, size=size, n_raters=n_raters).loaders())
    return collate_cases([dataset[i] for i in range(batch)])


class TrainStep:
    """One optimisation step of a method on a fixed batch, with per-phase timings.

    Args:
        method: from ``build_method(..., for_training=True)``.
        batch: a collated batch.
        device: where to train.
        lr: Adam's learning rate.
        seed: seed of the rater draws.
    """

    def __init__(
        self, method: Any, batch: dict, device: torch.device | str, lr: float = 1e-3, seed: int = 0
    ) -> None:
        self.device = torch.device(device)
        self.method = method.to(self.device).train()
        self.optimizer = torch.optim.Adam(self.method.parameters(), lr=lr)
        self.batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        self.generator = torch.Generator(device=self.device).manual_seed(seed * 7919)
        self.phases: dict[str, list[float]] = {p: [] for p in PHASES}

    def __call__(self) -> float:
        t = [C.clock(self.device)]
        logits = self.method(self.batch["image"])
        t.append(C.clock(self.device))
        loss, _ = self.method.loss(logits.float(), self.batch, self.generator)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.method.name}: non-finite loss in the benchmark")
        t.append(C.clock(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(C.clock(self.device))
        self.optimizer.step()
        t.append(C.clock(self.device))
        for name, a, b in zip(PHASES, t, t[1:], strict=False):
            self.phases[name].append(b - a)
        return float(loss.detach())


def step_figures(
    steps: Mapping[str, TrainStep], times: Mapping[str, list[float]], batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per method: images/s, ms/step, paired throughput ratio to the reference, phases."""
    from edue.metrics import count_parameters

    reference = C.roles().one_pass_reference.name
    return {
        name: {
            "images_per_s": batch_size / C.median(times[name]),
            "ms_per_step": 1000 * C.median(times[name]),
            "throughput_ratio": C.paired_ratio(times[reference], times[name]),
            "phases_ms": {p: 1000 * C.median(step.phases[p][1:]) for p in PHASES},
            "parameters": count_parameters(step.method),
        }
        for name, step in steps.items()
    }


def rows_and_notes(
    per_method: Mapping[str, Mapping[str, Any]], steps: Mapping[str, TrainStep], channels: Any
) -> tuple[list[list[Any]], list[str]]:
    """A row per method (plus ``M ×`` one member for separately trained members); notes."""
    rows, notes = [], []
    for name, e in per_method.items():
        spec = get_method(name)
        phases = [e["phases_ms"][p] for p in PHASES]
        one = " (one member)" if spec.trains_members_separately else ""
        ratio = C.ratio(e["throughput_ratio"])
        rows.append([spec.label + one, e["images_per_s"], ratio, e["ms_per_step"], *phases])
        rows[-1].append(e["parameters"])
        if spec.trains_members_separately:
            m = spec.members(C.method_config(name, channels))
            scaled = [e["ms_per_step"] * m, *[ms * m for ms in phases], e["parameters"] * m]
            rows.append([f"{spec.label} (all M={m})", e["images_per_s"] / m])
            rows[-1] += [C.ratio(e["throughput_ratio"] / m), *scaled]
            notes.append(f"{spec.label}: {m} members trained separately, its row = {m} × one.")
    subject, reference = C.reference_pair()[::-1]
    if subject in per_method:
        s, p = per_method[subject]["phases_ms"], per_method[reference]["phases_ms"]
        notes.append(
            f"{C.label(subject)} ({steps[subject].method.n_members} members): loss "
            f"{C.fmt(s['loss'])} ms vs {C.fmt(p['loss'])} ms, backward {C.fmt(s['backward'])} "
            f"ms vs {C.fmt(p['backward'])} ms ({C.label(reference)})."
        )
    return rows, notes


def run(
    quick: bool = False,
    size: int = 128,
    batch: int | None = None,
    channels: Sequence[int] = C.DEFAULT_CHANNELS,
    methods: Sequence[str] | None = None,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Images/s of each method (the reference always, first), ratios, phases."""
    bench = C.start(threads)
    dev = torch.device(device)
    methods = C.reference_first(methods or method_names())
    batch = batch or (4 if quick else 16)
    rounds = rounds or (2 if quick else (5 if size <= 128 else 3))
    data = make_batch(size, batch)
    steps = {
        name: TrainStep(C.build_2d(name, channels, for_training=True, seed=i), data, dev)
        for i, name in enumerate(methods)
    }
    times = C.interleaved(steps, rounds, device=dev, progress=f"training {size}²")
    per_method = step_figures(steps, times, batch)
    rows, notes = rows_and_notes(per_method, steps, channels)
    r = C.roles()
    targets = []
    if r.subject.name in per_method:
        name = f"{r.subject.label} / {r.one_pass_reference.label} training throughput ({size}²)"
        targets.append(C.target(name, per_method[r.subject.name]["throughput_ratio"], ">=", TARGET))
    threads_now = torch.get_num_threads()
    headers = ["method", "images/s", f"× {r.one_pass_reference.label} throughput", "ms/step"]
    headers += [f"{p.replace('adam', 'Adam')} ms" for p in PHASES] + ["parameters"]
    return bench.result(
        f"training_{size}",
        f"Training throughput ({size}², batch {batch}, {dev.type}, {threads_now} threads)",
        f"{size}², batch {batch} synthetic cases, `model.channels=[{C.channels_text(channels)}]`,"
        f" `model.norm=batch`, Adam, fp32, {dev.type}; warm-up then {rounds} interleaved steps.",
        [C.table(f"Training step at {size}×{size}", headers, rows)],
        targets,
        [*notes, C.spread_note(times)],
        size=size,
        batch_size=batch,
        per_method=per_method,
        raw_seconds=times,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "channels", "methods", "device", "rounds")
    p.add_argument("--size", type=int, default=128, help="image size")
    p.add_argument("--batch", type=int, help="batch size (default 16; 4 with --quick)")
    args = p.parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
