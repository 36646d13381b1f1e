"""The SQLite history's index writer, without an event loop: plain calls on a sqlite3
connection to a file migrated as `parley serve` migrates it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from parley.backends.sqlite import history_index as index
from parley.backends.sqlite import migrations
from parley.backends.sqlite.history_index import ChannelRow, IndexWriter, Item
from parley.backends.sqlite.history_log import Logged, Op, entry_line
from parley.publication import Publication, Publisher, StreamPosition

T0_MS = 1_700_000_000_000
AGE_MS = 60_000
APP = "app"
SERVER = Publisher("server", "1")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = index.connect(str(tmp_path / "h.db"))
    migrations.apply(connection, migrations.MIGRATIONS, lambda: T0_MS)
    yield connection
    connection.close()


@pytest.fixture
def writer(conn: sqlite3.Connection) -> IndexWriter:
    return IndexWriter(conn)


def stamped(
    channel: str, seq: int, epoch: str = "one", *, ts: int = T0_MS, **extra: Any
) -> Publication:
    """A publication as the store stamps it before logging it."""
    return Publication(
        channel, "e", {"n": seq}, SERVER, StreamPosition(seq, epoch), ts, f"id-{seq}", **extra
    )


def logged(op: Op) -> Logged:
    line = orjson.dumps(op)
    return tuple(orjson.loads(line)), line


def entry(publication: Publication, max_count: int = 1000, age_ms: int = AGE_MS) -> Logged:
    line = entry_line(APP, publication, publication.ts + age_ms, max_count, age_ms)
    return tuple(orjson.loads(line)), line


def entries(channel: str, seqs: Sequence[int], epoch: str = "one", **kw: Any) -> list[Logged]:
    return [entry(stamped(channel, s, epoch), **kw) for s in seqs]


def read(conn: sqlite3.Connection, channel: str, epoch: str = "one") -> list[Publication]:
    return index.read_entries(APP, channel, 0, 2**62, 0, 1000, "forward", epoch, conn)


def offsets(publications: Sequence[Publication]) -> list[int]:
    return [p.position.offset for p in publications]


def chunk_rows(conn: sqlite3.Connection, channel: str) -> list[tuple[int, int]]:
    return conn.execute(
        "SELECT first_seq, last_seq FROM parley_history_chunks WHERE channel = ? ORDER BY last_seq",
        (channel,),
    ).fetchall()


def apply(writer: IndexWriter, ops: Sequence[Logged]) -> dict[tuple[str, str], index.Indexed]:
    items: list[Item] = index.group(ops)
    return writer.apply(items)


def test_a_run_of_one_channel_is_one_row_and_reads_back_as_logged(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    keyed = stamped("a", 2, idempotency_key="k", extras={"sig": "s"})
    ops = [entry(stamped("a", 1)), entry(stamped("b", 1)), entry(keyed), entry(stamped("a", 3))]
    assert len(index.group(ops)) == 2  # one chunk per channel, whatever the interleaving
    summary = apply(writer, ops)
    assert {k: (d.ops, d.epoch, d.offset) for k, d in summary.items()} == {
        (APP, "a"): (3, "one", 3),
        (APP, "b"): (1, "one", 1),
    }
    assert chunk_rows(conn, "a") == [(1, 3)]
    assert read(conn, "a") == [stamped("a", 1), keyed.kept(), stamped("a", 3)]
    assert index.channel_row(conn, APP, "a") == ChannelRow("one", 3, 1000, AGE_MS)
    assert index.first_of_key(conn, APP, "a", "k", "one") == keyed.kept()
    assert index.first_of_key(conn, APP, "a", "k", "another epoch") is None
    assert not conn.in_transaction


def test_a_replay_adds_nothing_already_indexed(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    apply(writer, entries("a", [1, 2]))
    # After a crash the whole segment is replayed, by a writer that knows nothing yet.
    again = IndexWriter(conn)
    apply(again, entries("a", [1, 2, 3, 4]))
    apply(IndexWriter(conn), entries("a", [1, 2, 3, 4]))
    assert offsets(read(conn, "a")) == [1, 2, 3, 4]
    assert chunk_rows(conn, "a") == [(1, 2), (3, 4)]


def test_a_delete_drops_the_old_epoch_and_a_replay_does_not_bring_it_back(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    old = [*entries("a", [1, 2, 3]), entry(stamped("a", 4, idempotency_key="k"))]
    ops = [*old, logged(("d", APP, "a", "two")), *entries("a", [1, 2], "two")]
    summary = apply(writer, ops)
    assert summary[(APP, "a")].deletes == 1
    assert index.channel_row(conn, APP, "a") == ChannelRow("two", 2, 1000, AGE_MS)
    assert offsets(read(conn, "a", "two")) == [1, 2]
    assert index.first_of_key(conn, APP, "a", "k", "one") is None
    # The log is replayed from the start: the old epoch's entries come first again.
    apply(IndexWriter(conn), ops)
    assert index.channel_row(conn, APP, "a") == ChannelRow("two", 2, 1000, AGE_MS)
    assert chunk_rows(conn, "a") == [(1, 2)]


def test_a_channel_op_fixes_the_epoch_of_a_channel_never_written(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    apply(writer, [logged(("c", APP, "quiet", "q-epoch", 10, AGE_MS))])
    assert index.channel_row(conn, APP, "quiet") == ChannelRow("q-epoch", 0, 10, AGE_MS)
    apply(writer, [logged(("c", APP, "quiet", "other", 10, AGE_MS))])  # a replay: no change
    assert index.channel_row(conn, APP, "quiet") == ChannelRow("q-epoch", 0, 10, AGE_MS)


def test_rows_beyond_the_count_go_as_rounds_pass_it(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    for first in (1, 3, 5, 7):  # one round of two entries at a time, four kept
        apply(writer, entries("a", [first, first + 1], max_count=4))
    assert chunk_rows(conn, "a") == [(5, 6), (7, 8)]
    assert index.channel_row(conn, APP, "a") == ChannelRow("one", 8, 4, AGE_MS)


def test_the_sweep_removes_what_is_past_its_age_and_keeps_the_last_offset(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    apply(writer, entries("gone", [1, 2]))
    young = entry(stamped("half", 2, ts=T0_MS + 10_000))
    apply(writer, [entry(stamped("half", 1)), young])
    now = T0_MS + AGE_MS + 1  # everything written at T0 is past its age
    writer.keep_last_offsets(now)
    assert writer.sweep_chunks(now) == (3, 2)  # 3 entries from 2 chunks
    assert chunk_rows(conn, "gone") == []
    assert index.channel_row(conn, APP, "gone") == ChannelRow("one", 2, 1000, AGE_MS)
    assert chunk_rows(conn, "half") == [(2, 2)]
    assert offsets(read(conn, "half")) == [2]
    assert writer.sweep_chunks(now) == (0, 0)  # its min_expires moved on: not looked at again
    assert not conn.in_transaction


def test_the_sweep_removes_idempotency_keys_first_seen_before_the_cutoff(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    old = stamped("a", 1, idempotency_key="old")
    new = stamped("a", 2, ts=T0_MS + 5, idempotency_key="new")
    apply(writer, [entry(old), entry(new)])
    assert writer.sweep_keys(T0_MS + 1) == 1
    assert index.first_of_key(conn, APP, "a", "old", "one") is None
    assert index.first_of_key(conn, APP, "a", "new", "one") == new.kept()


def test_reads_take_a_slice_in_either_direction(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    apply(writer, entries("a", [1, 2, 3]))
    apply(writer, entries("a", [4, 5, 6]))
    forward = index.read_entries(APP, "a", 1, 6, 0, 3, "forward", "one", conn)
    assert offsets(forward) == [2, 3, 4]
    backward = index.read_entries(APP, "a", 1, 6, 0, 3, "backward", "one", conn)
    assert offsets(backward) == [5, 4, 3]
    assert index.read_entries(APP, "a", 0, 9, T0_MS + 1, 10, "forward", "one", conn) == []


def test_a_failed_apply_is_rolled_back_and_the_writer_reads_the_rows_again(
    conn: sqlite3.Connection, writer: IndexWriter
) -> None:
    apply(writer, entries("a", [1]))
    # Another writer moves the channel on behind this one's back (it never does in the store,
    # which has one writer): this one's next insert collides and must not leave half a round.
    apply(IndexWriter(conn), entries("a", [2]))
    with pytest.raises(sqlite3.IntegrityError):
        apply(writer, [*entries("b", [1]), *entries("a", [2])])
    assert not conn.in_transaction
    assert chunk_rows(conn, "b") == []  # the round's first row went with it
    apply(writer, [*entries("b", [1]), *entries("a", [2, 3])])  # it knows the rows again
    assert offsets(read(conn, "a")) == [1, 2, 3]
    assert offsets(read(conn, "b")) == [1]
