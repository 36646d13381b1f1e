"""`PostgresKeyDirectoryStore`: the key directory in `parley_key_log`, shared by every node of
a cluster, and the server's directory key in `parley_server_keys` (migration 4). The primary
key (app_id, seq) is what makes two nodes' appends of the same seq leave one."""

from __future__ import annotations

import time
from collections.abc import Callable

from parley.backends.keys import KeyDirectoryStore, entry_from_text
from parley.backends.postgres.db import PostgresDb
from parley.protocol.directory import KeyEntry

SERVER_KEY_NAME = "directory"


class PostgresKeyDirectoryStore(KeyDirectoryStore):
    def __init__(self, db: PostgresDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    async def _fetch(self, where: str, *args: object) -> list[KeyEntry]:
        self.check_running()
        rows = await self.db.fetch(f"SELECT entry FROM parley_key_log WHERE {where}", *args)
        return [entry_from_text(r[0]) for r in rows]

    async def append(self, app_id: str, entry: KeyEntry) -> bool:
        self.check_running()
        status = await self.db.pool.execute(
            "INSERT INTO parley_key_log (app_id, seq, user_id, kid, entry)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            app_id,
            entry.seq,
            entry.user_id,
            entry.kid,
            entry.encoded().decode(),
        )
        return bool(status == "INSERT 0 1")

    async def last(self, app_id: str) -> KeyEntry | None:
        found = await self._fetch("app_id = $1 ORDER BY seq DESC LIMIT 1", app_id)
        return found[0] if found else None

    async def log(self, app_id: str, after: int, limit: int) -> list[KeyEntry]:
        return await self._fetch(
            "app_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", app_id, after, limit
        )

    async def of_user(self, app_id: str, user_id: str) -> list[KeyEntry]:
        return await self._fetch("app_id = $1 AND user_id = $2 ORDER BY seq", app_id, user_id)

    async def server_key(self, candidate: bytes) -> bytes:
        self.check_running()
        await self.db.pool.execute(
            "INSERT INTO parley_server_keys (name, seed, created_at) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            SERVER_KEY_NAME,
            candidate,
            self.now_ms(),
        )
        rows = await self.db.fetch(
            "SELECT seed FROM parley_server_keys WHERE name = $1", SERVER_KEY_NAME
        )
        return bytes(rows[0][0])
