"""Per-app HTTP API quotas: requests a second (a token bucket, so a burst of a second's worth
is fine) and requests in flight at once. A request over either is refused with 429, a
`Retry-After` and a message naming the limit; it does no work. Counted after the caller is
authenticated, so nobody but the app's backend and users can spend an app's quota.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from parley.errors import HttpError
from parley.settings import AppConfig


class OverQuota(HttpError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(429, message)
        self.retry_after = retry_after


class AppQuota:
    """One app's bucket and in-flight count."""

    def __init__(self, app: AppConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = app.max_api_requests_per_second
        self.concurrent = app.max_api_concurrent_requests
        self.app_id = app.id
        self._clock = clock
        self._tokens = self.rate
        self._stamp = clock()
        self.in_flight = 0

    def enter(self) -> None:
        """Take one request's share, or raise OverQuota; `leave` once answered."""
        if self.concurrent and self.in_flight >= self.concurrent:
            raise OverQuota(
                f"App {self.app_id} has {self.concurrent} API requests in flight, its limit "
                "(max_api_concurrent_requests)",
                1,
            )
        if self.rate:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                raise OverQuota(
                    f"App {self.app_id} is over {self.rate:g} API requests a second "
                    "(max_api_requests_per_second)",
                    max(1, math.ceil(wait)),
                )
            self._tokens -= 1
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
