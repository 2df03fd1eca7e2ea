"""What the distribution-shift gate and the referral decision cost on top of a prediction.

Timed side by side, interleaved round by round, on an untrained EDUE checkpoint: the
prediction (``Predictor.predict_batch``); the prediction with the gate's features
(``predict_batch_with_features``, hooks on the blocks ``edue calibrate`` taps) and
their score; the same with the referral decisions (``Calibration.decide_many``); and
the gate's own work apart (keeping the features of one pass, pooling and scoring them),
whose ratio is ``1 + work / prediction``. The gate is fitted on random features and the
calibration made of random numbers: the values do not change the work.

    .venv/bin/python benchmarks/bench_referral.py [--quick] [--sizes 64 256 --channels …]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common as C
import numpy as np
import torch
from bench_predict import write_checkpoint

TARGET = 1.05
PREDICTION, GATE, DECISION = "prediction", "prediction + gate", "prediction + gate + decision"
GATE_ALONE = "the gate's own work"
SMALL = (16, 32, 64, 128)
#: (image size, model.channels, images per call): ``edue evaluate``'s one image and
#: ``edue predict``'s default batch on a small network, one image on the default one
DEFAULT_SETTINGS = ((64, SMALL, 1), (64, SMALL, 8), (256, C.DEFAULT_CHANNELS, 1))


def random_calibration(predictor: Any, tap: list[str], width: int, seed: int = 0) -> Any:
    """A calibration of random numbers with a gate of ``width`` features."""
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
        rule = learn_then_test(sv, dice < 0.9, 0.1, 0.1, grid)
        scale = ExpertScale.fit(sv, expert)
        structures.append(StructureCalibration(name, 0.9, rule, grid, sv, expert, dice, scale))
    ids, scores = [f"c{i}" for i in range(60)], gate.score(rng.normal(size=(60, width)))
    return Calibration(
        "bench", "", predictor.name, "val", ids, 0.1, 0.1, structures, gate, scores, 300
    )


def variants(predictor: Any, images: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The four timed calls on the batch ``images``."""
    from edue.engine.inference.features import FeatureTap, tapped_modules
    from edue.engine.referral.calibrate import DEFAULT_GATE_BLOCKS

    tap = predictor.feature_module_names()[-DEFAULT_GATE_BLOCKS:]
    _, probe = predictor.predict_batch_with_features(images, tap=tap)
    calibration = random_calibration(predictor, tap, int(probe.shape[1]))
    gate = calibration.gate
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

    def with_gate() -> tuple[Any, Any]:
        preds, features = predictor.predict_batch_with_features(images, tap=tap)
        return preds, gate.score(features)

    def gate_alone() -> object:
        with alone as hook:
            for k in range(len(modules)):
                hook.keep(k, kept[k])  # what the hooks do during the pass
        return gate.score(hook.features(len(images)))

    def with_decision() -> object:
        preds, scores = with_gate()
        sv = np.stack([p.sv.numpy() for p in preds])
        return calibration.decide_many(sv, scores.tolist())

    def prediction() -> object:
        return predictor.predict_batch(images)

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
    """Seconds per image of a prediction alone, with the gate, with the decision, for
    each ``(image size, model.channels, images per call)``."""
    from edue.engine.inference.predictor import Predictor

    bench = C.start(threads)
    calls, rounds = calls or (2 if quick else 10), rounds or (3 if quick else 25)
    subject = C.roles().subject
    rows, targets, notes, figures = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="edue-bench-referral-") as tmp:
        for size, channels, batch in settings:
            label = f"{size}², batch {batch}"
            path = write_checkpoint(Path(tmp) / f"model{size}.pt", subject.name, size, channels)
            predictor = Predictor.from_checkpoint(path, device=device)
            generator = torch.Generator().manual_seed(size)
            images = [torch.rand(3, size, size, generator=generator) for _ in range(batch)]
            times = C.interleaved(variants(predictor, images), rounds, None, device, label, calls)
            for name, t in times.items():
                ratio = C.paired_ratio(t, times[PREDICTION])
                best = min(t) / min(times[PREDICTION])
                if name == GATE_ALONE:
                    ratio, best = 1 + ratio, 1 + best
                figures[f"{name} @ {label}"] = {
                    "seconds_per_image": C.median(t) / batch,
                    "ratio": ratio,
                    "fastest_rounds_ratio": best,
                }
                rows.append(
                    [
                        f"{size}², [{C.channels_text(channels)}]",
                        batch,
                        name,
                        1000 * C.median(t) / batch,
                        C.ratio(ratio, 3),
                        C.ratio(best, 3),
                        f"{100 * C.spread(t):.0f} %",
                    ]
                )
            for name, how in ((GATE, "whole passes"), (GATE_ALONE, "1 + the gate's own work")):
                value = figures[f"{name} @ {label}"]["ratio"]
                targets.append(
                    C.target(
                        f"(prediction + gate) / prediction, {label}",
                        value,
                        "<=",
                        TARGET,
                        note=f"{subject.label}; {how}",
                    )
                )
            notes.append(f"{label}: " + C.spread_note(times))
    headers = ["size, channels", "images per call", "run", "ms / image", "× prediction"]
    headers += ["(fastest rounds)", "spread"]
    return bench.result(
        "referral",
        "The distribution-shift gate and the referral decision on top of a prediction",
        f"Untrained {subject.label} checkpoints, batch norm, random RGB images; {calls} calls "
        f"per round, {rounds} interleaved rounds, {torch.get_num_threads()} torch threads, "
        f"{device}.",
        [C.table("Time per image", headers, rows)],
        targets,
        notes,
        figures=figures,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = C.parser(__doc__, "device", "rounds")
    p.add_argument("--sizes", type=int, nargs="+", help="image sizes (default: see above)")
    p.add_argument("--calls", type=int, help="calls per round (default 10)")
    p.add_argument("--channels", type=int, nargs="+", help="model.channels for every --sizes")
    p.add_argument("--batch", type=int, default=1, help="images per call with --sizes")
    args = p.parse_args(argv)
    options = C.options(args, "sizes", "channels", "batch")
    if args.sizes:
        channels = tuple(args.channels or C.DEFAULT_CHANNELS)
        options["settings"] = [(size, channels, args.batch) for size in args.sizes]
    return C.finish(run(**options), args.json)


if __name__ == "__main__":
    sys.exit(main())
