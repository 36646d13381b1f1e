"""Refusal lines are rate-limited: a flood writes `per_second` lines a second and one count of
the rest, never a line per refusal."""

from __future__ import annotations

import logging

import pytest

from parley.logs import Refusals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_refusals_is_cut_to_the_rate_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    refusals = Refusals(per_second=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="parley"):
        for i in range(100):
            refusals.log("api request refused", n=i)
        clock.now += 2.5
        refusals.log("api request refused", n=100)
    events = [(r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert events == [
        ("api request refused", {"n": 0}),
        ("api request refused", {"n": 1}),
        ("api request refused", {"n": 2}),
        ("refusals suppressed", {"count": 97, "seconds": 2}),
        ("api request refused", {"n": 100}),
    ]


def test_nothing_is_counted_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    refusals = Refusals(per_second=1, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="parley"):
        for _ in range(5):
            refusals.log("refused")
    assert caplog.records == []
