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
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

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
