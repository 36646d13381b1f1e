"""An app's HTTP API quota: a second's worth of requests may burst, then one per 1/rate;
requests in flight are capped; each refusal names its limit and when to retry."""

from __future__ import annotations

import pytest

from parley.http_api.quotas import AppQuota, OverQuota
from parley.settings import AppConfig


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_seconds_worth_then_the_rate() -> None:
    clock = Clock()
    quota = AppQuota(AppConfig("1", "k", "s", max_api_requests_per_second=4), clock)
    for _ in range(4):
        quota.enter()
        quota.leave()
    with pytest.raises(OverQuota, match=r"over 4 API requests a second") as refused:
        quota.enter()
    assert refused.value.http_status == 429 and refused.value.retry_after == 1
    clock.now += 0.25  # one more request's worth
    quota.enter()
    quota.leave()
    with pytest.raises(OverQuota):
        quota.enter()
    clock.now += 10  # a quiet spell refills to a second's worth, not more
    for _ in range(4):
        quota.enter()
        quota.leave()
    with pytest.raises(OverQuota):
        quota.enter()


def test_requests_in_flight_are_capped_until_one_is_answered() -> None:
    quota = AppQuota(AppConfig("1", "k", "s", max_api_concurrent_requests=2), Clock())
    quota.enter()
    quota.enter()
    with pytest.raises(OverQuota, match="2 API requests in flight"):
        quota.enter()
    quota.leave()
    quota.enter()
    assert quota.in_flight == 2
