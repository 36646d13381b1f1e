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
from parley.backends.history import HistoryStore, Retention
from parley.backends.sqlite import migrations as sqlite_schema
from parley.backends.sqlite.db import SqliteDb
from parley.backends.sqlite.grants import SqliteGrantStore
from parley.backends.sqlite.history import SqliteHistoryStore
from parley.backends.sqlite.users import SqliteUserStore
from parley.publication import Publication, Publisher, StreamPosition
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

# A database as Parley left it before migration 2 (at 22c4499): the history tables exactly as
# its stores created them, and two publications of one channel as they wrote them (ts T0,
# kept 7 days, idempotency keys k0 and k1).
_ROWS_TAIL = """
INSERT INTO parley_history_keys VALUES
    ('main-app', 'room', 'k0', 1, 'ep0ch', 1700000000000, 'id-1', 'e', '{"i":0}',
     '{"type":"user","id":"ann"}', '{"sig":"s0"}'),
    ('main-app', 'room', 'k1', 2, 'ep0ch', 1700000000000, 'id-2', 'e', '{"i":1}',
     '{"type":"user","id":"ann"}', '{"sig":"s1"}');
"""
BEFORE_MIGRATION_2 = {
    "sqlite": """
CREATE TABLE IF NOT EXISTS parley_history_channels (app_id TEXT NOT NULL, channel TEXT NOT NULL,
    epoch TEXT NOT NULL, last_seq INTEGER NOT NULL, max_count INTEGER NOT NULL,
    max_age_ms INTEGER NOT NULL, PRIMARY KEY (app_id, channel)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parley_history_chunks (row INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL, channel TEXT NOT NULL, first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, min_expires INTEGER NOT NULL, max_expires INTEGER NOT NULL,
    entries BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS parley_history_chunks_position
    ON parley_history_chunks (app_id, channel, last_seq);
CREATE INDEX IF NOT EXISTS parley_history_chunks_expires ON parley_history_chunks (min_expires);
CREATE TABLE IF NOT EXISTS parley_history_keys (app_id TEXT NOT NULL, channel TEXT NOT NULL,
    key TEXT NOT NULL, seq INTEGER NOT NULL, epoch TEXT NOT NULL, ts INTEGER NOT NULL,
    id TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL, publisher TEXT NOT NULL,
    extras TEXT, PRIMARY KEY (app_id, channel, key));
CREATE INDEX IF NOT EXISTS parley_history_keys_ts ON parley_history_keys (ts);
INSERT INTO parley_history_channels VALUES ('main-app', 'room', 'ep0ch', 0, 1000, 604800000);
INSERT INTO parley_history_chunks VALUES (1, 'main-app', 'room', 1, 2, 1700604800000,
    1700604800000, CAST('[["E","main-app","room","ep0ch",1,1700000000000,1700604800000,"id-1",'
    || '"e",{"i":0},{"type":"user","id":"ann"},"ann","k0",1000,604800000,{"sig":"s0"}],'
    || '["E","main-app","room","ep0ch",2,1700000000000,1700604800000,"id-2","e",{"i":1},'
    || '{"type":"user","id":"ann"},"ann","k1",1000,604800000,{"sig":"s1"}]]' AS BLOB));
"""
    + _ROWS_TAIL,
    "postgres": """
CREATE TABLE IF NOT EXISTS parley_history_channels (app_id text NOT NULL, channel text NOT NULL,
    epoch text NOT NULL, last_seq bigint NOT NULL, max_count bigint NOT NULL,
    max_age_ms bigint NOT NULL, PRIMARY KEY (app_id, channel));
CREATE TABLE IF NOT EXISTS parley_history_entries (app_id text NOT NULL,
    channel text NOT NULL, seq bigint NOT NULL, ts bigint NOT NULL, expires_ms bigint NOT NULL,
    id text NOT NULL, event text NOT NULL, data text NOT NULL, publisher text NOT NULL,
    extras text, PRIMARY KEY (app_id, channel, seq));
CREATE INDEX IF NOT EXISTS parley_history_entries_expires ON parley_history_entries (expires_ms);
CREATE TABLE IF NOT EXISTS parley_history_keys (app_id text NOT NULL, channel text NOT NULL,
    key text NOT NULL, seq bigint NOT NULL, epoch text NOT NULL, ts bigint NOT NULL,
    id text NOT NULL, event text NOT NULL, data text NOT NULL, publisher text NOT NULL,
    extras text, PRIMARY KEY (app_id, channel, key));
CREATE INDEX IF NOT EXISTS parley_history_keys_ts ON parley_history_keys (ts);
ALTER TABLE parley_history_entries ADD COLUMN IF NOT EXISTS extras text;
ALTER TABLE parley_history_keys ADD COLUMN IF NOT EXISTS extras text;
INSERT INTO parley_history_channels VALUES ('main-app', 'room', 'ep0ch', 2, 1000, 604800000);
INSERT INTO parley_history_entries VALUES
    ('main-app', 'room', 1, 1700000000000, 1700604800000, 'id-1', 'e', '{"i":0}',
     '{"type":"user","id":"ann"}', '{"sig":"s0"}'),
    ('main-app', 'room', 2, 1700000000000, 1700604800000, 'id-2', 'e', '{"i":1}',
     '{"type":"user","id":"ann"}', '{"sig":"s1"}');
"""
    + _ROWS_TAIL,
}


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
    assert {"parley_history_channels", "parley_history_keys"} <= await target.tables(db)


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
    every = [m.version for m in schema.MIGRATIONS]
    assert [m.version for m in await migrated.migrate()] == every
    assert await target.query(migrated, "SELECT app_id, name FROM parley_users") == [("app", "ann")]


async def test_a_database_from_before_migration_2_keeps_its_history(target: Target) -> None:
    """The history stores created their tables themselves until migration 2 existed: a database
    left so (migration 1 recorded, the history tables as the stores made them, with rows) gets
    migration 2, which changes nothing, and the store goes on from where it was."""
    own = sqlite_schema if target.kind == "sqlite" else _postgres_schema()
    db = await target.open(own.MIGRATIONS[:1])
    assert [m.version for m in await db.migrate()] == [1]
    await _run_script(target, db, BEFORE_MIGRATION_2[target.kind])
    columns = await _columns(target, db)
    migrated = await target.open()
    applied = [(m.version, m.name) for m in await migrated.migrate()]
    assert applied == [(m.version, m.name) for m in own.MIGRATIONS[1:]]
    assert applied[0] == (2, "history")
    assert await _columns(target, migrated) == columns  # not a column added or changed

    history = await _history_store(migrated, target.clock)
    await history.start()
    try:
        page = await history.read("main-app", "room")
        assert page.epoch == "ep0ch"
        assert [(p.position.offset, p.id, p.data, p.extras) for p in page.publications] == [
            (1, "id-1", {"i": 0}, {"sig": "s0"}),
            (2, "id-2", {"i": 1}, {"sig": "s1"}),
        ]
        assert [p.publisher for p in page.publications] == [Publisher("user", "ann")] * 2
        repeat = Publication("room", "e", {"i": 9}, Publisher("user", "ann"), idempotency_key="k1")
        again = await history.append("main-app", repeat, Retention())
        assert again.duplicate and again.publication.id == "id-2"
        after = Publication("room", "e", {"i": 2}, Publisher("server", "1"))
        stored = await history.append("main-app", after, Retention())
        assert stored.publication.position == StreamPosition(3, "ep0ch")
    finally:
        await history.close()


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

    target = pg_target
    runners = [await target.open(PROBE) for _ in range(4)]
    results = await _migrate_together(target, runners)
    applied = sorted(m.version for result in results for m in result)
    assert applied == [1, 2, 3]
    assert await target.query(runners[0], "SELECT version FROM probe ORDER BY version") == [
        (2,),
        (3,),
    ]
    assert [row[0] for row in await target.recorded(runners[0])] == [1, 2, 3]


@pytest.mark.postgres
async def test_nodes_starting_together_on_postgres_make_the_schema_once(
    pg_target: Target,
) -> None:
    """The same with PostgreSQL's own migrations, history included: four nodes starting on an
    empty database apply each migration once between them and can all store history."""
    target = pg_target
    runners = [await target.open() for _ in range(4)]
    results = await _migrate_together(target, runners)
    every = [m.version for m in _postgres_schema().MIGRATIONS]
    assert sorted(m.version for result in results for m in result) == every
    assert [row[0] for row in await target.recorded(runners[0])] == every
    assert {f"parley_history_{t}" for t in ("channels", "entries", "keys")} <= await target.tables(
        runners[0]
    )
    stores = [await _history_store(db, target.clock) for db in runners]
    for store in stores:
        await store.start()
    try:
        posted = Publication("room", "e", 1, Publisher("server", "1"))
        offsets = [
            (await store.append("app", posted, Retention())).publication.position.offset
            for store in stores
        ]
        assert offsets == [1, 2, 3, 4]
    finally:
        for store in stores:
            await store.close()


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


async def _migrate_together(target: Target, runners: Sequence[Database]) -> list[list[Migration]]:
    """Every runner's `migrate`, started while this test holds SCHEMA_LOCK, so that all of them
    find nothing applied and then queue on the lock; their results."""
    import asyncpg

    from parley.backends.postgres.migrations import SCHEMA_LOCK

    holder = await asyncpg.connect(target.where)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            tasks = [asyncio.create_task(db.migrate()) for db in runners]
            await _until_waiting_on_the_lock(holder, len(runners), tasks)
        return list(await asyncio.gather(*tasks))
    finally:
        await holder.close()


async def _history_store(db: Database, clock: FakeClock) -> HistoryStore:
    """The history store of `db`'s technology on it, not started."""
    if isinstance(db, SqliteDb):
        return SqliteHistoryStore(db, clock=clock)
    from parley.backends.postgres.db import PostgresDb
    from parley.backends.postgres.history import PostgresHistoryStore

    assert isinstance(db, PostgresDb)
    return PostgresHistoryStore(db, clock=clock)


async def _columns(target: Target, db: Database) -> set[tuple[Any, ...]]:
    """(table, column, type, not null) of every history table."""
    if target.kind == "sqlite":
        sql = """SELECT m.name, c.name, c.type, c."notnull" FROM sqlite_master m,
            pragma_table_info(m.name) c WHERE m.name LIKE 'parley_history_%'"""
    else:
        sql = """SELECT table_name, column_name, data_type, is_nullable
            FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name LIKE 'parley_history_%'"""
    return set(await target.query(db, sql))


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
