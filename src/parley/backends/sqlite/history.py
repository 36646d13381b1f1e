"""`SqliteHistoryStore`: channel history in one SQLite file, the embedded default.

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
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from parley import logs
from parley.backends.history import (
    IDEMPOTENCY_WINDOW_MS,
    Append,
    Direction,
    Page,
    Retention,
    Stored,
    SweepingHistoryStore,
    check_read_args,
    new_epoch,
    new_message_id,
    page_of,
    publication_from_row,
    recovered,
)
from parley.errors import CannotStart
from parley.publication import (
    NO_EXTRAS,
    Publication,
    Publisher,
    StreamPosition,
    extras_of,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS parley_history_channels (
    app_id     TEXT NOT NULL,
    channel    TEXT NOT NULL,
    epoch      TEXT NOT NULL,
    -- A floor of the last offset handed out in this epoch: the last offset is
    -- max(last_seq, the highest last_seq of the channel's chunks), see LAST_OFFSET. The sweep
    -- raises it before it removes a channel's newest entries.
    last_seq   INTEGER NOT NULL,
    max_count  INTEGER NOT NULL,  -- retention given by the latest append
    max_age_ms INTEGER NOT NULL,
    PRIMARY KEY (app_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parley_history_chunks (
    -- One row per channel per indexing round: the entries the round brought to the channel,
    -- oldest first, as a JSON array of their log lines (see Op). A round that touches 500
    -- channels inserts 500 rows, whatever the number of entries.
    row         INTEGER PRIMARY KEY,
    app_id      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    min_expires INTEGER NOT NULL,  -- when its oldest entry expires: the sweep looks then
    max_expires INTEGER NOT NULL,  -- when its newest does: the sweep removes the row then
    entries     BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS parley_history_chunks_position
    ON parley_history_chunks (app_id, channel, last_seq);
CREATE INDEX IF NOT EXISTS parley_history_chunks_expires
    ON parley_history_chunks (min_expires);
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
    extras    TEXT,               -- JSON object of the publication's extras; NULL: none
    PRIMARY KEY (app_id, channel, key)
);
CREATE INDEX IF NOT EXISTS parley_history_keys_ts ON parley_history_keys (ts);
"""
# Databases written by Parley before chunks kept one row per entry: moved over once, at start.
MIGRATE_ENTRIES = """
INSERT INTO parley_history_chunks
    (app_id, channel, first_seq, last_seq, min_expires, max_expires, entries)
SELECT app_id, channel, seq, seq, expires_ms, expires_ms,
       json_array(json_array('e', app_id, channel, '', seq, ts, expires_ms, id, event, data,
                             publisher, user_id, NULL, 0, 0))
FROM parley_history_entries;
DROP TABLE parley_history_entries;
"""

ENTRY_COLUMNS = "seq, ts, id, event, data, publisher, extras"
# The channel's last offset: trimming by count never removes the newest entry, deleting the
# history resets last_seq with the chunks, and the sweep raises last_seq before expiring.
NEWEST_CHUNK = """(SELECT e.last_seq FROM parley_history_chunks e
    WHERE e.app_id = c.app_id AND e.channel = c.channel ORDER BY e.last_seq DESC LIMIT 1)"""
LAST_OFFSET = f"max(c.last_seq, coalesce({NEWEST_CHUNK}, 0))"
CHANNEL_ROW = f"""SELECT epoch, {LAST_OFFSET}, max_count, max_age_ms
    FROM parley_history_channels c WHERE app_id = ? AND channel = ?"""
# What the indexer needs of a channel: its epoch, retention and the newest offset indexed.
INDEXER_ROW = f"""SELECT epoch, max_count, max_age_ms, coalesce({NEWEST_CHUNK}, 0)
    FROM parley_history_channels c WHERE app_id = ? AND channel = ?"""
# Before the sweep removes chunks by age, the channels losing them keep their last offset.
KEEP_LAST_OFFSETS = f"""UPDATE parley_history_channels AS c SET last_seq = {LAST_OFFSET}
    WHERE (app_id, channel) IN
        (SELECT app_id, channel FROM parley_history_chunks INDEXED BY
            parley_history_chunks_expires WHERE min_expires < ?)"""
# Trimming by count runs when a channel passes a multiple of a quarter of its max_count, not
# on every round; reads never show what is beyond max_count anyway.
TRIM_FRACTION = 4
SWEEP_CHUNK = 1000
SWEEP_KEYS = """
DELETE FROM parley_history_keys WHERE rowid IN
    (SELECT rowid FROM parley_history_keys WHERE ts < ? LIMIT ?)
"""

# Logged operations, as JSON arrays (tuples in memory, the same to the indexer):
#   ("E", app_id, channel, epoch, seq, ts, expires_ms, id, event, data, publisher, user_id,
#    idempotency_key, max_count, max_age_ms[, extras])          an appended publication
#   ("c", app_id, channel, epoch, max_count, max_age_ms)        a channel's first epoch
#   ("d", app_id, channel, new_epoch)                           its history deleted
# "E" holds `data`, `publisher` and `extras` (only when there are any) as JSON values, written
# from the bytes the node encoded once per message; `user_id` is the publisher's, kept for
# the records' shape and not read. Logs and chunks written before hold "e" entries instead,
# the same fields with `data` and `publisher` as JSON text; they are still read.
# `_entry_line` writes an "E" record and `_publication_of` reads one: the fields by name.
Op = tuple[Any, ...]
Logged = tuple[Op, bytes]  # an operation and its line in the log (JSON, no newline)
ChannelKey = tuple[str, str]
ENTRY_KINDS = ("E", "e")
# the fields of an entry record ("E" or "e")
KIND: Final = 0
APP_ID: Final = 1
CHANNEL: Final = 2
EPOCH: Final = 3
SEQ: Final = 4
TS: Final = 5
EXPIRES: Final = 6
ID: Final = 7
EVENT: Final = 8
DATA: Final = 9
PUBLISHER: Final = 10
IDEMPOTENCY_KEY: Final = 12
MAX_COUNT: Final = 13
MAX_AGE_MS: Final = 14
EXTRAS: Final = 15  # absent when there are none


def _entry_line(
    app_id: str, publication: Publication, expires_ms: int, max_count: int, max_age_ms: int
) -> bytes:
    """The log line of an appended publication: its data, publisher and extras embedded as the
    JSON already encoded."""
    fragment = orjson.Fragment
    position = publication.position
    publisher = publication.publisher
    record: tuple[Any, ...] = (
        "E",
        app_id,
        publication.channel,
        position.epoch,
        position.offset,
        publication.ts,
        expires_ms,
        publication.id,
        publication.event,
        fragment(publication.data_bytes()),
        fragment(publisher.json()),
        publisher.user_id,
        publication.idempotency_key,
        max_count,
        max_age_ms,
    )
    if publication.extras:
        record += (publication.extras,)
    return orjson.dumps(record)


def _publication_of(op: Sequence[Any], epoch: str) -> Publication:
    """The publication of a decoded entry record."""
    data, publisher = op[DATA], op[PUBLISHER]
    if op[KIND] == "e":  # written before "E": data and publisher as JSON text
        data, publisher = orjson.loads(data), orjson.loads(publisher)
    return Publication(
        op[CHANNEL],
        op[EVENT],
        data,
        Publisher.from_wire(publisher),
        StreamPosition(op[SEQ], epoch),
        op[TS],
        op[ID],
        extras_of(op[EXTRAS]) if len(op) > EXTRAS else NO_EXTRAS,
    )


def _key_row(
    key: str,
    seq: int,
    epoch: str,
    ts: int,
    id_: str,
    event: str,
    data: str,
    publisher: str,
    extras: str | None,
) -> tuple[Any, ...]:
    """A chunk's idempotency key as the indexer writes it: the parley_history_keys columns
    after app_id and channel (see KEY_COLUMNS), data, publisher and extras as JSON text."""
    return (key, seq, epoch, ts, id_, event, data, publisher, extras)


KEY_COLUMNS = "app_id, channel, key, seq, epoch, ts, id, event, data, publisher, extras"
KEY_ROW_SEQ: Final = 1  # where `_key_row` puts the seq


@dataclass(slots=True)
class _Chunk:
    """Entries of one channel for the indexer, in log order: consecutive offsets of one epoch,
    each as its log line. Live appends add to the channel's open chunk, so the indexer's work
    is per channel, not per entry."""

    key: ChannelKey
    epoch: str
    first: int
    last: int
    low: int  # the lowest and highest expiry among its entries
    high: int
    max_count: int  # retention given by its newest entry
    max_age_ms: int
    lines: list[bytes]
    keys: list[tuple[Any, ...]]  # idempotency keys, as made by `_key_row`

    @classmethod
    def opened(cls, key: ChannelKey, epoch: str, seq: int, expires: int) -> _Chunk:
        return cls(key, epoch, seq, seq - 1, expires, expires, 0, 0, [], [])

    def add(self, seq: int, expires: int, line: bytes, max_count: int, max_age_ms: int) -> None:
        """The entry after `last`."""
        self.last = seq
        self.lines.append(line)
        self.max_count, self.max_age_ms = max_count, max_age_ms
        if expires < self.low:
            self.low = expires
        elif expires > self.high:
            self.high = expires


@dataclass(slots=True)
class _Indexed:
    """What an indexing round did to one channel."""

    ops: int = 0  # logged operations applied
    deletes: int = 0  # of which deletes
    epoch: str | None = None  # the epoch and offset of the newest entry indexed, if any
    offset: int = 0


Item = _Chunk | Logged  # what the indexer applies: a chunk, or a "c" or "d" operation


def _group(ops: Sequence[Logged]) -> list[Item]:
    """Logged operations (a replayed segment) as the indexer takes them: runs of entries of
    one channel become chunks; a channel's chunk ends at its next "c" or "d"."""
    items: list[Item] = []
    open_: dict[ChannelKey, _Chunk] = {}
    for op, line in ops:
        key = (op[APP_ID], op[CHANNEL])
        if op[KIND] not in ENTRY_KINDS:
            open_.pop(key, None)
            items.append((op, line))
            continue
        epoch, seq, expires = op[EPOCH], op[SEQ], op[EXPIRES]
        chunk = open_.get(key)
        if chunk is None or chunk.epoch != epoch or seq != chunk.last + 1:
            chunk = open_[key] = _Chunk.opened(key, epoch, seq, expires)
            items.append(chunk)
        chunk.add(seq, expires, line, op[MAX_COUNT], op[MAX_AGE_MS])
        if op[IDEMPOTENCY_KEY] is not None:
            publication = _publication_of(op, epoch)
            chunk.keys.append(
                _key_row(
                    op[IDEMPOTENCY_KEY],
                    seq,
                    epoch,
                    publication.ts,
                    publication.id,
                    publication.event,
                    publication.data_bytes().decode(),
                    publication.publisher.json().decode(),
                    publication.extras_json(),
                )
            )
    return items


def _count(items: Sequence[Item]) -> int:
    """How many logged operations `items` hold."""
    return sum(len(i.lines) if type(i) is _Chunk else 1 for i in items)


SEGMENT_BYTES = 16 * 1024 * 1024  # a new log segment after this many bytes
MAX_UNINDEXED = 200_000  # appends wait for the indexer beyond this many logged operations
MAX_IDLE_CHANNELS = 100_000  # channel states kept in memory with nothing pending

T = TypeVar("T")


def log_dir_for(path: str | Path) -> Path:
    """Where the history log of the database at `path` lives."""
    return Path(str(path) + ".history-log")


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


class SqliteHistoryStore(SweepingHistoryStore):
    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        readers: int = 2,
        sweep_interval_s: float = 60.0,
        index_interval_s: float = 0.25,
    ) -> None:
        self.path = str(path)
        self.log_dir = log_dir_for(path)
        self._clock = clock
        self._readers = readers
        self._sweep_interval_s = sweep_interval_s
        self._index_interval_s = index_interval_s
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None  # writer thread: indexer, sweep
        self._known: dict[ChannelKey, list[Any] | None] = {}  # the indexer's, see _apply
        self._lconn: sqlite3.Connection | None = None  # event loop: channel rows, keys
        self._rconns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._running = False
        self._sweeper: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._channels: dict[ChannelKey, _Channel] = {}
        # the log: the open segment, and the closed ones with the operation count they end at
        self._segment_fd: int | None = None
        self._segment_no = 0
        self._segment_bytes = 0
        self._closed_segments: deque[tuple[int, Path]] = deque()
        self._logged = 0  # operations logged since start
        self._indexed = 0  # of which the indexer has committed
        self._ops: list[Item] = []  # logged, waiting for the indexer, in log order
        self._open_chunks: dict[ChannelKey, _Chunk] = {}  # the chunk in _ops each channel adds to
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
        try:
            await self._open()
        except BaseException:
            await self.close()  # a store that failed to start holds no lock, thread or file
            raise
        self._running = True
        self._start_sweeping()

    async def _open(self) -> None:
        await self._write(self._open_writer)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        numbers = []
        for segment in self._segments():
            ops = self._read_segment(segment)
            await self._write(partial(self._apply, _group(ops)))
            segment.unlink()
            numbers.append(int(segment.stem))
            if ops:
                logs.info("history log replayed", segment=segment.name, operations=len(ops))
        self._segment_no = max(numbers, default=-1) + 1
        self._open_segment()
        self._lconn = _connect(self.path)
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
        if self._segment_fd is not None:
            os.close(self._segment_fd)
            self._segment_fd = None
            if not self._ops:  # everything is in SQLite: the log is not needed any more
                for segment in self._segments():
                    segment.unlink()
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
        conn = _connect(self.path)
        # journal_mode is persistent in the file; setting it needs no transaction open.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise RuntimeError(f"SQLite refused WAL mode for {self.path} (got {mode})")
        conn.executescript(SCHEMA)
        # A keys table made before extras existed (its user_id column is no longer written).
        # Until the versioned migrations come.
        if "extras" not in {r[1] for r in conn.execute("PRAGMA table_info(parley_history_keys)")}:
            conn.execute("ALTER TABLE parley_history_keys ADD COLUMN extras TEXT")
        old = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'parley_history_entries'"
        ).fetchone()
        if old is not None:
            with _transaction(conn, "BEGIN IMMEDIATE"):
                for statement in MIGRATE_ENTRIES.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        # A bigger page cache than the default 2 MiB keeps the position index's hot pages in
        # memory; checkpointing every 4,000 WAL pages instead of 1,000 writes a page that many
        # rounds touched once, and syncs a quarter as often.
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
        with _transaction(conn):  # one snapshot
            return fn(conn)

    # -- the log -----------------------------------------------------------------------------

    def _segments(self) -> list[Path]:
        found = [p for p in self.log_dir.glob("*.jsonl") if p.stem.isdigit()]
        return sorted(found, key=lambda p: int(p.stem))

    def _open_segment(self) -> None:
        path = self.log_dir / f"{self._segment_no:08d}.jsonl"
        self._segment_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_bytes = 0

    @staticmethod
    def _read_segment(path: Path) -> list[Logged]:
        """The operations of a segment; a torn or damaged line (a write cut short by a crash,
        never acknowledged) is skipped."""
        ops: list[Logged] = []
        for line in path.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                op = orjson.loads(line)
            except orjson.JSONDecodeError:
                logs.warning("history log line skipped", segment=path.name, bytes=len(line))
                continue
            if isinstance(op, list) and op and op[0] in ("E", "e", "c", "d"):
                ops.append((tuple(op), line))
        return ops

    def _write_log(self, data: bytes, count: int) -> None:
        """Make `count` operations durable: their lines in one write(). Raises on an I/O
        error; the caller then changes nothing."""
        if self._segment_fd is None:
            raise RuntimeError("history store is not running")
        view = memoryview(data)
        while view:
            written = os.write(self._segment_fd, view)
            view = view[written:]
        self._segment_bytes += len(data)
        self._logged += count
        self._ops_ready.set()
        if self._logged - self._indexed > MAX_UNINDEXED:
            self._caught_up.clear()  # appends wait until the indexer is halfway back
        if self._segment_bytes >= SEGMENT_BYTES:
            os.close(self._segment_fd)
            path = self.log_dir / f"{self._segment_no:08d}.jsonl"
            self._closed_segments.append((self._logged, path))
            self._segment_no += 1
            self._open_segment()

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
                with contextlib.suppress(TimeoutError):  # let a round collect
                    await asyncio.wait_for(self._hurry.wait(), self._index_interval_s)
            self._hurry.clear()
            self._ops_ready.clear()
            # The writer thread owns these chunks now: later appends open new ones.
            ops, self._ops = self._ops, []
            self._open_chunks.clear()
            if ops:
                try:
                    summary = await self._write(partial(self._apply, ops))
                except Exception:
                    logs.error("history indexing failed, retrying", operations=_count(ops))
                    self._ops[:0] = ops
                    self._ops_ready.set()
                    if self._closing:
                        return
                    await asyncio.sleep(1.0)
                    continue
                self._after_indexing(_count(ops), summary)
            if self._logged - self._indexed < MAX_UNINDEXED // 2:
                self._caught_up.set()
            if self._closing and not self._ops:
                return

    def _after_indexing(self, count: int, summary: dict[ChannelKey, _Indexed]) -> None:
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
        while self._closed_segments and self._closed_segments[0][0] <= self._indexed:
            _, path = self._closed_segments.popleft()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for waiter in self._rounds:
            if not waiter.done():
                waiter.set_result(None)
        self._rounds.clear()
        if len(self._channels) > MAX_IDLE_CHANNELS:
            for key in [k for k, s in self._channels.items() if not s.pending and not s.tail]:
                del self._channels[key]

    async def _flush(self) -> None:
        """Wait until everything logged so far is in SQLite."""
        target = self._logged
        while self._indexed < target:
            if self._indexer is None or self._indexer.done():
                raise RuntimeError("history store is not running")
            waiter = asyncio.get_running_loop().create_future()
            self._rounds.append(waiter)
            self._hurry.set()
            await waiter

    def _apply(self, items: Sequence[Item]) -> dict[ChannelKey, _Indexed]:
        """In the writer thread: apply logged operations to SQLite in one transaction, a row
        per chunk. Safe to repeat (replay after a crash): entries already there are ignored,
        and entries of an epoch that a delete has replaced are dropped.

        Returns what it did per channel."""
        conn = self._wconn
        assert conn is not None
        summary: dict[ChannelKey, _Indexed] = {}
        # per channel: epoch, max_count, max_age_ms, newest offset already indexed; kept from
        # round to round (this thread is the history's only writer), forgotten on a failure
        known = self._known
        if len(known) > MAX_IDLE_CHANNELS:
            known.clear()
        try:
            self._apply_in(conn, items, known, summary)
        except BaseException:
            known.clear()
            raise
        return summary

    @staticmethod
    def _apply_in(
        conn: sqlite3.Connection,
        items: Sequence[Item],
        known: dict[ChannelKey, list[Any] | None],
        summary: dict[ChannelKey, _Indexed],
    ) -> None:
        with _transaction(conn, "BEGIN IMMEDIATE"):

            def row_of(key: ChannelKey) -> list[Any] | None:
                if key not in known:
                    row = conn.execute(INDEXER_ROW, key).fetchone()
                    known[key] = list(row) if row is not None else None
                return known[key]

            def create(key: ChannelKey, epoch: str, count: int, age_ms: int) -> list[Any]:
                conn.execute(
                    "INSERT INTO parley_history_channels VALUES (?, ?, ?, 0, ?, ?)",
                    (*key, epoch, count, age_ms),
                )
                row = known[key] = [epoch, count, age_ms, 0]
                return row

            rows: list[tuple[Any, ...]] = []  # chunk rows, inserted together
            keys: list[tuple[Any, ...]] = []

            def flush() -> None:
                rows.sort()
                conn.executemany(
                    "INSERT INTO parley_history_chunks (app_id, channel, first_seq, last_seq,"
                    " min_expires, max_expires, entries) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.executemany(
                    f"INSERT OR REPLACE INTO parley_history_keys ({KEY_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    keys,
                )
                for app_id, channel, first, last, *_ in rows:
                    known_row = known[(app_id, channel)]
                    assert known_row is not None
                    count = known_row[1]
                    every = max(1, count // TRIM_FRACTION)
                    if last > count and last // every > (first - 1) // every:
                        conn.execute(
                            "DELETE FROM parley_history_chunks"
                            " WHERE app_id = ? AND channel = ? AND last_seq <= ?",
                            (app_id, channel, last - count),
                        )
                rows.clear()
                keys.clear()

            for item in items:
                key = item.key if isinstance(item, _Chunk) else (item[0][1], item[0][2])
                done = summary.get(key)
                if done is None:
                    done = summary[key] = _Indexed()
                row = known[key] if key in known else row_of(key)
                if isinstance(item, _Chunk):
                    done.ops += len(item.lines)
                    done.epoch, done.offset = item.epoch, item.last
                    if row is None:
                        row = create(key, item.epoch, item.max_count, item.max_age_ms)
                    elif row[0] != item.epoch or item.last <= row[3]:
                        continue  # its history was deleted since, or it is indexed (replay)
                    lines, first = item.lines, item.first
                    if first <= row[3]:  # partly indexed before a crash (replay)
                        lines, first = lines[row[3] + 1 - first :], row[3] + 1
                    if row[1] != item.max_count or row[2] != item.max_age_ms:
                        conn.execute(
                            "UPDATE parley_history_channels SET max_count = ?, max_age_ms = ?"
                            " WHERE app_id = ? AND channel = ?",
                            (item.max_count, item.max_age_ms, *key),
                        )
                        row[1], row[2] = item.max_count, item.max_age_ms
                    # low/high may be wider than the lines kept: the sweep checks each entry
                    entries = b"[" + b",".join(lines) + b"]"
                    rows.append((*key, first, item.last, item.low, item.high, entries))
                    row[3] = item.last
                    if item.keys:
                        keys.extend((*key, *k) for k in item.keys if k[KEY_ROW_SEQ] >= first)
                    continue
                op = item[0]
                kind = op[0]
                done.ops += 1
                if kind == "c":
                    if row is None:
                        create(key, op[3], op[4], op[5])
                elif kind == "d":
                    done.deletes += 1
                    new = op[3]
                    if row is not None and row[0] == new:
                        continue  # applied before (a replay)
                    flush()  # what came before the delete goes first
                    if row is None:
                        create(key, new, *Retention().count_and_age_ms)
                    else:
                        conn.execute(
                            "UPDATE parley_history_channels SET epoch = ?, last_seq = 0"
                            " WHERE app_id = ? AND channel = ?",
                            (new, *key),
                        )
                        row[0], row[3] = new, 0
                        for table in ("parley_history_chunks", "parley_history_keys"):
                            conn.execute(
                                f"DELETE FROM {table} WHERE app_id = ? AND channel = ?", key
                            )
            flush()

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
        row = conn.execute(CHANNEL_ROW, key).fetchone()
        if row is not None:
            state = _Channel(key, row[0], row[1], row[2], row[3], durable=True)
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
        row = self._lconn.execute(
            f"SELECT epoch, {ENTRY_COLUMNS} FROM parley_history_keys"
            " WHERE app_id = ? AND channel = ? AND key = ?",
            (app_id, channel, key),
        ).fetchone()
        if row is None or row[0] != state.epoch:
            return None
        return publication_from_row(channel, row[0], row[1:])

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
            lines.append(_entry_line(app_id, publication, now_ms + age_ms, count, age_ms))
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
                chunk = open_chunks[key] = _Chunk.opened(key, epoch, seq, expires)
                queue.append(chunk)
            chunk.add(seq, expires, line, count, age_ms)
            idem = publication.idempotency_key
            if idem is not None:
                state.keys[idem] = kept
                chunk.keys.append(
                    _key_row(
                        idem,
                        seq,
                        epoch,
                        publication.ts,
                        publication.id,
                        publication.event,
                        publication.data_bytes().decode(),
                        publication.publisher.json().decode(),
                        publication.extras_json(),
                    )
                )
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
            for p in await self._read(partial(self._select, *args)):
                found.setdefault(p.position.offset, p)
        rows = sorted(found.values(), key=_offset, reverse=direction == "backward")
        return rows[:limit]

    @staticmethod
    def _select(
        app_id: str,
        channel: str,
        lowest: int,
        upper: int,
        oldest_ms: int,
        limit: int,
        direction: Direction,
        epoch: str,
        conn: sqlite3.Connection,
    ) -> list[Publication]:
        forward = direction == "forward"
        cursor = conn.execute(
            "SELECT entries FROM parley_history_chunks"
            " WHERE app_id = ? AND channel = ? AND last_seq > ? AND first_seq < ?"
            f" ORDER BY last_seq {'ASC' if forward else 'DESC'}",
            (app_id, channel, lowest, upper),
        )
        out: list[Publication] = []
        for (blob,) in cursor:
            items = orjson.loads(blob)
            if not forward:
                items.reverse()
            for op in items:
                seq, ts = op[SEQ], op[TS]
                if lowest < seq < upper and ts >= oldest_ms:
                    out.append(_publication_of(op, epoch))
                    if len(out) >= limit:
                        return out
        return out

    # -- retention ---------------------------------------------------------------------------

    async def sweep(self) -> int:
        # One short transaction per chunk of rows, each its own writer job, so indexing rounds
        # interleave with a long sweep instead of waiting for it.
        await self._flush()  # what is only in the tail is young: it would not be swept
        now_ms = self._now_ms()
        removed = 0
        await self._write(partial(self._keep_last_offsets, now_ms))
        while True:
            count, rows = await self._write(partial(self._sweep_chunks, now_ms))
            removed += count
            if rows < SWEEP_CHUNK:
                break
        cutoff = now_ms - IDEMPOTENCY_WINDOW_MS
        while True:
            count = await self._write(partial(self._sweep_keys, cutoff))
            removed += count
            if count < SWEEP_CHUNK:
                break
        return removed

    def _keep_last_offsets(self, cutoff: int) -> None:
        conn = self._wconn
        assert conn is not None
        with _transaction(conn, "BEGIN IMMEDIATE"):
            conn.execute(KEEP_LAST_OFFSETS, (cutoff,))

    def _sweep_chunks(self, now_ms: int) -> tuple[int, int]:
        """Remove the entries past their age from up to SWEEP_CHUNK chunks: whole chunks when
        all of theirs are, else the chunk without them. (entries removed, chunks looked at)"""
        conn = self._wconn
        assert conn is not None
        removed = 0
        with _transaction(conn, "BEGIN IMMEDIATE"):
            rows = conn.execute(
                "SELECT k.row, k.max_expires, k.entries, c.max_age_ms"
                " FROM parley_history_chunks k JOIN parley_history_channels c"
                " ON c.app_id = k.app_id AND c.channel = k.channel"
                " WHERE k.min_expires < ? LIMIT ?",
                (now_ms, SWEEP_CHUNK),
            ).fetchall()
            for row, max_expires, blob, age_ms in rows:
                items = orjson.loads(blob)
                # what the channel's retention keeps now (it may have changed since)
                kept = (
                    [] if max_expires < now_ms else [i for i in items if i[TS] + age_ms >= now_ms]
                )
                removed += len(items) - len(kept)
                if not kept:
                    conn.execute("DELETE FROM parley_history_chunks WHERE row = ?", (row,))
                    continue
                conn.execute(
                    "UPDATE parley_history_chunks SET first_seq = ?, min_expires = ?,"
                    " entries = ? WHERE row = ?",
                    (kept[0][SEQ], kept[0][TS] + age_ms, orjson.dumps(kept), row),
                )
        return removed, len(rows)

    def _sweep_keys(self, cutoff: int) -> int:
        conn = self._wconn
        assert conn is not None
        with _transaction(conn, "BEGIN IMMEDIATE"):
            return conn.execute(SWEEP_KEYS, (cutoff, SWEEP_CHUNK)).rowcount


def _offset(publication: Publication) -> int:
    return publication.position.offset
