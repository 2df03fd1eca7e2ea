"""EDUE against the plain network on other backbones: an smp U-Net (2D) and MONAI's
DynUNet (3D).

For each backbone both methods are built from one configuration and timed side by side
on the same input: ``Method.predict_members`` in eval mode under ``torch.no_grad``, and
one training step (``bench_training.TrainStep``) on a batch of synthetic multi-rater
cases. The smp backbone needs segmentation-models-pytorch (``.venv-backbones``, made by
``make test-backbones``); without it that backbone is reported as skipped.

    .venv-backbones/bin/python benchmarks/bench_backbones.py [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import _common as C
import torch
from bench_training import TrainStep, make_batch

LATENCY_TARGET, THROUGHPUT_TARGET = 1.05, 0.85
#: label -> overrides, dims, size, quick size, training batch, raters
BACKBONES: dict[str, tuple[list[str], int, int, int, int, int]] = {
    "smp Unet ResNet-34": (
        ["model.backbone=smp", "model.arch=Unet", "model.encoder=resnet34"],
        2,
        256,
        64,
        2,
        6,
    ),
    "DynUNet 3D": (["model.backbone=dynunet", "model.norm=instance"], 3, 96, 32, 1, 4),
}


def smp_missing() -> str | None:
    """Why segmentation-models-pytorch cannot be used here (``None``: it can)."""
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken install is as good as none
        return f"segmentation-models-pytorch does not import: {type(error).__name__}: {error}"
    return None


def measure(label: str, quick: bool, rounds: int) -> dict[str, Any]:
    """Latency and training-step times of the subject and the reference on a backbone."""
    overrides, dims, full, small, batch_size, raters = BACKBONES[label]
    size = small if quick else full
    patch = [f"data.patch_size=[{size},{size},{size}]", "data.size=null"]
    extra = [*overrides, *(patch if dims == 3 else [f"data.size={size}"])]
    batch = make_batch(size, batch_size, n_raters=raters, dims=dims)
    in_channels = int(batch["image"].shape[1])
    x = batch["image"][:1]
    infer, steps, params, members = {}, {}, {}, {}
    for i, name in enumerate(C.reference_pair()):
        config = C.method_config(name, extra=extra)
        model = C.build(config, in_channels, C.STRUCTURES, dims, seed=i).eval()
        infer[name] = lambda m=model: m.predict_members(x)
        params[name], members[name] = sum(p.numel() for p in model.parameters()), model.n_members
        method = C.build(config, in_channels, C.STRUCTURES, dims, True, seed=i)
        steps[name] = TrainStep(method, batch, "cpu")
    with torch.no_grad():
        latency = C.interleaved(infer, rounds, progress=f"{label} inference")
    training = C.interleaved(steps, rounds, progress=f"{label} training")
    return {
        "size": size,
        "parameters": params,
        "members": members,
        "latency": latency,
        "training": training,
    }


def run(quick: bool = False, rounds: int | None = None, threads: int = C.DEFAULT_THREADS) -> dict:
    """Both backbones' ratios, subject ÷ reference."""
    bench = C.start(threads)
    rounds = rounds or (2 if quick else 5)
    reference, subject = C.reference_pair()
    ref, sub = C.label(reference), C.label(subject)
    rows, targets, notes, figures = [], [], [], {}
    for label, (overrides, dims, *_) in BACKBONES.items():
        missing = smp_missing() if "model.backbone=smp" in overrides else None
        if missing:
            notes.append(f"{label}: skipped ({missing})")
            continue
        got = figures[label] = measure(label, quick, rounds)
        lat, steps = got["latency"], got["training"]
        latency = C.paired_ratio(lat[subject], lat[reference])
        throughput = C.paired_ratio(steps[reference], steps[subject])
        size = f"{got['size']}{'²' if dims == 2 else '³'}"
        ms = [1000 * C.median(t[n]) for t in (lat, steps) for n in (reference, subject)]
        rows.append([label, size, got["members"][subject], *ms[:2], C.ratio(latency)])
        rows[-1] += [*ms[2:], C.ratio(throughput)]
        targets.append(C.target(f"{label}: {sub} inference ÷ {ref}", latency, "<=", LATENCY_TARGET))
        name = f"{label}: {sub} training throughput ÷ {ref}"
        targets.append(C.target(name, throughput, ">=", THROUGHPUT_TARGET))
        both = {**lat, **{f"{k} training": v for k, v in steps.items()}}
        notes.append(f"{label}: " + C.spread_note(both))
    headers = ["backbone", "size", f"{sub} heads", f"{ref} ms/image", f"{sub} ms/image"]
    headers += [f"{sub} ÷ {ref}", f"{ref} ms/step", f"{sub} ms/step", f"{sub} throughput ÷ {ref}"]
    batches = ", ".join(f"{k} {v[4]}" for k, v in BACKBONES.items())
    return bench.result(
        "backbones",
        f"{sub} on other backbones ({', '.join(BACKBONES)})",
        f"{rounds} interleaved rounds; inference batch 1; training batch: {batches}; "
        f"{'quick' if quick else 'full'} sizes.",
        [C.table("", headers, rows)],
        targets,
        notes,
        figures=figures,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = C.parser(__doc__, "rounds").parse_args(argv)
    return C.finish(run(**C.options(args)), args.json)


if __name__ == "__main__":
    raise SystemExit(main())
