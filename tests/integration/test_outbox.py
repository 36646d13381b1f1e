"""The transactional outbox on a real PostgreSQL: what an application commits to
`parley_outbox` in its own transactions is published once, in commit order per channel; what
it rolls back never is; one node at a time publishes and another takes over when it goes; a
row that can never be published is marked failed with its reason and the rest go on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from parley.backends.postgres.db import PostgresDb
from parley.backends.postgres.outbox import PostgresOutbox
from parley.core.outbox import OutboxRelay
from tests.conftest import require
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.pusher_async import AsyncClient
from tests.support.pusher_raw import unique
from tests.support.server import TIMEOUT
from tests.support.stores import PG_URL, postgres_problem

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

INSERT = "INSERT INTO parley_outbox (app_id, channel, event, data) VALUES ($1, $2, $3, $4)"


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database of its own for each test: the outbox table is shared by whoever reads it."""
    problem = await postgres_problem()
    require(problem is None, f"PostgreSQL: {problem}")
    name = f"parley_outbox_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def outbox_settings(tmp_path: Path, url: str, poll_s: float = 30.0) -> Any:
    # a long poll: what arrives in time was woken by the NOTIFY
    return replace(
        app_settings(tmp_path, store="postgres"),
        postgres_url=url,
        outbox=True,
        outbox_poll_s=poll_s,
    )


async def counted(relays: list[Any], count: int) -> None:
    """Wait (bounded) until the relays have counted `count` rows: a relay counts a row once it
    has marked it published, after the append that `published` sees."""
    async with asyncio.timeout(TIMEOUT):
        while sum(r.published for r in relays) < count:
            await asyncio.sleep(0.01)


async def published(app: InProcessApp, channel: str, count: int) -> list[str]:
    """Read the channel's history (bounded wait) until it holds `count` events; their data."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            page = await app.running.node.history.read(app.app.id, channel, limit=1000)
            events = [p.data for p in page.publications]
            if len(events) >= count:
                return events
            await asyncio.sleep(0.02)


async def marked(conn: Any, count: int) -> list[Any]:
    """The outbox rows once `count` of them are marked (bounded wait); the relay marks a
    batch just after it is delivered."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            rows = await conn.fetch("SELECT published_at, error FROM parley_outbox ORDER BY id")
            if sum(1 for r in rows if r["published_at"] is not None) >= count:
                return list(rows)
            await asyncio.sleep(0.02)


async def test_committed_rows_are_delivered_once_in_order_and_rolled_back_ones_never(
    tmp_path: Path, database: str
) -> None:
    async with serving(outbox_settings(tmp_path, database)) as app:
        channel = unique("orders-")
        client = await AsyncClient.connect(app.ws_url)
        await client.subscribe(channel)
        conn = await asyncpg.connect(database)
        try:
            async with conn.transaction():
                await conn.execute(INSERT, app.app.id, channel, "order-placed", '{"n":1}')
                await conn.execute(INSERT, app.app.id, channel, "order-placed", '{"n":2}')
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute(INSERT, app.app.id, channel, "order-placed", '{"n":"no"}')
                    raise RuntimeError("the application's transaction fails")
            await conn.execute(INSERT, app.app.id, channel, "order-shipped", '{"n":3}')
            got = [await client.expect("order-placed", channel) for _ in range(2)]
            got.append(await client.expect("order-shipped", channel))
            assert [g["data"] for g in got] == ['{"n":1}', '{"n":2}', '{"n":3}']
            assert all(
                g["parley"]["publisher"] == {"type": "server", "app_id": app.app.id} for g in got
            )
            assert await published(app, channel, 3) == ['{"n":1}', '{"n":2}', '{"n":3}']
            rows = await marked(conn, 3)
            assert all(r["error"] is None for r in rows)
        finally:
            await conn.close()
            await client.close()


async def test_ids_follow_commit_order_within_a_channel(database: str, tmp_path: Path) -> None:
    """The second writer of a channel waits for the first to commit, so a transaction that
    began first but commits last still comes last."""
    async with serving(outbox_settings(tmp_path, database)) as app:
        channel = unique("race-")
        first, second = await asyncpg.connect(database), await asyncpg.connect(database)
        try:
            slow = first.transaction()
            await slow.start()
            await first.execute(INSERT, app.app.id, channel, "e", "first")
            fast = second.transaction()
            await fast.start()
            blocked = asyncio.ensure_future(
                second.execute(INSERT, app.app.id, channel, "e", "second")
            )
            done, _ = await asyncio.wait({blocked}, timeout=0.3)
            assert not done, "the second writer of the channel did not wait for the first"
            await slow.commit()
            await asyncio.wait_for(blocked, TIMEOUT)
            await fast.commit()
            assert await published(app, channel, 2) == ["first", "second"]
        finally:
            await first.close()
            await second.close()


async def test_a_row_that_cannot_be_published_is_marked_failed_and_the_rest_go_on(
    tmp_path: Path, database: str
) -> None:
    async with serving(outbox_settings(tmp_path, database)) as app:
        channel = unique("mixed-")
        conn = await asyncpg.connect(database)
        try:
            async with conn.transaction():
                await conn.execute(INSERT, "999", channel, "e", "nowhere")
                await conn.execute(INSERT, app.app.id, "bad channel name!", "e", "x")
                await conn.execute(INSERT, app.app.id, channel, "pusher:spoof", "x")
                await conn.execute(INSERT, app.app.id, channel, "e", "x" * 20_000)
                await conn.execute(INSERT, app.app.id, channel, "e", "fine")
            assert await published(app, channel, 1) == ["fine"]
            errors = [r["error"] for r in await marked(conn, 5)]
        finally:
            await conn.close()
    assert errors[0] == "No app '999'"
    assert "Channel name" in errors[1]
    assert "reserved" in errors[2]
    assert "limit is 10240" in errors[3]
    assert errors[4] is None


class CrashingOutbox(PostgresOutbox):
    """Fails to mark the first batch published: as a node that dies right after publishing."""

    crashed = False

    async def mark_published(self, ids: Any) -> None:
        if not self.crashed:
            self.crashed = True
            raise ConnectionResetError("the node died before marking")
        await super().mark_published(ids)


async def test_a_batch_published_again_after_a_crash_is_delivered_once(
    tmp_path: Path, database: str
) -> None:
    settings = replace(outbox_settings(tmp_path, database), outbox=False)
    async with serving(settings) as app:
        db = app.running.db
        assert isinstance(db, PostgresDb)
        channel = unique("again-")
        client = await AsyncClient.connect(app.ws_url)
        await client.subscribe(channel)
        conn = await asyncpg.connect(database)
        relay = OutboxRelay(app.running.node, CrashingOutbox(db))
        try:
            await conn.executemany(INSERT, [(app.app.id, channel, "e", str(i)) for i in range(3)])
            assert await relay.source.claim()
            with pytest.raises(ConnectionResetError):
                await relay.relay_once()  # delivered, not marked
            assert await relay.relay_once() == 3  # the same rows, again
            assert await relay.relay_once() == 0  # now marked
            got = [(await client.expect("e", channel))["data"] for _ in range(3)]
            assert got == ["0", "1", "2"]
            await client.expect_quiet("a repeat of the batch")
            assert await published(app, channel, 3) == ["0", "1", "2"]
        finally:
            await relay.close()
            await conn.close()
            await client.close()


async def test_one_node_publishes_and_another_takes_over_when_it_goes(
    tmp_path: Path, database: str
) -> None:
    first_settings = outbox_settings(tmp_path / "a", database, poll_s=0.2)
    second_settings = outbox_settings(tmp_path / "b", database, poll_s=0.2)
    conn = await asyncpg.connect(database)
    try:
        async with serving(first_settings) as first, serving(second_settings) as second:
            channel = unique("handover-")
            await conn.execute(INSERT, first.app.id, channel, "e", "one")
            await published(first, channel, 1)
            relays = [a.running.outbox for a in (first, second)]
            assert relays[0] is not None and relays[1] is not None
            await counted(relays, 1)
            assert sorted(r.published for r in relays) == [0, 1]  # one node did it
            holder, other = (first, second) if relays[0].published else (second, first)
            await holder.stop()
            await conn.execute(INSERT, other.app.id, channel, "e", "two")
            assert await published(other, channel, 2) == ["one", "two"]
            assert other.running.outbox is not None
            await counted([other.running.outbox], 1)
            assert other.running.outbox.published == 1
    finally:
        await conn.close()
