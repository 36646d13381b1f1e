"""The HistoryStore contract: one suite, run against memory, SQLite and PostgreSQL.

PostgreSQL cases skip loudly when the server is unreachable, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from parley.backends.history import Entry, HistoryStore, NewEntry, Retention
from parley.backends.memory_history import MemoryHistoryStore
from parley.backends.sqlite_history import SqliteHistoryStore
from tests.support.server import TIMEOUT
from tests.support.stores import FakeClock, backend_lifecycle

T0 = 1_700_000_000.0
SERVER = {"type": "server", "app_id": "1"}

ALL = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DURABLE = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
HISTORY_TABLES = ("parley_history_entries", "parley_history_keys", "parley_history_channels")


@dataclass
class Backend:
    """One storage behind the stores a test opens: reopening reaches the same data."""

    kind: str
    target: str  # SQLite path or PostgreSQL URL
    app_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:12]}")
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    opened: list[HistoryStore] = field(default_factory=list)
    memory: MemoryHistoryStore | None = None

    async def open(self) -> HistoryStore:
        store: HistoryStore
        if self.kind == "memory":
            store = self.memory = self.memory or MemoryHistoryStore(clock=self.clock)
        elif self.kind == "sqlite":
            store = SqliteHistoryStore(self.target, clock=self.clock)
        else:
            from parley.backends.postgres_history import PostgresHistoryStore

            store = PostgresHistoryStore(self.target, clock=self.clock)
        await store.start()
        self.opened.append(store)
        return store


async def _backend(kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    async for backend in backend_lifecycle(kind, tmp_path, Backend, HISTORY_TABLES):
        yield backend


@pytest.fixture(params=ALL)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for b in _backend(request.param, tmp_path):
        yield b


@pytest.fixture(params=DURABLE)
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for b in _backend(request.param, tmp_path):
        yield b


@pytest.fixture
async def store(backend: Backend) -> HistoryStore:
    return await backend.open()


def msg(i: int, **extra: Any) -> NewEntry:
    return NewEntry(event="message", data={"i": i}, publisher=SERVER, **extra)


async def fill(store: HistoryStore, app_id: str, channel: str, n: int, **kw: Any) -> list[Entry]:
    return [await store.append(app_id, channel, msg(i), Retention(**kw)) for i in range(1, n + 1)]


async def read_all(store: HistoryStore, app_id: str, channel: str) -> list[Entry]:
    out: list[Entry] = []
    after: int | None = None
    while True:
        page = await store.read(app_id, channel, after=after, limit=1000)
        out.extend(page.entries)
        if page.next is None:
            return out
        after = page.next


# -- appending and reading ---------------------------------------------------------------------


async def test_append_assigns_offsets_and_reads_back_in_order(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    _, epoch = await store.position(app, "room")
    written = [
        await store.append(app, "room", NewEntry("api-event", "a string", SERVER), Retention()),
        await store.append(
            app,
            "room",
            NewEntry(
                "client-typing", {"nested": [1, "x", None]}, {"type": "user", "id": "42"}, "42"
            ),
            Retention(),
        ),
        await store.append(app, "room", NewEntry("e", 7, SERVER), Retention()),
    ]
    assert [e.offset for e in written] == [1, 2, 3]
    assert {e.epoch for e in written} == {epoch}
    assert all(e.ts == int(T0 * 1000) for e in written)
    assert len({e.id for e in written}) == 3
    assert not any(e.duplicate for e in written)
    page = await store.read(app, "room")
    assert page.channel == "room" and page.epoch == epoch and page.next is None
    assert page.entries == written
    assert page.entries[1].data == {"nested": [1, "x", None]}
    assert page.entries[1].publisher == {"type": "user", "id": "42"}
    assert page.entries[1].user_id == "42" and page.entries[0].user_id is None
    assert await store.position(app, "room") == (3, epoch)


async def test_unwritten_channel_has_offset_zero_and_a_stable_epoch(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    offset, epoch = await store.position(app, "quiet")
    assert offset == 0 and epoch
    assert await store.position(app, "quiet") == (0, epoch)
    page = await store.read(app, "never-asked")
    assert page.entries == [] and page.next is None
    assert (await store.position(app, "never-asked"))[1] == page.epoch
    first = await store.append(app, "quiet", msg(1), Retention())
    assert (first.offset, first.epoch) == (1, epoch)
    assert await store.since(app, "quiet", 0, epoch, 10) == [first]


async def test_append_many_is_appends_in_order_with_one_await(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    await fill(store, app, "x", 2)
    items = [
        (app, "x", msg(3), Retention()),
        (app, "y", msg(1), Retention()),
        (app, "x", msg(4, idempotency_key="k"), Retention()),
        (app, "x", msg(4, idempotency_key="k"), Retention()),
        (app, "y", msg(2), Retention()),
    ]
    entries = await store.append_many(items)
    assert [(e.offset, e.data["i"]) for e in entries] == [(3, 3), (1, 1), (4, 4), (4, 4), (2, 2)]
    assert [e.duplicate for e in entries] == [False, False, False, True, False]
    assert len({e.id for e in entries[:3]} | {entries[4].id}) == 4
    assert [e.offset for e in await read_all(store, app, "x")] == [1, 2, 3, 4]
    assert [e.offset for e in await read_all(store, app, "y")] == [1, 2]


async def test_channels_and_apps_are_independent(store: HistoryStore, backend: Backend) -> None:
    app, other_app = backend.app_id, backend.app_id + "-other"
    try:
        await fill(store, app, "a", 3)
        b = await store.append(app, "b", msg(1), Retention())
        c = await store.append(other_app, "a", msg(1), Retention())
        assert b.offset == 1 and c.offset == 1
        assert [e.offset for e in (await store.read(app, "a")).entries] == [1, 2, 3]
    finally:
        await store.delete(other_app, "a")


async def test_paging_forward_and_backward(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    await fill(store, app, "p", 10)

    async def offsets(**kw: Any) -> tuple[list[int], int | None]:
        page = await store.read(app, "p", **kw)
        return [e.offset for e in page.entries], page.next

    assert await offsets(limit=4) == ([1, 2, 3, 4], 4)
    assert await offsets(limit=4, after=4) == ([5, 6, 7, 8], 8)
    assert await offsets(limit=4, after=8) == ([9, 10], None)
    assert await offsets(limit=5, after=5) == ([6, 7, 8, 9, 10], None)
    assert await offsets(limit=4, direction="backward") == ([10, 9, 8, 7], 7)
    assert await offsets(limit=4, direction="backward", before=7) == ([6, 5, 4, 3], 3)
    assert await offsets(limit=4, direction="backward", before=3) == ([2, 1], None)
    assert await offsets(after=2, before=6) == ([3, 4, 5], None)
    assert await offsets(after=2, before=9, limit=3, direction="backward") == ([8, 7, 6], 6)
    assert await offsets(after=2, before=6, limit=3, direction="backward") == ([5, 4, 3], None)
    assert await offsets(before=1) == ([], None)
    assert await offsets(after=10) == ([], None)
    assert await offsets(after=50, direction="backward") == ([], None)


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
    assert page.entries == written[4:]
    assert [e.offset for e in (await store.read(app, "c", direction="backward")).entries] == [
        7,
        6,
        5,
    ]
    offset, epoch = await store.position(app, "c")
    assert offset == 7
    assert await store.since(app, "c", 3, epoch, 100) is None  # offset 4 is gone
    assert await store.since(app, "c", 4, epoch, 100) == written[4:]


async def test_retention_by_age_hides_then_sweeps(store: HistoryStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    old = await fill(store, app, "a", 2, max_age_s=60)
    clock.advance(30)
    new = await fill(store, app, "a", 2, max_age_s=60)
    assert [e.offset for e in new] == [3, 4]
    clock.advance(40)  # the first two are 70 s old now
    assert (await store.read(app, "a")).entries == new
    assert (await store.read(app, "a", direction="backward")).entries == new[::-1]
    offset, epoch = await store.position(app, "a")
    assert offset == 4
    assert await store.since(app, "a", 0, epoch, 100) is None
    assert await store.since(app, "a", 1, epoch, 100) is None
    assert await store.since(app, "a", 2, epoch, 100) == new
    assert old[0].ts < new[0].ts
    assert await store.sweep() >= 2
    assert (await store.read(app, "a")).entries == new
    clock.advance(31)
    assert (await store.read(app, "a")).entries == []
    assert await store.since(app, "a", 4, epoch, 100) == []  # nothing was missed
    assert await store.position(app, "a") == (4, epoch)  # offsets never go back


async def test_default_retention_keeps_a_thousand(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    await asyncio.gather(*(store.append(app, "d", msg(i), Retention()) for i in range(1005)))
    kept = await read_all(store, app, "d")
    assert [e.offset for e in kept] == list(range(6, 1006))


# -- delete and recovery ---------------------------------------------------------------------------


async def test_delete_gives_a_new_epoch_and_restarts_offsets(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    await fill(store, app, "g", 3)
    _, old = await store.position(app, "g")
    new = await store.delete(app, "g")
    assert new != old
    assert await store.position(app, "g") == (0, new)
    page = await store.read(app, "g")
    assert (page.epoch, page.entries) == (new, [])
    assert await store.since(app, "g", 3, old, 100) is None
    assert await store.since(app, "g", 0, old, 100) is None
    assert await store.since(app, "g", 0, new, 100) == []
    entry = await store.append(app, "g", msg(1), Retention())
    assert (entry.offset, entry.epoch) == (1, new)
    assert await store.delete(app, "never-written") != new


async def test_since_replays_exactly_what_was_missed(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    written = await fill(store, app, "r", 10)
    epoch = written[0].epoch
    assert await store.since(app, "r", 4, epoch, 100) == written[4:]
    assert await store.since(app, "r", 0, epoch, 10) == written
    assert await store.since(app, "r", 10, epoch, 100) == []
    assert await store.since(app, "r", 10, epoch, 0) == []
    assert await store.since(app, "r", 4, epoch, 6) == written[4:]
    assert await store.since(app, "r", 4, epoch, 5) is None  # six would be needed
    assert await store.since(app, "r", 11, epoch, 100) is None  # ahead of the channel
    assert await store.since(app, "r", 4, epoch + "x", 100) is None
    assert await store.since(app, "unknown", 0, epoch, 100) is None


# -- idempotency -----------------------------------------------------------------------------------


async def test_idempotency_key_stores_once(store: HistoryStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    first = await store.append(app, "i", msg(1, idempotency_key="k1"), Retention())
    clock.advance(10)
    again = await store.append(app, "i", msg(2, idempotency_key="k1"), Retention())
    assert again == first and again.duplicate and not first.duplicate
    assert again.data == {"i": 1}
    other = await store.append(app, "i", msg(3, idempotency_key="k2"), Retention())
    assert other.offset == 2
    elsewhere = await store.append(app, "j", msg(4, idempotency_key="k1"), Retention())
    assert elsewhere.offset == 1 and not elsewhere.duplicate
    assert [e.offset for e in (await store.read(app, "i")).entries] == [1, 2]

    # Within one batch: both callers get the one stored entry.
    a, b = await asyncio.gather(
        store.append(app, "i", msg(5, idempotency_key="k3"), Retention()),
        store.append(app, "i", msg(6, idempotency_key="k3"), Retention()),
    )
    assert a == b and a.offset == 3 and b.duplicate and not a.duplicate

    clock.advance(300)  # k1 is 310 s old: a new message now
    later = await store.append(app, "i", msg(7, idempotency_key="k1"), Retention())
    assert (later.offset, later.duplicate) == (4, False)
    assert await store.sweep() >= 0


async def test_idempotency_key_outlives_count_retention(
    store: HistoryStore, backend: Backend
) -> None:
    app = backend.app_id
    first = await store.append(app, "k", msg(1, idempotency_key="once"), Retention(max_count=1))
    await fill(store, app, "k", 3, max_count=1)
    again = await store.append(app, "k", msg(9, idempotency_key="once"), Retention(max_count=1))
    assert again == first and again.duplicate
    assert (await store.position(app, "k"))[0] == 4


async def test_delete_forgets_idempotency_keys(store: HistoryStore, backend: Backend) -> None:
    app = backend.app_id
    await store.append(app, "f", msg(1, idempotency_key="k"), Retention())
    await store.delete(app, "f")
    entry = await store.append(app, "f", msg(1, idempotency_key="k"), Retention())
    assert (entry.offset, entry.duplicate) == (1, False)


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
            entry = await store.append(app, "busy", msg(task * 100 + i), Retention())
            completed.append(entry.offset)
            mine.append(entry.offset)

    await asyncio.gather(*(writer(t) for t in range(20)))
    assert completed == list(range(1, 301))
    assert all(offsets == sorted(offsets) for offsets in per_task.values())
    stored = await read_all(store, app, "busy")
    assert [e.offset for e in stored] == list(range(1, 301))
    by_task = {t: [e.data["i"] for e in stored if e.data["i"] // 100 == t] for t in range(20)}
    assert all(v == [t * 100 + i for i in range(15)] for t, v in by_task.items())


async def test_append_after_close_is_refused(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    with pytest.raises(RuntimeError):
        await store.append(backend.app_id, "x", msg(1), Retention())


# -- durability (SQLite, PostgreSQL) ---------------------------------------------------------------


async def test_history_survives_close_and_reopen(durable: Backend) -> None:
    app = durable.app_id
    store = await durable.open()
    keyed = await store.append(app, "s", msg(0, idempotency_key="k"), Retention())
    quiet = await store.position(app, "quiet")  # never written: its epoch must stick anyway
    # Submitted but not yet committed when close starts: close must finish them.
    pending = [
        asyncio.ensure_future(store.append(app, "s", msg(i), Retention())) for i in range(50)
    ]
    await asyncio.sleep(0)
    await store.close()
    written = [keyed, *[await p for p in pending]]
    assert [e.offset for e in written] == list(range(1, 52))

    reopened = await durable.open()
    assert await read_all(reopened, app, "s") == written
    assert await reopened.position(app, "quiet") == quiet
    assert await reopened.position(app, "s") == (51, keyed.epoch)
    again = await reopened.append(app, "s", msg(9, idempotency_key="k"), Retention())
    assert again == keyed and again.duplicate
    assert (await reopened.append(app, "s", msg(52), Retention())).offset == 52


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Stores that several nodes may share (a SQLite history has one owner process: see
    test_sqlite_history.py)."""
    async for b in _backend(request.param, tmp_path):
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
            entry = await node.append(app, order[i % 3], msg(task * 100 + i), Retention())
            acked.append((order[i % 3], entry.offset, entry.id))

    await asyncio.gather(*(writer(t) for t in range(20)))
    assert len({(c, o) for c, o, _ in acked}) == 240  # no offset handed out twice
    for channel in channels:
        stored = await read_all(nodes[1], app, channel)
        assert [e.offset for e in stored] == list(range(1, 81))
        assert {(e.offset, e.id) for e in stored} == {(o, i) for c, o, i in acked if c == channel}


CHILD = r"""
import asyncio, sys
from parley.backends.history import NewEntry, Retention

async def main(kind, target, app_id):
    if kind == "sqlite":
        from parley.backends.sqlite_history import SqliteHistoryStore
        store = SqliteHistoryStore(target)
    else:
        from parley.backends.postgres_history import PostgresHistoryStore
        store = PostgresHistoryStore(target)
    await store.start()
    out = sys.stdout

    async def writer(n):
        i = 0
        while True:
            entry = await store.append(
                app_id, "crash", NewEntry("e", {"w": n, "i": i}, {"type": "server"}),
                Retention(max_count=None),
            )
            out.write(f"{entry.offset} {entry.id}\n")  # acknowledged: durable from here on
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
    stored = {e.offset: e.id for e in await read_all(store, durable.app_id, "crash")}
    missing = {o for o, i in acked.items() if stored.get(o) != i}
    assert not missing, f"{len(missing)} acknowledged appends lost, e.g. {sorted(missing)[:5]}"
    assert sorted(stored) == list(range(1, len(stored) + 1))  # gapless
    assert max(stored) >= max(acked)
