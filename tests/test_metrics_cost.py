"""Parameter counts and the per-image timer (with a fake clock: no wall-clock asserts)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from edue.metrics import cost
from edue.metrics.cost import count_parameters, time_per_image


def test_count_parameters() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    assert count_parameters(linear) == 8
    linear.bias.requires_grad_(False)
    assert count_parameters(linear, trainable_only=True) == 6
    assert count_parameters(linear) == 8
    shared = torch.nn.Sequential(linear, torch.nn.ReLU(), linear)
    assert count_parameters(shared) == 8  # a shared module counts once
    ensemble = torch.nn.ModuleList([torch.nn.Linear(3, 2) for _ in range(5)])
    assert count_parameters(ensemble) == 40


def test_time_per_image_calls_and_divides(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(step=2.0)  # every clock reading advances 2 s
    monkeypatch.setattr(cost.time, "perf_counter", lambda: next(ticks))
    calls: list[int] = []

    def fn(x: object) -> None:
        calls.append(len(x))

    batch = torch.zeros(4, 1, 8, 8)
    assert time_per_image(fn, batch, warmup=2, repeats=3) == pytest.approx(2.0 / 4)
    assert calls == [4] * 5
    assert time_per_image(fn, [1, 2], warmup=0, repeats=1) == pytest.approx(1.0)
    assert time_per_image(fn, batch, repeats=1, n_images=1) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        time_per_image(fn, batch, repeats=0)


def test_time_per_image_with_the_real_clock_runs_every_call() -> None:
    # no assertion on the time itself: only that the real clock gives a usable number
    calls: list[int] = []
    seconds = time_per_image(lambda x: calls.append(len(x)), torch.ones(2, 3), warmup=1, repeats=2)
    assert calls == [2, 2, 2]
    assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0
