"""Small shared helpers of the metrics package (conversion, naming, nan-aware statistics)."""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(x: object, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A detached CPU tensor from a tensor, a NumPy array or a nested sequence."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().cpu()
    return t if dtype is None else t.to(dtype)


def as_binary(x: object, threshold: float = 0.5) -> torch.Tensor:
    """Boolean mask: floating inputs are thresholded (``> threshold``), others cast (``!= 0``)."""
    t = as_tensor(x)
    if t.is_floating_point():
        return t > threshold
    return t != 0


def as_array_1d(x: object) -> np.ndarray:
    """A float64 1-D NumPy array from a tensor, array or sequence."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def finite_pairs(
    a: object, b: object, names: tuple[str, str] = ("inputs", "")
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of two equally long 1-D inputs with both values finite, as float64.

    Args:
        a: first values ``[N]``.
        b: second values ``[N]``.
        names: how the error names the two inputs (``("x", "y")``).

    Raises:
        ValueError: the inputs differ in length.
    """
    x, y = as_array_1d(a), as_array_1d(b)
    if x.shape != y.shape:
        what = f"{names[0]} and {names[1]}" if names[1] else names[0]
        raise ValueError(f"{what} differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def nan_mean_std(values: object, ddof: int = 0) -> tuple[float, float, int]:
    """Mean, standard deviation and count of the finite values, without warnings.

    Returns ``(nan, nan, 0)`` when no value is finite and a standard deviation of nan
    when there are not more than ``ddof`` finite values.
    """
    a = as_array_1d(values)
    a = a[np.isfinite(a)]
    n = int(a.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    std = float(a.std(ddof=ddof)) if n > ddof else float("nan")
    return float(a.mean()), std, n


def overlap_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection sizes of every pair of flattened boolean masks.

    Args:
        a: ``[K, A, N]`` bool.
        b: ``[K, B, N]`` bool.

    Returns:
        ``[K, A, B]`` float64 counts ``|a_i ∩ b_j|``. The matrix product runs in float32
        while that is exact (``N <= 2**24``), in float64 beyond.
    """
    dtype = torch.float32 if a.shape[-1] <= 2**24 else torch.float64
    return (a.to(dtype) @ b.to(dtype).transpose(1, 2)).double()
