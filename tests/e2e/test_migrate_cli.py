"""`parley migrate` as an operator runs it, and `parley serve` migrating at start: real
processes on a fresh SQLite data directory, or on a PostgreSQL schema of the test's own (the
URL's search_path), checked afterwards in the database itself."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parley.backends.database import Migration
from tests.conftest import require
from tests.support.server import ROOT, TIMEOUT, ParleyServer
from tests.support.stores import PG_URL, postgres_problem

pytestmark = pytest.mark.e2e


@dataclass
class Target:
    """Where `parley migrate` and `parley serve` keep their state: one fresh database."""

    store: str
    data_dir: Path
    postgres_url: str = PG_URL

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        env.update(
            PARLEY_DATA_DIR=str(self.data_dir),
            PARLEY_STORE=self.store,
            PARLEY_POSTGRES_URL=self.postgres_url,
        )
        env.update(extra)
        return env

    def serve_refused(self) -> subprocess.CompletedProcess[str]:
        """`parley serve` on this target, run to its exit (for starts that must fail)."""
        return subprocess.run(
            [sys.executable, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", "0"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )

    def migrate(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "parley", "migrate", *args],
            check=False,
            capture_output=True,
            text=True,
            env=self.env() if env is None else env,
            cwd=ROOT,
            timeout=TIMEOUT * 3,
        )

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.store == "sqlite":
            conn = sqlite3.connect(self.data_dir / "parley.db")
            try:
                return [tuple(r) for r in conn.execute(sql)]
            finally:
                conn.close()
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(self.postgres_url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    def migrations(self) -> Sequence[Migration]:
        """What the technology lists: what a fresh database gets."""
        if self.store == "sqlite":
            from parley.backends.sqlite.migrations import MIGRATIONS
        else:
            from parley.backends.postgres.migrations import MIGRATIONS
        return MIGRATIONS

    async def recorded(self) -> list[tuple[Any, ...]]:
        return await self.query(
            "SELECT version, name FROM parley_schema_migrations ORDER BY version"
        )

    async def tables(self) -> set[str]:
        if self.store == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        return {row[0] for row in await self.query(sql)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "sqlite":
        yield Target("sqlite", tmp_path / "data")
        return
    problem = await postgres_problem()
    require(problem is None, problem or "")
    import asyncpg

    schema = f"migrate_cli_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}"
        try:
            yield Target("postgres", tmp_path / "data", url)
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


async def test_migrate_applies_each_migration_once(target: Target) -> None:
    known = target.migrations()
    first = target.migrate()
    assert first.returncode == 0, first.stderr
    where = "SQLite " + str(target.data_dir / "parley.db") if target.store == "sqlite" else ""
    assert first.stdout.splitlines()[:-1] == [
        f"applied migration {m.version}: {m.name}" for m in known
    ]
    summary = first.stdout.splitlines()[-1]
    assert summary.startswith(where) and summary.endswith(
        f": {len(known)} migration{'s' if len(known) > 1 else ''} applied,"
        f" now at version {known[-1].version}"
    )
    assert await target.recorded() == [(m.version, m.name) for m in known]
    assert {"parley_users", "parley_grants"} <= await target.tables()

    again = target.migrate()
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"{summary.partition(': ')[0]}: nothing to do, already at version {known[-1].version}"
    ]
    assert await target.recorded() == [(m.version, m.name) for m in known]


async def test_serve_migrates_at_start_and_migrate_then_has_nothing_to_do(
    target: Target,
) -> None:
    env = {"PARLEY_STORE": target.store, "PARLEY_POSTGRES_URL": target.postgres_url}
    target.data_dir.mkdir(parents=True)
    server = ParleyServer(env=env, data_dir=target.data_dir)
    try:
        _serve_once(server)
        applied = [line for line in server.log_events() if "migration_applied" in line]
        known = target.migrations()
        assert len(applied) == len(known), server.log_events()
        assert all(f'"version":{m.version}' in line for m, line in zip(known, applied, strict=True))
        assert await target.recorded() == [(m.version, m.name) for m in known]
        _serve_once(server)  # a restart applies nothing
        assert len([e for e in server.log_events() if "migration_applied" in e]) == len(known)
    finally:
        server.kill()
    after = target.migrate()
    assert after.returncode == 0, after.stderr
    assert "nothing to do" in after.stdout


async def test_a_failing_migration_exits_1_and_changes_nothing(target: Target) -> None:
    """A parley_grants table without created_at: migration 1 creates parley_users, then fails
    on the index over created_at, and is rolled back whole."""
    target.data_dir.mkdir(parents=True)
    await _execute(target, "CREATE TABLE parley_grants (id text)")
    failed = target.migrate()
    assert failed.returncode == 1
    assert "migration 1 (users and grants) failed" in failed.stderr
    assert failed.stdout == ""
    assert await target.tables() == {"parley_grants"}  # nothing recorded, nothing created


def test_memory_has_nothing_to_migrate_and_bad_settings_exit_2(tmp_path: Path) -> None:
    target = Target("memory", tmp_path / "data")
    memory = target.migrate()
    assert memory.returncode == 0, memory.stderr
    assert "nothing to migrate" in memory.stdout
    broken = target.migrate("--config", str(tmp_path / "missing.toml"))
    assert broken.returncode == 2 and "configuration error" in broken.stderr


def test_an_unreachable_database_exits_1(tmp_path: Path) -> None:
    target = Target("postgres", tmp_path / "data", "postgresql://parley:pw@127.0.0.1:1/none")
    done = target.migrate()
    assert done.returncode == 1
    assert "cannot open PostgreSQL postgresql://parley:***@127.0.0.1:1/none" in done.stderr
    assert "pw@" not in done.stderr


def test_serve_on_an_unreachable_database_names_the_database_not_the_port(tmp_path: Path) -> None:
    target = Target("postgres", tmp_path / "data", "postgresql://parley:pw@127.0.0.1:1/none")
    served = target.serve_refused()
    assert served.returncode == 1, served.stderr
    assert (
        "cannot start: cannot open PostgreSQL postgresql://parley:***@127.0.0.1:1/none"
        in served.stderr
    ), served.stderr
    assert "cannot listen" not in served.stderr and "pw@" not in served.stderr
    assert "Traceback" not in served.stderr


def test_data_dir_flag_and_config_file(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text('[server]\nstore = "sqlite"\n')
    target = Target("sqlite", tmp_path / "from-env")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    elsewhere = tmp_path / "from-flag"
    done = target.migrate("--config", str(config), "--data-dir", str(elsewhere), env=env)
    assert done.returncode == 0, done.stderr
    from parley.backends.sqlite.migrations import MIGRATIONS

    applied = f"{len(MIGRATIONS)} migrations applied"
    assert f"SQLite {elsewhere / 'parley.db'}: {applied}" in done.stdout
    assert (elsewhere / "parley.db").exists() and not target.data_dir.exists()


def _serve_once(server: ParleyServer) -> None:
    """Start, answer one request, drain. The answer shows the server is past its start (its
    SIGTERM handler is set once it prints where it listens and before it serves)."""
    server.start()
    with urllib.request.urlopen(server.http_url + "/healthz", timeout=TIMEOUT) as response:
        assert response.status == 200
    assert server.stop() == 0


async def _execute(target: Target, sql: str) -> None:
    if target.store == "sqlite":
        conn = sqlite3.connect(target.data_dir / "parley.db", isolation_level=None)
        try:
            conn.execute(sql)
        finally:
            conn.close()
        return
    import asyncpg

    conn = await asyncpg.connect(target.postgres_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_serve_on_a_database_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    problem = await postgres_problem()  # the server must be there to say the database is not
    require(problem is None, problem or "")
    missing = PG_URL.rpartition("/")[0] + f"/parley_missing_{uuid.uuid4().hex[:8]}"
    target = Target("postgres", tmp_path / "data", missing)
    served = target.serve_refused()
    assert served.returncode == 1, served.stderr
    assert "Traceback" not in served.stderr
    (line,) = served.stderr.strip().splitlines()
    assert line.startswith("parley: cannot start: cannot open PostgreSQL") and "does not exist" in (
        line
    ), line
