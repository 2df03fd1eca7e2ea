"""Segmentation quality control: does the uncertainty score find the poor segmentations?

Images are ranked by descending score (e.g. the model SV) and the top ``k`` are flagged
for manual review, ``k = 0 … N``. The curve plots

* x = ``k / N``, the fraction flagged, against
* y = (number of *poor* segmentations among the unflagged images) ``/ N``,

the authors' normalisation (their notebook divides the remaining poor count by the
number of test images), so y starts at the share of poor images ``P / N`` and is 0 at
``x = 1``. A segmentation is poor when its Dice is below a per-structure threshold.

* **ideal**: all poor images flagged first, the straight line from ``(0, P/N)`` to
  ``(P/N, 0)``, then 0;
* **random**: the expectation under a random ranking, ``P (N − k) / N²``;
* **AUC**: trapezoidal area under a curve; **d-AUC** = AUC(method) − AUC(ideal) ≥ 0,
  the area between the method's curve and the ideal line (lower is better).

Tied scores are ranked fairly: within a block of equal scores, the poor images are
assumed to be removed at a uniform rate (the expectation over random tie-breaking), so
the result does not depend on the order of the input.

When no image is poor, or every image is, any ranking is ideal: the curves are still
returned but ``d_auc`` is ``nan`` (nothing to rank), so a report shows "n/a" rather
than a perfect 0 that says nothing about the score.

Conventions: docs/method.md, section "Segmentation quality control: QC curves and d-AUC".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
from scipy.integrate import trapezoid

from edue.errors import ConfigError
from edue.metrics._utils import finite_pairs

#: Soft Dice below which a segmentation is "poor": the authors' RIGA values for disc and
#: cup; for head-and-neck tumours (GTVp, GTVn) the project's choice, near the best
#: HECKTOR challenge scores, so that "poor" means "needs a radiation oncologist's look".
DEFAULT_POOR_THRESHOLDS: Mapping[str, float] = MappingProxyType(
    {"disc": 0.97, "cup": 0.85, "GTVp": 0.8, "GTVn": 0.6}
)
#: Used for structures not in :data:`DEFAULT_POOR_THRESHOLDS`.
FALLBACK_POOR_THRESHOLD = 0.8


def poor_threshold_for(
    structure: str,
    thresholds: Mapping[str, float] = DEFAULT_POOR_THRESHOLDS,
    fallback: float = FALLBACK_POOR_THRESHOLD,
) -> float:
    """The poor-Dice threshold of a structure (case-insensitive name), else ``fallback``."""
    lowered = {key.lower(): value for key, value in thresholds.items()}
    return float(lowered.get(structure.lower(), fallback))


def _expected_removed(scores: np.ndarray, poor: np.ndarray) -> np.ndarray:
    """Expected number of poor images among the top ``k``, ``k = 0 … N``, tie-aware."""
    order = np.argsort(-scores, kind="stable")
    ranked, poor_ranked = scores[order], poor[order].astype(np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(poor_ranked)])
    n = scores.size
    # Block edges: rank positions where the score changes, plus both ends.
    edges = np.concatenate([[0], np.flatnonzero(ranked[1:] != ranked[:-1]) + 1, [n]])
    return np.interp(np.arange(n + 1), edges, cumulative[edges])


def qc_curve(
    scores: object, dice: object, poor_threshold: float, inclusive: bool = False
) -> dict[str, object]:
    """Quality-control curve of one structure (see the module docstring).

    Args:
        scores: uncertainty score per image ``[N]`` (higher = flag first).
        dice: Dice of each image's segmentation ``[N]``.
        poor_threshold: Dice threshold of a poor segmentation.
        inclusive: poor means ``dice <= threshold`` (the authors' notebook) instead of
            ``dice < threshold`` (default).

    Returns:
        ``fraction_flagged``, ``fraction_poor_remaining``, ``ideal``, ``random``
        (arrays ``[N + 1]``), ``auc``, ``ideal_auc``, ``random_auc``, ``d_auc`` (floats),
        ``n_poor`` and ``n`` (ints). Images with a non-finite score or Dice are dropped.
        With no poor image every curve is 0; with no poor image or only poor images
        ``d_auc`` is ``nan`` (every ranking is ideal).

    Raises:
        ValueError: if no image is left.
    """
    s, d = finite_pairs(scores, dice, ("scores", "dice"))
    n = int(s.size)
    if n == 0:
        raise ValueError("qc_curve needs at least one image with a finite score and Dice")
    poor = d <= poor_threshold if inclusive else d < poor_threshold
    n_poor = int(poor.sum())
    k = np.arange(n + 1, dtype=np.float64)
    x = k / n
    y = (n_poor - _expected_removed(s, poor)) / n
    ideal = np.maximum(n_poor - k, 0.0) / n
    random = n_poor * (n - k) / n**2
    auc, ideal_auc = float(trapezoid(y, x)), float(trapezoid(ideal, x))
    return {
        "fraction_flagged": x,
        "fraction_poor_remaining": y,
        "ideal": ideal,
        "random": random,
        "auc": auc,
        "ideal_auc": ideal_auc,
        "random_auc": float(trapezoid(random, x)),
        "d_auc": max(auc - ideal_auc, 0.0) if 0 < n_poor < n else float("nan"),
        "n_poor": n_poor,
        "n": n,
    }


def parse_poor_thresholds(
    items: Sequence[str],
    flag: str = "--poor",
    structures: Sequence[str] | None = None,
) -> dict[str, float]:
    """``["GTVp=0.7", ...]`` -> ``{"GTVp": 0.7}`` (``flag`` names the option in errors).

    The one parser of ``--poor`` (``edue calibrate`` and ``edue evaluate``).

    Args:
        items: ``STRUCTURE=DICE`` items.
        flag: the option's name, for messages.
        structures: the structures the model predicts (names must be one of them, in
            the same case); ``None``: not checked here.

    Raises:
        ConfigError: an item is not ``NAME=NUMBER`` with the number in [0, 1], names a
            structure twice, or names one the model does not predict.
    """
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not name or not 0.0 <= number <= 1.0:
            raise ConfigError(f"{flag} '{item}': expected STRUCTURE=DICE with DICE in [0, 1]")
        if name in out:
            raise ConfigError(f"{flag} names {name} twice")
        out[name] = number
    check_structure_names(out, structures, flag)
    return out


def check_structure_names(
    names: Iterable[str], structures: Sequence[str] | None, flag: str
) -> None:
    """Raise when ``names`` holds one that is not among ``structures`` (exact case).

    Raises:
        ConfigError: naming the unknown names and the model's structures.
    """
    if structures is None:
        return
    unknown = sorted(set(names) - set(structures))
    if unknown:
        raise ConfigError(
            f"{flag} names {', '.join(unknown)}; the model predicts "
            f"{', '.join(structures)} (names are case-sensitive)"
        )
