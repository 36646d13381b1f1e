"""The SQLite history store as a whole, white-box: the log written before the index, reads
that merge the two, its replay after a crash, and the one process that owns a history file.
(`tests/contract/test_history_store.py` holds it to the contract every store keeps.)"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from parley.backends.history import Retention
from parley.backends.sqlite.db import SqliteDb
from parley.backends.sqlite.history import SqliteHistoryStore
from parley.backends.sqlite.history_log import log_dir_for
from parley.errors import CannotStart
from parley.publication import Publication, Publisher, StreamPosition
from tests.support.databases import open_database
from tests.support.server import TIMEOUT

SERVER = Publisher("server", "1")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDb]:
    """`h.db`, opened and migrated as `parley serve` does."""
    handle = await open_database("sqlite", str(tmp_path / "h.db"))
    assert isinstance(handle, SqliteDb)
    yield handle
    await handle.close()


def msg(channel: str, i: int) -> Publication:
    return Publication(channel, "message", {"i": i}, SERVER)


async def put(store: SqliteHistoryStore, app_id: str, publication: Publication) -> Publication:
    stored = await store.append(app_id, publication, Retention())
    assert not stored.duplicate
    return stored.publication


async def test_a_second_store_on_the_same_file_is_refused(db: SqliteDb) -> None:
    first = SqliteHistoryStore(db)
    await first.start()
    second = SqliteHistoryStore(db)
    with pytest.raises(CannotStart, match="in use by another Parley process"):
        await second.start()
    await first.append("1", msg("c", 1), Retention())
    await first.close()
    third = SqliteHistoryStore(db)  # the lock goes with the owner
    await third.start()
    assert (await third.position("1", "c")).offset == 1
    await third.close()


async def test_reads_merge_what_is_indexed_with_the_tail(db: SqliteDb) -> None:
    # A long interval: only an explicit flush indexes, so part is in SQLite, part in memory.
    store = SqliteHistoryStore(db, index_interval_s=3600)
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
from parley.publication import Publication, Publisher
from tests.support.databases import open_database

async def main(path):
    store = SqliteHistoryStore(await open_database("sqlite", path), index_interval_s=3600)
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
    db: SqliteDb,
) -> None:
    path = db.path
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

    store = SqliteHistoryStore(db)
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


async def test_appends_wait_for_an_indexer_far_behind(
    db: SqliteDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parley.backends.sqlite import history as sqlite_history

    monkeypatch.setattr(sqlite_history, "MAX_UNINDEXED", 10)
    store = SqliteHistoryStore(db, index_interval_s=0.2)
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


async def test_a_store_that_cannot_replay_its_log_releases_what_it_took(db: SqliteDb) -> None:
    log_dir = log_dir_for(db.path)
    log_dir.mkdir()
    (log_dir / "00000000.jsonl").mkdir()  # a segment that cannot be read
    broken = SqliteHistoryStore(db)
    with pytest.raises(IsADirectoryError):
        await broken.start()
    (log_dir / "00000000.jsonl").rmdir()
    store = SqliteHistoryStore(db)  # the lock was released: this one starts
    await store.start()
    try:
        assert (await put(store, "1", msg("c", 1))).position.offset == 1
    finally:
        await store.close()


async def test_a_torn_last_line_in_the_log_is_skipped_and_the_rest_replayed(
    db: SqliteDb,
) -> None:
    log_dir = log_dir_for(db.path)
    store = SqliteHistoryStore(db, index_interval_s=3600)
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

    reopened = SqliteHistoryStore(db)
    await reopened.start()
    try:
        read = (await reopened.read("1", "t")).publications
        assert read[:3] == written  # replayed again: not duplicated
        assert [(p.position.offset, p.id) for p in read[3:]] == [(4, "id-of-the-fourth")]
        assert (await put(reopened, "1", msg("t", 5))).position.offset == 5
    finally:
        await reopened.close()
