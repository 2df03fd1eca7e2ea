"""Unbiased variance over the leading axis (members, heads or raters), fast on the CPU.

``torch.var(x, dim=0)`` over a short outer axis (4 heads, 6 raters) takes a slow
strided reduction on the CPU: about 20× slower than subtracting the mean and summing
squares (113 ms vs 5 ms for ``[4, 16, 2, 128, 128]`` on two cores; see
``benchmarks/``). Every variance of the data contract, the predictions and the loss goes
through :func:`leading_variance`, which computes the same two-pass formula explicitly.
"""

from __future__ import annotations

import torch


def leading_variance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased (N − 1) variance over dim 0, differentiable.

    Args:
        x: ``[N, *rest]`` with ``N >= 2``, floating point.

    Returns:
        ``[*rest]``, equal to ``x.var(0, unbiased=True)`` up to rounding.

    Raises:
        ValueError: ``N < 2`` (the unbiased variance is undefined).
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"unbiased variance needs at least 2 entries along dim 0, got {n}")
    centred = x - x.mean(0)
    return centred.square().sum(0) / (n - 1)
