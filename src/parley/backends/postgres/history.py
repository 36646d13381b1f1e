"""`PostgresHistoryStore`: channel history in PostgreSQL, shared by every node of a cluster.

Offsets come from a per-channel row locked FOR UPDATE inside each batch's transaction, so nodes
sharing one database still hand out gapless, strictly increasing offsets. It knows nothing of
the hub or the wire. Its tables are migration 2's; its connections are borrowed from the
process's one pool (`PostgresDb`), which it never opens or closes.

A batch costs the same round trips whatever its size: BEGIN, lock the channel rows (in sorted
order, so two nodes never wait on each other in a cycle), look up idempotency keys (only when
the batch has any), write everything in one statement, COMMIT. PostgreSQL's own commit
(synchronous_commit, on by default) is what makes an append durable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

import asyncpg  # type: ignore[import-untyped]

from parley import logs
from parley.backends.history import (
    IDEMPOTENCY_WINDOW_MS,
    UNLIMITED,
    BatchedHistoryStore,
    ChannelCursor,
    ChannelKey,
    Direction,
    GroupCommit,
    IdempotencyKey,
    Page,
    PendingAppend,
    Retention,
    Stored,
    check_read_args,
    new_epoch,
    page_of,
    plan_batch,
    publication_from_row,
    recovered,
)
from parley.backends.postgres.db import PostgresDb
from parley.publication import Publication, StreamPosition

T = TypeVar("T")

ENTRY_COLUMNS = "seq, ts, id, event, data, publisher, extras"

LOCK_CHANNELS = """
SELECT c.app_id, c.channel, c.epoch, c.last_seq
FROM parley_history_channels c
JOIN unnest($1::text[], $2::text[]) AS u(app_id, channel)
  ON c.app_id = u.app_id AND c.channel = u.channel
ORDER BY c.app_id, c.channel
FOR UPDATE OF c
"""

INSERT_CHANNELS = """
INSERT INTO parley_history_channels (app_id, channel, epoch, last_seq, max_count, max_age_ms)
SELECT u.app_id, u.channel, u.epoch, 0, $4, $5
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(app_id, channel, epoch)
ON CONFLICT (app_id, channel) DO NOTHING
"""

FIND_KEYS = f"""
SELECT k.app_id, k.channel, k.key, k.epoch, {", ".join("k." + c for c in ENTRY_COLUMNS.split(", "))}
FROM parley_history_keys k
JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(app_id, channel, key)
  ON k.app_id = u.app_id AND k.channel = u.channel AND k.key = u.key
"""

# Data-modifying CTEs share one snapshot: the DELETE cannot see this statement's INSERT, which
# is why entries already beyond the count are never inserted in the first place.
WRITE_BATCH = """
WITH new_entries AS (
    INSERT INTO parley_history_entries
        (app_id, channel, seq, ts, expires_ms, id, event, data, publisher, extras)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
), new_keys AS (
    INSERT INTO parley_history_keys
        (app_id, channel, key, seq, epoch, ts, id, event, data, publisher, extras)
    SELECT * FROM unnest($11::text[], $12::text[], $13::text[], $14::bigint[], $15::text[],
                         $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[],
                         $21::text[])
    ON CONFLICT (app_id, channel, key) DO UPDATE SET
        seq = EXCLUDED.seq, epoch = EXCLUDED.epoch, ts = EXCLUDED.ts, id = EXCLUDED.id,
        event = EXCLUDED.event, data = EXCLUDED.data, publisher = EXCLUDED.publisher,
        extras = EXCLUDED.extras
), moved AS (
    UPDATE parley_history_channels c
    SET last_seq = u.last_seq, max_count = u.max_count, max_age_ms = u.max_age_ms
    FROM unnest($22::text[], $23::text[], $24::bigint[], $25::bigint[], $26::bigint[])
        AS u(app_id, channel, last_seq, max_count, max_age_ms)
    WHERE c.app_id = u.app_id AND c.channel = u.channel
)
DELETE FROM parley_history_entries e
USING unnest($22::text[], $23::text[], $24::bigint[], $25::bigint[])
    AS u(app_id, channel, last_seq, max_count)
WHERE e.app_id = u.app_id AND e.channel = u.channel AND e.seq <= u.last_seq - u.max_count
"""


def _select_sql(order: str) -> str:
    """The channel row and a slice of its kept entries in one statement, hence one snapshot.
    No row: the channel does not exist. Entry columns NULL: it has no entry in the slice."""
    return f"""
SELECT c.epoch, c.last_seq, e.seq, e.ts, e.id, e.event, e.data, e.publisher, e.extras
FROM parley_history_channels c
LEFT JOIN LATERAL (
    SELECT {ENTRY_COLUMNS} FROM parley_history_entries x
    WHERE x.app_id = c.app_id AND x.channel = c.channel
      AND x.seq > GREATEST($3::bigint, c.last_seq - c.max_count) AND x.seq < $4::bigint
      AND x.ts >= $5::bigint - c.max_age_ms
    ORDER BY x.seq {order} LIMIT $6
) e ON true
WHERE c.app_id = $1 AND c.channel = $2
"""


SELECT = {"forward": _select_sql("ASC"), "backward": _select_sql("DESC")}
SWEEP_CHUNK = 5000
SWEEP_SQL = """
DELETE FROM parley_history_{table} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM parley_history_{table} WHERE {column} < $1 LIMIT $2))
"""
# (statement, how far before now its cutoff lies)
SWEEPS = (
    (SWEEP_SQL.format(table="entries", column="expires_ms"), 0),
    (SWEEP_SQL.format(table="keys", column="ts"), IDEMPOTENCY_WINDOW_MS),
)


class PostgresHistoryStore(BatchedHistoryStore):
    engine: ClassVar[str] = "postgres"

    def __init__(
        self,
        db: PostgresDb,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 512,
        sweep_interval_s: float = 60.0,
    ) -> None:
        self.db = db  # opened, migrated and closed by its owner
        self._clock = clock
        self._max_batch = max_batch
        self._sweep_interval_s = sweep_interval_s
        self._running = False
        self._commits: GroupCommit[PendingAppend, Stored] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        self._start_batching()

    async def close(self) -> None:
        await self._stop_batching()
        self._running = False

    async def check(self) -> None:
        await self.pool.fetchval("SELECT 1")

    @property
    def pool(self) -> Any:
        """The handle's asyncpg pool; RuntimeError when this store or the handle is closed."""
        if not self._running:
            raise RuntimeError("history store is not running")
        return self.db.pool

    # -- appends (append and append_many come from BatchedHistoryStore) ----------------------

    async def _commit(self, items: list[PendingAppend]) -> list[Stored]:
        for attempt in range(1, 6):
            try:
                return await self._transaction(self._write_batch, items)
            except asyncpg.exceptions.DeadlockDetectedError:
                # Rolled back, so nothing of it was acknowledged: safe to run it again.
                logs.warning("history_batch_deadlock", attempt=attempt)
        return await self._transaction(self._write_batch, items)

    async def _transaction(self, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`work(conn, *args)` in one transaction, run by the (interpreted) handle: never an
        `async with` here, see PostgresDb.transaction."""
        if not self._running:
            raise RuntimeError("history store is not running")
        return await self.db.transaction(work, *args)

    async def _write_batch(self, conn: Any, items: list[PendingAppend]) -> list[Stored]:
        channels = await self._lock_channels(
            conn, sorted({(i.app_id, i.publication.channel) for i in items})
        )
        firsts: dict[IdempotencyKey, Publication] = {}
        asked = sorted(
            {
                (i.app_id, i.publication.channel, k)
                for i in items
                if (k := i.publication.idempotency_key) is not None
            }
        )
        if asked:
            for r in await conn.fetch(FIND_KEYS, *_columns(asked, 3)):
                firsts[(r[0], r[1], r[2])] = publication_from_row(r[1], r[3], list(r)[4:])
        plan = plan_batch(items, channels, firsts)
        # Entries that the count already drops are not written at all (see WRITE_BATCH).
        floor = {w: c.last - c.retention.count_or_unlimited for w, c in channels.items()}
        entries = [
            i
            for i in plan.stored
            if i.publication.position.offset > floor[(i.app_id, i.publication.channel)]
        ]
        keyed = [i for i in plan.stored if i.publication.idempotency_key is not None]
        moves = [
            (a, c, cur.last, cur.retention.count_or_unlimited, cur.retention.age_ms_or_unlimited)
            for (a, c), cur in channels.items()
        ]
        await conn.execute(
            WRITE_BATCH, *_entry_columns(entries), *_key_columns(keyed), *_columns(moves, 5)
        )
        return plan.results

    async def _lock_channels(
        self, conn: Any, wanted: list[ChannelKey]
    ) -> dict[ChannelKey, ChannelCursor]:
        """Lock the channels' rows in sorted order, creating the missing ones first."""
        apps, names = _columns(wanted, 2)
        found = await conn.fetch(LOCK_CHANNELS, apps, names)
        if len(found) < len(wanted):
            have = {(r[0], r[1]) for r in found}
            missing = [w for w in wanted if w not in have]
            default = Retention()
            await conn.execute(
                INSERT_CHANNELS,
                *_columns(missing, 2),
                [new_epoch() for _ in missing],
                default.count_or_unlimited,
                default.age_ms_or_unlimited,
            )
            found = await conn.fetch(LOCK_CHANNELS, apps, names)
        return {(r[0], r[1]): ChannelCursor(r[2], r[3]) for r in found}

    # -- channel state -----------------------------------------------------------------------

    async def position(self, app_id: str, channel: str) -> StreamPosition:
        if not self._running:
            raise RuntimeError("history store is not running")
        rows = await self.db.fetch(
            "SELECT last_seq, epoch FROM parley_history_channels"
            " WHERE app_id = $1 AND channel = $2",
            app_id,
            channel,
        )
        row = rows[0] if rows else None
        if row is None:
            channels = await self._transaction(self._lock_channels, [(app_id, channel)])
            state = channels[(app_id, channel)]
            return StreamPosition(state.last, state.epoch)
        return StreamPosition(int(row[0]), str(row[1]))

    async def delete(self, app_id: str, channel: str) -> str:
        return await self._transaction(self._delete, app_id, channel)

    async def _delete(self, conn: Any, app_id: str, channel: str) -> str:
        old = (await self._lock_channels(conn, [(app_id, channel)]))[(app_id, channel)]
        epoch = new_epoch(old.epoch)
        await conn.execute(
            "UPDATE parley_history_channels SET epoch = $3, last_seq = 0"
            " WHERE app_id = $1 AND channel = $2",
            app_id,
            channel,
            epoch,
        )
        for table in ("parley_history_entries", "parley_history_keys"):
            await conn.execute(
                f"DELETE FROM {table} WHERE app_id = $1 AND channel = $2", app_id, channel
            )
        return epoch

    # -- reads -------------------------------------------------------------------------------

    async def _select(
        self,
        app_id: str,
        channel: str,
        after: int,
        before: int | None,
        limit: int,
        direction: Direction,
    ) -> tuple[str, int, list[Publication]] | None:
        if not self._running:
            raise RuntimeError("history store is not running")
        found = await self.db.fetch(
            SELECT[direction],
            app_id,
            channel,
            after,
            UNLIMITED if before is None else before,
            self._now_ms(),
            limit,
        )
        if not found:
            return None
        epoch, last = str(found[0][0]), int(found[0][1])
        return (
            epoch,
            last,
            [publication_from_row(channel, epoch, list(r)[2:]) for r in found if r[2] is not None],
        )

    async def read(
        self,
        app_id: str,
        channel: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        direction: Direction = "forward",
    ) -> Page:
        check_read_args(after, before, limit, direction)
        found = await self._select(app_id, channel, after or 0, before, limit + 1, direction)
        if found is None:
            return Page(channel, (await self.position(app_id, channel)).epoch, [], None)
        epoch, _, rows = found
        return page_of(channel, epoch, rows, limit)

    async def since(
        self, app_id: str, channel: str, position: StreamPosition, limit: int
    ) -> list[Publication] | None:
        offset = position.offset
        if offset < 0 or limit < 0:
            return None
        found = await self._select(app_id, channel, offset, None, limit + 1, "forward")
        if found is None or found[0] != position.epoch:
            return None
        _, last, rows = found
        if offset > last or last - offset > limit:
            return None
        return recovered(rows, offset, last)

    # -- retention ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        now_ms = self._now_ms()
        removed = 0
        for sql, window in SWEEPS:
            while True:
                status = await self.pool.execute(sql, now_ms - window, SWEEP_CHUNK)
                count = int(status.split()[-1])
                removed += count
                if count < SWEEP_CHUNK:
                    break
        return removed


def _entry_columns(items: Sequence[PendingAppend]) -> list[list[Any]]:
    """The parley_history_entries rows of stored appends, column by column (for unnest)."""
    return [
        [i.app_id for i in items],
        [i.publication.channel for i in items],
        [i.publication.position.offset for i in items],
        [i.ts for i in items],
        [i.expires_ms for i in items],
        [i.id for i in items],
        [i.publication.event for i in items],
        [i.data_json for i in items],
        [i.publisher_json for i in items],
        [i.extras_json for i in items],
    ]


def _key_columns(items: Sequence[PendingAppend]) -> list[list[Any]]:
    """The parley_history_keys rows of stored appends with a key, column by column."""
    return [
        [i.app_id for i in items],
        [i.publication.channel for i in items],
        [i.publication.idempotency_key for i in items],
        [i.publication.position.offset for i in items],
        [i.publication.position.epoch for i in items],
        [i.ts for i in items],
        [i.id for i in items],
        [i.publication.event for i in items],
        [i.data_json for i in items],
        [i.publisher_json for i in items],
        [i.extras_json for i in items],
    ]


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows to columns, for unnest(); `width` keeps the shape when there are no rows."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]
