"""What the distribution-shift gate and the referral decision cost on top of a prediction.

``edue predict`` on a calibrated run reads the gate's features from the prediction's
own forward pass: forward hooks on the two deepest encoder blocks (the default of
``edue calibrate``) keep the channel means of their outputs
(:class:`edue.engine.referral.gate.FeatureTap`), then the Mahalanobis distance to the
training images' Gaussian is one small matrix product. The target: at most 1.05× the
time of the prediction alone. Four things are timed side by side, interleaved round by
round:

* **prediction**: ``Predictor.predict_batch`` (the subject method, EDUE);
* **prediction + gate**: ``Predictor.predict_batch_with_features`` with the hooks on
  those blocks, then the gate's score of the features;
* **prediction + gate + decision**: the same, then the referral decisions of the batch
  (``Calibration.decide_many``: thresholds, percentile, the isotonic map and its range),
  as ``edue predict`` decides them;
* **the gate's own work**, apart from the (noisier) whole pass: arming the predictor's
  hooks, the means over space of the blocks' outputs kept from one pass, and their
  score; its ratio is ``1 + work / prediction``, a bound less disturbed by a busy
  machine than the ratio of two whole passes.

Three settings by default: the embedded demo's network (64² images,
``model.channels=[16,32,64,128]``) one image per call (as ``edue evaluate`` times
inference) and in batches of 8 (``edue predict``'s default ``--batch-size``), and the
default benchmark U-Net at 256² (``[16,32,64,128,256]``) one image per call; batch norm,
an untrained EDUE checkpoint (``--sizes`` with ``--channels`` and ``--batch`` choose
others). Times are per image. The gate is fitted on random features of the blocks' total
width and the calibration made of random numbers: their values do not change the work
done. Each call is repeated ``--calls`` times per round;
the ratio is the median over rounds of the per-round ratio, and, as a noise check, the
ratio of the fastest rounds (the least disturbed by other work on the machine).

    .venv/bin/python benchmarks/bench_referral.py [--quick] [--sizes 64 256 --channels …
        --batch 1]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_predict import write_checkpoint  # noqa: E402

TARGET = 1.05
PREDICTION, GATE, DECISION = "prediction", "prediction + gate", "prediction + gate + decision"
GATE_ALONE = "the gate's own work"
#: The batch of ``edue predict`` (its ``--batch-size`` default).
PREDICT_BATCH = 8
#: (image size, model.channels, images per call) of the default settings: the demo's
#: network one image per call (as ``edue evaluate`` times inference) and in
#: ``edue predict``'s batches, and the benchmark U-Net at 256² one image per call.
DEFAULT_SETTINGS: tuple[tuple[int, tuple[int, ...], int], ...] = (
    (64, (16, 32, 64, 128), 1),
    (64, (16, 32, 64, 128), PREDICT_BATCH),
    (256, C.DEFAULT_CHANNELS, 1),
)


def random_calibration(predictor: Any, tap: list[str], width: int, seed: int = 0) -> Any:
    """A calibration of random numbers with a gate of ``width`` features (the work of a
    decision does not depend on the values)."""
    from edue.engine.referral.calibration import Calibration, StructureCalibration
    from edue.engine.referral.gate import OODGate
    from edue.metrics.expert_units import ExpertScale
    from edue.metrics.risk_control import learn_then_test, threshold_grid

    rng = np.random.default_rng(seed)
    gate = OODGate.fit(tap, rng.normal(size=(300, width)), rng.normal(size=(60, width)), 0.05)
    structures = []
    for name in predictor.structures:
        sv, expert, dice = rng.gamma(4, 10, 60), rng.gamma(4, 8, 60), rng.uniform(0.8, 1, 60)
        grid = threshold_grid(rng.gamma(4, 10, 300))
        structures.append(
            StructureCalibration(
                name,
                0.9,
                learn_then_test(sv, dice < 0.9, 0.1, 0.1, grid),
                grid,
                sv,
                expert,
                dice,
                ExpertScale.fit(sv, expert),
            )
        )
    return Calibration(
        "bench", "", predictor.name, "val", [f"c{i}" for i in range(60)], 0.1, 0.1,
        structures, gate, gate.score(rng.normal(size=(60, width))), 300,
    )  # fmt: skip


def variants(
    predictor: Any, images: list[torch.Tensor], calls: int
) -> dict[str, Callable[[], object]]:
    """The four timed calls on the batch ``images`` (each repeated ``calls`` times)."""
    from edue.engine.referral.calibrate import DEFAULT_GATE_BLOCKS

    tap = predictor.feature_module_names()[-DEFAULT_GATE_BLOCKS:]
    _, probe = predictor.predict_batch_with_features(images, tap=tap)
    calibration = random_calibration(predictor, tap, int(probe.shape[1]))
    gate = calibration.gate

    def prediction() -> object:
        return [predictor.predict_batch(images) for _ in range(calls)]

    def with_gate() -> object:
        out = []
        for _ in range(calls):
            preds, features = predictor.predict_batch_with_features(images, tap=tap)
            out.append((preds, gate.score(features)))
        return out

    from edue.engine.inference.features import FeatureTap, tapped_modules

    modules = tapped_modules(predictor.method, tap)
    kept: dict[int, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, k=k: kept.setdefault(k, out.detach()))
        for k, m in enumerate(modules)
    ]
    predictor.predict_batch(images)
    for handle in handles:
        handle.remove()
    alone = FeatureTap(modules, persistent=True)  # as the predictor keeps its tap

    def gate_alone() -> object:
        out = []
        for _ in range(calls):
            with alone as hook:
                for k in range(len(modules)):
                    hook.keep(k, kept[k])  # what the hooks do during the pass
            out.append(gate.score(hook.features(len(images))))
        return out

    def with_decision() -> object:
        out = []
        for _ in range(calls):
            preds, features = predictor.predict_batch_with_features(images, tap=tap)
            scores = gate.score(features).tolist()
            sv = np.stack([p.sv.numpy() for p in preds])
            out.append(calibration.decide_many(sv, scores))
        return out

    return {
        PREDICTION: prediction,
        GATE: with_gate,
        DECISION: with_decision,
        GATE_ALONE: gate_alone,
    }


def run(
    quick: bool = False,
    settings: Sequence[tuple[int, Sequence[int], int]] = DEFAULT_SETTINGS,
    calls: int | None = None,
    rounds: int | None = None,
    threads: int = C.DEFAULT_THREADS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Seconds per image of a prediction alone, with the gate, and with the decision,
    for each ``(image size, model.channels, images per call)`` of ``settings``."""
    from edue.engine.inference.predictor import Predictor

    bench = C.start(threads)
    calls = calls or (2 if quick else 10)
    rounds = rounds or (3 if quick else 25)
    subject = C.roles().subject
    rows, ratios, fastest, per_image, spreads = [], {}, {}, {}, []
    labels = []
    with tempfile.TemporaryDirectory(prefix="edue-bench-referral-") as tmp:
        for size, channels, batch in settings:
            label = f"{size}², batch {batch}"
            labels.append(label)
            checkpoint = write_checkpoint(
                Path(tmp) / f"model{size}.pt", subject.name, size, channels
            )
            predictor = Predictor.from_checkpoint(checkpoint, device=device)
            generator = torch.Generator().manual_seed(size)
            images = [torch.rand(3, size, size, generator=generator) for _ in range(batch)]
            fns = variants(predictor, images, calls)
            times = C.interleaved(fns, rounds, device=device, progress=label)
            for name, t in times.items():
                seconds = C.median(t) / (calls * batch)
                ratio = C.paired_ratio(t, times[PREDICTION])
                best = min(t) / min(times[PREDICTION])
                if name == GATE_ALONE:
                    ratio, best = 1 + ratio, 1 + best
                key = f"{name} @ {label}"
                per_image[key], ratios[key], fastest[key] = seconds, ratio, best
                spreads.append(C.spread(t))
                rows.append(
                    [
                        f"{size}², [{C.channels_text(channels)}]",
                        batch,
                        name,
                        1000 * seconds,
                        f"{ratio:.3f}×",
                        f"{best:.3f}×",
                        f"{100 * C.spread(t):.0f} %",
                    ]
                )
    targets = [
        C.target(
            f"(prediction + gate) / prediction, {label}",
            ratios[f"{name} @ {label}"],
            "<=",
            TARGET,
            note=f"{subject.label}; {how}",
        )
        for label in labels
        for name, how in ((GATE, "whole passes"), (GATE_ALONE, "1 + the gate's own work"))
    ]
    notes = [
        f"Checkpoint: untrained {subject.label}, model.channels as shown, batch norm, "
        "data.size = the image size; random RGB images.",
        "The gate's work: a forward hook on each of the two deepest encoder blocks, kept "
        "registered by the predictor (a mean over space of the block's output, taken in "
        "the hook), then the Mahalanobis distance (one float32 matrix product with its "
        "bias, one norm, in torch). The decision adds the thresholds, the percentile and the "
        "isotonic map with its range (a neighbourhood of calibration images), in NumPy "
        "over the batch at once.",
        C.spread_note(max(spreads)),
    ]
    settings_text = (
        f"Settings {', '.join(labels)}; {calls} calls per round, {rounds} interleaved "
        f"rounds, {torch.get_num_threads()} torch threads, device {device}."
    )
    headers = [
        "size, channels",
        "images per call",
        "run",
        "ms / image",
        "× prediction",
        "(fastest rounds)",
        "spread",
    ]
    return bench.result(
        "referral",
        "The distribution-shift gate and the referral decision on top of a prediction",
        settings_text,
        tables=[C.table("Time per image", headers, rows)],
        targets=targets,
        notes=notes,
        seconds_per_image=per_image,
        ratios_to_prediction=ratios,
        ratios_of_fastest_rounds=fastest,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = C.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", help="image sizes (default: see above)")
    parser.add_argument("--calls", type=int, help="calls per round (default 10)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 25)")
    parser.add_argument("--channels", type=int, nargs="+", help="model.channels for every --sizes")
    parser.add_argument("--batch", type=int, default=1, help="images per call with --sizes")
    C.add_device_argument(parser)
    args = parser.parse_args(argv)
    settings = DEFAULT_SETTINGS
    if args.sizes:
        channels = tuple(args.channels or C.DEFAULT_CHANNELS)
        settings = tuple((size, channels, args.batch) for size in args.sizes)
    result = run(
        quick=args.quick,
        settings=settings,
        calls=args.calls,
        rounds=args.rounds,
        threads=args.threads,
        device=args.device,
    )
    return C.finish(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
