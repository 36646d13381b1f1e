"""What is particular to the SQLite history: the log written before the index, its replay
after a crash, and the one process that owns a history file."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest

from parley.backends.history import Retention
from parley.backends.sqlite.history import SqliteHistoryStore
from parley.backends.sqlite.history_log import log_dir_for
from parley.errors import CannotStart
from parley.publication import Publication, Publisher, StreamPosition
from tests.support.server import TIMEOUT

SERVER = Publisher("server", "1")


def msg(channel: str, i: int) -> Publication:
    return Publication(channel, "message", {"i": i}, SERVER)


async def put(store: SqliteHistoryStore, app_id: str, publication: Publication) -> Publication:
    stored = await store.append(app_id, publication, Retention())
    assert not stored.duplicate
    return stored.publication


async def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = SqliteHistoryStore(tmp_path / "h.db")
    await first.start()
    second = SqliteHistoryStore(tmp_path / "h.db")
    with pytest.raises(CannotStart, match="in use by another Parley process"):
        await second.start()
    await first.append("1", msg("c", 1), Retention())
    await first.close()
    third = SqliteHistoryStore(tmp_path / "h.db")  # the lock goes with the owner
    await third.start()
    assert (await third.position("1", "c")).offset == 1
    await third.close()


async def test_reads_merge_what_is_indexed_with_the_tail(tmp_path: Path) -> None:
    # A long interval: only an explicit flush indexes, so part is in SQLite, part in memory.
    store = SqliteHistoryStore(tmp_path / "h.db", index_interval_s=3600)
    await store.start()
    try:
        written = [await put(store, "1", msg("m", i)) for i in range(10)]
        await store._flush()
        assert not store._channels[("1", "m")].tail  # all of it is in SQLite now
        written += [await put(store, "1", msg("m", i)) for i in range(10, 15)]
        assert len(store._channels[("1", "m")].tail) == 5
        forward: list[Publication] = []
        after = None
        while True:
            page = await store.read("1", "m", after=after, limit=4)
            forward += page.publications
            if page.next is None:
                break
            after = page.next
        assert forward == written
        backward = await store.read("1", "m", limit=6, direction="backward")
        assert backward.publications == written[::-1][:6] and backward.next == 10
        epoch = (await store.position("1", "m")).epoch
        assert await store.since("1", "m", StreamPosition(3, epoch), 100) == written[3:]
        kept = await store.append("1", msg("k", 0), Retention(max_count=3))
        assert kept.publication.position.offset == 1
    finally:
        await store.close()


CHILD = r"""
import asyncio, sys
from parley.backends.history import Retention
from parley.backends.sqlite.history import SqliteHistoryStore
from parley.backends.sqlite.history_log import log_dir_for
from parley.publication import Publication, Publisher

async def main(path):
    store = SqliteHistoryStore(path, index_interval_s=3600)
    await store.start()
    pub = Publisher("server", "1")
    for i in range(5):
        await store.append("1", Publication("gone", "e", {"i": i}, pub), Retention())
    await store._flush()                     # these five are in SQLite (and in the log)
    epoch = await store.delete("1", "gone")  # logged only: not applied to SQLite yet
    kept = [(await store.append("1", Publication("gone", "e", {"i": i}, pub),
                                Retention())).publication
            for i in (10, 11)]
    keyed = await store.append(
        "1", Publication("k", "e", 1, pub, idempotency_key="once", extras={"sig": "s1"}),
        Retention())
    print(epoch, kept[0].id, kept[1].id, keyed.publication.id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1]))
"""


async def test_the_log_is_replayed_after_sigkill_without_resurrecting_deleted_entries(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "h.db")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, path, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await proc.stdout.readline()).decode().split()
    finally:
        proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    epoch, first_id, second_id, keyed_id = line

    store = SqliteHistoryStore(path)
    await store.start()
    try:
        page = await store.read("1", "gone")
        assert page.epoch == epoch
        assert [(p.position.offset, p.id, p.data) for p in page.publications] == [
            (1, first_id, {"i": 10}),
            (2, second_id, {"i": 11}),
        ]
        again = await store.append(
            "1", Publication("k", "e", 2, SERVER, idempotency_key="once"), Retention()
        )
        assert again.duplicate and again.publication.id == keyed_id
        assert again.publication.extras == {"sig": "s1"}  # replayed with the key
        keyed = (await store.read("1", "k")).publications
        assert [(p.id, p.extras) for p in keyed] == [(keyed_id, {"sig": "s1"})]
        assert not list(log_dir_for(path).glob("*.jsonl"))[1:]  # replayed, removed
    finally:
        await store.close()


async def test_a_database_with_one_row_per_entry_is_moved_to_chunks(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "h.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE parley_history_channels (app_id TEXT NOT NULL, channel TEXT NOT NULL,
            epoch TEXT NOT NULL, last_seq INTEGER NOT NULL, max_count INTEGER NOT NULL,
            max_age_ms INTEGER NOT NULL, PRIMARY KEY (app_id, channel)) WITHOUT ROWID;
        CREATE TABLE parley_history_entries (row INTEGER PRIMARY KEY, app_id TEXT NOT NULL,
            channel TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL, id TEXT NOT NULL, event TEXT NOT NULL,
            data TEXT NOT NULL, publisher TEXT NOT NULL, user_id TEXT);
        INSERT INTO parley_history_channels VALUES ('1', 'old', 'ep0ch', 2, 1000, 4000000000000);
        INSERT INTO parley_history_entries VALUES
            (1, '1', 'old', 1, 1700000000000, 9000000000000, 'id1', 'e', '{"i":1}',
             '{"type":"server","app_id":"1"}', NULL),
            (2, '1', 'old', 2, 1700000000001, 9000000000000, 'id2', 'e', '"text"',
             '{"type":"user","id":"u"}', 'u');
        """
    )
    conn.commit()
    conn.close()
    store = SqliteHistoryStore(path)
    await store.start()
    try:
        page = await store.read("1", "old")
        assert page.epoch == "ep0ch"
        assert [
            (p.position.offset, p.id, p.data, p.publisher, p.user_id) for p in page.publications
        ] == [
            (1, "id1", {"i": 1}, SERVER, None),
            (2, "id2", "text", Publisher("user", "u"), "u"),
        ]
        assert (await put(store, "1", msg("old", 3))).position.offset == 3
    finally:
        await store.close()


async def test_appends_wait_for_an_indexer_far_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parley.backends.sqlite import history as sqlite_history

    monkeypatch.setattr(sqlite_history, "MAX_UNINDEXED", 10)
    store = SqliteHistoryStore(tmp_path / "h.db", index_interval_s=0.2)
    await store.start()
    try:
        for i in range(11):  # the 11th goes over the bound: the indexer has indexed nothing
            await put(store, "1", msg("b", i))
        assert store._indexed == 0
        late = await put(store, "1", msg("b", 11))
        assert store._indexed >= 11  # it waited for an indexing round
        assert late.position.offset == 12
        page = await store.read("1", "b", limit=20)
        assert [p.position.offset for p in page.publications] == list(range(1, 13))
    finally:
        await store.close()


async def test_a_store_that_cannot_replay_its_log_releases_what_it_took(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    log_dir = log_dir_for(path)
    log_dir.mkdir()
    (log_dir / "00000000.jsonl").mkdir()  # a segment that cannot be read
    broken = SqliteHistoryStore(path)
    with pytest.raises(IsADirectoryError):
        await broken.start()
    (log_dir / "00000000.jsonl").rmdir()
    store = SqliteHistoryStore(path)  # the lock was released: this one starts
    await store.start()
    try:
        assert (await put(store, "1", msg("c", 1))).position.offset == 1
    finally:
        await store.close()


async def test_a_torn_last_line_in_the_log_is_skipped_and_the_rest_replayed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    log_dir = log_dir_for(path)
    store = SqliteHistoryStore(path, index_interval_s=3600)
    await store.start()
    written = [await put(store, "1", msg("t", i)) for i in range(3)]
    logged = next(log_dir.glob("*.jsonl")).read_bytes()
    await store.close()  # indexes everything and drops the log
    assert not list(log_dir.glob("*.jsonl"))
    # What a crash leaves: records already indexed, one that is not, then half a record.
    fourth = list(orjson.loads(logged.splitlines()[-1]))
    fourth[4], fourth[7] = 4, "id-of-the-fourth"
    torn = orjson.dumps(fourth)[:25]
    (log_dir / "00000007.jsonl").write_bytes(logged + orjson.dumps(fourth) + b"\n" + torn)

    reopened = SqliteHistoryStore(path)
    await reopened.start()
    try:
        read = (await reopened.read("1", "t")).publications
        assert read[:3] == written  # replayed again: not duplicated
        assert [(p.position.offset, p.id) for p in read[3:]] == [(4, "id-of-the-fourth")]
        assert (await put(reopened, "1", msg("t", 5))).position.offset == 5
    finally:
        await reopened.close()


async def test_a_log_written_before_E_records_is_replayed_and_read_alike(tmp_path: Path) -> None:
    """Logs written by earlier versions hold "e" records: data and publisher as JSON text."""
    path = tmp_path / "h.db"
    log_dir = log_dir_for(path)
    log_dir.mkdir()
    now = int(time.time() * 1000)
    publisher = {"type": "user", "id": "u1"}
    old = [
        ("c", "1", "t", "old-epoch", 1000, 86_400_000),
        (
            "e",
            "1",
            "t",
            "old-epoch",
            1,
            now,
            now + 86_400_000,
            "id-1",
            "client-a",
            orjson.dumps({"n": 1}).decode(),
            orjson.dumps(publisher).decode(),
            "u1",
            None,
            1000,
            86_400_000,
        ),
        (
            "e",
            "1",
            "t",
            "old-epoch",
            2,
            now,
            now + 86_400_000,
            "id-2",
            "client-a",
            orjson.dumps("text").decode(),
            orjson.dumps(publisher).decode(),
            "u1",
            "key-2",
            1000,
            86_400_000,
        ),
    ]
    (log_dir / "00000000.jsonl").write_bytes(b"".join(orjson.dumps(op) + b"\n" for op in old))

    store = SqliteHistoryStore(path)
    await store.start()
    try:
        page = await store.read("1", "t")
        assert page.epoch == "old-epoch"
        sender = Publisher("user", "u1")
        assert [
            (p.position.offset, p.id, p.data, p.publisher, p.user_id) for p in page.publications
        ] == [
            (1, "id-1", {"n": 1}, sender, "u1"),
            (2, "id-2", "text", sender, "u1"),
        ]
        repeated = await store.append(
            "1", Publication("t", "client-a", "text", sender, idempotency_key="key-2"), Retention()
        )
        # its idempotency key was replayed
        assert repeated.duplicate and repeated.publication.id == "id-2"
        third = await put(store, "1", msg("t", 3))
        assert third.position.offset == 3
        await store._flush()
        page = await store.read("1", "t")
        assert [p.position.offset for p in page.publications] == [1, 2, 3]
    finally:
        await store.close()
