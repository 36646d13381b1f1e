"""Helpers for the contract suites of the stores: a settable clock, the PostgreSQL URL the
suites use, and why PostgreSQL cannot be used (memoized), for `tests.conftest.require`."""

from __future__ import annotations

import os

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
