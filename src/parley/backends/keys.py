"""The key directory role: an append-only log of `KeyEntry` per app, and the server's own
directory signing key (`KeyDirectoryStore`). The entries, their chaining and the signed head
are `protocol.directory`'s; what may be appended is `core.keys`'.

Theory of operation. Entries are kept as their canonical encoding, the bytes their hash covers,
so what is served is exactly what was chained. `append` inserts seq N only if no entry N
exists: two nodes appending at once both read seq N-1, one wins, the other builds again on
the winner. Nothing is ever updated or deleted; a revocation is a new entry.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import orjson

from parley.backends.lifecycle import StoreLifecycle
from parley.protocol.directory import KeyEntry

LOG_PAGE_MAX = 1000


def entry_from_text(text: str | bytes) -> KeyEntry:
    return KeyEntry.from_wire(orjson.loads(text), checked=False)


class KeyDirectoryStore(StoreLifecycle, abc.ABC):
    """Implementations: `MemoryKeyDirectoryStore`, `SqliteKeyDirectoryStore`,
    `PostgresKeyDirectoryStore`. Every method may be called concurrently from many tasks."""

    what = "key directory"

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)

    @abc.abstractmethod
    async def append(self, app_id: str, entry: KeyEntry) -> bool:
        """Store `entry` as the app's entry `entry.seq`; False (nothing stored) when that seq
        is taken."""

    @abc.abstractmethod
    async def last(self, app_id: str) -> KeyEntry | None:
        """The app's newest entry; None while its log is empty."""

    @abc.abstractmethod
    async def log(self, app_id: str, after: int, limit: int) -> list[KeyEntry]:
        """Up to `limit` entries with seq > `after`, oldest first."""

    @abc.abstractmethod
    async def of_user(self, app_id: str, user_id: str) -> list[KeyEntry]:
        """Every entry about `user_id`, oldest first."""

    @abc.abstractmethod
    async def server_key(self, candidate: bytes) -> bytes:
        """The directory signing key's 32-byte seed: the stored one, or `candidate`, stored
        now, when there is none (every node of a cluster ends up with the same)."""
