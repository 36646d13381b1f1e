"""`SqliteGrantStore`: grants in the `parley_grants` table of the embedded SQLite file, where
every process opening the same file (the server, an admin tool) sees the others' changes.

Each call is one short transaction on the connection thread of the process's `SqliteDb`, which
made the table (migration 1).
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Callable, Iterable
from functools import partial
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
from parley.backends.sqlite.db import SqliteDb

LIVE = "deleted_at IS NULL AND (expires_at IS NULL OR expires_at > :now)"
SWEEP = "DELETE FROM parley_grants WHERE deleted_at < ? OR expires_at < ?"


class SqliteGrantStore(GrantStore):
    def __init__(self, db: SqliteDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    @property
    def _db(self) -> SqliteDb:
        self.check_running()
        return self.db

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
        await self._db.write(partial(self._insert, grant_row(grant)))
        await self._sweep_when_due(now)
        return grant

    @staticmethod
    def _insert(row: tuple[Any, ...], conn: sqlite3.Connection) -> None:
        conn.execute(
            f"INSERT INTO parley_grants ({GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row
        )

    async def get(self, app_id: str, grant_id: str) -> Grant | None:
        found = await self._select("id = :id", {"app_id": app_id, "id": grant_id})
        return found[0] if found else None

    async def list(
        self, app_id: str, subject: str | None = None, resource: str | None = None
    ) -> builtins.list[Grant]:
        return await self._select(
            "(:subject IS NULL OR subject = :subject)"
            " AND (:resource IS NULL OR resource = :resource)",
            {"app_id": app_id, "subject": subject, "resource": resource},
        )

    async def active(self, app_id: str) -> builtins.list[Grant]:
        return await self._select("1", {"app_id": app_id})

    async def _select(self, where: str, params: dict[str, Any]) -> builtins.list[Grant]:
        """The app's live grants that also satisfy `where`, oldest first."""
        sql = (
            f"SELECT {GRANT_COLUMNS} FROM parley_grants WHERE app_id = :app_id AND {LIVE}"
            f" AND {where} ORDER BY created_at, id"
        )
        params = {**params, "now": self.now_ms()}
        return await self._db.read(partial(_select_grants, sql, params))

    async def delete(self, app_id: str, grant_id: str) -> Grant | None:
        now = self.now_ms()
        grant = await self._db.write(partial(self._delete, app_id, grant_id, now))
        await self._sweep_when_due(now)
        return grant

    @staticmethod
    def _delete(app_id: str, grant_id: str, now: int, conn: sqlite3.Connection) -> Grant | None:
        row = conn.execute(
            f"SELECT {GRANT_COLUMNS} FROM parley_grants"
            f" WHERE app_id = :app_id AND id = :id AND {LIVE}",
            {"app_id": app_id, "id": grant_id, "now": now},
        ).fetchone()
        if row is None:
            return None
        grant = grant_from_row(row)
        conn.execute(
            "UPDATE parley_grants SET deleted_at = ? WHERE app_id = ? AND id = ?",
            (max(now, grant.created_at), app_id, grant_id),  # after its creation, whatever clocks
        )
        return grant

    async def changes_since(self, app_id: str | None, since_ms: int) -> builtins.list[GrantChange]:
        rows = await self._db.read(partial(self._changes, app_id, since_ms))
        return changes_from_rows(rows, since_ms)

    @staticmethod
    def _changes(
        app_id: str | None, since_ms: int, conn: sqlite3.Connection
    ) -> builtins.list[tuple[Any, ...]]:
        cursor = conn.execute(
            f"SELECT {GRANT_COLUMNS}, deleted_at FROM parley_grants"
            " WHERE (created_at >= ? OR deleted_at >= ?) AND (? IS NULL OR app_id = ?)",
            (since_ms, since_ms, app_id, app_id),
        )
        return [tuple(r) for r in cursor]

    async def _remove_before(self, cutoff: int) -> int:
        return await self._db.write(partial(_rowcount, SWEEP, (cutoff, cutoff)))


def _select_grants(sql: str, params: dict[str, Any], conn: sqlite3.Connection) -> list[Grant]:
    return [grant_from_row(r) for r in conn.execute(sql, params)]


def _rowcount(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> int:
    return conn.execute(sql, params).rowcount
