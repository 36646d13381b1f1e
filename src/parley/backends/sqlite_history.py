"""`SqliteHistoryStore`: channel history in one SQLite file, the embedded default.

One dedicated writer thread owns the only writing connection and commits appends in batches
(one transaction each); reads go through their own connections on reader threads. It knows
nothing of the hub or the wire.

Durability: the database runs in WAL mode with synchronous=NORMAL. A commit appends its pages to
the WAL with write() before COMMIT returns, so an acknowledged append survives the process being
killed (SIGKILL) at any moment; only an OS crash or power loss can take the last commits back,
because NORMAL does not fsync the WAL on every commit. That is the trade the group commit needs
(no disk sync per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from parley.backends.history import (
    IDEMPOTENCY_WINDOW_MS,
    BatchedHistoryStore,
    ChannelCursor,
    ChannelKey,
    Direction,
    Entry,
    GroupCommit,
    IdempotencyKey,
    Page,
    PendingAppend,
    check_read_args,
    entry_from_row,
    new_epoch,
    page_of,
    plan_batch,
    recovered,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS parley_history_channels (
    app_id     TEXT NOT NULL,
    channel    TEXT NOT NULL,
    epoch      TEXT NOT NULL,
    -- A floor of the last offset handed out in this epoch: appends do not update it (one row
    -- write per channel per commit was a third of an append's cost); the last offset is
    -- max(last_seq, the highest seq in parley_history_entries), see LAST_OFFSET. The sweep
    -- raises it before it removes a channel's newest entries.
    last_seq   INTEGER NOT NULL,
    max_count  INTEGER NOT NULL,  -- retention given by the latest append
    max_age_ms INTEGER NOT NULL,
    PRIMARY KEY (app_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parley_history_entries (
    -- Rows in append order: a commit of entries for many channels writes a few sequential
    -- pages instead of one page per channel (the WAL writes whole pages); the unique index
    -- below, with small keys, finds a channel's entries.
    row        INTEGER PRIMARY KEY,
    app_id     TEXT NOT NULL,
    channel    TEXT NOT NULL,
    seq        INTEGER NOT NULL,  -- the entry's offset
    ts         INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,  -- for the periodic sweep; reads use the channel's max_age_ms
    id         TEXT NOT NULL,
    event      TEXT NOT NULL,
    data       TEXT NOT NULL,     -- JSON
    publisher  TEXT NOT NULL,     -- JSON
    user_id    TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS parley_history_entries_position
    ON parley_history_entries (app_id, channel, seq);
CREATE INDEX IF NOT EXISTS parley_history_entries_expires
    ON parley_history_entries (expires_ms);
CREATE TABLE IF NOT EXISTS parley_history_keys (
    app_id    TEXT NOT NULL,
    channel   TEXT NOT NULL,
    key       TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    epoch     TEXT NOT NULL,
    ts        INTEGER NOT NULL,   -- when the key was first seen: the entry's ts
    id        TEXT NOT NULL,
    event     TEXT NOT NULL,
    data      TEXT NOT NULL,
    publisher TEXT NOT NULL,
    user_id   TEXT,
    PRIMARY KEY (app_id, channel, key)
);
CREATE INDEX IF NOT EXISTS parley_history_keys_ts ON parley_history_keys (ts);
"""

ENTRY_COLUMNS = "seq, ts, id, event, data, publisher, user_id"
# The channel's last offset: trimming by count never removes the newest entry, deleting the
# history resets last_seq with the entries, and the sweep raises last_seq before expiring.
LAST_OFFSET = """max(c.last_seq, coalesce((SELECT e.seq FROM parley_history_entries e
    WHERE e.app_id = c.app_id AND e.channel = c.channel ORDER BY e.seq DESC LIMIT 1), 0))"""
CHANNEL_ROW = f"""SELECT epoch, {LAST_OFFSET}, max_count, max_age_ms
    FROM parley_history_channels c WHERE app_id = ? AND channel = ?"""
# Before the sweep removes entries by age, the channels losing them keep their last offset.
KEEP_LAST_OFFSETS = f"""UPDATE parley_history_channels AS c SET last_seq = {LAST_OFFSET}
    WHERE (app_id, channel) IN
        (SELECT app_id, channel FROM parley_history_entries INDEXED BY
            parley_history_entries_expires WHERE expires_ms < ?)"""
# Trimming by count runs every TRIM_EVERY-th append of a channel (a quarter of max_count),
# not on every commit; reads never show what is beyond max_count anyway.
TRIM_FRACTION = 4
SWEEP_CHUNK = 5000
SWEEP_ENTRIES = """
DELETE FROM parley_history_entries WHERE row IN
    (SELECT row FROM parley_history_entries WHERE expires_ms < ? LIMIT ?)
"""
SWEEP_KEYS = """
DELETE FROM parley_history_keys WHERE rowid IN
    (SELECT rowid FROM parley_history_keys WHERE ts < ? LIMIT ?)
"""

T = TypeVar("T")
_Cached = tuple[str, int, int, int]  # a channel's epoch, last offset, max_count, max_age_ms


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun and ended explicitly, nothing implicit.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA synchronous = NORMAL")  # durable against SIGKILL in WAL mode, see top
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (a full disk, say)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteHistoryStore(BatchedHistoryStore):
    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 512,
        readers: int = 2,
        sweep_interval_s: float = 60.0,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._max_batch = max_batch
        self._readers = readers
        self._sweep_interval_s = sweep_interval_s
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._commits: GroupCommit[PendingAppend, Entry] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._cursors: dict[ChannelKey, _Cached] = {}  # writer thread only
        self._cursor_version = -1

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="parley-history-writer")
        self._reader = ThreadPoolExecutor(self._readers, thread_name_prefix="parley-history-read")
        await self._write(self._open_writer)
        self._start_batching()

    async def close(self) -> None:
        await self._stop_batching()
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        for conn in self._rconns:
            conn.close()
        self._rconns.clear()
        if self._writer is not None:
            await self._write(self._close_writer)
            self._writer.shutdown(wait=True)
            self._writer = None

    def _open_writer(self) -> None:
        conn = _connect(self.path)
        # journal_mode is persistent in the file; setting it needs no transaction open.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise RuntimeError(f"SQLite refused WAL mode for {self.path} (got {mode})")
        conn.executescript(SCHEMA)
        # A bigger page cache than the default 2 MiB keeps the position index's hot pages
        # in memory; checkpointing every 4,000 WAL pages instead of 1,000 writes a page that
        # many commits touched once, and syncs a quarter as often (about 30 % less CPU per
        # append in bench/, at up to 16 MiB of WAL).
        conn.execute("PRAGMA cache_size = -32768")
        conn.execute("PRAGMA wal_autocheckpoint = 4000")
        self._wconn = conn

    def _close_writer(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    async def _write(self, fn: Callable[[], T]) -> T:
        if self._writer is None:
            raise RuntimeError("history store is not running")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise RuntimeError("history store is not running")
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, partial(self._in_reader, fn)
        )

    def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            self._rconns.append(conn)
        with _transaction(conn):  # one snapshot for the channel row and its entries
            return fn(conn)

    # -- appends (append and append_many come from BatchedHistoryStore) ----------------------

    async def _commit(self, items: list[PendingAppend]) -> list[Entry]:
        return await self._write(partial(self._write_batch, items))

    def _write_batch(self, items: list[PendingAppend]) -> list[Entry]:
        """In the writer thread: one transaction for the whole batch."""
        conn = self._wconn
        assert conn is not None
        try:
            return self._write_batch_in(conn, items)
        except BaseException:
            self._cursors.clear()
            raise

    def _write_batch_in(self, conn: sqlite3.Connection, items: list[PendingAppend]) -> list[Entry]:
        with _transaction(conn, "BEGIN IMMEDIATE"):
            # Channel positions are cached between batches; another connection's commit
            # (another process on this file) bumps data_version and empties the cache.
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._cursor_version or len(self._cursors) > 100_000:
                self._cursors.clear()
                self._cursor_version = version
            channels: dict[ChannelKey, ChannelCursor] = {}
            stored: dict[ChannelKey, _Cached] = {}
            firsts: dict[IdempotencyKey, Entry] = {}
            for item in items:
                where = (item.app_id, item.channel)
                if where not in channels:
                    cached = self._cursors.get(where)
                    if cached is None:
                        cached = self._channel_for_write(conn, *where)
                    stored[where] = cached
                    channels[where] = ChannelCursor(cached[0], cached[1])
                key = item.entry.idempotency_key
                if key is not None and (*where, key) not in firsts:
                    first = self._first_with_key(conn, *where, key)
                    if first is not None:
                        firsts[(*where, key)] = first
            plan = plan_batch(items, channels, firsts)
            conn.executemany(
                "INSERT INTO parley_history_entries (app_id, channel, seq, ts, expires_ms,"
                " id, event, data, publisher, user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                plan.entries,
            )
            if plan.keys:
                conn.executemany(
                    "INSERT OR REPLACE INTO parley_history_keys (app_id, channel, key, seq,"
                    " epoch, ts, id, event, data, publisher, user_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    plan.keys,
                )
            for where, cursor in channels.items():
                _, before, old_count, old_age_ms = stored[where]
                max_count = cursor.retention.count_or_unlimited
                max_age_ms = cursor.retention.age_ms_or_unlimited
                if (max_count, max_age_ms) != (old_count, old_age_ms):
                    conn.execute(
                        "UPDATE parley_history_channels SET max_count = ?, max_age_ms = ?"
                        " WHERE app_id = ? AND channel = ?",
                        (max_count, max_age_ms, *where),
                    )
                every = max(1, max_count // TRIM_FRACTION)
                if cursor.last > max_count and cursor.last // every > before // every:
                    conn.execute(
                        "DELETE FROM parley_history_entries"
                        " WHERE app_id = ? AND channel = ? AND seq <= ?",
                        (*where, cursor.last - max_count),
                    )
                self._cursors[where] = (cursor.epoch, cursor.last, max_count, max_age_ms)
        return plan.results

    def _channel_for_write(self, conn: sqlite3.Connection, app_id: str, channel: str) -> _Cached:
        row = self._channel_row(app_id, channel, conn)
        if row is not None:
            return row
        cursor = ChannelCursor(new_epoch(), 0)
        count, age_ms = cursor.retention.count_or_unlimited, cursor.retention.age_ms_or_unlimited
        conn.execute(
            "INSERT INTO parley_history_channels VALUES (?, ?, ?, 0, ?, ?)",
            (app_id, channel, cursor.epoch, count, age_ms),
        )
        return (cursor.epoch, 0, count, age_ms)

    @staticmethod
    def _first_with_key(
        conn: sqlite3.Connection, app_id: str, channel: str, key: str
    ) -> Entry | None:
        row = conn.execute(
            f"SELECT epoch, {ENTRY_COLUMNS} FROM parley_history_keys"
            " WHERE app_id = ? AND channel = ? AND key = ?",
            (app_id, channel, key),
        ).fetchone()
        return None if row is None else entry_from_row(row[0], row[1:])

    # -- channel state -----------------------------------------------------------------------

    async def position(self, app_id: str, channel: str) -> tuple[int, str]:
        row = await self._read(partial(self._channel_row, app_id, channel))
        if row is not None:
            return row[1], row[0]
        return await self._write(partial(self._ensure_channel, app_id, channel))

    def _ensure_channel(self, app_id: str, channel: str) -> tuple[int, str]:
        conn = self._wconn
        assert conn is not None
        with _transaction(conn, "BEGIN IMMEDIATE"):
            epoch, last, *_ = self._channel_for_write(conn, app_id, channel)
        return last, epoch

    @staticmethod
    def _channel_row(app_id: str, channel: str, conn: sqlite3.Connection) -> _Cached | None:
        """(epoch, last offset, max_count, max_age_ms) of a channel, None if never written."""
        row = conn.execute(CHANNEL_ROW, (app_id, channel)).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    async def delete(self, app_id: str, channel: str) -> str:
        return await self._write(partial(self._delete, app_id, channel))

    def _delete(self, app_id: str, channel: str) -> str:
        conn = self._wconn
        assert conn is not None
        with _transaction(conn, "BEGIN IMMEDIATE"):
            epoch = new_epoch(self._channel_for_write(conn, app_id, channel)[0])
            conn.execute(
                "UPDATE parley_history_channels SET epoch = ?, last_seq = 0"
                " WHERE app_id = ? AND channel = ?",
                (epoch, app_id, channel),
            )
            for table in ("parley_history_entries", "parley_history_keys"):
                conn.execute(
                    f"DELETE FROM {table} WHERE app_id = ? AND channel = ?", (app_id, channel)
                )
        self._cursors.pop((app_id, channel), None)  # its retention is read again next time
        return epoch

    # -- reads -------------------------------------------------------------------------------

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
        found = await self._read(
            partial(
                self._select,
                app_id,
                channel,
                after or 0,
                before,
                limit + 1,
                direction,
                self._now_ms(),
            )
        )
        if found is None:
            _, epoch = await self.position(app_id, channel)
            return Page(channel, epoch, [], None)
        epoch, _, rows = found
        return page_of(channel, epoch, rows, limit)

    async def since(
        self, app_id: str, channel: str, offset: int, epoch: str, limit: int
    ) -> list[Entry] | None:
        if offset < 0 or limit < 0:
            return None
        found = await self._read(
            partial(
                self._select, app_id, channel, offset, None, limit + 1, "forward", self._now_ms()
            )
        )
        if found is None or found[0] != epoch:
            return None
        _, last, rows = found
        if offset > last or last - offset > limit:
            return None
        return recovered(rows, offset, last)

    def _select(
        self,
        app_id: str,
        channel: str,
        after: int,
        before: int | None,
        limit: int,
        direction: Direction,
        now_ms: int,
        conn: sqlite3.Connection,
    ) -> tuple[str, int, list[Entry]] | None:
        """In a reader thread, inside one read transaction: (epoch, last offset, entries kept
        by the channel's retention with after < offset < before, in `direction`)."""
        row = self._channel_row(app_id, channel, conn)
        if row is None:
            return None
        epoch, last, max_count, max_age_ms = row
        order = "ASC" if direction == "forward" else "DESC"
        cursor = conn.execute(
            f"SELECT {ENTRY_COLUMNS} FROM parley_history_entries"
            " WHERE app_id = ? AND channel = ? AND seq > ? AND seq < ? AND ts >= ?"
            f" ORDER BY seq {order} LIMIT ?",
            (
                app_id,
                channel,
                max(after, last - max_count),
                last + 1 if before is None else before,
                now_ms - max_age_ms,
                limit,
            ),
        )
        return epoch, last, [entry_from_row(epoch, r) for r in cursor]

    # -- retention ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        # One short transaction per chunk, each its own writer job, so batches of appends
        # interleave with a long sweep instead of waiting for it.
        now_ms = self._now_ms()
        removed = 0
        await self._write(partial(self._keep_last_offsets, now_ms))
        for sql, cutoff in (
            (SWEEP_ENTRIES, now_ms),
            (SWEEP_KEYS, now_ms - IDEMPOTENCY_WINDOW_MS),
        ):
            while True:
                count = await self._write(partial(self._sweep_chunk, sql, cutoff))
                removed += count
                if count < SWEEP_CHUNK:
                    break
        return removed

    def _keep_last_offsets(self, cutoff: int) -> None:
        conn = self._wconn
        assert conn is not None
        with _transaction(conn, "BEGIN IMMEDIATE"):
            conn.execute(KEEP_LAST_OFFSETS, (cutoff,))

    def _sweep_chunk(self, sql: str, cutoff: int) -> int:
        conn = self._wconn
        assert conn is not None
        with _transaction(conn, "BEGIN IMMEDIATE"):
            return conn.execute(sql, (cutoff, SWEEP_CHUNK)).rowcount

