"""`SqliteUserStore`: user accounts in the `parley_users` table of the embedded SQLite file,
shared by the server and `parley users` (a separate process) through WAL mode.

Hashing runs on worker threads outside any transaction; each read or write is one short
transaction on the connection thread of the process's `SqliteDb`, which made the table
(migration 1).
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from argon2 import PasswordHasher

from parley.backends.sqlite.db import SqliteDb
from parley.backends.users import (
    USER_COLUMNS,
    Passwords,
    User,
    UserStore,
    check_info,
    check_name,
    user_from_row,
)


class SqliteUserStore(UserStore):
    def __init__(
        self,
        db: SqliteDb,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner
        self._passwords = Passwords(hasher)

    @property
    def _db(self) -> SqliteDb:
        self.check_running()
        return self.db

    async def add(
        self, app_id: str, name: str, password: str, info: dict[str, Any] | None = None
    ) -> User:
        check_name(name)
        stored_info = check_info(info)
        password_hash = await self._passwords.hash(password)
        now = self.now_ms()
        row = (app_id, name, stored_info, now, now, None, password_hash)
        await self._db.write(partial(self._insert, row))
        return user_from_row(row)

    @staticmethod
    def _insert(row: tuple[Any, ...], conn: sqlite3.Connection) -> None:
        try:
            conn.execute(
                f"INSERT INTO parley_users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"user {row[1]!r} already exists in app {row[0]!r}") from None

    async def set_password(self, app_id: str, name: str, password: str) -> bool:
        password_hash = await self._passwords.hash(password)
        return await self._update(
            "password_hash = ?, updated_at = ?", (password_hash, self.now_ms()), app_id, name
        )

    async def verify(self, app_id: str, name: str, password: str) -> User | None:
        user = await self.get(app_id, name)
        stored = None if user is None else user.password_hash
        if not await self._passwords.check(stored, password) or user is None:
            return None
        if self._passwords.needs_rehash(user.password_hash):
            await self.set_password(app_id, name, password)
        now = await self.get(app_id, name)  # disabled while the hash was checked?
        return None if now is None or now.disabled else now

    async def get(self, app_id: str, name: str) -> User | None:
        return await self._db.read(partial(self._select_one, app_id, name))

    @staticmethod
    def _select_one(app_id: str, name: str, conn: sqlite3.Connection) -> User | None:
        row = conn.execute(
            f"SELECT {USER_COLUMNS} FROM parley_users WHERE app_id = ? AND name = ?", (app_id, name)
        ).fetchone()
        return None if row is None else user_from_row(row)

    async def list(self, app_id: str) -> builtins.list[User]:
        return await self._db.read(partial(self._select_app, app_id))

    @staticmethod
    def _select_app(app_id: str, conn: sqlite3.Connection) -> builtins.list[User]:
        rows = conn.execute(
            f"SELECT {USER_COLUMNS} FROM parley_users WHERE app_id = ? ORDER BY name", (app_id,)
        )
        return [user_from_row(r) for r in rows]

    async def disable(self, app_id: str, name: str) -> bool:
        now = self.now_ms()
        return await self._update("disabled_at = ?, updated_at = ?", (now, now), app_id, name)

    async def enable(self, app_id: str, name: str) -> bool:
        return await self._db.write(partial(self._enable, app_id, name, self.now_ms()))

    @staticmethod
    def _enable(app_id: str, name: str, now: int, conn: sqlite3.Connection) -> bool:
        conn.execute(
            "UPDATE parley_users SET disabled_at = NULL, updated_at = ?"
            " WHERE app_id = ? AND name = ? AND disabled_at IS NOT NULL",
            (now, app_id, name),
        )
        found = conn.execute(
            "SELECT 1 FROM parley_users WHERE app_id = ? AND name = ?", (app_id, name)
        ).fetchone()
        return found is not None

    async def disabled_since(
        self, app_id: str | None, since_ms: int
    ) -> builtins.list[tuple[str, str]]:
        return await self._db.read(partial(self._disabled_since, app_id, since_ms))

    @staticmethod
    def _disabled_since(
        app_id: str | None, since_ms: int, conn: sqlite3.Connection
    ) -> builtins.list[tuple[str, str]]:
        rows = conn.execute(
            "SELECT app_id, name FROM parley_users"
            " WHERE disabled_at >= ? AND (? IS NULL OR app_id = ?)"
            " ORDER BY disabled_at, app_id, name",
            (since_ms, app_id, app_id),
        )
        return [(r[0], r[1]) for r in rows]

    async def _update(
        self, assignments: str, values: tuple[Any, ...], app_id: str, name: str
    ) -> bool:
        sql = f"UPDATE parley_users SET {assignments} WHERE app_id = ? AND name = ?"
        return await self._db.write(partial(_changed, sql, (*values, app_id, name)))


def _changed(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> bool:
    return conn.execute(sql, params).rowcount > 0
