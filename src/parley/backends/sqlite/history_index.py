"""The SQLite history's index: the parley_history_* tables (migration 2) as the log's
operations go into them, are read back and expire.

Owns every statement on those tables. `IndexWriter` applies logged operations, grouped into
`Chunk`s (one per channel and run of offsets), to the index in one transaction per call: one
row per chunk holding its log lines, so a round costs a row per channel touched, not per entry.
Applying is idempotent, which is what lets the log be replayed after a crash: an entry already
indexed is skipped, one of an epoch that a delete has since replaced is dropped. It also
removes what retention no longer keeps (`sweep_*`). The readers (`channel_row`,
`first_of_key`, `read_entries`) run on any connection of the file, each inside the caller's
transaction.

Plain synchronous code over a `sqlite3.Connection` in autocommit mode: no event loop and no
thread of its own (the store runs the writer on one thread, the readers on others).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from parley.backends.history import ChannelKey, Direction, Retention, publication_from_row
from parley.backends.sqlite.history_log import (
    APP_ID,
    CHANNEL,
    EPOCH,
    EXPIRES,
    IDEMPOTENCY_KEY,
    KIND,
    MAX_AGE_MS,
    MAX_COUNT,
    SEQ,
    TS,
    Logged,
    publication_of,
)
from parley.publication import Publication

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
KEY_COLUMNS = "app_id, channel, key, seq, epoch, ts, id, event, data, publisher, extras"
KEY_ROW_SEQ: Final = 1  # where `key_row` puts the seq
MAX_KNOWN_CHANNELS = 100_000  # channel rows the writer keeps between rounds


def connect(path: str) -> sqlite3.Connection:
    """A connection to the history's file, as every connection of the store is set up."""
    # isolation_level=None: transactions are begun and ended explicitly, nothing implicit.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    # durable against SIGKILL in WAL mode (the database handle set it): see the store
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (a full disk, say)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def key_row(
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


def publication_key_row(key: str, publication: Publication) -> tuple[Any, ...]:
    """`key_row` of a stamped publication."""
    position = publication.position
    return key_row(
        key,
        position.offset,
        position.epoch,
        publication.ts,
        publication.id,
        publication.event,
        publication.data_bytes().decode(),
        publication.publisher.json().decode(),
        publication.extras_json(),
    )


@dataclass(slots=True)
class Chunk:
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
    keys: list[tuple[Any, ...]]  # idempotency keys, as made by `key_row`

    @classmethod
    def opened(cls, key: ChannelKey, epoch: str, seq: int, expires: int) -> Chunk:
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


Item = Chunk | Logged  # what the indexer applies: a chunk, or a "c" or "d" operation


@dataclass(slots=True)
class Indexed:
    """What applying did to one channel."""

    ops: int = 0  # logged operations applied
    deletes: int = 0  # of which deletes
    epoch: str | None = None  # the epoch and offset of the newest entry indexed, if any
    offset: int = 0


def group(ops: Sequence[Logged]) -> list[Item]:
    """Logged operations (a replayed segment) as the indexer takes them: runs of entries of
    one channel become chunks; a channel's chunk ends at its next "c" or "d"."""
    items: list[Item] = []
    open_: dict[ChannelKey, Chunk] = {}
    for op, line in ops:
        key = (op[APP_ID], op[CHANNEL])
        if op[KIND] != "E":
            open_.pop(key, None)
            items.append((op, line))
            continue
        epoch, seq, expires = op[EPOCH], op[SEQ], op[EXPIRES]
        chunk = open_.get(key)
        if chunk is None or chunk.epoch != epoch or seq != chunk.last + 1:
            chunk = open_[key] = Chunk.opened(key, epoch, seq, expires)
            items.append(chunk)
        chunk.add(seq, expires, line, op[MAX_COUNT], op[MAX_AGE_MS])
        if op[IDEMPOTENCY_KEY] is not None:
            chunk.keys.append(publication_key_row(op[IDEMPOTENCY_KEY], publication_of(op, epoch)))
    return items


def count(items: Sequence[Item]) -> int:
    """How many logged operations `items` hold."""
    return sum(len(i.lines) if type(i) is Chunk else 1 for i in items)


class IndexWriter:
    """The index's one writer: applies items and sweeps, on one connection that it owns.

    Between calls it keeps what it knows of each channel's row (epoch, retention, newest offset
    indexed): it is the only writer, so that stays true; it is forgotten when a call fails."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # per channel: [epoch, max_count, max_age_ms, newest offset indexed], None: no row
        self._known: dict[ChannelKey, list[Any] | None] = {}

    @classmethod
    def open(cls, path: str) -> IndexWriter:
        conn = connect(path)
        # A bigger page cache than the default 2 MiB keeps the position index's hot pages in
        # memory; checkpointing every 4,000 WAL pages instead of 1,000 writes a page that many
        # rounds touched once, and syncs a quarter as often.
        conn.execute("PRAGMA cache_size = -32768")
        conn.execute("PRAGMA wal_autocheckpoint = 4000")
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def apply(self, items: Sequence[Item]) -> dict[ChannelKey, Indexed]:
        """Apply logged operations in one transaction, a row per chunk; what it did per
        channel. Safe to repeat (a replay after a crash): entries already there are ignored,
        and entries of an epoch that a delete has replaced are dropped."""
        summary: dict[ChannelKey, Indexed] = {}
        if len(self._known) > MAX_KNOWN_CHANNELS:
            self._known.clear()
        try:
            self._apply(items, summary)
        except BaseException:
            self._known.clear()
            raise
        return summary

    def _apply(self, items: Sequence[Item], summary: dict[ChannelKey, Indexed]) -> None:
        conn = self.conn
        known = self._known
        with transaction(conn, "BEGIN IMMEDIATE"):

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
                key = item.key if isinstance(item, Chunk) else (item[0][1], item[0][2])
                done = summary.get(key)
                if done is None:
                    done = summary[key] = Indexed()
                row = known[key] if key in known else row_of(key)
                if isinstance(item, Chunk):
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

    # -- retention ---------------------------------------------------------------------------

    def keep_last_offsets(self, cutoff: int) -> None:
        """Before chunks expiring before `cutoff` go, raise their channels' floor of the last
        offset, so that a channel whose every entry expired keeps counting from there."""
        with transaction(self.conn, "BEGIN IMMEDIATE"):
            self.conn.execute(KEEP_LAST_OFFSETS, (cutoff,))

    def sweep_chunks(self, now_ms: int) -> tuple[int, int]:
        """Remove the entries past their age from up to SWEEP_CHUNK chunks: whole chunks when
        all of theirs are, else the chunk without them. (entries removed, chunks looked at)"""
        conn = self.conn
        removed = 0
        with transaction(conn, "BEGIN IMMEDIATE"):
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

    def sweep_keys(self, cutoff: int) -> int:
        """Remove up to SWEEP_CHUNK idempotency keys first seen before `cutoff`; how many."""
        with transaction(self.conn, "BEGIN IMMEDIATE"):
            removed: int = self.conn.execute(SWEEP_KEYS, (cutoff, SWEEP_CHUNK)).rowcount
            return removed


# -- reads, on any connection --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """A channel as the index holds it."""

    epoch: str
    last: int  # the last offset handed out in this epoch (see LAST_OFFSET)
    max_count: int
    max_age_ms: int


def channel_row(conn: sqlite3.Connection, app_id: str, channel: str) -> ChannelRow | None:
    row = conn.execute(CHANNEL_ROW, (app_id, channel)).fetchone()
    return None if row is None else ChannelRow(row[0], row[1], row[2], row[3])


def first_of_key(
    conn: sqlite3.Connection, app_id: str, channel: str, key: str, epoch: str
) -> Publication | None:
    """The publication first stored under idempotency `key` in `epoch`, if the index has it."""
    row = conn.execute(
        f"SELECT epoch, {ENTRY_COLUMNS} FROM parley_history_keys"
        " WHERE app_id = ? AND channel = ? AND key = ?",
        (app_id, channel, key),
    ).fetchone()
    if row is None or row[0] != epoch:
        return None
    return publication_from_row(channel, row[0], row[1:])


def read_entries(
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
    """Up to `limit` publications of the channel with lowest < offset < upper and a ts of at
    least `oldest_ms`, in `direction`, as the index holds them (labelled with `epoch`)."""
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
                out.append(publication_of(op, epoch))
                if len(out) >= limit:
                    return out
    return out
