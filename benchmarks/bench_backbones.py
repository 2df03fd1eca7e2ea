"""EDUE against the plain network on the backbones people train: an smp ResNet-34 U-Net
at 256² and MONAI's DynUNet in 3D at 96³.

For each backbone, EDUE (heads on every decoder block, its loss with label sampling and
guidance) and the plain network (the same backbone with its own output layer, BCE on
the soft vote) are built by ``edue.methods.build_method`` from one configuration and
timed side by side, interleaved round by round on the same input:

* inference: ``Method.predict_members`` under ``torch.no_grad`` in eval mode, batch 1;
* training: one full step (forward, loss, backward, Adam) on one real batch of
  synthetic multi-rater cases (2D: 6 raters; 3D: 4 raters), batch 2 (2D) or 1 (3D).

Ratios are medians of per-round ratios (EDUE ÷ plain for latency, plain ÷ EDUE time, i.e.
EDUE's throughput share, for training). Targets: inference ≤ 1.05×, training ≥ 0.85×.
The smp backbone needs segmentation-models-pytorch (run with ``.venv-backbones``,
``make test-backbones`` creates it); without it that backbone is reported as skipped.

    .venv-backbones/bin/python benchmarks/bench_backbones.py [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_training import TrainStep, make_batch  # noqa: E402

BACKBONES: dict[str, dict[str, Any]] = {
    "smp Unet ResNet-34, 256²": {
        "overrides": ["model.backbone=smp", "model.arch=Unet", "model.encoder=resnet34"],
        "dims": 2,
        "size": 256,
        "quick_size": 64,
        "batch": 2,
    },
    "DynUNet 3D, 96³": {
        "overrides": ["model.backbone=dynunet", "model.norm=instance"],
        "dims": 3,
        "size": 96,
        "quick_size": 32,
        "batch": 1,
    },
}


def smp_missing() -> str | None:
    """Why segmentation-models-pytorch cannot be used here (``None``: it can)."""
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken install is as good as none
        return f"segmentation-models-pytorch does not import: {type(error).__name__}: {error}"
    return None


def measure(label: str, setting: dict[str, Any], quick: bool, rounds: int) -> dict[str, Any]:
    """Latency and training-step times of EDUE and plain on one backbone."""
    dims = setting["dims"]
    size = setting["quick_size"] if quick else setting["size"]
    patch = [f"data.patch_size=[{', '.join([str(size)] * dims)}]"] if dims == 3 else []
    extra = [*setting["overrides"], *patch, f"data.size={size}" if dims == 2 else "data.size=null"]
    batch = make_batch(size, setting["batch"], n_raters=6 if dims == 2 else 4, dims=dims)
    in_channels = int(batch["image"].shape[1])
    models, steps = {}, {}
    for i, name in enumerate(("plain", "edue")):
        config = C.method_config(name, extra=extra)
        models[name] = C.build(config, in_channels, 2, dims, seed=i).eval()
        steps[name] = TrainStep(C.build(config, in_channels, 2, dims, True, seed=i), batch, "cpu")
    x = batch["image"][:1]

    def infer(name: str) -> Any:
        def call() -> None:
            with torch.no_grad():
                models[name].predict_members(x)

        return call

    latency = C.interleaved({n: infer(n) for n in models}, rounds, progress=f"{label} inference")
    training = C.interleaved(dict(steps), rounds, progress=f"{label} training")
    return {
        "size": size,
        "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        "latency": latency,
        "training": training,
        "members": models["edue"].n_members,
    }


def run(quick: bool = False, rounds: int | None = None, threads: int = C.DEFAULT_THREADS) -> dict:
    """Both backbones' ratios; returns the figures."""
    bench = C.start(threads)
    rounds = rounds or (2 if quick else 5)
    rows, targets, notes, figures = [], [], [], {}
    for label, setting in BACKBONES.items():
        missing = smp_missing() if "model.backbone=smp" in setting["overrides"] else None
        if missing:  # run with .venv-backbones for this half; any other error is one
            notes.append(f"{label}: skipped ({missing})")
            continue
        got = measure(label, setting, quick, rounds)
        figures[label] = got
        lat = C.paired_ratio(got["latency"]["edue"], got["latency"]["plain"])
        thr = C.paired_ratio(got["training"]["plain"], got["training"]["edue"])
        worst = max(C.spread(v) for k in ("latency", "training") for v in got[k].values())
        rows.append(
            [
                label,
                got["size"],
                got["members"],
                1000 * C.median(got["latency"]["plain"]),
                1000 * C.median(got["latency"]["edue"]),
                lat,
                1000 * C.median(got["training"]["plain"]),
                1000 * C.median(got["training"]["edue"]),
                thr,
            ]
        )
        targets.append(C.target(f"{label}: EDUE inference ÷ plain", lat, "<=", 1.05))
        targets.append(C.target(f"{label}: EDUE training throughput ÷ plain", thr, ">=", 0.85))
        notes.append(f"{label}: " + C.spread_note(worst))
    headers = [
        "backbone",
        "size",
        "EDUE heads",
        "plain ms/image",
        "EDUE ms/image",
        "EDUE ÷ plain",
        "plain ms/step",
        "EDUE ms/step",
        "EDUE throughput ÷ plain",
    ]
    settings = (
        f"{rounds} interleaved rounds; inference batch 1, training batch 2 (2D) / 1 (3D); "
        f"{'quick sizes' if quick else 'full sizes'}."
    )
    return bench.result(
        "backbones",
        "EDUE on foreign backbones (smp ResNet-34 U-Net, DynUNet 3D)",
        settings,
        [C.table("", headers, rows)],
        targets,
        notes,
        figures=figures,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--rounds", type=int, help="timed rounds (default 5, quick 2)")
    args = parser.parse_args(argv)
    return C.finish(run(args.quick, args.rounds, args.threads), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
