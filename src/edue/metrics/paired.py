"""Paired bootstrap intervals of a difference between two methods, pooled over seeds.

Two methods evaluated on the same test images (and each trained with several seeds)
give per-image values ``a[seed, image]`` and ``b[seed, image]``. The statistic of a
method on a sample of images is either a mean over the images (Dice, NLL, pixel NCC) or
a correlation over the images (image-level Spearman of model SV against expert SV,
which needs a second per-image array). The difference of the two methods' statistics,
averaged over seeds, is resampled by drawing *images* with replacement — the same draw
for both methods and every seed (paired), so the interval reflects which images the
test set happens to hold, and the seed-to-seed variation enters through the average.

Conventions: docs/method.md, section "Comparing methods over seeds".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

#: a statistic of one method on one seed: per-image arrays ``[N]`` -> a number
Statistic = Callable[..., float]


def mean_statistic(values: np.ndarray) -> float:
    """Mean over images, ignoring non-finite values (nan when none is finite)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def spearman_statistic(model: np.ndarray, expert: np.ndarray) -> float:
    """Spearman's rho over images (ties get average ranks; nan when either is constant
    or fewer than 3 images are finite)."""
    keep = np.isfinite(model) & np.isfinite(expert)
    x, y = model[keep], expert[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def seed_mean(statistic: Statistic, arrays: tuple[np.ndarray, ...], index: np.ndarray) -> float:
    """The statistic averaged over seeds, on the images ``index``.

    Args:
        statistic: ``statistic(*per_image_arrays) -> float``.
        arrays: each ``[seeds, images]``.
        index: image indices (a bootstrap draw, or all images).
    """
    values = [statistic(*(a[s, index] for a in arrays)) for s in range(arrays[0].shape[0])]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def paired_difference(
    first: tuple[np.ndarray, ...],
    second: tuple[np.ndarray, ...],
    statistic: Statistic = mean_statistic,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Difference ``first − second`` of a seed-averaged statistic, with a paired
    bootstrap interval over images.

    Args:
        first: per-image arrays of the first method, each ``[seeds, images]`` (one array
            for :func:`mean_statistic`, model and expert SV for :func:`spearman_statistic`).
        second: the same for the second method (same seeds and images, same order).
        statistic: what is computed per seed on a sample of images.
        n_boot: bootstrap draws.
        confidence: coverage of the percentile interval.
        seed: seed of the draws.

    Returns:
        ``difference``, ``ci_low``, ``ci_high``, ``first``, ``second`` (the two seed-averaged
        statistics on all images) and ``n_images``.

    Raises:
        ValueError: the arrays do not share one ``[seeds, images]`` shape.
    """
    shapes = {a.shape for a in (*first, *second)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"expected arrays of one shape [seeds, images], got {sorted(shapes)}")
    n_images = first[0].shape[1]
    every = np.arange(n_images)
    a, b = seed_mean(statistic, first, every), seed_mean(statistic, second, every)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for i in range(n_boot):
        index = np.asarray(rng.integers(0, n_images, size=n_images))
        draws[i] = seed_mean(statistic, first, index) - seed_mean(statistic, second, index)
    draws = draws[np.isfinite(draws)]
    tail = (1 - confidence) / 2 * 100
    low, high = (
        (float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail)))
        if draws.size
        else (float("nan"), float("nan"))
    )
    return {
        "difference": a - b,
        "ci_low": low,
        "ci_high": high,
        "first": a,
        "second": b,
        "n_images": float(n_images),
    }
