"""Agreement between the model's uncertainty and the experts' disagreement.

* Image level: Spearman (and Pearson) correlation, over the test images, between the
  model's score SV (sum of its uncertainty map) and the expert SV (sum of the rater
  variance map), per structure, with a seeded percentile-bootstrap confidence interval.
* Pixel level: normalised cross-correlation (NCC) of the z-scored uncertainty map and the
  z-scored expert variance map, per image and structure, then averaged over images.

Degenerate inputs never raise and never warn; they give nan (excluded by the nan-aware
averages), as documented per function.

Conventions: docs/method.md, section
"Agreement with expert disagreement: image-level correlation and pixel NCC".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import pearsonr, rankdata, spearmanr

from edue import result_keys as rk
from edue.metrics._utils import (
    as_array_1d,
    as_tensor,
    finite_pairs,
    nan_mean_std,
)
from edue.prediction import structure_names

_NAN = float("nan")
# A map is "constant" when its standard deviation is below this fraction of its largest
# magnitude (float64 rounding of a truly constant map is ~1e-16 relative).
_CONSTANT_RTOL = 1e-9
_CONSTANT_ATOL = 1e-12


def image_correlation(
    model_sv: object,
    expert_sv: object,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """Spearman and Pearson correlation with bootstrap confidence intervals.

    Pairs where either value is not finite are dropped. With fewer than 3 pairs, or when
    either input is constant, every value is nan (no scipy warning is triggered). The CI
    is the percentile interval of ``n_boot`` paired resamples drawn with
    ``numpy.random.default_rng(seed)``; resamples that happen to be constant give nan and
    are left out of the percentiles.

    Args:
        model_sv: model image scores ``[N]``.
        expert_sv: expert disagreement scores ``[N]``.
        n_boot: number of bootstrap resamples (0 disables the CI).
        confidence: coverage of the interval (0.95 gives the 2.5 and 97.5 percentiles).
        seed: seed of the resampling.

    Returns:
        ``spearman``, ``pearson`` (floats), ``spearman_ci``, ``pearson_ci``
        (``(low, high)`` tuples) and ``n`` (number of pairs used).
    """
    x, y = finite_pairs(model_sv, expert_sv, ("model_sv", "expert_sv"))
    out: dict[str, object] = {
        "spearman": _NAN,
        "pearson": _NAN,
        "spearman_ci": (_NAN, _NAN),
        "pearson_ci": (_NAN, _NAN),
        "n": int(x.size),
    }
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["spearman"] = float(spearmanr(x, y).statistic)
    out["pearson"] = float(pearsonr(x, y).statistic)
    if n_boot > 0:
        spear, pear = _bootstrap(x, y, n_boot, seed)
        out["spearman_ci"] = _percentile_ci(spear, confidence)
        out["pearson_ci"] = _percentile_ci(pear, confidence)
    return out


def spearman(a: object, b: object) -> float:
    """Spearman's rank correlation of the finite pairs of ``a`` and ``b`` (``[N]`` each);
    NaN with fewer than three pairs or a constant side (no ranking to compare)."""
    x, y = as_array_1d(a), as_array_1d(b)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``[B, N]`` arrays; nan for constant rows."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    num = (a * b).sum(1)
    r = np.full(a.shape[0], np.nan)
    ok = den > 0
    r[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return r


def _bootstrap(
    x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Spearman and Pearson of ``n_boot`` paired resamples, vectorised in chunks."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, x.size, size=(n_boot, x.size))
    spear, pear = np.empty(n_boot), np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        rows = index[start : start + chunk]
        xb, yb = x[rows], y[rows]
        pear[start : start + chunk] = _rowwise_pearson(xb, yb)
        spear[start : start + chunk] = _rowwise_pearson(rankdata(xb, axis=1), rankdata(yb, axis=1))
    return spear, pear


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (_NAN, _NAN)
    alpha = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [alpha, 100 - alpha])
    return (float(low), float(high))


def _is_constant(scale: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-row constancy from the largest magnitude ``[K]`` and the standard deviation."""
    return std <= _CONSTANT_ATOL + _CONSTANT_RTOL * scale


def pixel_ncc(
    model_map: torch.Tensor,
    expert_map: torch.Tensor,
    both_constant: float = _NAN,
    one_constant: float = 0.0,
) -> torch.Tensor:
    """Normalised cross-correlation of z-scored maps, per structure.

    ``NCC = mean(z_a · z_b)`` with ``z = (m − mean m) / std m`` (population std), i.e. the
    Pearson correlation of the pixel values, in [−1, 1].

    A constant map has no z-score. Convention (both overridable):
        * both maps constant (e.g. a structure absent for model and raters alike):
          ``both_constant`` = nan, so the image drops out of nan-aware averages;
        * exactly one map constant (no variation to agree with, e.g. the raters agree
          everywhere but the model is uncertain somewhere): ``one_constant`` = 0, "no
          correlation".

    Args:
        model_map: model uncertainty map ``[K, *spatial]``.
        expert_map: expert variance map ``[K, *spatial]``.
        both_constant: value when both maps of a structure are constant.
        one_constant: value when exactly one map is constant.

    Returns:
        ``[K]`` float32 NCC.
    """
    a = as_tensor(model_map, torch.float64).flatten(1)
    b = as_tensor(expert_map, torch.float64).flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"map shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    scale_a, scale_b = a.abs().amax(1), b.abs().amax(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    std_a, std_b = a.pow(2).mean(1).sqrt(), b.pow(2).mean(1).sqrt()
    const_a = _is_constant(scale_a, std_a)
    const_b = _is_constant(scale_b, std_b)
    ncc = (a * b).mean(1) / (std_a * std_b).clamp_min(1e-300)
    ncc = ncc.clamp(-1.0, 1.0)
    ncc = torch.where(const_a ^ const_b, torch.full_like(ncc, one_constant), ncc)
    ncc = torch.where(const_a & const_b, torch.full_like(ncc, both_constant), ncc)
    return ncc.float()


class DisagreementMetric:
    """Accumulates per-case SVs and pixel NCC; aggregates them per structure.

    Args:
        structures: names of the ``K`` structures (keys of :meth:`aggregate`).
        both_constant: see :func:`pixel_ncc`.
        one_constant: see :func:`pixel_ncc`.

    Example:
        >>> metric = DisagreementMetric(("disc", "cup"))
        >>> for pred, case in pairs:                          # doctest: +SKIP
        ...     metric.update(pred.uncertainty, expert_variance(masks))
        >>> metric.aggregate()["image_spearman/disc"]         # doctest: +SKIP
    """

    def __init__(
        self,
        structures: Sequence[str] | None = None,
        both_constant: float = _NAN,
        one_constant: float = 0.0,
    ) -> None:
        self.structures = None if structures is None else tuple(structures)
        self.both_constant = both_constant
        self.one_constant = one_constant
        self.reset()

    def reset(self) -> None:
        """Forget all cases."""
        self.model_sv: list[np.ndarray] = []
        self.expert_sv: list[np.ndarray] = []
        self.ncc: list[np.ndarray] = []

    @property
    def n_cases(self) -> int:
        """Number of cases added."""
        return len(self.ncc)

    def update(
        self,
        model_map: torch.Tensor,
        expert_map: torch.Tensor,
        model_sv: torch.Tensor | None = None,
        expert_sv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Add one case.

        Args:
            model_map: model uncertainty map ``[K, *spatial]``.
            expert_map: expert variance map ``[K, *spatial]``.
            model_sv: model score ``[K]``; defaults to the sum of ``model_map``.
            expert_sv: expert score ``[K]``; defaults to the sum of ``expert_map``.

        Returns:
            ``[K]`` pixel NCC of this case.
        """
        a = as_tensor(model_map, torch.float64)
        b = as_tensor(expert_map, torch.float64)
        ncc = pixel_ncc(a, b, self.both_constant, self.one_constant)
        msv = a.flatten(1).sum(1) if model_sv is None else as_tensor(model_sv, torch.float64)
        esv = b.flatten(1).sum(1) if expert_sv is None else as_tensor(expert_sv, torch.float64)
        if self.ncc and self.ncc[0].shape != tuple(ncc.shape):
            raise ValueError(f"expected {self.ncc[0].shape[0]} structures, got {ncc.shape[0]}")
        self.ncc.append(ncc.double().numpy())
        self.model_sv.append(msv.reshape(-1).numpy())
        self.expert_sv.append(esv.reshape(-1).numpy())
        return ncc

    def aggregate(self, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
        """Per-structure summary as a flat dict of floats.

        Keys (``s`` = structure name): ``pixel_ncc/s/mean``, ``pixel_ncc/s/std``
        (population std over images with a finite NCC), ``pixel_ncc/s/n``;
        ``image_spearman/s``, ``image_pearson/s``, each with ``/ci_low`` and ``/ci_high``.
        """
        if not self.ncc:
            raise RuntimeError("DisagreementMetric has no data: call update() first")
        ncc = np.stack(self.ncc)
        msv, esv = np.stack(self.model_sv), np.stack(self.expert_sv)
        out: dict[str, float] = {}
        for k, name in enumerate(structure_names(ncc.shape[1], self.structures)):
            mean, std, n = nan_mean_std(ncc[:, k])
            out[rk.key(rk.PIXEL_NCC, name, rk.MEAN)] = mean
            out[rk.key(rk.PIXEL_NCC, name, rk.STD)] = std
            out[rk.key(rk.PIXEL_NCC, name, rk.N)] = float(n)
            corr = image_correlation(msv[:, k], esv[:, k], n_boot, confidence, seed)
            out.update(correlation_entries(corr, name))
        return out


def correlation_entries(corr: dict[str, object], name: str) -> dict[str, float]:
    """Flatten an :func:`image_correlation` result into ``image_*/name[/ci_*]`` floats."""
    out: dict[str, float] = {}
    for kind in ("spearman", "pearson"):
        interval: tuple[float, float] = corr[f"{kind}_ci"]  # type: ignore[assignment]
        low, high = interval
        out[f"image_{kind}/{name}"] = float(corr[kind])  # type: ignore[arg-type]
        out[f"image_{kind}/{name}/ci_low"] = float(low)
        out[f"image_{kind}/{name}/ci_high"] = float(high)
    return out


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman correlation of ``x`` and ``y`` controlling for ``z`` (all ``[N]``).

    The partial correlation of the ranks: ``(r_xy − r_xz r_yz) / √((1 − r_xz²)(1 − r_yz²))``
    with ``r`` Spearman's rho — what is left of the association of two scores once both
    are explained by a third (e.g. model SV and expert SV beyond the structure's size).
    Cases with a non-finite value are left out; nan with fewer than 4 cases or when a
    variable is constant or fully explained by ``z``.
    """
    a, b, c = (as_array_1d(v) for v in (x, y, z))
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
    a, b, c = a[keep], b[keep], c[keep]
    if a.size < 4 or min(np.ptp(a), np.ptp(b), np.ptp(c)) == 0:
        return _NAN
    ra, rb, rc = (rankdata(v) for v in (a, b, c))
    r_ab, r_ac, r_bc = (float(np.corrcoef(u, v)[0, 1]) for u, v in ((ra, rb), (ra, rc), (rb, rc)))
    denominator = (1 - r_ac**2) * (1 - r_bc**2)
    if denominator <= 1e-12:
        return _NAN
    return float((r_ab - r_ac * r_bc) / np.sqrt(denominator))


def boundary_length(mask: torch.Tensor) -> torch.Tensor:
    """Boundary size of binary masks: pixels (voxels) of the structure with a
    4-neighbour (6 in 3D) outside it; the image border counts as outside.

    Args:
        mask: ``[K, *spatial]`` bool.

    Returns:
        ``[K]`` float64 counts.
    """
    m = mask.bool()
    inside = m.clone()
    for axis in range(1, m.ndim):
        n = m.shape[axis]
        before, after = torch.zeros_like(m), torch.zeros_like(m)  # outside the image: 0
        if n > 1:
            before.narrow(axis, 1, n - 1).copy_(m.narrow(axis, 0, n - 1))
            after.narrow(axis, 0, n - 1).copy_(m.narrow(axis, 1, n - 1))
        inside &= before & after  # interior: both neighbours along this axis inside
    return (m & ~inside).flatten(1).sum(1).double()


def size_controlled_correlations(
    model_sv: np.ndarray, expert_sv: np.ndarray, area: np.ndarray, boundary: np.ndarray
) -> dict[str, float]:
    """Image-level agreement beyond the structure's size (all ``[N]``).

    Returns:
        ``partial_spearman``: Spearman of model and expert SV controlling for ``area``;
        ``spearman_per_boundary``: Spearman of ``model_sv / boundary`` and
        ``expert_sv / boundary`` over the cases with a non-empty boundary.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        per_m = np.where(boundary > 0, model_sv / boundary, np.nan)
        per_e = np.where(boundary > 0, expert_sv / boundary, np.nan)
    keep = np.isfinite(per_m) & np.isfinite(per_e)
    rho = (
        float(spearmanr(per_m[keep], per_e[keep]).statistic)
        if keep.sum() >= 3 and np.ptp(per_m[keep]) > 0 and np.ptp(per_e[keep]) > 0
        else _NAN
    )
    return {
        "partial_spearman": partial_spearman(model_sv, expert_sv, area),
        "spearman_per_boundary": rho,
    }
