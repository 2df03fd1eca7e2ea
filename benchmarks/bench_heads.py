"""EDUE's head layouts at inference, side by side with the plain U-Net.

Each variant (``method.uncertainty_heads`` × ``method.segmentation``, and the
deep-supervised U-Net) is built from one model configuration and timed through
``Method.predict_members`` in eval mode under ``torch.no_grad``, interleaved round by
round, in 2D and in 3D.

    .venv/bin/python benchmarks/bench_heads.py [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _common as C
import torch

TARGET = 1.05
#: (method, overrides) of every variant; the first is the reference, the last the target's
VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("plain", ()),
    ("deep_supervision", ()),
    ("edue", ("method.segmentation=mean",)),
    ("edue", ("method.segmentation=final",)),
    ("edue", ("method.uncertainty_heads=separate", "method.segmentation=final")),
)
#: (spatial dims, side, model.channels, image channels) of each setting
SETTINGS = ((2, 128, (16, 32, 64, 128, 256), 3), (3, 48, (8, 16, 32, 64), 2))


def variant_label(name: str, extra: Sequence[str]) -> str:
    """A variant's method label and overrides."""
    return " ".join([C.label(name), ", ".join(e.split(".", 1)[1] for e in extra)]).strip()


def run(quick: bool = False, threads: int = C.DEFAULT_THREADS, rounds: int | None = None) -> dict:
    """Median latency of every variant and its paired ratio to the reference, per setting."""
    bench = C.start(threads)
    rounds = rounds or (3 if quick else 15)
    rows, targets, notes = [], [], []
    for dims, side, channels, in_channels in SETTINGS:
        setting = f"{dims}D {side}{'²' if dims == 2 else '³'}"
        x = torch.randn(1, in_channels, *[side] * dims, generator=torch.Generator().manual_seed(0))
        fns = {}
        for name, extra in VARIANTS:
            config = C.method_config(name, channels, extra)
            method = C.build(config, in_channels=in_channels, spatial_dims=dims).eval()
            fns[variant_label(name, extra)] = lambda m=method, x=x: m.predict_members(x)
        with torch.no_grad():
            times = C.interleaved(fns, rounds, progress=setting)
        plain = next(iter(times.values()))
        for variant, values in times.items():
            ratio = C.paired_ratio(values, plain)
            rows.append([setting, variant, 1000 * C.median(values), C.ratio(ratio, 3)])
        variant = variant_label(*VARIANTS[-1])
        name = f"{setting}: {variant} / {variant_label(*VARIANTS[0])}"
        targets.append(C.target(name, C.paired_ratio(times[variant], plain), "<=", TARGET))
        notes.append(f"{setting}: " + C.spread_note(times))
    return bench.result(
        "heads",
        "EDUE's head layouts at inference (batch 1, eval, no_grad)",
        f"cpu, {torch.get_num_threads()} torch threads, {rounds} interleaved rounds; "
        + "; ".join(f"{d}D: model.channels={list(c)}" for d, _, c, _ in SETTINGS),
        [
            C.table(
                "latency", ["setting", "variant", "ms", f"÷ {variant_label(*VARIANTS[0])}"], rows
            )
        ],
        targets,
        notes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = C.parser(__doc__, "rounds").parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
