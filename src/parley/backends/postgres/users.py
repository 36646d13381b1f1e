"""`PostgresUserStore`: user accounts in the `parley_users` table of PostgreSQL, shared by every
node of a cluster and by `parley users`.

Hashing runs on worker threads, never while a connection is held; each call is one statement
on a connection of the process's `PostgresDb` pool. The table is migration 1's.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher

from parley.backends.postgres.db import PostgresDb
from parley.backends.users import (
    USER_COLUMNS,
    Passwords,
    User,
    UserStore,
    check_info,
    check_name,
    user_from_row,
)

# One statement: leaves an enabled user untouched and still says whether the user exists.
ENABLE = """
WITH changed AS (
    UPDATE parley_users SET disabled_at = NULL, updated_at = $3
    WHERE app_id = $1 AND name = $2 AND disabled_at IS NOT NULL
)
SELECT 1 FROM parley_users WHERE app_id = $1 AND name = $2
"""


class PostgresUserStore(UserStore):
    def __init__(
        self,
        db: PostgresDb,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner
        self._passwords = Passwords(hasher)

    @property
    def pool(self) -> Any:
        self.check_running()
        return self.db.pool

    async def add(
        self, app_id: str, name: str, password: str, info: dict[str, Any] | None = None
    ) -> User:
        check_name(name)
        stored_info = check_info(info)
        password_hash = await self._passwords.hash(password)
        now = self.now_ms()
        row = (app_id, name, stored_info, now, now, None, password_hash)
        inserted = await self.pool.fetchval(
            f"INSERT INTO parley_users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (app_id, name) DO NOTHING RETURNING 1",
            *row,
        )
        if inserted is None:
            raise ValueError(f"user {name!r} already exists in app {app_id!r}")
        return user_from_row(row)

    async def set_password(self, app_id: str, name: str, password: str) -> bool:
        password_hash = await self._passwords.hash(password)
        status = await self.pool.execute(
            "UPDATE parley_users SET password_hash = $3, updated_at = $4"
            " WHERE app_id = $1 AND name = $2",
            app_id,
            name,
            password_hash,
            self.now_ms(),
        )
        return _count(status) > 0

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
        row = await self.pool.fetchrow(
            f"SELECT {USER_COLUMNS} FROM parley_users WHERE app_id = $1 AND name = $2", app_id, name
        )
        return None if row is None else user_from_row(list(row))

    async def list(self, app_id: str) -> builtins.list[User]:
        # COLLATE "C": the same byte order as SQLite and Python, whatever the database's locale.
        rows = await self.pool.fetch(
            f'SELECT {USER_COLUMNS} FROM parley_users WHERE app_id = $1 ORDER BY name COLLATE "C"',
            app_id,
        )
        return [user_from_row(list(r)) for r in rows]

    async def disable(self, app_id: str, name: str) -> bool:
        now = self.now_ms()
        status = await self.pool.execute(
            "UPDATE parley_users SET disabled_at = $3, updated_at = $3"
            " WHERE app_id = $1 AND name = $2",
            app_id,
            name,
            now,
        )
        return _count(status) > 0

    async def enable(self, app_id: str, name: str) -> bool:
        found = await self.pool.fetchval(ENABLE, app_id, name, self.now_ms())
        return found is not None

    async def disabled_since(
        self, app_id: str | None, since_ms: int
    ) -> builtins.list[tuple[str, str]]:
        rows = await self.pool.fetch(
            "SELECT app_id, name FROM parley_users"
            " WHERE disabled_at >= $1 AND ($2::text IS NULL OR app_id = $2)"
            ' ORDER BY disabled_at, app_id COLLATE "C", name COLLATE "C"',
            since_ms,
            app_id,
        )
        return [(str(r[0]), str(r[1])) for r in rows]


def _count(status: str) -> int:
    """The row count of a command tag such as "UPDATE 1"."""
    return int(status.split()[-1])
