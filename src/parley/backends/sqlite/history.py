"""`SqliteHistoryStore`: channel history in one SQLite file, the embedded default.

This module is the store: the async `HistoryStore` on the event loop, owning the channels'
state in memory (epochs, last offsets, tails), the indexer task, the threads, the connections
and the lock file. It composes `history_log` (the record format and the segment files) and
`history_index` (every statement on the tables: the index writer, the reads, the sweep).

It takes the process's `SqliteDb` for its file, which the handle has put in WAL mode and
migrated (the tables are migration 2's), but keeps connections of its own: the handle's one
connection on one thread cannot give it what the design below needs. Appends read channel
rows on the event loop itself (a hop to a thread would put an await between planning and
logging a batch, and call order is offset order only without one); the indexer's rounds, long
write transactions, have a writer thread to themselves instead of holding every user and
grant lookup (a sign-in) behind them; reads run on two reader threads at once.

Theory of operation: log first, index in bulk. A batch of appends is durable once its records
are in the history log, an append-only segment file beside the database
(`<db>.history-log/<n>.jsonl`), written with one write() on the event loop: no thread hop, no
lock, no B-tree page rewritten. The entries are readable at once from the channel's tail in
memory. An indexer moves the logged operations into SQLite on a writer thread every
`index_interval_s` (a quarter of a second), in one transaction per round that inserts one row
per channel: a chunk holding that channel's new log lines. The chunks are gathered on the loop
as entries are logged, so the writer thread does no Python work per entry (it competes with
the loop for the one core a small server has). With one row per entry and a
commit per batch, every commit rewrote one index page per channel it touched, and that was
most of an append's cost (bench/README.md has the figures). A segment is deleted once
everything it holds is in SQLite; at start, what the remaining segments hold is replayed into
SQLite (idempotently: an entry already indexed is skipped, one of an epoch since deleted is
dropped) before anything is served.

Offsets and epochs are handed out from memory, so one process owns a history file: a lock
file refuses a second one (several nodes share PostgreSQL, not SQLite). Reads merge SQLite
(reader threads, their own connections) with the tail; a channel whose history was deleted
reads only its tail until the indexer has applied the delete.

Durability: write() puts the records in the OS page cache before the append is acknowledged,
so an acknowledged append survives the process being killed (SIGKILL) at any moment; like the
database itself (WAL, synchronous=NORMAL), an OS crash or power loss can take back the last
records, because nothing is fsynced per append (nor is a segment's deletion ordered after the
WAL's next sync: the same class of loss). That is the trade the group commit needs.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, TypeVar

import orjson

from parley import logs
from parley.backends.history import (
    IDEMPOTENCY_WINDOW_MS,
    Append,
    ChannelKey,
    Direction,
    Page,
    Retention,
    Stored,
    SweepingHistoryStore,
    check_read_args,
    new_epoch,
    new_message_id,
    page_of,
    recovered,
)
from parley.backends.sqlite import history_index as index
from parley.backends.sqlite.db import SqliteDb
from parley.backends.sqlite.history_index import Chunk, Indexed, IndexWriter, Item
from parley.backends.sqlite.history_log import HistoryLog, Op, entry_line, log_dir_for
from parley.errors import CannotStart, StoreUnavailable
from parley.publication import Publication, StreamPosition
from parley.waiting import wait_set

MAX_UNINDEXED = 200_000  # appends wait for the indexer beyond this many logged operations
MAX_IDLE_CHANNELS = 100_000  # channel states kept in memory with nothing pending

T = TypeVar("T")


@dataclass(slots=True)
class _Channel:
    """A channel as this process hands out its offsets (authoritative while it is loaded)."""

    key: ChannelKey
    epoch: str
    last: int
    max_count: int
    max_age_ms: int
    durable: bool  # False until something logged names this epoch
    tail: deque[Publication] = field(default_factory=deque)  # logged, not in SQLite yet
    keys: dict[str, Publication] = field(default_factory=dict)  # idempotency keys of the tail
    pending: int = 0  # logged operations of this channel not yet indexed
    deletes: int = 0  # deletes not yet applied in SQLite: its rows there are of an old epoch


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


class SqliteHistoryStore(SweepingHistoryStore):
    engine: ClassVar[str] = "sqlite"

    def __init__(
        self,
        db: SqliteDb,
        *,
        clock: Callable[[], float] = time.time,
        readers: int = 2,
        sweep_interval_s: float = 60.0,
        index_interval_s: float = 0.25,
    ) -> None:
        self.db = db  # opened, migrated and closed by its owner
        self.path = db.path
        self.log_dir = log_dir_for(db.path)
        self._clock = clock
        self._readers = readers
        self._sweep_interval_s = sweep_interval_s
        self._index_interval_s = index_interval_s
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._index: IndexWriter | None = None  # on the writer thread: indexer, sweep
        self._lconn: sqlite3.Connection | None = None  # event loop: channel rows, keys
        self._rconns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._running = False
        self._sweeper: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._channels: dict[ChannelKey, _Channel] = {}
        self._log = HistoryLog(self.log_dir)
        self._indexed = 0  # operations logged since start that the indexer has committed
        self._ops: list[Item] = []  # logged, waiting for the indexer, in log order
        self._open_chunks: dict[ChannelKey, Chunk] = {}  # the chunk in _ops each channel adds to
        self._ops_ready = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._indexer: asyncio.Task[None] | None = None
        self._rounds: list[asyncio.Future[None]] = []  # woken after each indexing round
        self._hurry = asyncio.Event()  # index now, without waiting for the round to collect
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="parley-history-writer")
        self._reader = ThreadPoolExecutor(self._readers, thread_name_prefix="parley-history-read")
        failure: BaseException | None = None
        try:
            await self._open()
        except BaseException as exc:
            failure = exc  # closed below: compiled code never awaits inside an except block
        if failure is not None:
            await self.close()  # a store that failed to start holds no lock, thread or file
            raise failure
        self._running = True
        self._start_sweeping()

    async def _open(self) -> None:
        await self._write(self._open_writer)
        segments = self._log.segments()
        for segment in segments:
            ops = HistoryLog.read(segment)
            await self._write(partial(self._apply, index.group(ops)))
            segment.unlink()
            if ops:
                logs.info("history log replayed", segment=segment.name, operations=len(ops))
        self._log.open(after=segments)
        self._lconn = index.connect(self.path)
        self._caught_up.set()
        self._indexer = asyncio.create_task(self._index_loop(), name="parley-history-indexer")

    async def close(self) -> None:
        self._running = False  # appends are written as they come: none is left to finish
        await self._stop_sweeping()
        self._closing = True
        self._ops_ready.set()
        self._hurry.set()
        if self._indexer is not None:
            await self._indexer
            self._indexer = None
        self._log.close(indexed=not self._ops)  # all in SQLite: the log is not needed any more
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        for conn in self._rconns:
            conn.close()
        self._rconns.clear()
        if self._lconn is not None:
            self._lconn.close()
            self._lconn = None
        if self._writer is not None:
            await self._write(self._close_writer)
            self._writer.shutdown(wait=True)
            self._writer = None
        self._channels.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    async def check(self) -> None:
        self._check_running()
        await self._read(_ping)

    def _lock(self) -> None:
        fd = os.open(self.path + ".history-lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CannotStart(
                f"the history in {self.path} is in use by another Parley process; one process "
                'owns a SQLite history (several nodes share PostgreSQL: store = "postgres")'
            ) from None
        self._lock_fd = fd

    def _open_writer(self) -> None:
        writer = IndexWriter.open(self.path)
        # journal_mode is persistent in the file, set when the handle opened it.
        mode = writer.conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            writer.close()
            raise RuntimeError(f"{self.db.describe()} is not in WAL mode: open its handle first")
        self._index = writer

    def _close_writer(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

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
            conn = self._local.conn = index.connect(self.path)
            self._rconns.append(conn)
        with index.transaction(conn):  # one snapshot
            return fn(conn)

    # -- the log -----------------------------------------------------------------------------

    def _write_log(self, data: bytes, count: int) -> None:
        """Make `count` operations durable (`HistoryLog.write`) and tell the indexer. Raises on
        an I/O error; the caller then changes nothing."""
        log = self._log
        try:
            log.write(data, count)
        except OSError as exc:  # ENOSPC, EROFS, EFBIG, EIO: nothing logged, nothing changed
            raise StoreUnavailable(
                f"history cannot be written: {exc.strerror or exc} ({self._log.directory})"
            ) from exc
        self._ops_ready.set()
        if log.logged - self._indexed > MAX_UNINDEXED:
            self._caught_up.clear()  # appends wait until the indexer is halfway back

    def _log_op(self, op: Op) -> None:
        """Log a "c" or "d" operation: the channel's next entries go to a new chunk after it."""
        line = orjson.dumps(op)
        self._write_log(line + b"\n", 1)
        self._open_chunks.pop((op[1], op[2]), None)
        self._ops.append((op, line))

    # -- the indexer -------------------------------------------------------------------------

    async def _index_loop(self) -> None:
        while True:
            await self._ops_ready.wait()
            if not self._closing and not self._hurry.is_set():
                await wait_set(self._hurry, self._index_interval_s)  # let a round collect
            self._hurry.clear()
            self._ops_ready.clear()
            # The writer thread owns these chunks now: later appends open new ones.
            ops, self._ops = self._ops, []
            self._open_chunks.clear()
            if ops:
                summary: dict[ChannelKey, Indexed] | None = None
                try:
                    summary = await self._write(partial(self._apply, ops))
                except Exception:
                    logs.error("history indexing failed, retrying", operations=index.count(ops))
                    self._ops[:0] = ops
                    self._ops_ready.set()
                if summary is None:  # waited outside the except block (compiled code)
                    if self._closing:
                        return
                    await asyncio.sleep(1.0)
                    continue
                self._after_indexing(index.count(ops), summary)
            if self._log.logged - self._indexed < MAX_UNINDEXED // 2:
                self._caught_up.set()
            if self._closing and not self._ops:
                return

    def _after_indexing(self, count: int, summary: dict[ChannelKey, Indexed]) -> None:
        """On the loop: drop from the tails what SQLite now holds, delete finished segments."""
        self._indexed += count
        for key, done in summary.items():
            state = self._channels.get(key)
            if state is None:
                continue
            state.pending -= done.ops
            state.deletes -= done.deletes
            if state.epoch != done.epoch:
                continue
            offset = done.offset
            tail = state.tail
            if tail and tail[-1].position.offset <= offset:
                tail.clear()
            else:
                while tail and tail[0].position.offset <= offset:
                    tail.popleft()
            if state.keys:
                for k in [k for k, p in state.keys.items() if p.position.offset <= offset]:
                    del state.keys[k]
        self._log.release(self._indexed)
        for waiter in self._rounds:
            if not waiter.done():
                waiter.set_result(None)
        self._rounds.clear()
        if len(self._channels) > MAX_IDLE_CHANNELS:
            for key in [k for k, s in self._channels.items() if not s.pending and not s.tail]:
                del self._channels[key]

    async def _flush(self) -> None:
        """Wait until everything logged so far is in SQLite."""
        target = self._log.logged
        while self._indexed < target:
            if self._indexer is None or self._indexer.done():
                raise RuntimeError("history store is not running")
            waiter = asyncio.get_running_loop().create_future()
            self._rounds.append(waiter)
            self._hurry.set()
            await waiter

    def _apply(self, items: Sequence[Item]) -> dict[ChannelKey, Indexed]:
        """In the writer thread: `IndexWriter.apply`."""
        if self._index is None:
            raise RuntimeError("history store is not running")
        return self._index.apply(items)

    # -- appends ---------------------------------------------------------------------------

    async def append(self, app_id: str, publication: Publication, retention: Retention) -> Stored:
        return (await self.append_many((Append(app_id, publication, retention),)))[0]

    async def append_many(self, items: Sequence[Append]) -> list[Stored]:
        """Appends are planned and logged on the caller's task with no await in between (one
        write() per call), so call order is offset order and no group-commit task is needed:
        the node's pump already hands over everything a loop turn produced in one call."""
        self._check_running()
        if not self._caught_up.is_set():
            await self._caught_up.wait()  # the indexer is far behind: let it catch up
            self._check_running()
        return self._append_now(items)

    def _state(self, app_id: str, channel: str) -> _Channel:
        """The channel as loaded in memory: from SQLite the first time, or new."""
        key = (app_id, channel)
        state = self._channels.get(key)
        if state is not None:
            return state
        conn = self._lconn
        if conn is None:
            raise RuntimeError("history store is not running")
        row = index.channel_row(conn, app_id, channel)
        if row is not None:
            state = _Channel(key, row.epoch, row.last, row.max_count, row.max_age_ms, durable=True)
        else:
            state = _Channel(key, new_epoch(), 0, *Retention().count_and_age_ms, durable=False)
        self._channels[key] = state
        return state

    def _stored_key(
        self, app_id: str, channel: str, state: _Channel, key: str
    ) -> Publication | None:
        """The first publication of an idempotency key, from the tail or else from SQLite."""
        first = state.keys.get(key)
        if first is not None or state.deletes or self._lconn is None:
            return first
        return index.first_of_key(self._lconn, app_id, channel, key, state.epoch)

    def _append_now(self, items: Sequence[Append]) -> list[Stored]:
        now_ms = self._now_ms()
        results: list[Stored] = []
        lines: list[bytes] = []
        added: list[Append] = []  # the appends stored (not repeats), in order
        states: list[_Channel] = []  # and their channels
        lasts: dict[ChannelKey, int] = {}
        seen: dict[tuple[str, str, str], Publication] = {}  # keys first used in this batch
        for item in items:
            publication = item.publication
            app_id, channel = item.app_id, publication.channel
            state = self._state(app_id, channel)
            idem = publication.idempotency_key
            if idem is not None:
                first = seen.get((app_id, channel, idem)) or self._stored_key(
                    app_id, channel, state, idem
                )
                if first is not None and first.ts >= now_ms - IDEMPOTENCY_WINDOW_MS:
                    results.append(Stored(first, True))
                    continue
            key = state.key
            seq = lasts[key] = lasts.get(key, state.last) + 1
            publication.position = StreamPosition(seq, state.epoch)
            publication.ts = now_ms
            publication.id = new_message_id()
            count, age_ms = item.retention.count_and_age_ms
            lines.append(entry_line(app_id, publication, now_ms + age_ms, count, age_ms))
            results.append(Stored(publication))
            added.append(item)
            states.append(state)
            if idem is not None:
                seen[(app_id, channel, idem)] = publication
        if not lines:
            return results
        lines.append(b"")
        self._write_log(b"\n".join(lines), len(added))  # on an I/O error nothing below happens
        open_chunks = self._open_chunks
        queue = self._ops
        for item, state, line in zip(added, states, lines, strict=False):
            publication = item.publication
            kept = publication.kept()
            state.tail.append(kept)
            position = publication.position
            seq, epoch = position.offset, position.epoch
            count, age_ms = item.retention.count_and_age_ms
            expires = publication.ts + age_ms
            state.last = seq
            state.max_count, state.max_age_ms = count, age_ms
            state.durable = True
            state.pending += 1
            key = state.key
            chunk = open_chunks.get(key)
            if chunk is None or chunk.epoch != epoch:
                chunk = open_chunks[key] = Chunk.opened(key, epoch, seq, expires)
                queue.append(chunk)
            chunk.add(seq, expires, line, count, age_ms)
            idem = publication.idempotency_key
            if idem is not None:
                state.keys[idem] = kept
                chunk.keys.append(index.publication_key_row(idem, publication))
        return results

    def _make_durable(self, app_id: str, channel: str, state: _Channel) -> None:
        """Log the epoch of a channel never written, so that it sticks."""
        if not state.durable:
            self._log_op(("c", app_id, channel, state.epoch, state.max_count, state.max_age_ms))
            state.durable = True
            state.pending += 1

    # -- channel state -----------------------------------------------------------------------

    async def position(self, app_id: str, channel: str) -> StreamPosition:
        self._check_running()
        state = self._state(app_id, channel)
        self._make_durable(app_id, channel, state)
        return StreamPosition(state.last, state.epoch)

    async def delete(self, app_id: str, channel: str) -> str:
        self._check_running()
        state = self._state(app_id, channel)
        epoch = new_epoch(state.epoch)
        self._log_op(("d", app_id, channel, epoch))
        state.epoch, state.last, state.durable = epoch, 0, True
        state.tail.clear()
        state.keys.clear()
        state.pending += 1
        state.deletes += 1
        return epoch

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeError("history store is not running")

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
        self._check_running()
        state = self._state(app_id, channel)
        self._make_durable(app_id, channel, state)
        epoch = state.epoch
        rows = await self._fetch(app_id, channel, state, after or 0, before, limit + 1, direction)
        return page_of(channel, epoch, rows, limit)

    async def since(
        self, app_id: str, channel: str, position: StreamPosition, limit: int
    ) -> list[Publication] | None:
        self._check_running()
        offset = position.offset
        if offset < 0 or limit < 0:
            return None
        state = self._state(app_id, channel)
        last = state.last
        if state.epoch != position.epoch or offset > last or last - offset > limit:
            return None
        rows = await self._fetch(app_id, channel, state, offset, None, limit + 1, "forward")
        return recovered(rows, offset, last)

    async def _fetch(
        self,
        app_id: str,
        channel: str,
        state: _Channel,
        after: int,
        before: int | None,
        limit: int,
        direction: Direction,
    ) -> list[Publication]:
        """Up to `limit` publications kept by retention with after < offset < before, in
        `direction`: the tail as it is now, merged with what SQLite holds."""
        lowest = max(after, state.last - state.max_count)
        upper = state.last + 1 if before is None else min(before, state.last + 1)
        oldest_ms = self._now_ms() - state.max_age_ms
        # The tail is taken before SQLite is asked: whatever leaves the tail meanwhile is in
        # SQLite by the time the query runs, so nothing falls between the two.
        found = {
            p.position.offset: p
            for p in state.tail
            if lowest < p.position.offset < upper and p.ts >= oldest_ms
        }
        if not state.deletes and lowest + 1 < upper:
            args = (app_id, channel, lowest, upper, oldest_ms, limit, direction, state.epoch)
            for p in await self._read(partial(index.read_entries, *args)):
                found.setdefault(p.position.offset, p)
        rows = sorted(found.values(), key=_offset, reverse=direction == "backward")
        return rows[:limit]

    # -- retention ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        # One short transaction per chunk of rows, each its own writer job, so indexing rounds
        # interleave with a long sweep instead of waiting for it.
        await self._flush()  # what is only in the tail is young: it would not be swept
        writer = self._index
        if writer is None:
            raise RuntimeError("history store is not running")
        now_ms = self._now_ms()
        removed = 0
        await self._write(partial(writer.keep_last_offsets, now_ms))
        while True:
            count, rows = await self._write(partial(writer.sweep_chunks, now_ms))
            removed += count
            if rows < index.SWEEP_CHUNK:
                break
        cutoff = now_ms - IDEMPOTENCY_WINDOW_MS
        while True:
            count = await self._write(partial(writer.sweep_keys, cutoff))
            removed += count
            if count < index.SWEEP_CHUNK:
                break
        return removed


def _offset(publication: Publication) -> int:
    return publication.position.offset
