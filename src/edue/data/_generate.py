"""What the 2D and 3D generators share: ranges, draws, rater styles and config checks.

:mod:`edue.data.synthetic` (fundus-like images) and :mod:`edue.data.synthetic3d`
(PET/CT-like volumes) follow one recipe: a per-structure ambiguity ``a`` sets the rater
offset scales by linear interpolation in a :data:`Range`, a seed-level rater panel has
persistent biases (:func:`rater_biases`), and boundaries are drawn as logistic steps
matched to a Gaussian CDF (:data:`LOGISTIC_SCALE`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np
from scipy.special import ndtri

from edue.errors import ConfigError

Range = tuple[float, float]
"""A closed interval ``(low, high)`` of a generator setting."""

LOGISTIC_SCALE = 1.702
"""``sigmoid(1.702 t)`` approximates ``Phi(t)``: a logistic step of scale ``std / 1.702``
has the spread of a Gaussian CDF of standard deviation ``std``."""

_STYLE_KEY = (0xED0E, 0x57, 0x1E)  # extra entropy words for the seed-level rater styles


def lerp(r: Range, t: float) -> float:
    """The point ``t`` of the way from ``r[0]`` to ``r[1]`` (``t`` in [0, 1])."""
    return float(r[0] + (r[1] - r[0]) * t)


def uniform(rng: np.random.Generator, r: Range) -> float:
    """One uniform draw in ``[r[0], r[1])``."""
    return float(rng.uniform(r[0], r[1]))


def rater_biases(seed: int, n_raters: int) -> np.ndarray:
    """Persistent signed-distance biases of the rater panel (in units of ``s_b``).

    Normal quantiles spread evenly over the panel, rescaled to unit root mean square
    and assigned to rater indices by a permutation derived from ``seed`` only.

    Args:
        seed: generator seed (non-negative).
        n_raters: panel size ``R``.

    Returns:
        float64 ``[R]`` biases; positive values draw smaller structures.
    """
    return np.array(_rater_biases(seed, n_raters))


@lru_cache(maxsize=64)
def _rater_biases(seed: int, n_raters: int) -> tuple[float, ...]:
    if n_raters == 1:
        return (0.0,)
    q = ndtri((np.arange(n_raters) + 0.5) / n_raters)
    q = q / np.sqrt(np.mean(q**2))
    rng = np.random.default_rng([seed, *_STYLE_KEY])
    return tuple(q[rng.permutation(n_raters)].tolist())


class GeneratorConfig(Protocol):
    """The settings every generator configuration has."""

    size: int
    n_raters: int
    ambiguity_range: Range
    bias_std: Range
    jitter_std: Range


def check_common(config: GeneratorConfig, name: str) -> None:
    """Check the settings shared by both generators.

    Args:
        config: a generator configuration.
        name: the generator's name in the messages (``synthetic``, ``synthetic3d``).

    Raises:
        ConfigError: ``size`` below 16, no rater, an ambiguity range outside [0, 1], a
            non-positive jitter or a negative bias scale.
    """
    if config.size < 16:
        raise ConfigError(f"{name} size must be >= 16, got {config.size}")
    if config.n_raters < 1:
        raise ConfigError(f"{name} n_raters must be >= 1, got {config.n_raters}")
    lo, hi = config.ambiguity_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"ambiguity_range must lie in [0, 1], got {config.ambiguity_range}")
    if min(config.jitter_std) <= 0 or min(config.bias_std) < 0:
        raise ConfigError("jitter_std must be positive and bias_std non-negative")
