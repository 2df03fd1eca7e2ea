"""The interleaved timer: every call is timed in every round, the order rotating."""

import pytest

from edue.engine.inference.timing import time_calls_interleaved


def test_calls_are_interleaved_and_rotated():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    rounds: list[int] = []
    times = time_calls_interleaved(calls, rounds=3, repeats=2, after_round=rounds.append)
    assert order[:3] == ["a", "b", "c"]  # one untimed warm-up call each
    timed = order[3:]
    assert timed == [
        *"aabbcc",  # round 0 starts with a
        *"bbccaa",  # round 1 with b
        *"ccaabb",  # round 2 with c
    ]
    assert rounds == [0, 1, 2]
    assert set(times) == set("abc")
    assert all(len(t) == 3 and all(s >= 0 for s in t) for t in times.values())


def test_a_warm_up_replaces_the_first_call_and_rounds_are_checked():
    counts = {"a": 0, "warm": 0}

    def a() -> None:
        counts["a"] += 1

    def warm() -> None:
        counts["warm"] += 1

    time_calls_interleaved({"a": a}, rounds=2, warmup={"a": warm})
    assert counts == {"a": 2, "warm": 1}
    with pytest.raises(ValueError):
        time_calls_interleaved({"a": a}, rounds=0)
