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
        super().__init__(clock)
        self._rows: dict[tuple[str, str], _Row] = {}  # (app_id, id), in creation order

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
        self.check_running()
        now = self.now_ms()
        grant = new_grant(app_id, subject, resource, operations, ttl_s, granted_by, now)
        self._rows[(app_id, grant.id)] = _Row(grant)
        await self._sweep_when_due(now)
        return grant

    async def get(self, app_id: str, grant_id: str) -> Grant | None:
        self.check_running()
        row = self._rows.get((app_id, grant_id))
        if row is None or row.deleted_at is not None or row.grant.expired(self.now_ms()):
            return None
        return row.grant

    async def list(
        self, app_id: str, subject: str | None = None, resource: str | None = None
    ) -> builtins.list[Grant]:
        self.check_running()
        return [
            g
            for g in self._live(app_id, self.now_ms())
            if (subject is None or g.subject == subject)
            and (resource is None or g.resource == resource)
        ]

    async def delete(self, app_id: str, grant_id: str) -> Grant | None:
        self.check_running()
        now = self.now_ms()
        row = self._rows.get((app_id, grant_id))
        if row is None or row.deleted_at is not None or row.grant.expired(now):
            return None
        row.deleted_at = max(now, row.grant.created_at)  # after its creation, whatever the clocks
        await self._sweep_when_due(now)
        return row.grant

    async def active(self, app_id: str) -> builtins.list[Grant]:
        self.check_running()
        return self._live(app_id, self.now_ms())

    async def changes_since(self, app_id: str | None, since_ms: int) -> builtins.list[GrantChange]:
        self.check_running()
        rows = (
            (*grant_row(r.grant), r.deleted_at)
            for (a, _), r in self._rows.items()
            if app_id is None or a == app_id
        )
        return changes_from_rows(rows, since_ms)

    async def _remove_before(self, cutoff: int) -> int:
        gone = [
            key
            for key, r in self._rows.items()
            if (r.deleted_at is not None and r.deleted_at < cutoff)
            or (r.grant.expires_at is not None and r.grant.expires_at < cutoff)
        ]
        for key in gone:
            del self._rows[key]
        return len(gone)
