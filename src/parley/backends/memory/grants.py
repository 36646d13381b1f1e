"""`MemoryGrantStore`: grants in this process's memory, for unit tests and as the reference the
durable stores must behave like. Nothing survives the process, and no other process sees it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from parley.auth.grants import Grant
from parley.backends.grants import (
    SWEEP_EVERY_MS,
    TOMBSTONE_KEEP_MS,
    GrantChange,
    GrantStore,
    changes_from_rows,
    grant_row,
    new_grant,
)


@dataclass(slots=True)
class _Row:
    grant: Grant
    deleted_at: int | None = None


class MemoryGrantStore(GrantStore):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: dict[tuple[str, str], _Row] = {}  # (app_id, id), in creation order
        self._running = False
        self._swept_at = 0

    async def start(self) -> None:
        self._running = True
        await self.sweep()

    async def close(self) -> None:
        self._running = False

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeError("grant store is not running")

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _live(self, app_id: str, now_ms: int) -> builtins.list[Grant]:
        rows = (r for (a, _), r in self._rows.items() if a == app_id)
        found = [r.grant for r in rows if r.deleted_at is None and not r.grant.expired(now_ms)]
        found.sort(key=lambda g: (g.created_at, g.id))
        return found

    async def create(
        self,
        app_id: str,
        subject: str,
        resource: str,
        operations: Iterable[str],
        ttl_s: float | None = None,
        granted_by: str | None = None,
    ) -> Grant:
        self._check_running()
        now = self._now_ms()
        grant = new_grant(app_id, subject, resource, operations, ttl_s, granted_by, now)
        self._rows[(app_id, grant.id)] = _Row(grant)
        await self._sweep_when_due(now)
        return grant

    async def get(self, app_id: str, grant_id: str) -> Grant | None:
        self._check_running()
        row = self._rows.get((app_id, grant_id))
        if row is None or row.deleted_at is not None or row.grant.expired(self._now_ms()):
            return None
        return row.grant

    async def list(
        self, app_id: str, subject: str | None = None, resource: str | None = None
    ) -> builtins.list[Grant]:
        self._check_running()
        return [
            g
            for g in self._live(app_id, self._now_ms())
            if (subject is None or g.subject == subject)
            and (resource is None or g.resource == resource)
        ]

    async def delete(self, app_id: str, grant_id: str) -> Grant | None:
        self._check_running()
        now = self._now_ms()
        row = self._rows.get((app_id, grant_id))
        if row is None or row.deleted_at is not None or row.grant.expired(now):
            return None
        row.deleted_at = max(now, row.grant.created_at)  # after its creation, whatever the clocks
        await self._sweep_when_due(now)
        return row.grant

    async def active(self, app_id: str) -> builtins.list[Grant]:
        self._check_running()
        return self._live(app_id, self._now_ms())

    async def changes_since(self, app_id: str | None, since_ms: int) -> builtins.list[GrantChange]:
        self._check_running()
        rows = (
            (*grant_row(r.grant), r.deleted_at)
            for (a, _), r in self._rows.items()
            if app_id is None or a == app_id
        )
        return changes_from_rows(rows, since_ms)

    async def _sweep_when_due(self, now_ms: int) -> None:
        if now_ms - self._swept_at >= SWEEP_EVERY_MS:
            await self.sweep()

    async def sweep(self) -> int:
        self._check_running()
        self._swept_at = self._now_ms()
        cutoff = self._swept_at - TOMBSTONE_KEEP_MS
        gone = [
            key
            for key, r in self._rows.items()
            if (r.deleted_at is not None and r.deleted_at < cutoff)
            or (r.grant.expires_at is not None and r.grant.expires_at < cutoff)
        ]
        for key in gone:
            del self._rows[key]
        return len(gone)
