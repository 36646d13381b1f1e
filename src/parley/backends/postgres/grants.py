"""`PostgresGrantStore`: grants in the `parley_grants` table of PostgreSQL, shared by every node
of a cluster; each node follows the others' creations and revocations with `changes_since`.

Each call is one statement on a connection of the process's `PostgresDb` pool; nothing here
holds a lock across round trips. The table is migration 1's.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable
from typing import Any

from parley.auth.grants import Grant
from parley.backends.grants import (
    GRANT_COLUMNS,
    GrantChange,
    GrantStore,
    changes_from_rows,
    grant_from_row,
    grant_row,
    new_grant,
)
from parley.backends.postgres.db import PostgresDb

# $1 app_id, $2 now; "live": neither revoked nor expired.
SELECT_LIVE = f"""
SELECT {GRANT_COLUMNS} FROM parley_grants
WHERE app_id = $1 AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > $2)
"""
ORDER = ' ORDER BY created_at, id COLLATE "C"'

DELETE = f"""
UPDATE parley_grants SET deleted_at = GREATEST($3, created_at)
WHERE app_id = $1 AND id = $2 AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > $3)
RETURNING {GRANT_COLUMNS}
"""

CHANGES = f"""
SELECT {GRANT_COLUMNS}, deleted_at FROM parley_grants
WHERE (created_at >= $1 OR deleted_at >= $1) AND ($2::text IS NULL OR app_id = $2)
"""


class PostgresGrantStore(GrantStore):
    def __init__(self, db: PostgresDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    @property
    def pool(self) -> Any:
        self.check_running()
        return self.db.pool

    async def create(
        self,
        app_id: str,
        subject: str,
        resource: str,
        operations: Iterable[str],
        ttl_s: float | None = None,
        granted_by: str | None = None,
    ) -> Grant:
        now = self.now_ms()
        grant = new_grant(app_id, subject, resource, operations, ttl_s, granted_by, now)
        await self.pool.execute(
            f"INSERT INTO parley_grants ({GRANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            *grant_row(grant),
        )
        await self._sweep_when_due(now)
        return grant

    async def get(self, app_id: str, grant_id: str) -> Grant | None:
        row = await self.pool.fetchrow(
            SELECT_LIVE + " AND id = $3", app_id, self.now_ms(), grant_id
        )
        return None if row is None else grant_from_row(list(row))

    async def list(
        self, app_id: str, subject: str | None = None, resource: str | None = None
    ) -> builtins.list[Grant]:
        rows = await self.pool.fetch(
            SELECT_LIVE
            + " AND ($3::text IS NULL OR subject = $3) AND ($4::text IS NULL OR resource = $4)"
            + ORDER,
            app_id,
            self.now_ms(),
            subject,
            resource,
        )
        return [grant_from_row(list(r)) for r in rows]

    async def active(self, app_id: str) -> builtins.list[Grant]:
        rows = await self.pool.fetch(SELECT_LIVE + ORDER, app_id, self.now_ms())
        return [grant_from_row(list(r)) for r in rows]

    async def delete(self, app_id: str, grant_id: str) -> Grant | None:
        now = self.now_ms()
        row = await self.pool.fetchrow(DELETE, app_id, grant_id, now)
        await self._sweep_when_due(now)
        return None if row is None else grant_from_row(list(row))

    async def changes_since(self, app_id: str | None, since_ms: int) -> builtins.list[GrantChange]:
        rows = await self.pool.fetch(CHANGES, since_ms, app_id)
        return changes_from_rows((list(r) for r in rows), since_ms)

    async def _remove_before(self, cutoff: int) -> int:
        status = await self.pool.execute(
            "DELETE FROM parley_grants WHERE deleted_at < $1 OR expires_at < $1", cutoff
        )
        return int(status.split()[-1])
