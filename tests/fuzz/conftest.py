"""The fuzz tests' settings and report: no deadline per example (the machine is shared), the
in-process app on uvloop, and at the end the number of generated cases run, written to
`PARLEY_FUZZ_REPORT` when set (scripts/fuzz adds up its processes' counts and checks them)."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvloop
from hypothesis import HealthCheck, settings

from parley.settings import AppConfig, Settings
from tests.conftest import require
from tests.support.fuzzing import APP_USER, CASES, FULL
from tests.support.http_raw import KeptAlive
from tests.support.inproc import APP_ID, KEY, InProcessApp, serving
from tests.support.stores import PG_URL, delete_app_rows, postgres_problem

settings.register_profile(
    "parley-fuzz",
    deadline=None,
    print_blob=True,
    # generated frames are large on purpose (huge strings, deep nesting)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # the fuzz job starts from nothing, as CI does; the suite keeps failures to replay them
    database=None if FULL else settings.default.database,
)
settings.load_profile("parley-fuzz")

_SPENT = [0.0]  # seconds in the fuzz tests (setup, call and teardown), whatever else ran


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A failing case with a huge string makes hypothesis warn about its repr: the failure
    # is what matters, not the warning (which the suite would turn into the error reported).
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("ignore:Generating overly large repr"))


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], object]]:
    """The in-process app runs on uvloop, as `parley serve` runs it."""
    return {"uvloop": uvloop.new_event_loop}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/fuzz/"):
        _SPENT[0] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    total = sum(CASES.values())
    terminalreporter.write_sep("-", f"fuzz: {total:,} generated cases in {_SPENT[0]:.1f} s")
    if FULL:
        for name, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{count:>9,}  {name}")
    report = os.environ.get("PARLEY_FUZZ_REPORT")
    if report:
        Path(report).write_text(f"{total}\n")


@asynccontextmanager
async def fuzzed_app(tmp_path: Path, store: str, app_id: str) -> AsyncIterator[InProcessApp]:
    """The app in this process for the HTTP and WebSocket properties: built-in auth (so every
    route has a handler to reach), client events on, and APP_USER, who holds every grant on
    every channel. At the end: no answer was a 500, and /healthz still answers."""
    app_config = AppConfig(
        id=app_id, key=KEY, secret="fuzz-" + "s" * 32, auth="builtin", client_events=True
    )
    settings_ = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        store=store,
        postgres_url=PG_URL,
        apps=(app_config,),
    )
    async with serving(settings_) as running:
        access = running.running.node.access
        assert access is not None
        await access.users.add(running.app.id, APP_USER, "alice-password")
        await access.create(
            running.app, APP_USER, "*", ["read", "write", "presence", "manage"], None, None
        )
        yield running
        answers = running.running.node.metrics.http_requests
        assert not [key for key in answers if key[1] >= 500], answers
        client = KeptAlive(running.host, running.port)
        health = await client.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.close()
        assert health.status == 200, health


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[InProcessApp]:
    """The fuzzed app on the memory store."""
    async with fuzzed_app(tmp_path, "memory", APP_ID) as running:
        yield running


@pytest.fixture
async def pg_app(tmp_path: Path) -> AsyncIterator[InProcessApp]:
    """The fuzzed app on PostgreSQL (whose BIGINT columns refuse what memory takes), as an
    app of its own whose rows are deleted afterwards."""
    problem = await postgres_problem()
    require(problem is None, problem or "")
    app_id = str(random.randrange(10**8, 10**9))
    try:
        async with fuzzed_app(tmp_path, "postgres", app_id) as running:
            yield running
    finally:
        for table in PG_TABLES:
            await delete_app_rows(table, app_id)


PG_TABLES = (
    "parley_users",
    "parley_grants",
    "parley_history_channels",
    "parley_history_entries",
    "parley_history_keys",
)
