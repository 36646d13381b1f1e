"""Helpers for the contract suites of the stores: a settable clock, the PostgreSQL URL the
suites use, why PostgreSQL cannot be used (memoized), for `tests.conftest.require`, and the
backend every suite's fixtures yield: `StoreBackend`, made and cleaned up by `store_fixture`."""

from __future__ import annotations

import importlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import pytest

from parley.backends.sqlite.db import SqliteDb
from tests.support.databases import open_database

PG_URL = os.environ.get("PARLEY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class FakeClock:
    """Unix seconds, moved only by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_pg_problem: list[str | None] = []  # memoized: None when reachable, else the reason


async def postgres_problem() -> str | None:
    if not _pg_problem:
        try:
            import asyncpg  # type: ignore[import-untyped]
        except ImportError:
            _pg_problem.append("asyncpg is not installed")
        else:
            try:
                conn = await asyncpg.connect(PG_URL, timeout=3)
                await conn.close()
                _pg_problem.append(None)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                _pg_problem.append(f"PostgreSQL unreachable at {PG_URL}: {exc!r}")
    return _pg_problem[0]


async def delete_app_rows(table: str, app_id: str) -> None:
    """Remove one test app's rows from a PostgreSQL table."""
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DELETE FROM {table} WHERE app_id = $1", app_id)
    except asyncpg.UndefinedTableError:
        pass  # no store ever started: nothing to remove
    finally:
        await conn.close()


ALL_KINDS: list[Any] = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DURABLE_KINDS: list[Any] = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Store(Protocol):
    """What every store the contract suites open has: started once opened, closed at the end."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Store)


@dataclass(frozen=True)
class StoreKinds(Generic[S]):
    """How one suite's store is built on each kind of storage: `memory(clock=…)`,
    `sqlite(db, clock=…)`, and the PostgreSQL class named `postgres` ("module:Class"), imported
    only when a test opens one, called as `(db, clock=…)`. Each is also given the options the
    suite's `open` passes (the user store's hasher)."""

    memory: Callable[..., S]
    sqlite: Callable[..., S]
    postgres: str

    def postgres_class(self) -> Callable[..., S]:
        module, name = self.postgres.split(":")
        made: Callable[..., S] = getattr(importlib.import_module(module), name)
        return made


def new_app_id(prefix: str) -> Callable[[], str]:
    """A default factory for `StoreBackend.app_id`: `prefix` and 12 random hex digits."""
    return lambda: f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class StoreBackend(Generic[S]):
    """One storage behind the stores a test opens: reopening reaches the same data (the one
    memory store, or the SQLite file or PostgreSQL database `target`).

    A suite subclasses it with its `stores` and `tables` (the PostgreSQL tables its tests write,
    emptied of the test apps' rows afterwards), overriding `app_id` or `clock` where its
    defaults differ, and adding what else its tests ask of a backend."""

    stores: ClassVar[StoreKinds[Any]]
    tables: ClassVar[tuple[str, ...]]

    kind: str
    target: str  # SQLite path or PostgreSQL URL
    app_id: str = field(default_factory=new_app_id("t"))
    clock: FakeClock = field(default_factory=lambda: FakeClock(time.time()))
    opened: list[Any] = field(default_factory=list)  # each store before its database
    apps: list[str] = field(default_factory=list)  # other apps the test used, cleaned up too
    memory: S | None = None

    def other_app(self) -> str:
        """Another app of this test's, cleaned up with it."""
        other = f"{self.app_id}-other"
        if other not in self.apps:
            self.apps.append(other)
        return other

    async def open(self) -> S:
        return await self.open_store()

    async def open_store(self, **options: Any) -> S:
        """A store; a durable one on a database handle of its own, as another process has.
        `options` go to the store's constructor, with the clock."""
        store: S
        if self.kind == "memory":
            store = self.memory = self.memory or self.stores.memory(clock=self.clock, **options)
            await store.start()
            self.opened.append(store)
            return store
        db = await open_database(self.kind, self.target)
        try:
            if isinstance(db, SqliteDb):
                store = self.stores.sqlite(db, clock=self.clock, **options)
            else:
                from parley.backends.postgres.db import PostgresDb

                assert isinstance(db, PostgresDb)
                store = self.stores.postgres_class()(db, clock=self.clock, **options)
            await store.start()
        except BaseException:
            await db.close()  # no store to close first: the test fails, leaking nothing
            raise
        self.opened += [store, db]  # the store closed before its database
        return store


B = TypeVar("B", bound=StoreBackend[Any])


async def backend_lifecycle(
    kind: str, tmp_path: Path, make: Callable[[str, str], B]
) -> AsyncIterator[B]:
    """One contract-suite backend: PostgreSQL required (skipped loudly, failing under CI) when
    it is the kind; every store the test opened closed afterwards, and the test apps' rows
    removed from the backend's `tables` on PostgreSQL (the app ids: `app_id` plus `apps`)."""
    if kind == "postgres":
        from tests.conftest import require

        problem = await postgres_problem()
        require(problem is None, problem or "")
    backend = make(kind, str(tmp_path / "parley.db") if kind == "sqlite" else PG_URL)
    try:
        yield backend
    finally:
        for store in backend.opened:
            await store.close()
        if kind == "postgres":
            for app in (backend.app_id, *backend.apps):
                for table in backend.tables:
                    await delete_app_rows(table, app)


def store_fixture(backend: type[StoreBackend[Any]], kinds: Sequence[Any] = ALL_KINDS) -> Any:
    """A fixture yielding a `backend` (see `backend_lifecycle`) of each of `kinds` in turn;
    assigned to a module name, it is the fixture of that name."""

    @pytest.fixture(params=kinds)
    async def fixture(
        request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[StoreBackend[Any]]:
        async for b in backend_lifecycle(request.param, tmp_path, backend):
            yield b

    return fixture
