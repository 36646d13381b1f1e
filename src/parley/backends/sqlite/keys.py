"""`SqliteKeyDirectoryStore`: the key directory in `parley_key_log` of the embedded SQLite file,
and the server's directory key in `parley_server_keys` (migration 3)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from functools import partial

from parley.backends.keys import KeyDirectoryStore, entry_from_text
from parley.backends.sqlite.db import SqliteDb
from parley.protocol.directory import KeyEntry

SERVER_KEY_NAME = "directory"


class SqliteKeyDirectoryStore(KeyDirectoryStore):
    def __init__(self, db: SqliteDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    @property
    def _db(self) -> SqliteDb:
        self.check_running()
        return self.db

    async def append(self, app_id: str, entry: KeyEntry) -> bool:
        return await self._db.write(partial(_insert, app_id, entry))

    async def last(self, app_id: str) -> KeyEntry | None:
        found = await self._db.read(
            partial(_entries, "app_id = ? ORDER BY seq DESC LIMIT 1", (app_id,))
        )
        return found[0] if found else None

    async def log(self, app_id: str, after: int, limit: int) -> list[KeyEntry]:
        where = "app_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        return await self._db.read(partial(_entries, where, (app_id, after, limit)))

    async def of_user(self, app_id: str, user_id: str) -> list[KeyEntry]:
        where = "app_id = ? AND user_id = ? ORDER BY seq"
        return await self._db.read(partial(_entries, where, (app_id, user_id)))

    async def server_key(self, candidate: bytes) -> bytes:
        return await self._db.write(partial(_server_key, candidate, self.now_ms()))


def _insert(app_id: str, entry: KeyEntry, conn: sqlite3.Connection) -> bool:
    cursor = conn.execute(
        "INSERT OR IGNORE INTO parley_key_log (app_id, seq, user_id, kid, entry)"
        " VALUES (?, ?, ?, ?, ?)",
        (app_id, entry.seq, entry.user_id, entry.kid, entry.encoded().decode()),
    )
    return cursor.rowcount == 1


def _entries(where: str, params: tuple[object, ...], conn: sqlite3.Connection) -> list[KeyEntry]:
    rows = conn.execute(f"SELECT entry FROM parley_key_log WHERE {where}", params)
    return [entry_from_text(r[0]) for r in rows]


def _server_key(candidate: bytes, now_ms: int, conn: sqlite3.Connection) -> bytes:
    conn.execute(
        "INSERT OR IGNORE INTO parley_server_keys (name, seed, created_at) VALUES (?, ?, ?)",
        (SERVER_KEY_NAME, candidate, now_ms),
    )
    row = conn.execute(
        "SELECT seed FROM parley_server_keys WHERE name = ?", (SERVER_KEY_NAME,)
    ).fetchone()
    return bytes(row[0])
