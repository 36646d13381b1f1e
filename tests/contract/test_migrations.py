"""The database handles and their versioned migrations, on SQLite and PostgreSQL.

Each PostgreSQL case runs in a schema of its own (the URL's search_path), so it starts from an
empty database and leaves nothing behind. PostgreSQL cases skip loudly when the server is
unreachable, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from parley.backends.database import (
    Database,
    Migration,
    MigrationFailed,
    check_migrations,
    run_without_loop,
)
from parley.backends.sqlite import migrations as sqlite_schema
from parley.backends.sqlite.db import SqliteDb
from parley.backends.sqlite.grants import SqliteGrantStore
from parley.backends.sqlite.users import SqliteUserStore
from tests.conftest import require
from tests.support.stores import PG_URL, FakeClock, postgres_problem

DURABLE = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
T0 = 1_700_000_000.0

# Not idempotent on purpose: running one twice fails or shows in the probe's rows.
PROBE = (
    Migration(1, "probe table", "CREATE TABLE probe (version integer NOT NULL)"),
    Migration(2, "probe row 2", "INSERT INTO probe (version) VALUES (2)"),
    Migration(3, "probe row 3; and a comment", "-- done; twice?\nINSERT INTO probe VALUES (3);"),
)


@dataclass
class Target:
    """One empty database: a SQLite file, or a PostgreSQL schema of its own."""

    kind: str
    where: str  # the SQLite path or the PostgreSQL URL
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    opened: list[Database] = field(default_factory=list)

    async def open(self, migrations: Sequence[Migration] | None = None) -> Database:
        """An open handle that applies `migrations` (the technology's own when None)."""
        options: dict[str, Any] = {"clock": self.clock}
        if migrations is not None:
            options["migrations"] = migrations
        db: Database
        if self.kind == "sqlite":
            db = SqliteDb(self.where, **options)
        else:
            from parley.backends.postgres.db import PostgresDb

            db = PostgresDb(self.where, **options)
        await db.open()
        self.opened.append(db)
        return db

    async def query(self, db: Database, sql: str) -> list[tuple[Any, ...]]:
        if isinstance(db, SqliteDb):
            return await db.read(lambda conn: [tuple(r) for r in conn.execute(sql)])
        from parley.backends.postgres.db import PostgresDb

        assert isinstance(db, PostgresDb)
        return [tuple(r) for r in await db.pool.fetch(sql)]

    async def recorded(self, db: Database) -> list[tuple[Any, ...]]:
        return await self.query(
            db, "SELECT version, name, applied_at FROM parley_schema_migrations ORDER BY version"
        )

    async def tables(self, db: Database) -> set[str]:
        if self.kind == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        return {row[0] for row in await self.query(db, sql)}


@contextlib.asynccontextmanager
async def _empty_database(kind: str, tmp_path: Path) -> AsyncIterator[Target]:
    if kind == "sqlite":
        found = Target("sqlite", str(tmp_path / "parley.db"))
        try:
            yield found
        finally:
            for db in found.opened:
                await db.close()
        return
    problem = await postgres_problem()
    require(problem is None, problem or "")
    import asyncpg  # type: ignore[import-untyped]

    schema = f"migrations_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        found = Target("postgres", f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}")
        try:
            yield found
        finally:
            for db in found.opened:
                await db.close()
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


@pytest.fixture(params=DURABLE)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    async with _empty_database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def pg_target(tmp_path: Path) -> AsyncIterator[Target]:
    async with _empty_database("postgres", tmp_path) as found:
        yield found


# -- the technologies' own migrations -----------------------------------------------------------


async def test_a_fresh_database_gets_every_migration_once(target: Target) -> None:
    db = await target.open()
    applied = await db.migrate()
    assert applied == list(db.migrations)
    assert [m.version for m in applied] == list(range(1, len(applied) + 1))
    t0_ms = int(T0 * 1000)
    assert await target.recorded(db) == [(m.version, m.name, t0_ms) for m in applied]
    assert {"parley_users", "parley_grants", "parley_schema_migrations"} <= await target.tables(db)


async def test_a_second_run_applies_nothing(target: Target) -> None:
    first = await target.open()
    assert await first.migrate() != []
    before = await target.recorded(first)
    target.clock.advance(60)
    assert await first.migrate() == []
    again = await target.open()  # another process, later
    assert await again.migrate() == []
    assert await target.recorded(again) == before


async def test_a_database_from_before_migrations_keeps_its_rows(target: Target) -> None:
    """Stores created their tables themselves until migrations existed: migration 1 finds
    them, changes nothing and is recorded."""
    db = await target.open(migrations=())  # a handle that applies nothing
    schema = sqlite_schema if target.kind == "sqlite" else _postgres_schema()
    await _run_script(target, db, schema.USERS_AND_GRANTS)
    await _run_script(
        target,
        db,
        "INSERT INTO parley_users (app_id, name, password_hash, info, created_at, updated_at)"
        " VALUES ('app', 'ann', 'h', NULL, 1, 1)",
    )
    migrated = await target.open()
    assert [m.version for m in await migrated.migrate()] == [1]
    assert await target.query(migrated, "SELECT app_id, name FROM parley_users") == [("app", "ann")]


# -- the rules, with migrations made for the test ---------------------------------------------


async def test_migrations_apply_in_order_and_only_the_new_ones(target: Target) -> None:
    old = await target.open(PROBE[:2])
    assert [m.version for m in await old.migrate()] == [1, 2]
    target.clock.advance(1)
    new = await target.open(PROBE)
    assert await new.migrate() == [PROBE[2]]
    assert await target.query(new, "SELECT version FROM probe ORDER BY version") == [(2,), (3,)]
    t0_ms = int(T0 * 1000)
    assert await target.recorded(new) == [
        (1, "probe table", t0_ms),
        (2, "probe row 2", t0_ms),
        (3, "probe row 3; and a comment", t0_ms + 1000),
    ]


async def test_a_failing_migration_rolls_back_and_is_not_recorded(target: Target) -> None:
    broken = Migration(
        3, "half done", "CREATE TABLE half (n integer); INSERT INTO no_such_table VALUES (1)"
    )
    db = await target.open((*PROBE[:2], broken, Migration(4, "after", "SELECT 1")))
    with pytest.raises(MigrationFailed, match=r"migration 3 \(half done\) failed") as failed:
        await db.migrate()
    assert failed.value.migration == broken
    assert failed.value.applied == list(PROBE[:2])
    assert [row[0] for row in await target.recorded(db)] == [1, 2]  # those before it stay
    assert "half" not in await target.tables(db)  # its first statement was rolled back too
    fixed = await target.open(PROBE)
    assert await fixed.migrate() == [PROBE[2]]
    assert [row[0] for row in await target.recorded(fixed)] == [1, 2, 3]


async def test_a_runner_that_read_too_early_looks_again_under_the_lock(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What another runner applied between this runner's first look and its lock is not
    applied again (PROBE's migrations would fail, or add a row, if run twice)."""
    first = await target.open(PROBE)
    assert len(await first.migrate()) == 3
    connection: Any = (
        sqlite_schema.SqliteMigrationConnection
        if target.kind == "sqlite"
        else _postgres_schema().PostgresMigrationConnection
    )
    monkeypatch.setattr(connection, "recorded", _no_versions)
    late = await target.open(PROBE)
    assert await late.migrate() == []
    assert await target.query(late, "SELECT version FROM probe ORDER BY version") == [(2,), (3,)]


@pytest.mark.postgres
async def test_concurrent_runners_on_postgres_apply_each_migration_once(
    pg_target: Target,
) -> None:
    """Four nodes start at once: all of them find nothing applied, then queue on the lock (held
    here until all four wait), and each migration runs exactly once."""
    import asyncpg

    target = pg_target

    from parley.backends.postgres.migrations import SCHEMA_LOCK

    runners = [await target.open(PROBE) for _ in range(4)]
    holder = await asyncpg.connect(target.where)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            tasks = [asyncio.create_task(db.migrate()) for db in runners]
            await _until_waiting_on_the_lock(holder, len(runners), tasks)
        results = await asyncio.gather(*tasks)
    finally:
        await holder.close()
    applied = sorted(m.version for result in results for m in result)
    assert applied == [1, 2, 3]
    assert await target.query(runners[0], "SELECT version FROM probe ORDER BY version") == [
        (2,),
        (3,),
    ]
    assert [row[0] for row in await target.recorded(runners[0])] == [1, 2, 3]


# -- the handles ----------------------------------------------------------------------------


async def test_users_and_grants_share_one_handle(target: Target) -> None:
    """One handle per process: closing one store leaves the other working; closing the
    handle stops both."""
    db = await target.open()
    await db.migrate()
    if isinstance(db, SqliteDb):
        users: Any = SqliteUserStore(db)
        grants: Any = SqliteGrantStore(db)
    else:
        from parley.backends.postgres.grants import PostgresGrantStore
        from parley.backends.postgres.users import PostgresUserStore

        users, grants = PostgresUserStore(db), PostgresGrantStore(db)
    app = f"t{uuid.uuid4().hex[:12]}"
    await users.start()
    await grants.start()
    await users.close()
    with pytest.raises(RuntimeError, match="user store is not running"):
        await users.list(app)
    grant = await grants.create(app, "ann", "lobby", ["read"])
    assert await grants.active(app) == [grant]
    await db.close()
    with pytest.raises(RuntimeError, match="is not open"):
        await grants.active(app)
    await grants.close()


async def test_closed_handles_refuse_work(target: Target) -> None:
    db = await target.open()
    await db.close()
    with pytest.raises(RuntimeError, match="is not open"):
        await db.migrate()


def test_postgres_describe_hides_the_password() -> None:
    from parley.backends.postgres.db import PostgresDb

    db = PostgresDb("postgresql://parley:s3cret@db.example:5432/parley?sslmode=require")
    assert (
        db.describe() == "PostgreSQL postgresql://parley:***@db.example:5432/parley?sslmode=require"
    )
    assert "s3cret" not in db.describe()


# -- the rules on a list, and SQLite's statement splitter ---------------------------------------


def test_migrations_must_be_numbered_from_one_without_gaps() -> None:
    ok = (Migration(1, "a", "SELECT 1"), Migration(2, "b", "SELECT 2"))
    assert check_migrations(ok) == ok
    for bad in (
        (Migration(2, "a", "SELECT 1"),),
        (Migration(1, "a", "SELECT 1"), Migration(3, "b", "SELECT 2")),
        (Migration(1, "a", "SELECT 1"), Migration(1, "b", "SELECT 2")),
        (Migration(1, "", "SELECT 1"),),
        (Migration(1, "a", "  "),),
    ):
        with pytest.raises(ValueError):
            check_migrations(bad)


def test_sqlite_statements_split_at_semicolons_outside_strings_and_comments() -> None:
    script = "CREATE TABLE a (x TEXT DEFAULT ';'); -- no; split\nINSERT INTO a VALUES ('b;c');\n"
    assert [s.strip() for s in sqlite_schema.statements(script)] == [
        "CREATE TABLE a (x TEXT DEFAULT ';');",
        "-- no; split\nINSERT INTO a VALUES ('b;c');",
    ]
    with pytest.raises(ValueError, match="incomplete"):
        list(sqlite_schema.statements("SELECT 'unterminated;"))


def test_sqlite_runner_without_an_event_loop(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        assert sqlite_schema.apply(conn, PROBE, lambda: 5) == list(PROBE)
        assert sqlite_schema.apply(conn, PROBE, lambda: 6) == []
        recorded = sqlite_schema.SqliteMigrationConnection(conn).recorded()
        assert run_without_loop(recorded) == {1, 2, 3}
        assert not conn.in_transaction
    finally:
        conn.close()


def test_a_coroutine_that_suspends_is_refused_without_a_loop() -> None:
    async def suspends() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="needs an event loop"):
        run_without_loop(suspends())


# -- helpers ----------------------------------------------------------------------------------


def _postgres_schema() -> Any:
    from parley.backends.postgres import migrations

    return migrations


async def _no_versions(connection: Any) -> set[int]:
    return set()


async def _run_script(target: Target, db: Database, sql: str) -> None:
    if isinstance(db, SqliteDb):
        await db.write(lambda conn: [conn.execute(s) for s in sqlite_schema.statements(sql)])
        return
    from parley.backends.postgres.db import PostgresDb

    assert isinstance(db, PostgresDb)
    await db.pool.execute(sql)


async def _until_waiting_on_the_lock(
    holder: Any, waiters: int, tasks: Sequence[asyncio.Task[Any]]
) -> None:
    """Return once `waiters` sessions wait for an advisory lock in this database, polling
    pg_locks (each look is a round trip); fail at once when a runner ended instead."""
    deadline = time.monotonic() + 10
    while True:
        waiting = await holder.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        if waiting >= waiters:
            return
        done = [t for t in tasks if t.done()]
        if done:
            raise AssertionError(f"a runner ended without waiting: {done[0].result()!r}")
        assert time.monotonic() < deadline, f"{waiting} of {waiters} runners wait on the lock"
