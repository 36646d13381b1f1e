"""`SqliteDb`: one SQLite connection driven by one thread, for the low-volume roles (users,
grants) that keep their own tables in `<data_dir>/parley.db` beside history's.

It knows no table: each store hands it its schema. Every call is one short transaction, so other
processes on the same file (the server, `parley users`) wait at most for one of them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteDb:
    def __init__(self, path: str | Path, schema: str, *, role: str) -> None:
        self.path = str(path)
        self._schema = schema
        self._role = role  # "user", "grant": names the thread and the errors
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"parley-{self._role}-db")
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

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one read transaction (one snapshot)."""
        return await self._call(partial(self._in_transaction, "BEGIN", fn))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one write transaction, taken at once so it never upgrades midway."""
        return await self._call(partial(self._in_transaction, "BEGIN IMMEDIATE", fn))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            raise RuntimeError(f"{self._role} store is not running")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

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
            conn.executescript(self._schema)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _in_transaction(self, begin: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self._role} store is not running")
        conn.execute(begin)
        try:
            result = fn(conn)
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (a full disk, say)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
