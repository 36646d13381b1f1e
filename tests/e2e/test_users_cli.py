"""`parley users` as an operator runs it: real processes on the SQLite file (and PostgreSQL),
checked afterwards through the store the server uses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from parley.app import make_stores
from parley.backends.users import UserStore
from tests.conftest import require
from tests.support.databases import open_database
from tests.support.server import ROOT, TIMEOUT
from tests.support.stores import PG_URL, delete_app_rows, postgres_problem

pytestmark = pytest.mark.e2e


@dataclass
class Cli:
    """Runs `parley users ...` against one data directory (and store) with one default app."""

    data_dir: Path
    store: str
    app_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 10**12))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        env.update(
            PARLEY_DATA_DIR=str(self.data_dir),
            PARLEY_APP_ID=self.app_id,
            PARLEY_APP_KEY=f"key-{self.app_id}",
            PARLEY_APP_SECRET="secret",
            PARLEY_STORE=self.store,
            PARLEY_POSTGRES_URL=PG_URL,
        )
        env.update(extra)
        return env

    def __call__(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "parley", "users", *args],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env() if env is None else env,
            cwd=ROOT,
            timeout=TIMEOUT * 3,
        )

    @contextlib.asynccontextmanager
    async def open_store(self) -> AsyncIterator[UserStore]:
        """The user store the server uses on this data directory (or PostgreSQL), started."""
        if self.store == "postgres":
            db = await open_database("postgres", PG_URL)
        else:
            db = await open_database("sqlite", str(self.data_dir / "parley.db"))
        store = make_stores(db).users
        await store.start()
        try:
            yield store
        finally:
            await store.close()
            await db.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def cli(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cli]:
    if request.param == "postgres":
        problem = await postgres_problem()
        require(problem is None, problem or "")
    runner = Cli(tmp_path / "data", request.param)
    try:
        yield runner
    finally:
        if request.param == "postgres":
            await delete_app_rows("parley_users", runner.app_id)


async def test_add_list_disable_enable(cli: Cli) -> None:
    app = cli.app_id
    added = cli("add", "ann", "--password-stdin", "--info", '{"name": "Ann"}', stdin="s3cret pw\n")
    assert added.returncode == 0, added.stderr
    assert "ann" in added.stdout and "s3cret" not in added.stdout + added.stderr
    assert cli("add", "bob", "--password-stdin", stdin="other").returncode == 0

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["ann", "enabled", "bob", "enabled"]
    assert "$argon2" not in listed.stdout

    async with cli.open_store() as store:
        user = await store.verify(app, "ann", "s3cret pw")  # the newline was dropped
        assert user is not None and user.info == {"name": "Ann"}
        assert user.password_hash.startswith("$argon2id$")
        assert await store.verify(app, "ann", "s3cret pw\n") is None
        assert await store.verify(app, "bob", "other") is not None

        disabled = cli("disable", "ann")
        assert disabled.returncode == 0, disabled.stderr
        assert cli("list").stdout.split() == ["ann", "disabled", "bob", "enabled"]
        assert await store.verify(app, "ann", "s3cret pw") is None
        got = await store.get(app, "ann")
        assert got is not None and got.disabled
        assert await store.disabled_since(app, 0) == [(app, "ann")]

        enabled = cli("enable", "ann")
        assert enabled.returncode == 0, enabled.stderr
        assert await store.verify(app, "ann", "s3cret pw") is not None


async def test_refusals_exit_non_zero_with_a_message(cli: Cli) -> None:
    assert cli("add", "ann", "--password-stdin", stdin="pw").returncode == 0
    for args, stdin, message in [
        (("add", "ann", "--password-stdin"), "pw2", "already exists"),
        (("add", "new", "--password-stdin"), "", "must not be empty"),
        (("add", "new", "--password-stdin"), "\n", "must not be empty"),
        (("add", "bad name", "--password-stdin"), "pw", "user name must be"),
        (("add", "new", "--password-stdin", "--info", "[1]"), "pw", "JSON object"),
        (("add", "new", "--password-stdin", "--info", "{nope"), "pw", "not valid JSON"),
        (("disable", "nobody"), "", "no user 'nobody'"),
        (("enable", "nobody"), "", "no user 'nobody'"),
        (("list", "--app", "elsewhere"), "", "unknown app 'elsewhere'"),
        (("add", "new", "--app", "elsewhere", "--password-stdin"), "pw", "unknown app"),
    ]:
        done = cli(*args, stdin=stdin)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    assert cli("list").stdout.split() == ["ann", "enabled"]


def test_apps_and_stores_come_from_the_settings(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "data", "sqlite")
    config = tmp_path / "parley.toml"
    config.write_text(
        '[server]\nstore = "sqlite"\n\n'
        '[[apps]]\nid = "101"\nkey = "ka"\nsecret = "sa"\n\n'
        '[[apps]]\nid = "102"\nkey = "kb"\nsecret = "sb"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_DATA_DIR"] = str(cli.data_dir)
    common = ("--config", str(config))
    assert cli("add", "ann", *common, "--password-stdin", stdin="pw", env=env).returncode == 0
    added = cli("add", "bob", *common, "--app", "102", "--password-stdin", stdin="pw", env=env)
    assert added.returncode == 0, added.stderr
    assert cli("list", *common, env=env).stdout.split() == ["ann", "enabled"]
    assert cli("list", *common, "--app", "102", env=env).stdout.split() == ["bob", "enabled"]
    other_dir = cli("list", *common, "--data-dir", str(tmp_path / "elsewhere"), env=env)
    assert other_dir.returncode == 0 and other_dir.stdout == ""

    memory = cli("list", env={**env, "PARLEY_STORE": "memory"})
    assert memory.returncode == 2 and "memory" in memory.stderr
    broken = cli("list", "--config", str(tmp_path / "missing.toml"), env=env)
    assert broken.returncode == 2 and "configuration error" in broken.stderr
