"""The schema of Parley's PostgreSQL database, as numbered migrations, and the runner that
applies them (see `backends.database` for the rules every technology follows).

Every node of a cluster runs the migrations at start, and `parley migrate` may run beside them:
each pending migration runs in one transaction that first takes the transaction-scoped advisory
lock SCHEMA_LOCK and then looks again whether it is recorded, so two runners never both apply
one. The lock is the one the history store takes to create its own tables, so the two never
race either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from parley.backends.database import (
    MIGRATIONS_TABLE,
    Migration,
    MigrationFailed,
    check_migrations,
)

SCHEMA_LOCK = 0x7061726C6579  # "parley"; postgres.history.SCHEMA_LOCK is the same key

# 1: the tables of the users and grants stores, exactly as those stores created them before
# migrations existed (IF NOT EXISTS: on a database from then, it changes nothing).
USERS_AND_GRANTS = """
CREATE TABLE IF NOT EXISTS parley_users (
    app_id        text NOT NULL,
    name          text NOT NULL,
    password_hash text NOT NULL,    -- argon2id, PHC string
    info          text,             -- a JSON object, or NULL
    created_at    bigint NOT NULL,  -- milliseconds since the Unix epoch
    updated_at    bigint NOT NULL,
    disabled_at   bigint,           -- NULL while enabled
    PRIMARY KEY (app_id, name)
);
CREATE INDEX IF NOT EXISTS parley_users_disabled
    ON parley_users (disabled_at) WHERE disabled_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS parley_grants (
    id         text NOT NULL,
    app_id     text NOT NULL,
    subject    text NOT NULL,    -- a user id, or '*'
    resource   text NOT NULL,    -- a channel name, or a pattern with '*'
    operations text NOT NULL,    -- sorted, comma-separated
    created_at bigint NOT NULL,  -- milliseconds since the Unix epoch
    expires_at bigint,           -- NULL: until revoked
    granted_by text,
    deleted_at bigint,           -- set when revoked: the row is a tombstone for an hour
    PRIMARY KEY (app_id, id)
);
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
        # itself (postgres.history.SCHEMA, with IF NOT EXISTS for the databases it made).
    )
)

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at bigint NOT NULL  -- milliseconds since the Unix epoch
)
"""


async def recorded(conn: Any) -> set[int]:
    """The versions recorded as applied (none before the table exists)."""
    if await conn.fetchval("SELECT to_regclass($1)", MIGRATIONS_TABLE) is None:
        return set()
    return {row[0] for row in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}


async def apply(
    pool: Any, migrations: Sequence[Migration], now_ms: Callable[[], int]
) -> list[Migration]:
    """Apply what `migrations` has that the database has not recorded, on one connection of
    `pool` (an asyncpg pool); return what was applied. Nothing pending costs one round trip
    or two, and takes no lock."""
    applied = []
    async with pool.acquire() as conn:
        done = await recorded(conn)
        try:
            for migration in migrations:
                if migration.version not in done and await _apply_one(conn, migration, now_ms):
                    applied.append(migration)
        except MigrationFailed as exc:
            exc.applied = applied
            raise
    return applied


async def _apply_one(conn: Any, migration: Migration, now_ms: Callable[[], int]) -> bool:
    """Run one migration and record it in one transaction under SCHEMA_LOCK, unless another
    runner recorded it first; whether this call applied it."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute(CREATE_TABLE)
        found = await conn.fetchval(
            f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE version = $1", migration.version
        )
        if found is not None:
            return False
        try:
            await conn.execute(migration.sql)
        except asyncpg.PostgresError as exc:
            raise MigrationFailed(migration, exc) from exc
        await conn.execute(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            now_ms(),
        )
    return True
