"""The schema of `<data_dir>/parley.db`, as numbered migrations, and the runner that applies them
(see `backends.database` for the rules every technology follows).

The runner is plain synchronous code on one `sqlite3.Connection` (autocommit mode, transactions
begun explicitly), so it is tested without an event loop; `SqliteDb.migrate` runs it on the
handle's thread. Each pending migration runs under BEGIN IMMEDIATE, SQLite's write lock, which
is what serializes two processes migrating the same file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence

from parley.backends.database import (
    MIGRATIONS_TABLE,
    Migration,
    MigrationFailed,
    check_migrations,
)

# 1: the tables of the users and grants stores, exactly as those stores created them before
# migrations existed (IF NOT EXISTS: on a database from then, it changes nothing).
USERS_AND_GRANTS = """
CREATE TABLE IF NOT EXISTS parley_users (
    app_id        TEXT NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,     -- argon2id, PHC string
    info          TEXT,              -- a JSON object, or NULL
    created_at    INTEGER NOT NULL,  -- milliseconds since the Unix epoch
    updated_at    INTEGER NOT NULL,
    disabled_at   INTEGER,           -- NULL while enabled
    PRIMARY KEY (app_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parley_users_disabled
    ON parley_users (disabled_at) WHERE disabled_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS parley_grants (
    id         TEXT NOT NULL,
    app_id     TEXT NOT NULL,
    subject    TEXT NOT NULL,     -- a user id, or '*'
    resource   TEXT NOT NULL,     -- a channel name, or a pattern with '*'
    operations TEXT NOT NULL,     -- sorted, comma-separated
    created_at INTEGER NOT NULL,  -- milliseconds since the Unix epoch
    expires_at INTEGER,           -- NULL: until revoked
    granted_by TEXT,
    deleted_at INTEGER,           -- set when revoked: the row is a tombstone for an hour
    PRIMARY KEY (app_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parley_grants_created ON parley_grants (created_at);
CREATE INDEX IF NOT EXISTS parley_grants_deleted
    ON parley_grants (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS parley_grants_expires
    ON parley_grants (expires_at) WHERE expires_at IS NOT NULL;
"""

MIGRATIONS: Sequence[Migration] = check_migrations(
    (
        Migration(1, "users and grants", USERS_AND_GRANTS),
        # 2: the history tables (parley_history_*), when the history store stops creating them
        # itself (sqlite.history.SCHEMA, with IF NOT EXISTS for the databases it made).
    )
)

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL  -- milliseconds since the Unix epoch
)
"""


def statements(sql: str) -> Iterator[str]:
    """The statements of a script, one at a time: `sqlite3` runs one per `execute`, and its
    `executescript` would commit the transaction the migration runs in. A `;` inside a string
    or a comment does not end a statement (`sqlite3.complete_statement` says when one ends)."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement: {pending[:80]!r}")


def recorded(conn: sqlite3.Connection) -> set[int]:
    """The versions recorded as applied (none before the table exists)."""
    conn.execute("BEGIN")
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
        ).fetchone()
        if exists is None:
            return set()
        return {row[0] for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
    finally:
        conn.execute("COMMIT")


def apply(
    conn: sqlite3.Connection, migrations: Sequence[Migration], now_ms: Callable[[], int]
) -> list[Migration]:
    """Apply what `migrations` has that the database has not recorded; return what was applied.
    Nothing pending costs one read transaction."""
    done = recorded(conn)
    applied = []
    try:
        for migration in migrations:
            if migration.version not in done and _apply_one(conn, migration, now_ms):
                applied.append(migration)
    except MigrationFailed as exc:
        exc.applied = applied
        raise
    return applied


def _apply_one(conn: sqlite3.Connection, migration: Migration, now_ms: Callable[[], int]) -> bool:
    """Run one migration and record it in one write transaction, unless another process
    recorded it first; whether this call applied it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(CREATE_TABLE)
        found = conn.execute(
            f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE version = ?", (migration.version,)
        ).fetchone()
        if found is None:
            try:
                for statement in statements(migration.sql):
                    conn.execute(statement)
            except (sqlite3.Error, ValueError) as exc:
                raise MigrationFailed(migration, exc) from exc
            conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_ms()),
            )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found is None
