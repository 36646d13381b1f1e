"""The HistoryStore contract: one suite, run against memory, SQLite and PostgreSQL.

PostgreSQL cases skip loudly when the server is unreachable, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from parley.backends.history import Append, HistoryStore, Retention
from parley.backends.memory.history import MemoryHistoryStore
from parley.backends.sqlite.history import SqliteHistoryStore
from parley.protocol import frames
from parley.publication import Publication, Publisher, StreamPosition
from tests.support.server import TIMEOUT
from tests.support.stores import (
    DURABLE_KINDS,
    FakeClock,
    StoreBackend,
    StoreKinds,
    backend_lifecycle,
    store_fixture,
)

T0 = 1_700_000_000.0
SERVER = Publisher("server", "1")


@dataclass
class Backend(StoreBackend[HistoryStore]):
    stores = StoreKinds(
        MemoryHistoryStore,
        SqliteHistoryStore,
        "parley.backends.postgres.history:PostgresHistoryStore",
    )
    tables = ("parley_history_entries", "parley_history_keys", "parley_history_channels")
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))


backend = store_fixture(Backend)
durable = store_fixture(Backend, DURABLE_KINDS)


@pytest.fixture
async def store(backend: Backend) -> HistoryStore:
    return await backend.open()


def msg(channel: str, i: int, **extra: Any) -> Publication:
    return Publication(channel, "message", {"i": i}, SERVER, **extra)


async def put(
    store: HistoryStore, app_id: str, publication: Publication, retention: Retention | None = None
) -> Publication:
    """Append; the publication as stored (not a repeat)."""
    stored = await store.append(app_id, publication, retention or Retention())
    assert not stored.duplicate
    return stored.publication


async def fill(
    store: HistoryStore, app_id: str, channel: str, n: int, **kw: Any
) -> list[Publication]:
    return [await put(store, app_id, msg(channel, i), Retention(**kw)) for i in range(1, n + 1)]


def offsets(publications: list[Publication]) -> list[int]:
    return [p.position.offset for p in publications]


async def read_all(store: HistoryStore, app_id: str, channel: str) -> list[Publication]:
    out: list[Publication] = []
    after: int | None = None
    while True:
        page = await store.read(app_id, channel, after=after, limit=1000)
        out.extend(page.publications)
        if page.next is None:
            return out
        after = page.next


# -- appending and reading ---------------------------------------------------------------------


async def test_append_assigns_offsets_and_reads_back_in_order(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    epoch = (await store.position(app, "room")).epoch
    results = [
        await store.append(app, Publication("room", "api-event", "a string", SERVER), Retention()),
        await store.append(
            app,
            Publication(
                "room", "client-typing", {"nested": [1, "x", None]}, Publisher("user", "42")
            ),
            Retention(),
        ),
        await store.append(app, Publication("room", "e", 7, SERVER), Retention()),
    ]
    assert not any(r.duplicate for r in results)
    written = [r.publication for r in results]
    assert offsets(written) == [1, 2, 3]
    assert {p.position.epoch for p in written} == {epoch}
    assert all(p.ts == int(T0 * 1000) for p in written)
    assert len({p.id for p in written}) == 3
    page = await store.read(app, "room")
    assert page.channel == "room" and page.epoch == epoch and page.next is None
    assert page.publications == written
    assert {p.channel for p in page.publications} == {"room"}
    assert page.publications[1].data == {"nested": [1, "x", None]}
    assert page.publications[1].publisher == Publisher("user", "42")
    assert page.publications[1].publisher.json() == b'{"type":"user","id":"42"}'
    assert page.publications[0].publisher.json() == b'{"type":"server","app_id":"1"}'
    assert page.publications[1].user_id == "42" and page.publications[0].user_id is None
    assert await store.position(app, "room") == StreamPosition(3, epoch)


async def test_append_stamps_the_publication_and_keeps_a_copy(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    mine = Publication("room", "e", {"a": 1}, SERVER, data_json=b'{"a":1}', idempotency_key="k")
    stored = await store.append(app, mine, Retention())
    assert stored.publication is mine and not stored.duplicate
    assert mine.position.offset == 1 and mine.ts == int(T0 * 1000) and mine.id
    (kept,) = (await store.read(app, "room")).publications
    assert kept == mine and kept is not mine
    # What the store holds does not hold orjson's buffer of the data (4 KiB a message).
    assert kept.data_json is None and kept.idempotency_key is None


async def test_unwritten_channel_has_offset_zero_and_a_stable_epoch(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    position = await store.position(app, "quiet")
    epoch = position.epoch
    assert position.offset == 0 and epoch
    assert await store.position(app, "quiet") == StreamPosition(0, epoch)
    page = await store.read(app, "never-asked")
    assert page.publications == [] and page.next is None
    assert (await store.position(app, "never-asked")).epoch == page.epoch
    first = await put(store, app, msg("quiet", 1))
    assert first.position == StreamPosition(1, epoch)
    assert await store.since(app, "quiet", StreamPosition(0, epoch), 10) == [first]


async def test_append_many_is_appends_in_order_with_one_await(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    await fill(store, app, "x", 2)
    items = [
        Append(app, msg("x", 3), Retention()),
        Append(app, msg("y", 1), Retention()),
        Append(app, msg("x", 4, idempotency_key="k"), Retention()),
        Append(app, msg("x", 4, idempotency_key="k"), Retention()),
        Append(app, msg("y", 2), Retention()),
    ]
    results = await store.append_many(items)
    stored = [r.publication for r in results]
    assert [(p.position.offset, p.data["i"]) for p in stored] == [
        (3, 3),
        (1, 1),
        (4, 4),
        (4, 4),
        (2, 2),
    ]
    assert [r.duplicate for r in results] == [False, False, False, True, False]
    assert stored[3] == stored[2]  # the repeat gets the first
    assert len({p.id for p in stored[:3]} | {stored[4].id}) == 4
    assert offsets(await read_all(store, app, "x")) == [1, 2, 3, 4]
    assert offsets(await read_all(store, app, "y")) == [1, 2]


async def test_channels_and_apps_are_independent(store: HistoryStore, backend: Backend) -> None:
    app, other_app = backend.app_id, backend.app_id + "-other"
    try:
        await fill(store, app, "a", 3)
        b = await put(store, app, msg("b", 1))
        c = await put(store, other_app, msg("a", 1))
        assert b.position.offset == 1 and c.position.offset == 1
        assert offsets((await store.read(app, "a")).publications) == [1, 2, 3]
    finally:
        await store.delete(other_app, "a")


async def test_paging_forward_and_backward(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    await fill(store, app, "p", 10)

    async def paged(**kw: Any) -> tuple[list[int], int | None]:
        page = await store.read(app, "p", **kw)
        return offsets(page.publications), page.next

    assert await paged(limit=4) == ([1, 2, 3, 4], 4)
    assert await paged(limit=4, after=4) == ([5, 6, 7, 8], 8)
    assert await paged(limit=4, after=8) == ([9, 10], None)
    assert await paged(limit=5, after=5) == ([6, 7, 8, 9, 10], None)
    assert await paged(limit=4, direction="backward") == ([10, 9, 8, 7], 7)
    assert await paged(limit=4, direction="backward", before=7) == ([6, 5, 4, 3], 3)
    assert await paged(limit=4, direction="backward", before=3) == ([2, 1], None)
    assert await paged(after=2, before=6) == ([3, 4, 5], None)
    assert await paged(after=2, before=9, limit=3, direction="backward") == ([8, 7, 6], 6)
    assert await paged(after=2, before=6, limit=3, direction="backward") == ([5, 4, 3], None)
    assert await paged(before=1) == ([], None)
    assert await paged(after=10) == ([], None)
    assert await paged(after=50, direction="backward") == ([], None)


@pytest.mark.parametrize("limit", [0, 1001, -1])
async def test_read_limit_outside_1_to_1000_is_refused(
    store: HistoryStore, backend: Backend, limit: int
) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.read(backend.app_id, "p", limit=limit)


# -- retention -------------------------------------------------------------------------------------


async def test_retention_by_count(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    written = await fill(store, app, "c", 7, max_count=3)
    page = await store.read(app, "c")
    assert page.publications == written[4:]
    backward = (await store.read(app, "c", direction="backward")).publications
    assert offsets(backward) == [7, 6, 5]
    position = await store.position(app, "c")
    epoch = position.epoch
    assert position.offset == 7
    assert await store.since(app, "c", StreamPosition(3, epoch), 100) is None  # 4 is gone
    assert await store.since(app, "c", StreamPosition(4, epoch), 100) == written[4:]


async def test_retention_by_age_hides_then_sweeps(store: HistoryStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    old = await fill(store, app, "a", 2, max_age_s=60)
    clock.advance(30)
    new = await fill(store, app, "a", 2, max_age_s=60)
    assert offsets(new) == [3, 4]
    clock.advance(40)  # the first two are 70 s old now
    assert (await store.read(app, "a")).publications == new
    assert (await store.read(app, "a", direction="backward")).publications == new[::-1]
    position = await store.position(app, "a")
    epoch = position.epoch
    assert position.offset == 4
    assert await store.since(app, "a", StreamPosition(0, epoch), 100) is None
    assert await store.since(app, "a", StreamPosition(1, epoch), 100) is None
    assert await store.since(app, "a", StreamPosition(2, epoch), 100) == new
    assert old[0].ts < new[0].ts
    assert await store.sweep() >= 2
    assert (await store.read(app, "a")).publications == new
    clock.advance(31)
    assert (await store.read(app, "a")).publications == []
    assert await store.since(app, "a", StreamPosition(4, epoch), 100) == []  # none missed
    assert await store.position(app, "a") == StreamPosition(4, epoch)  # never goes back


async def test_default_retention_keeps_a_thousand(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    await asyncio.gather(*(store.append(app, msg("d", i), Retention()) for i in range(1005)))
    kept = await read_all(store, app, "d")
    assert offsets(kept) == list(range(6, 1006))


# -- delete and recovery ---------------------------------------------------------------------------


async def test_delete_gives_a_new_epoch_and_restarts_offsets(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    await fill(store, app, "g", 3)
    old = (await store.position(app, "g")).epoch
    new = await store.delete(app, "g")
    assert new != old
    assert await store.position(app, "g") == StreamPosition(0, new)
    page = await store.read(app, "g")
    assert (page.epoch, page.publications) == (new, [])
    assert await store.since(app, "g", StreamPosition(3, old), 100) is None
    assert await store.since(app, "g", StreamPosition(0, old), 100) is None
    assert await store.since(app, "g", StreamPosition(0, new), 100) == []
    publication = await put(store, app, msg("g", 1))
    assert publication.position == StreamPosition(1, new)
    assert await store.delete(app, "never-written") != new


async def test_since_replays_exactly_what_was_missed(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    written = await fill(store, app, "r", 10)
    epoch = written[0].position.epoch

    async def since(channel: str, offset: int, epoch: str, limit: int) -> Any:
        return await store.since(app, channel, StreamPosition(offset, epoch), limit)

    assert await since("r", 4, epoch, 100) == written[4:]
    assert await since("r", 0, epoch, 10) == written
    assert await since("r", 10, epoch, 100) == []
    assert await since("r", 10, epoch, 0) == []
    assert await since("r", 4, epoch, 6) == written[4:]
    assert await since("r", 4, epoch, 5) is None  # six would be needed
    assert await since("r", 11, epoch, 100) is None  # ahead of the channel
    assert await since("r", 4, epoch + "x", 100) is None
    assert await since("unknown", 0, epoch, 100) is None


# -- idempotency -----------------------------------------------------------------------------------


async def test_idempotency_key_stores_once(store: HistoryStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    first = await store.append(app, msg("i", 1, idempotency_key="k1"), Retention())
    clock.advance(10)
    again = await store.append(app, msg("i", 2, idempotency_key="k1"), Retention())
    assert again.publication == first.publication and again.duplicate and not first.duplicate
    assert again.publication.data == {"i": 1}
    other = await store.append(app, msg("i", 3, idempotency_key="k2"), Retention())
    assert other.publication.position.offset == 2
    elsewhere = await store.append(app, msg("j", 4, idempotency_key="k1"), Retention())
    assert elsewhere.publication.position.offset == 1 and not elsewhere.duplicate
    assert offsets((await store.read(app, "i")).publications) == [1, 2]

    # Within one batch: both callers get the one stored publication.
    a, b = await asyncio.gather(
        store.append(app, msg("i", 5, idempotency_key="k3"), Retention()),
        store.append(app, msg("i", 6, idempotency_key="k3"), Retention()),
    )
    assert a.publication == b.publication and a.publication.position.offset == 3
    assert b.duplicate and not a.duplicate

    clock.advance(300)  # k1 is 310 s old: a new message now
    later = await store.append(app, msg("i", 7, idempotency_key="k1"), Retention())
    assert (later.publication.position.offset, later.duplicate) == (4, False)
    assert await store.sweep() >= 0


async def test_idempotency_key_outlives_count_retention(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    first = await put(store, app, msg("k", 1, idempotency_key="once"), Retention(max_count=1))
    await fill(store, app, "k", 3, max_count=1)
    again = await store.append(app, msg("k", 9, idempotency_key="once"), Retention(max_count=1))
    assert again.publication == first and again.duplicate
    assert (await store.position(app, "k")).offset == 4


async def test_delete_forgets_idempotency_keys(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    await store.append(app, msg("f", 1, idempotency_key="k"), Retention())
    await store.delete(app, "f")
    result = await store.append(app, msg("f", 1, idempotency_key="k"), Retention())
    assert (result.publication.position.offset, result.duplicate) == (1, False)


# -- extras ----------------------------------------------------------------------------------------

EXTRAS = {"signature": "c2lnbmVk", "conversation": {"id": "c-1", "seen": [1, None, "é"]}}


async def test_extras_round_trip_and_go_into_the_frame(backend: Backend) -> None:
    app = backend.app_id
    store = await backend.open()
    plain = await put(store, app, msg("x", 1))
    signed = await put(
        store,
        app,
        Publication(
            "x",
            "client-m",
            {"t": "hi"},
            Publisher("user", "42"),
            extras=EXTRAS,
            idempotency_key="once",
        ),
    )
    epoch = signed.position.epoch

    async def check(store: HistoryStore) -> None:
        page = await store.read(app, "x")
        assert page.publications == [plain, signed]
        assert page.publications[1].extras == EXTRAS
        assert page.publications[0].extras == {}
        backward = (await store.read(app, "x", direction="backward")).publications
        assert [p.extras for p in backward] == [EXTRAS, {}]
        missed = await store.since(app, "x", StreamPosition(0, epoch), 10)
        assert missed == [plain, signed] and missed[1].extras == EXTRAS
        repeat = Publication(
            "x",
            "client-m",
            {"t": "hi"},
            Publisher("user", "42"),
            extras={"signature": "other"},
            idempotency_key="once",
        )
        again = await store.append(app, repeat, Retention())
        assert again.duplicate and again.publication == signed
        assert again.publication.extras == EXTRAS
        parley = orjson.loads(frames.stored_event(page.publications[1]))["parley"]
        assert parley == {
            "publisher": {"type": "user", "id": "42"},
            "offset": 2,
            "epoch": epoch,
            "ts": signed.ts,
            "id": signed.id,
            **EXTRAS,
        }
        parley = orjson.loads(frames.stored_event(page.publications[0]))["parley"]
        assert set(parley) == {"publisher", "offset", "epoch", "ts", "id"}

    await check(store)  # as written (a SQLite store's tail)
    await store.close()
    await check(await backend.open())  # as stored


# -- concurrency -----------------------------------------------------------------------------------


async def test_concurrent_appends_are_gapless_and_complete_in_order(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    completed: list[int] = []
    per_task: dict[int, list[int]] = {}

    async def writer(task: int) -> None:
        mine = per_task[task] = []
        for i in range(15):
            offset = (await put(store, app, msg("busy", task * 100 + i))).position.offset
            completed.append(offset)
            mine.append(offset)

    await asyncio.gather(*(writer(t) for t in range(20)))
    assert completed == list(range(1, 301))
    assert all(done == sorted(done) for done in per_task.values())
    stored = await read_all(store, app, "busy")
    assert offsets(stored) == list(range(1, 301))
    by_task = {t: [p.data["i"] for p in stored if p.data["i"] // 100 == t] for t in range(20)}
    assert all(v == [t * 100 + i for i in range(15)] for t, v in by_task.items())


async def test_append_after_close_is_refused(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    with pytest.raises(RuntimeError):
        await store.append(backend.app_id, msg("x", 1), Retention())


async def test_check_answers_while_running_and_fails_once_closed(backend: Backend) -> None:
    store = await backend.open()
    assert store.engine == backend.kind
    await store.check()  # a round trip to the database
    await store.close()
    with pytest.raises(RuntimeError):
        await store.check()


# -- durability (SQLite, PostgreSQL) ---------------------------------------------------------------


async def test_history_survives_close_and_reopen(durable: Backend) -> None:
    app = durable.app_id
    store = await durable.open()
    keyed = await put(store, app, msg("s", 0, idempotency_key="k"))
    quiet = await store.position(app, "quiet")  # never written: its epoch must stick anyway
    # Submitted but not yet committed when close starts: close must finish them.
    pending = [asyncio.ensure_future(put(store, app, msg("s", i))) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    written = [keyed, *[await p for p in pending]]
    assert offsets(written) == list(range(1, 52))

    reopened = await durable.open()
    assert await read_all(reopened, app, "s") == written
    assert await reopened.position(app, "quiet") == quiet
    assert await reopened.position(app, "s") == StreamPosition(51, keyed.position.epoch)
    again = await reopened.append(app, msg("s", 9, idempotency_key="k"), Retention())
    assert again.publication == keyed and again.duplicate
    assert (await put(reopened, app, msg("s", 52))).position.offset == 52


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Stores that several nodes may share (a SQLite history has one owner process: see
    tests/unit/backends/sqlite/test_history.py)."""
    async for b in backend_lifecycle(request.param, tmp_path, Backend):
        yield b


async def test_two_nodes_on_one_database_share_each_channel_sequence(shared: Backend) -> None:
    durable = shared
    app = durable.app_id
    nodes = [await durable.open(), await durable.open()]
    channels = ["x", "y", "z"]
    acked: list[tuple[str, int, str]] = []

    async def writer(task: int) -> None:
        node = nodes[task % 2]
        order = channels if task % 2 else channels[::-1]  # the nodes lock in opposite orders
        for i in range(12):
            stored = await put(node, app, msg(order[i % 3], task * 100 + i))
            acked.append((order[i % 3], stored.position.offset, stored.id))

    await asyncio.gather(*(writer(t) for t in range(20)))
    assert len({(c, o) for c, o, _ in acked}) == 240  # no offset handed out twice
    for channel in channels:
        stored = await read_all(nodes[1], app, channel)
        assert offsets(stored) == list(range(1, 81))
        assert {(p.position.offset, p.id) for p in stored} == {
            (o, i) for c, o, i in acked if c == channel
        }


CHILD = r"""
import asyncio, sys
from parley.backends.history import Retention
from parley.publication import Publication, Publisher

from tests.support.databases import open_database

async def main(kind, target, app_id):
    db = await open_database(kind, target)
    if kind == "sqlite":
        from parley.backends.sqlite.history import SqliteHistoryStore
        store = SqliteHistoryStore(db)
    else:
        from parley.backends.postgres.history import PostgresHistoryStore
        store = PostgresHistoryStore(db)
    await store.start()
    out = sys.stdout

    async def writer(n):
        i = 0
        while True:
            stored = (await store.append(
                app_id, Publication("crash", "e", {"w": n, "i": i}, Publisher("server", "1")),
                Retention(max_count=None),
            )).publication
            out.write(f"{stored.position.offset} {stored.id}\n")  # acknowledged: durable now
            out.flush()
            i += 1

    await asyncio.gather(*(writer(n) for n in range(16)))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_acknowledged_appends_survive_sigkill(durable: Backend) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        durable.kind,
        durable.target,
        durable.app_id,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: dict[int, str] = {}
    try:
        async with asyncio.timeout(3 * TIMEOUT):
            while len(acked) < 1500:
                line = await proc.stdout.readline()
                assert line, f"the writer died early (exit {await proc.wait()})"
                offset, id_ = line.decode().split()
                acked[int(offset)] = id_
    finally:
        proc.send_signal(signal.SIGKILL)
    # Lines written before the kill are acknowledged too; a torn last line is not.
    for rest in (await proc.stdout.read()).decode().splitlines(keepends=True):
        if rest.endswith("\n"):
            offset, id_ = rest.split()
            acked[int(offset)] = id_
    assert await proc.wait() == -signal.SIGKILL

    store = await durable.open()
    stored = {p.position.offset: p.id for p in await read_all(store, durable.app_id, "crash")}
    missing = {o for o, i in acked.items() if stored.get(o) != i}
    assert not missing, f"{len(missing)} acknowledged appends lost, e.g. {sorted(missing)[:5]}"
    assert sorted(stored) == list(range(1, len(stored) + 1))  # gapless
    assert max(stored) >= max(acked)
