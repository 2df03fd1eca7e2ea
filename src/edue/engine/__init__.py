"""Running methods, one subpackage per job, in the order data flows through them:
``training`` (seeded, resumable, distributed) and ``inference`` (one-pass prediction,
sliding window, tiling); ``referral`` (calibration file, procedure and shift gate, on a
predictor); ``predict`` (``edue predict`` on files, with the referral decisions) and
``evaluation`` (metrics of a run's split, shift study). Checkpoints, the run folder and
the runtime (device, precision, processes) are shared by all.

Names are imported on first use, so ``import edue.engine`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Trainer": "training.trainer",
    "train": "training.trainer",
    "train_method": "training.trainer",
    "Predictor": "inference.predictor",
    "load_weights": "inference.predictor",
    "predict_files": "predict.files",
    "PredictResult": "predict.files",
    "evaluate_predictor": "evaluation.evaluate",
    "evaluate_checkpoint": "evaluation.evaluate",
    "ood_study": "evaluation.shift",
    "gather_ensemble": "training.ensemble",
    "member_config": "training.ensemble",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "Runtime": "runtime",
    "setup_runtime": "runtime",
    "resolve_device": "runtime",
    "time_interleaved": "inference.timing",
    "train_compared": "training.jobs",
    "calibrate_checkpoint": "referral.calibrate",
    "Calibration": "referral.calibration",
    "find_calibration": "referral.calibration",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edue.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edue.engine.{_WHERE[name]}"), name)
