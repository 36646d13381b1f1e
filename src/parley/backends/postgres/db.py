"""`PostgresDb`: the process's one handle on Parley's PostgreSQL database: ONE asyncpg pool that
every PostgreSQL store of the process borrows connections from, instead of a pool each.

It knows no table: the schema comes from `migrations.MIGRATIONS`, applied by `migrate`. A store
takes the handle, reads `pool` on every call (RuntimeError once the handle is closed), and never
opens or closes it: the composition root does, after the stores have closed.

`transaction` and `fetch` are for the compiled stores (the history store): compiled code must
never suspend while an exception propagates (speedups.py), and an `async with` around a
transaction does exactly that when the work fails. They run in this interpreted module and turn
a database that cannot be reached into StoreUnavailable (a 503, not a 500).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from parley.backends.database import Database, Migration
from parley.backends.postgres import migrations as schema
from parley.errors import StoreUnavailable
from parley.settings import without_password

T = TypeVar("T")

# What a database that is away, restarting or out of room raises: the same call may succeed
# later. Everything else (a constraint, a value PostgreSQL refuses) is the caller's to see.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

# Connections at most, for every store of the process together: as many as it had before the
# stores shared one pool (history 4, users and grants 2 each), so a node asks no more of the
# server than it did. The history store's group commit holds one at a time; the rest serve
# reads (history pages, recoveries, user and grant lookups) and the sweep.
POOL_SIZE = 8


class PostgresDb(Database):
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        migrations: Sequence[Migration] = schema.MIGRATIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.migrations = migrations
        self._clock = clock
        self._pool: Any = None  # asyncpg.Pool; asyncpg ships no types

    def describe(self) -> str:
        return f"PostgreSQL {without_password(self.url)}"

    async def open(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> Any:
        """The asyncpg pool; RuntimeError when the handle is not open."""
        if self._pool is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._pool

    async def transaction(self, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`work(conn, *args)` on a pooled connection in one transaction: committed when it
        returns, rolled back when it raises. StoreUnavailable when the database is away."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                return await work(conn, *args)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """The rows of one query; StoreUnavailable when the database is away."""
        try:
            rows: list[Any] = await self.pool.fetch(query, *args)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc
        return rows

    async def migrate(self) -> list[Migration]:
        return await schema.apply(self.pool, self.migrations, self._now_ms)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
