"""The database role: the one handle per durable technology per process that every store of that
technology shares (`Database`), and the numbered schema changes it applies (`Migration`).

The composition root makes the handle, opens it, applies the pending migrations and hands it to
the stores, which never create a table themselves; it closes the handle after the stores. The
handles: `sqlite.db.SqliteDb`, `postgres.db.PostgresDb`. Memory stores need none.

Migrations. Each technology lists its schema in `<tech>/migrations.py` as `MIGRATIONS`: numbered
from 1 without gaps, applied in order, each in its own transaction together with the row that
records it in `parley_schema_migrations` (version, name, applied_at in Unix ms), so a migration
is either applied and recorded or neither. Runners on the same database at once (two nodes
starting, `parley migrate` beside a server) take a lock first and look again, so each migration
runs exactly once. A migration is never edited once released: a change is a new migration.

`apply_migrations` is that procedure, written once; each technology gives it a
`MigrationConnection` (its SQL dialect and its lock) in `<tech>/migrations.py`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MIGRATIONS_TABLE = "parley_schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int  # 1, 2, ...: the order they are applied in
    name: str  # what it does, for the log and `parley migrate`
    sql: str  # one or more statements, run in one transaction


class MigrationFailed(Exception):
    """A migration raised: its transaction was rolled back and it is not recorded. `applied`:
    the migrations the same run applied before it, which stay."""

    def __init__(self, migration: Migration, cause: BaseException) -> None:
        super().__init__(f"migration {migration.version} ({migration.name}) failed: {cause}")
        self.migration = migration
        self.applied: list[Migration] = []


def check_migrations(migrations: Sequence[Migration]) -> Sequence[Migration]:
    """`migrations` when they are numbered 1, 2, ... in order and named; else ValueError."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {migration.version} ({migration.name}) is not {expected}")
        if not migration.name or not migration.sql.strip():
            raise ValueError(f"migration {migration.version} has no name or no SQL")
    return migrations


class MigrationConnection(abc.ABC):
    """One connection to a database as `apply_migrations` uses it: what differs between
    technologies (the SQL dialect, the lock, the errors a failed statement raises)."""

    errors: tuple[type[BaseException], ...]  # what a migration that fails raises

    @abc.abstractmethod
    async def recorded(self) -> set[int]:
        """The versions recorded as applied (none before the table exists), without the lock."""

    @abc.abstractmethod
    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """One transaction holding the lock that serializes the runners on this database:
        committed when the block ends, rolled back when it raises."""

    @abc.abstractmethod
    async def is_recorded(self, version: int) -> bool:
        """Inside `exclusive`: make MIGRATIONS_TABLE if missing; whether `version` is in it."""

    @abc.abstractmethod
    async def run(self, sql: str) -> None:
        """Inside `exclusive`: run a migration's statements."""

    @abc.abstractmethod
    async def record(self, migration: Migration, applied_at_ms: int) -> None:
        """Inside `exclusive`: add the row that says `migration` is applied."""


async def apply_migrations(
    conn: MigrationConnection, migrations: Sequence[Migration], now_ms: Callable[[], int]
) -> list[Migration]:
    """Apply what `migrations` has that the database has not recorded, in order, each in its
    own `exclusive` transaction together with its record; return what this call applied.
    Nothing pending costs one look and takes no lock. MigrationFailed when one fails."""
    done = await conn.recorded()
    applied: list[Migration] = []
    for migration in migrations:
        if migration.version in done:
            continue
        try:
            if await _apply_one(conn, migration, now_ms):
                applied.append(migration)
        except MigrationFailed as exc:
            exc.applied = applied
            raise
    return applied


async def _apply_one(
    conn: MigrationConnection, migration: Migration, now_ms: Callable[[], int]
) -> bool:
    """Run one migration and record it, unless another runner recorded it since the first
    look; whether this call applied it."""
    async with conn.exclusive():
        if await conn.is_recorded(migration.version):
            return False
        try:
            await conn.run(migration.sql)
        except conn.errors as exc:
            raise MigrationFailed(migration, exc) from exc
        await conn.record(migration, now_ms())
    return True


def run_without_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (every await in it is plain synchronous
    work, as in a SQLite migration run), computed without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("the coroutine suspended: it needs an event loop")


class Database(abc.ABC):
    """One technology's handle on its database, shared by all of that technology's stores."""

    migrations: Sequence[Migration]  # what `migrate` applies, in order

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect. Applies nothing: `migrate` does."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect; stores using the handle fail with RuntimeError afterwards."""

    @abc.abstractmethod
    async def migrate(self) -> list[Migration]:
        """Apply the migrations not yet recorded, in order, and return them (empty when the
        database is up to date). MigrationFailed when one raises: those before it stay applied,
        it and those after it are not."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Which database this is, for messages: a path, or a URL without its password."""
