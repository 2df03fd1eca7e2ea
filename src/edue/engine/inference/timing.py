"""Timing several callables side by side.

Each callable is timed in the same rounds, the order rotating every round, so that a
busy machine slows them all alike; a callable timed alone at another moment can look
several times slower or faster than it is. :func:`time_calls_interleaved` is the timer;
:func:`time_interleaved` applies it to checkpoints' single-image predictions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from edue.engine.inference.predictor import Predictor
from edue.io import write_json


def _synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls_interleaved(
    calls: Mapping[str, Callable[[], object]],
    rounds: int,
    repeats: int = 1,
    warmup: Mapping[str, Callable[[], object]] | None = None,
    device: torch.device | str = "cpu",
    after_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each call per round, the calls interleaved within every round.

    Args:
        calls: name -> zero-argument callable.
        rounds: timed rounds; round ``r`` starts with call ``r mod len(calls)`` so
            that no call always runs first (or right after the same neighbour).
        repeats: calls of each callable per round; a round's figure is their mean.
        warmup: untimed calls made once before the first round, by name (default:
            each of ``calls`` once; a name missing here is warmed by its call).
        device: CUDA work on this device is synchronised around each timed block.
        after_round: called with the round's index after each round (progress).

    Returns:
        name -> ``rounds`` durations in seconds (per call).

    Raises:
        ValueError: ``rounds`` or ``repeats`` below 1.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds} and {repeats}")
    names = list(calls)
    for name in names:
        (warmup or {}).get(name, calls[name])()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                calls[name]()
            _synchronize(device)
            times[name].append((time.perf_counter() - start) / repeats)
        if after_round is not None:
            after_round(r)
    return times


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
        rounds: timed rounds (after one warm-up prediction per checkpoint).

    Returns:
        name -> median over rounds of the mean seconds per image.
    """
    predictors = {n: Predictor.from_checkpoint(c, device=device) for n, c in checkpoints.items()}

    def predict(predictor: Predictor, inputs: Sequence[np.ndarray]) -> Callable[[], object]:
        return lambda: [predictor.predict(image) for image in inputs]

    calls = {name: predict(p, images) for name, p in predictors.items()}
    warmup = {name: predict(p, images[:1]) for name, p in predictors.items()}
    times = time_calls_interleaved(calls, rounds, warmup=warmup, device=device)
    return {name: float(np.median(t)) / len(images) for name, t in times.items()}


def record_times(eval_folders: Mapping[str, Path], seconds: Mapping[str, float]) -> None:
    """Write side-by-side times into evaluation folders' ``metrics.json``
    (``seconds_per_image``, and ``timing`` saying how it was measured)."""
    for name, folder in eval_folders.items():
        path = Path(folder) / "metrics.json"
        if name in seconds and path.is_file():
            info = json.loads(path.read_text(encoding="utf-8"))
            info.update(seconds_per_image=seconds[name], timing="side by side, interleaved")
            write_json(path, info)
