"""Placeholder replaced by the comparison report module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def compare_runs(runs: Sequence[str], out: str | Path) -> Path:
    """Write the comparison report of evaluated runs (see module docstring)."""
    raise NotImplementedError
