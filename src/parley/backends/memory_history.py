"""`MemoryHistoryStore`: channel history in this process's memory, for unit tests and as the
reference that the durable stores must behave like. Nothing survives the process.

Appends complete synchronously, so call order is offset order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from parley.backends.history import (
    IDEMPOTENCY_WINDOW_MS,
    Direction,
    Entry,
    HistoryStore,
    NewEntry,
    Page,
    Retention,
    check_read_args,
    new_epoch,
    new_message_id,
    page_of,
    recovered,
)


@dataclass(slots=True)
class _Channel:
    epoch: str
    last: int = 0
    retention: Retention = field(default_factory=Retention)
    entries: deque[Entry] = field(default_factory=deque)
    keys: dict[str, Entry] = field(default_factory=dict)  # idempotency key -> first Entry


class MemoryHistoryStore(HistoryStore):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._running = False

    async def start(self) -> None:
        self._running = True

    async def close(self) -> None:
        self._running = False

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _channel(self, app_id: str, channel: str) -> _Channel:
        key = (app_id, channel)
        state = self._channels.get(key)
        if state is None:
            state = self._channels[key] = _Channel(epoch=new_epoch())
        return state

    @staticmethod
    def _kept(state: _Channel, now_ms: int) -> list[Entry]:
        """The entries that retention still keeps."""
        oldest_ms = now_ms - state.retention.age_ms_or_unlimited
        lowest = state.last - state.retention.count_or_unlimited
        return [e for e in state.entries if e.offset > lowest and e.ts >= oldest_ms]

    @staticmethod
    def _drop_expired(state: _Channel, now_ms: int) -> int:
        oldest_ms = now_ms - state.retention.age_ms_or_unlimited
        dropped = 0
        while state.entries and state.entries[0].ts < oldest_ms:
            state.entries.popleft()
            dropped += 1
        return dropped

    async def append_many(
        self, items: Sequence[tuple[str, str, NewEntry, Retention]]
    ) -> list[Entry]:
        return [await self.append(*item) for item in items]  # never suspends: no tasks needed

    async def append(
        self, app_id: str, channel: str, entry: NewEntry, retention: Retention
    ) -> Entry:
        if not self._running:
            raise RuntimeError("history store is not running")
        now_ms = self._now_ms()
        state = self._channel(app_id, channel)
        state.retention = retention
        if entry.idempotency_key is not None:
            first = state.keys.get(entry.idempotency_key)
            if first is not None and first.ts >= now_ms - IDEMPOTENCY_WINDOW_MS:
                return replace(first, duplicate=True)
        state.last += 1
        stored = Entry(
            offset=state.last,
            epoch=state.epoch,
            ts=now_ms,
            id=new_message_id(),
            event=entry.event,
            data=entry.data,
            publisher=entry.publisher,
            user_id=entry.user_id,
        )
        state.entries.append(stored)
        if entry.idempotency_key is not None:
            state.keys[entry.idempotency_key] = stored
        while len(state.entries) > retention.count_or_unlimited:
            state.entries.popleft()
        self._drop_expired(state, now_ms)
        return stored

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
            e
            for e in self._kept(state, self._now_ms())
            if (after is None or e.offset > after) and (before is None or e.offset < before)
        ]
        if direction == "backward":
            rows.reverse()
        return page_of(channel, state.epoch, rows[: limit + 1], limit)

    async def position(self, app_id: str, channel: str) -> tuple[int, str]:
        state = self._channel(app_id, channel)
        return state.last, state.epoch

    async def delete(self, app_id: str, channel: str) -> str:
        old = self._channels.get((app_id, channel))
        state = _Channel(epoch=new_epoch(old.epoch if old else None))
        if old is not None:
            state.retention = old.retention
        self._channels[(app_id, channel)] = state
        return state.epoch

    async def since(
        self, app_id: str, channel: str, offset: int, epoch: str, limit: int
    ) -> list[Entry] | None:
        state = self._channels.get((app_id, channel))
        if state is None or state.epoch != epoch or offset < 0 or offset > state.last:
            return None
        if state.last - offset > limit:
            return None
        rows = [e for e in self._kept(state, self._now_ms()) if e.offset > offset]
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
