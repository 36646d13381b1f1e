"""`PostgresOutbox`: the transactional outbox (`backends.outbox`) in PostgreSQL.

The table is `parley_outbox` (migration "outbox"; docs/architecture.md shows the INSERT an
application makes). A BEFORE INSERT trigger takes a transaction-long advisory lock on the row's
(app, channel) and only then gives it its id, so within a channel ids follow commit order: a
second transaction inserting into the same channel waits for the first to end. An AFTER INSERT
statement trigger sends `NOTIFY parley_outbox`, which wakes the relay at once; it also polls.

The claim is a session advisory lock held on a connection of its own (which also LISTENs): it
is released when that connection ends, so a node that dies hands the outbox to another within
their poll interval. Reads and marks borrow the process's pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from parley.backends.outbox import OutboxRow
from parley.backends.postgres.db import PostgresDb
from parley.errors import StoreUnavailable

CHANNEL = "parley_outbox"  # the NOTIFY channel
# Advisory lock namespaces (the two-key form): the trigger's per-channel locks take
# 0x70617200 ("par\0") and a hash of the channel; the claim is the one lock of the next.
CLAIM_CLASS = 0x70617201
CLAIM_KEY = 0

PENDING = """
SELECT id, app_id, channel, event, data FROM parley_outbox
WHERE published_at IS NULL ORDER BY id LIMIT $1
"""
PUBLISHED = "UPDATE parley_outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
FAILED = "UPDATE parley_outbox SET published_at = now(), error = $2 WHERE id = $1"
SWEEP = """
DELETE FROM parley_outbox
WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
"""

FAULTS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresOutbox:
    """A `backends.outbox.OutboxSource`."""

    def __init__(self, db: PostgresDb) -> None:
        self.db = db  # opened, migrated and closed by its owner
        self._conn: Any = None  # the claim's own connection (asyncpg.Connection)
        self._wake: Callable[[], None] | None = None

    async def claim(self) -> bool:
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                self._conn = None
                conn = await asyncpg.connect(self.db.url)
                try:
                    await conn.add_listener(CHANNEL, self._notified)
                    held = await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1::int, $2::int)", CLAIM_CLASS, CLAIM_KEY
                    )
                except BaseException:
                    await conn.close()
                    raise
                if not held:
                    await conn.close()  # another node holds it: ask again at the next poll
                    return False
                self._conn = conn
            return True
        except FAULTS as exc:
            raise StoreUnavailable(f"outbox: {exc}") from exc

    def _notified(self, *args: Any) -> None:
        if self._wake is not None:
            self._wake()

    def on_insert(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    async def pending(self, limit: int) -> Sequence[OutboxRow]:
        try:
            rows = await self.db.pool.fetch(PENDING, limit)
        except FAULTS as exc:
            raise StoreUnavailable(f"outbox: {exc}") from exc
        return [OutboxRow(r["id"], r["app_id"], r["channel"], r["event"], r["data"]) for r in rows]

    async def mark_published(self, ids: Sequence[int]) -> None:
        try:
            await self.db.pool.execute(PUBLISHED, list(ids))
        except FAULTS as exc:
            raise StoreUnavailable(f"outbox: {exc}") from exc

    async def mark_failed(self, row_id: int, reason: str) -> None:
        try:
            await self.db.pool.execute(FAILED, row_id, reason)
        except FAULTS as exc:
            raise StoreUnavailable(f"outbox: {exc}") from exc

    async def sweep(self, older_than_s: float) -> int:
        try:
            status = await self.db.pool.execute(SWEEP, older_than_s)
        except FAULTS as exc:
            raise StoreUnavailable(f"outbox: {exc}") from exc
        return int(status.split()[-1])

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)  # ends the session: its advisory lock with it
            except FAULTS:
                conn.terminate()
