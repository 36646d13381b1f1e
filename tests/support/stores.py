"""Helpers for the contract suites of the stores: a settable clock, the PostgreSQL URL the
suites use, why PostgreSQL cannot be used (memoized), for `tests.conftest.require`, and the
lifecycle every suite's backend fixture shares."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

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


class StoreBackend(Protocol):
    """What the contract suites' Backend classes have in common."""

    kind: str
    app_id: str
    opened: list[Any]


B = TypeVar("B", bound=StoreBackend)


async def backend_lifecycle(
    kind: str, tmp_path: Path, make: Callable[[str, str], B], tables: Sequence[str]
) -> AsyncIterator[B]:
    """One contract-suite backend: PostgreSQL required (skipped loudly, failing under CI) when
    it is the kind; every store the test opened closed afterwards, and the test apps' rows
    removed from `tables` on PostgreSQL (the app ids: `app_id` plus any listed in `apps`)."""
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
            for app in (backend.app_id, *getattr(backend, "apps", ())):
                for table in tables:
                    await delete_app_rows(table, app)
