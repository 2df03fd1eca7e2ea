"""Inference time of several methods, measured side by side.

Each method's time is measured in the same rounds on the same images, the order of the
methods rotating every round, so that a busy machine slows them all alike; a method
timed alone at another moment can look several times slower or faster than it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edue.engine.inference.predictor import Predictor
from edue.io import write_json


def time_interleaved(
    checkpoints: Mapping[str, Path],
    images: Sequence[np.ndarray],
    device: str = "cpu",
    rounds: int = 5,
) -> dict[str, float]:
    """Median seconds per image of each checkpoint's single-image prediction.

    Args:
        checkpoints: name -> checkpoint file or run folder.
        images: the inputs, each ``[C, *spatial]`` (predicted one at a time).
        device: where to run.
        rounds: timed rounds (after one warm-up pass per method).

    Returns:
        name -> median over rounds of the mean seconds per image.
    """
    predictors = {n: Predictor.from_checkpoint(c, device=device) for n, c in checkpoints.items()}
    for predictor in predictors.values():
        predictor.predict(images[0])
    names = list(predictors)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for image in images:
                predictors[name].predict(image)
            times[name].append((time.perf_counter() - start) / len(images))
    return {n: float(np.median(t)) for n, t in times.items()}


def record_times(eval_folders: Mapping[str, Path], seconds: Mapping[str, float]) -> None:
    """Write side-by-side times into evaluation folders' ``metrics.json``
    (``seconds_per_image``, and ``timing`` saying how it was measured)."""
    for name, folder in eval_folders.items():
        path = Path(folder) / "metrics.json"
        if name in seconds and path.is_file():
            info = json.loads(path.read_text(encoding="utf-8"))
            info.update(seconds_per_image=seconds[name], timing="side by side, interleaved")
            write_json(path, info)
