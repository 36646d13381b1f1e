"""Database handles for the store suites: opened and migrated as `parley serve` does, and
remembered so that the suite closes them after the stores."""

from __future__ import annotations

from parley.backends.database import Database


async def open_database(kind: str, target: str) -> Database:
    """A handle on the SQLite file or PostgreSQL URL `target`, open and migrated."""
    db: Database
    if kind == "sqlite":
        from parley.backends.sqlite.db import SqliteDb

        db = SqliteDb(target)
    elif kind == "postgres":
        from parley.backends.postgres.db import PostgresDb

        db = PostgresDb(target)
    else:
        raise ValueError(f"no database for {kind!r}")
    await db.open()
    try:
        await db.migrate()
    except BaseException:
        await db.close()
        raise
    return db
