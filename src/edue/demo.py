"""``make demo``: train EDUE and its baselines on the embedded dataset, evaluate them all
on the same test split, and write the comparison report to ``runs/demo/``.

The methods are the registered ones (:mod:`edue.methods.registry`), in their order. An
ensemble whose first member *is* another method's run (the Deep Ensemble's member 0 is
the plain U-Net: same configuration, same seed) reuses that run, so the plain baseline
costs no extra training; the other members differ only in seed.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from edue.config import Config, config_from_dict
from edue.methods.registry import method_names

#: The demo's ablation runs: run name -> the ``method.*`` values that differ from the
#: defaults (``name`` the method they vary).
ABLATIONS: dict[str, dict[str, Any]] = {
    "edue_no_guidance": {"name": "edue", "guidance": False},
    "edue_no_sampling": {"name": "edue", "label_sampling": False},
}


def ablations() -> dict[str, dict[str, Any]]:
    """Ablation runs of the registered methods: run name -> ``method.*`` values."""
    known = set(method_names())
    return {run: dict(values) for run, values in ABLATIONS.items() if values["name"] in known}


#: The 2D demo: sized to train eight networks and evaluate five methods on two CPU cores
#: within the demo's time budget.
DEMO_2D: dict[str, Any] = {
    "data": {
        "format": "synthetic",
        "options": {"size": 64},
        "split": {"train": 300, "val": 60, "test": 100},
        "split_seed": 0,
    },
    "model": {"channels": [16, 32, 64, 128], "norm": "batch"},
    "method": {"ensemble_size": 5, "mc_samples": 10, "skip_first": 3},
    "train": {"epochs": 12, "batch_size": 16, "lr": 2e-3, "seed": 0, "device": "cpu"},
}

QUICK_OVERRIDES: dict[str, Any] = {
    "data": {"options": {"size": 32}, "split": {"train": 16, "val": 8, "test": 8}},
    "model": {"channels": [8, 16, 32]},
    "method": {"ensemble_size": 2, "mc_samples": 3, "samples": 3, "skip_first": 1},
    "train": {"epochs": 1, "batch_size": 8},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def demo_config(out: Path, method: str, quick: bool, dims: int = 2) -> Config:
    """Configuration of one method's demo run."""
    if dims == 3:
        from edue.demo3d import DEMO_3D, QUICK_3D

        base = _merge(DEMO_3D, QUICK_3D) if quick else copy.deepcopy(DEMO_3D)
    else:
        base = _merge(DEMO_2D, QUICK_OVERRIDES) if quick else copy.deepcopy(DEMO_2D)
    base["method"].update(ablations().get(method, {"name": method}))
    base["out_dir"] = str(out / method)
    return config_from_dict(base)


def _train_all(out: Path, methods: list[str], quick: bool, dims: int) -> dict[str, Path]:
    """Train every method (reusing identical work); returns the checkpoint of each."""
    from edue.engine.training.jobs import train_compared

    checkpoints: dict[str, Path] = {}
    for method in methods:
        started = time.perf_counter()
        config = demo_config(out, method, quick, dims)
        trained = {run: c for run, c in checkpoints.items() if run not in ablations()}
        checkpoints[method] = train_compared(config, trained)
        print(f"[demo] trained {method} in {time.perf_counter() - started:.0f} s", flush=True)
    return checkpoints


def run_demo(
    out_dir: str = "runs/demo",
    dims: int = 2,
    quick: bool = False,
    methods: list[str] | None = None,
    with_ablations: bool = False,
) -> int:
    """Train, evaluate and compare; print where the outputs are and how long it took."""
    import torch

    from edue.data.pipeline import prepare_data
    from edue.engine.evaluation.evaluate import evaluate_predictor
    from edue.engine.inference.predictor import Predictor
    from edue.engine.referral.calibrate import calibrate_checkpoint
    from edue.report.compare import compare_runs

    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(out_dir)
    from edue.engine.training.jobs import training_order

    chosen = training_order(list(methods or method_names()))
    chosen += list(ablations()) if with_ablations else []
    checkpoints = _train_all(out, chosen, quick, dims)
    config = demo_config(out, chosen[0], quick, dims)
    test = prepare_data(config.data, ["test"], require_train=False).subsets["test"]
    cases = [test.load(i) for i in range(len(test))]
    eval_dirs = []
    for method in chosen:
        predictor = Predictor.from_checkpoint(checkpoints[method], device="cpu")
        # referral: SV thresholds certified on the validation split (calibration.json
        # beside the checkpoint, so `edue predict` with it decides too)
        calibration = calibrate_checkpoint(checkpoints[method], device="cpu")
        result = evaluate_predictor(
            predictor,
            cases,
            out / method / "eval",
            ood=True,
            seed=config.train.seed,
            extra={"label": method},
            calibration=calibration,
        )
        eval_dirs.append(out / method / "eval")
        m = result["metrics"]
        print(
            f"[demo] {method:>16}: "
            + "  ".join(
                f"{s}: Dice {m[f'soft_dice/{s}/mean']:.3f} rho {m[f'image_spearman/{s}']:.2f} "
                f"NCC {m[f'pixel_ncc/{s}/mean']:.2f}"
                for s in result["structures"]
            ),
            flush=True,
        )
    # the cost column: every method timed side by side on the same images
    from edue.engine.inference.timing import record_times, time_interleaved

    seconds = time_interleaved(checkpoints, [c.image for c in cases[:4]], "cpu")
    record_times(dict(zip(chosen, eval_dirs, strict=True)), seconds)
    report = compare_runs([str(d) for d in eval_dirs], out)
    minutes = (time.perf_counter() - started) / 60
    print(f"[demo] report: {report}")
    print(f"[demo] tables and figures: {out}/")
    print(f"[demo] finished in {minutes:.1f} min")
    return 0
