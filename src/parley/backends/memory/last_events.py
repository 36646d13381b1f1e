"""`MemoryCachedEvents`: the cached events of this process (`backends.last_events`).

Not shared: a node of one process never calls it (the hub's cache is the truth there). It
keeps what it is given all the same, to the role's contract (tests/contract).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from parley.backends.last_events import CachedEvents, LastEvent, last_event, newer


class MemoryCachedEvents(CachedEvents):
    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (app_id, channel) -> (frame, offset, epoch, expires at)
        self._events: dict[tuple[str, str], tuple[bytes, int, str, float]] = {}

    def put(
        self,
        app_id: str,
        channel: str,
        frame: bytes,
        ttl_s: float,
        offset: int = 0,
        epoch: str = "",
    ) -> None:
        key = (app_id, channel)
        now = self._clock()
        kept = self._events.get(key)
        if kept is not None and kept[3] > now and not newer(offset, epoch, kept[1], kept[2]):
            return
        if ttl_s > 0:
            self._events[key] = (frame, offset, epoch, now + ttl_s)
        if len(self._events) > 100_000:  # bounded: the expired go
            for old in [k for k, v in self._events.items() if v[3] <= now]:
                del self._events[old]

    async def get(self, app_id: str, channel: str) -> LastEvent | None:
        key = (app_id, channel)
        kept = self._events.get(key)
        if kept is None:
            return None
        left = kept[3] - self._clock()
        if left <= 0:
            del self._events[key]
            return None
        return last_event(kept[0], left)

    async def close(self) -> None:
        self._events.clear()
