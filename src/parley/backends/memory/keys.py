"""`MemoryKeyDirectoryStore`: the key directory in this process (tests, `store = "memory"`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from parley.backends.keys import KeyDirectoryStore, entry_from_text
from parley.protocol.directory import KeyEntry


class MemoryKeyDirectoryStore(KeyDirectoryStore):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._logs: dict[str, list[bytes]] = {}  # app id -> encoded entries, seq 1 first
        self._server_key: bytes | None = None

    def _entries(self, app_id: str) -> list[bytes]:
        self.check_running()
        return self._logs.setdefault(app_id, [])

    async def append(self, app_id: str, entry: KeyEntry) -> bool:
        entries = self._entries(app_id)
        if entry.seq != len(entries) + 1:
            return False
        entries.append(entry.encoded())
        return True

    async def last(self, app_id: str) -> KeyEntry | None:
        entries = self._entries(app_id)
        return entry_from_text(entries[-1]) if entries else None

    async def log(self, app_id: str, after: int, limit: int) -> list[KeyEntry]:
        return [entry_from_text(e) for e in self._entries(app_id)[max(after, 0) :][:limit]]

    async def of_user(self, app_id: str, user_id: str) -> list[KeyEntry]:
        found = (entry_from_text(e) for e in self._entries(app_id))
        return [e for e in found if e.user_id == user_id]

    async def server_key(self, candidate: bytes) -> bytes:
        self.check_running()
        if self._server_key is None:
            self._server_key = candidate
        return self._server_key
