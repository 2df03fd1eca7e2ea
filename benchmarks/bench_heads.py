"""EDUE's head layouts at inference, side by side with the plain U-Net.

EDUE's variants (``method.uncertainty_heads`` × ``method.segmentation``) and the
deep-supervised U-Net, each built by ``edue.methods.build_method`` from one model
configuration, put in eval mode and timed on the same random input through
``Method.predict_members`` under ``torch.no_grad`` (the call the ``Predictor`` makes),
interleaved round by round: in 2D at 128² (``model.channels=[16,32,64,128,256]``) and in
3D on a 48³ volume (``model.channels=[8,16,32,64]``, the 3D study's network). Every
variant is one pass of the network; the separate uncertainty heads add four 1×1
convolutions (the segmentation's auxiliary heads are not computed at prediction).

    .venv/bin/python benchmarks/bench_heads.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: variant -> (method name, extra overrides)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain U-Net": ("plain", ()),
    "deep supervision": ("deep_supervision", ()),
    "EDUE shared heads, mean (paper)": ("edue", ("method.segmentation=mean",)),
    "EDUE shared heads, final": ("edue", ("method.segmentation=final",)),
    "EDUE separate heads, final": (
        "edue",
        ("method.uncertainty_heads=separate", "method.segmentation=final"),
    ),
}
SETTINGS: dict[str, dict[str, Any]] = {
    "2D 128²": {"dims": 2, "size": 128, "channels": (16, 32, 64, 128, 256), "in": 3},
    "3D 48³": {"dims": 3, "size": 48, "channels": (8, 16, 32, 64), "in": 2},
}


def run(quick: bool = False, threads: int = C.DEFAULT_THREADS, rounds: int | None = None) -> dict:
    """Median latency of every variant and its ratio to the plain U-Net, per setting."""
    bench = C.start(threads)
    rounds = rounds or (3 if quick else 15)
    rows, targets = [], []
    for setting, s in SETTINGS.items():
        x = torch.randn(
            1, s["in"], *([s["size"]] * s["dims"]), generator=torch.Generator().manual_seed(0)
        )
        methods = {}
        for label, (name, extra) in VARIANTS.items():
            config = C.method_config(name, s["channels"], extra)
            methods[label] = C.build(config, in_channels=s["in"], spatial_dims=s["dims"]).eval()
        with torch.no_grad():
            fns = {k: (lambda m=m, x=x: m.predict_members(x)) for k, m in methods.items()}
            times = C.interleaved(fns, rounds)
        plain = times["plain U-Net"]
        worst = max(C.spread(v) for v in times.values())
        for label, values in times.items():
            ratio = C.paired_ratio(values, plain)
            rows.append([setting, label, f"{1000 * C.median(values):.1f}", f"{ratio:.3f}×"])
        new = C.paired_ratio(times["EDUE separate heads, final"], plain)
        targets.append(
            C.target(
                f"{setting}: EDUE (separate heads, final) / plain U-Net",
                new,
                "<=",
                1.05,
                C.spread_note(worst),
            )
        )
    return bench.result(
        name="heads",
        title="EDUE's head layouts at inference (batch 1, eval, no_grad)",
        settings=f"device cpu, {threads} torch threads; "
        + "; ".join(f"{k}: model.channels={list(v['channels'])}" for k, v in SETTINGS.items()),
        tables=[C.table("latency", ["setting", "variant", "ms", "÷ plain"], rows)],
        targets=targets,
        notes=[f"{rounds} interleaved rounds; ratios are medians of per-round ratios."],
    )


def main() -> int:
    args = C.parser(__doc__).parse_args()
    return C.finish(run(quick=args.quick, threads=args.threads), args.json)


if __name__ == "__main__":
    sys.exit(main())
