"""Running methods: training (seeded, resumable, distributed), checkpoints, one-pass
prediction (batched and sliding-window), file prediction and evaluation.

Names are imported on first use, so ``import edue.engine`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Trainer": "train",
    "train": "train",
    "train_method": "train",
    "Predictor": "infer",
    "load_weights": "infer",
    "predict_files": "predict_files",
    "PredictResult": "predict_files",
    "evaluate_predictor": "evaluate",
    "evaluate_checkpoint": "evaluate",
    "ood_study": "evaluate",
    "gather_ensemble": "ensemble",
    "member_config": "ensemble",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "Runtime": "runtime",
    "setup_runtime": "runtime",
    "resolve_device": "runtime",
    "time_interleaved": "timing",
    "train_compared": "jobs",
    "calibrate_checkpoint": "calibrate",
    "Calibration": "calibration",
    "find_calibration": "calibration",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edue.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edue.engine.{_WHERE[name]}"), name)
