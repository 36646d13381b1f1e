"""`MemoryLoginAttempts`: failed logins counted in this process (`backends.throttle`)."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

from parley.backends.throttle import ADDRESS_LIMIT, USER_LIMIT, WINDOW_S, limit_of


class MemoryLoginAttempts:
    """A `backends.throttle.LoginAttempts` of one node; its keys are bounded (the quiet ones
    are forgotten past 100,000)."""

    def __init__(
        self,
        limit: int = USER_LIMIT,
        address_limit: int = ADDRESS_LIMIT,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.address_limit = address_limit
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _retry_after(self, keys: list[str], now: float) -> float:
        wait = 0.0
        for key in keys:
            failures = self._failures.get(key)
            if not failures:
                continue
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if len(failures) >= limit_of(key, self.limit, self.address_limit):
                wait = max(wait, failures[0] + self.window_s - now)
        return wait

    async def attempt(self, keys: list[str]) -> tuple[float, str]:
        now = self._clock()
        wait = self._retry_after(keys, now)
        if wait > 0:
            return wait, ""
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
        if len(self._failures) > 100_000:  # bounded: forget the quiet keys
            for key in [
                k for k, v in self._failures.items() if not v or v[-1] <= now - self.window_s
            ]:
                del self._failures[key]
        return 0.0, repr(now)

    async def succeeded(self, user_key: str, address_key: str, token: str) -> None:
        self._failures.pop(user_key, None)
        failures = self._failures.get(address_key)
        if failures is not None:
            with contextlib.suppress(ValueError):
                failures.remove(float(token))
