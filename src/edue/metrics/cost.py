"""Cost of a method: parameter count and inference time per image."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of a module (each shared tensor counted once).

    Args:
        module: any :class:`torch.nn.Module`; a deep ensemble counts all members when
            they are registered as submodules.
        trainable_only: count only parameters with ``requires_grad``.
    """
    params = (p for p in module.parameters() if p.requires_grad or not trainable_only)
    return int(sum(p.numel() for p in params))


def _n_items(inputs: object) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.ndim else 1
    try:
        return len(inputs)  # type: ignore[arg-type]
    except TypeError:
        return 1


def _synchronize(inputs: object) -> None:
    if isinstance(inputs, torch.Tensor) and inputs.is_cuda:
        torch.cuda.synchronize(inputs.device)


def time_per_image(
    fn: Callable[[object], object],
    inputs: object,
    warmup: int = 2,
    repeats: int = 5,
    n_images: int | None = None,
) -> float:
    """Median wall-clock seconds per image of ``fn(inputs)`` (``time.perf_counter``).

    ``fn`` is called ``warmup`` times untimed, then ``repeats`` times timed; the median
    duration is divided by the number of images (``n_images``, else the batch size of a
    tensor ``inputs`` ``[B, ...]``, else ``len(inputs)``, else 1). CUDA work on a CUDA
    ``inputs`` tensor is synchronised before each clock reading. Gradient tracking is
    left to ``fn`` (wrap it in :func:`torch.inference_mode` for inference timings).

    Args:
        fn: the callable to time, e.g. ``lambda x: method.predict(x)``.
        inputs: its single argument.
        warmup: untimed calls first.
        repeats: timed calls (at least 1).
        n_images: images processed by one call, if not inferable from ``inputs``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn(inputs)
    durations = []
    for _ in range(repeats):
        _synchronize(inputs)
        start = time.perf_counter()
        fn(inputs)
        _synchronize(inputs)
        durations.append(time.perf_counter() - start)
    count = n_images if n_images is not None else _n_items(inputs)
    return statistics.median(durations) / max(count, 1)
