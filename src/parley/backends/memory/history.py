"""`MemoryHistoryStore`: channel history in this process's memory, for unit tests and as the
reference that the durable stores must behave like. Nothing survives the process.

Appends complete synchronously, so call order is offset order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from parley.backends.history import (
    IDEMPOTENCY_WINDOW_MS,
    Append,
    Direction,
    HistoryStore,
    Page,
    Retention,
    Stored,
    check_read_args,
    new_epoch,
    new_message_id,
    page_of,
    recovered,
)
from parley.publication import Publication, StreamPosition


@dataclass(slots=True)
class _Channel:
    epoch: str
    last: int = 0
    retention: Retention = field(default_factory=Retention)
    publications: deque[Publication] = field(default_factory=deque)
    keys: dict[str, Publication] = field(default_factory=dict)  # idempotency key -> the first


class MemoryHistoryStore(HistoryStore):
    engine: ClassVar[str] = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._running = False

    async def start(self) -> None:
        self._running = True

    async def close(self) -> None:
        self._running = False

    async def check(self) -> None:
        if not self._running:
            raise RuntimeError("history store is not running")

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _channel(self, app_id: str, channel: str) -> _Channel:
        key = (app_id, channel)
        state = self._channels.get(key)
        if state is None:
            state = self._channels[key] = _Channel(epoch=new_epoch())
        return state

    @staticmethod
    def _kept(state: _Channel, now_ms: int) -> list[Publication]:
        """The publications that retention still keeps."""
        oldest_ms = now_ms - state.retention.age_ms_or_unlimited
        lowest = state.last - state.retention.count_or_unlimited
        return [p for p in state.publications if p.position.offset > lowest and p.ts >= oldest_ms]

    @staticmethod
    def _drop_expired(state: _Channel, now_ms: int) -> int:
        oldest_ms = now_ms - state.retention.age_ms_or_unlimited
        dropped = 0
        while state.publications and state.publications[0].ts < oldest_ms:
            state.publications.popleft()
            dropped += 1
        return dropped

    async def append_many(self, items: Sequence[Append]) -> list[Stored]:
        # never suspends: no tasks needed
        return [await self.append(i.app_id, i.publication, i.retention) for i in items]

    async def append(self, app_id: str, publication: Publication, retention: Retention) -> Stored:
        if not self._running:
            raise RuntimeError("history store is not running")
        now_ms = self._now_ms()
        state = self._channel(app_id, publication.channel)
        state.retention = retention
        key = publication.idempotency_key
        if key is not None:
            first = state.keys.get(key)
            if first is not None and first.ts >= now_ms - IDEMPOTENCY_WINDOW_MS:
                return Stored(first, True)
        state.last += 1
        publication.position = StreamPosition(state.last, state.epoch)
        publication.ts = now_ms
        publication.id = new_message_id()
        kept = publication.kept()
        state.publications.append(kept)
        if key is not None:
            state.keys[key] = kept
        while len(state.publications) > retention.count_or_unlimited:
            state.publications.popleft()
        self._drop_expired(state, now_ms)
        return Stored(publication)

    async def read(
        self,
        app_id: str,
        channel: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        direction: Direction = "forward",
    ) -> Page:
        check_read_args(after, before, limit, direction)
        state = self._channel(app_id, channel)
        rows = [
            p
            for p in self._kept(state, self._now_ms())
            if (after is None or p.position.offset > after)
            and (before is None or p.position.offset < before)
        ]
        if direction == "backward":
            rows.reverse()
        return page_of(channel, state.epoch, rows[: limit + 1], limit)

    async def position(self, app_id: str, channel: str) -> StreamPosition:
        state = self._channel(app_id, channel)
        return StreamPosition(state.last, state.epoch)

    async def delete(self, app_id: str, channel: str) -> str:
        old = self._channels.get((app_id, channel))
        state = _Channel(epoch=new_epoch(old.epoch if old else None))
        if old is not None:
            state.retention = old.retention
        self._channels[(app_id, channel)] = state
        return state.epoch

    async def since(
        self, app_id: str, channel: str, position: StreamPosition, limit: int
    ) -> list[Publication] | None:
        offset = position.offset
        state = self._channels.get((app_id, channel))
        if state is None or state.epoch != position.epoch or offset < 0 or offset > state.last:
            return None
        if state.last - offset > limit:
            return None
        rows = [p for p in self._kept(state, self._now_ms()) if p.position.offset > offset]
        return recovered(rows, offset, state.last)

    async def sweep(self) -> int:
        now_ms = self._now_ms()
        removed = 0
        for state in self._channels.values():
            removed += self._drop_expired(state, now_ms)
            for key, first in list(state.keys.items()):
                if first.ts < now_ms - IDEMPOTENCY_WINDOW_MS:
                    del state.keys[key]
                    removed += 1
        return removed
