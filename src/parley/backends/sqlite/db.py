"""`SqliteDb`: the process's one handle on `<data_dir>/parley.db`: it opens the file (in WAL
mode), applies its migrations, and drives one SQLite connection on one thread that the
low-volume stores (users, grants) share.

It knows no table: the schema comes from `migrations.MIGRATIONS`, applied by `migrate`. Every
call is one short transaction, so other processes on the same file (the server, `parley users`)
wait at most for one of them, and the stores sharing the thread take turns call by call. The
history store takes the handle for its file and schema but keeps its own connections and
threads (`sqlite.history` says why).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from parley.backends.database import Database, Migration
from parley.backends.sqlite import migrations as schema

T = TypeVar("T")


class SqliteDb(Database):
    def __init__(
        self,
        path: str | Path,
        *,
        migrations: Sequence[Migration] = schema.MIGRATIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.migrations = migrations
        self._clock = clock
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def describe(self) -> str:
        return f"SQLite {self.path}"

    async def open(self) -> None:
        if self._thread is not None:
            return
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="parley-db")
        try:
            await self._call(self._open)
        except BaseException:
            self._thread.shutdown(wait=True)
            self._thread = None
            raise

    async def close(self) -> None:
        if self._thread is not None:
            await self._call(self._close)
            self._thread.shutdown(wait=True)
            self._thread = None

    async def migrate(self) -> list[Migration]:
        return await self._call(partial(self._migrate, self.migrations))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one read transaction (one snapshot)."""
        return await self._call(partial(self._in_transaction, "BEGIN", fn))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one write transaction, taken at once so it never upgrades midway."""
        return await self._call(partial(self._in_transaction, "BEGIN IMMEDIATE", fn))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.describe()} is not open")
        return self._conn

    def _open(self) -> None:
        # isolation_level=None: transactions are begun and ended explicitly, nothing implicit.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable against SIGKILL in WAL mode
            # journal_mode is persistent in the file; setting it needs no transaction open.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"SQLite refused WAL mode for {self.path} (got {mode})")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _migrate(self, migrations: Sequence[Migration]) -> list[Migration]:
        return schema.apply(self._connection(), migrations, self._now_ms)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _in_transaction(self, begin: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute(begin)
        try:
            result = fn(conn)
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (a full disk, say)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
