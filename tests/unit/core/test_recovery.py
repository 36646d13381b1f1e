"""core.recovery: `parley:resume` and `parley:history` against real history stores, with
sessions on recording transports."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from parley.backends.sqlite.db import SqliteDb
from parley.backends.sqlite.history import SqliteHistoryStore
from parley.core.node import Node
from parley.core.session import Session
from parley.protocol.connection import HistoryQuery
from parley.settings import HistoryRule
from tests.support.databases import open_database
from tests.support.transport import (
    APP,
    RecordingTransport,
    connect,
    make_node,
    send,
    started,
    subscribe,
)


async def subscribed_after(
    node: Node, channel: str, count: int
) -> tuple[Session, RecordingTransport, str]:
    """A subscriber that saw `count` events published on `channel` (forgotten); the epoch."""
    session, transport = connect(node)
    subscribe(session, channel)
    for i in range(1, count + 1):
        await node.publish(APP, "e", f"m{i}", [channel])
    epoch: str = transport.written[-1]["parley"]["epoch"]
    transport.calls.clear()
    return session, transport, epoch


def seen(transport: RecordingTransport) -> list[Any]:
    """Each message: its data for events, and the parley:resumed answers in full."""
    return [m["data"] if m["event"] == "e" else m for m in transport.written]


def resumed(recovered: bool) -> dict[str, Any]:
    return {
        "event": "parley:resumed",
        "channel": "room",
        "data": {"channel": "room", "recovered": recovered},
    }


async def test_a_resume_replays_what_was_stored_after_the_position_then_answers() -> None:
    node = await started(make_node())
    session, transport, epoch = await subscribed_after(node, "room", 3)
    await node.recovery.resume(session, node.hubs[APP.id], "room", 1, epoch)
    assert seen(transport) == ["m2", "m3", resumed(True)]


async def test_a_resume_from_another_epoch_replays_nothing_and_says_so() -> None:
    node = await started(make_node())
    session, transport, _ = await subscribed_after(node, "room", 2)
    await node.recovery.resume(session, node.hubs[APP.id], "room", 1, "not-the-epoch")
    assert seen(transport) == [resumed(False)]


async def test_live_events_wait_behind_the_replay_and_none_is_sent_twice(tmp_path: Path) -> None:
    # SQLite reads in a thread: the resume is suspended while it reads, as on a real server.
    db = await open_database("sqlite", str(tmp_path / "parley.db"))
    assert isinstance(db, SqliteDb)
    store = SqliteHistoryStore(db, sweep_interval_s=0)
    node = await started(make_node(store=store))
    try:
        session, transport, epoch = await subscribed_after(node, "room", 3)
        resume = asyncio.create_task(
            node.recovery.resume(session, node.hubs[APP.id], "room", 1, epoch)
        )
        await asyncio.sleep(0)  # the resume starts reading: this session's live events wait
        hub = node.hubs[APP.id]
        for offset in (3, 4):  # as the node's delivery writes them: 3 was replayed already
            hub.broadcast("room", b'{"event":"e","data":"live%d"}' % offset, None, offset)
        assert transport.written == []
        await resume
        assert seen(transport) == ["m2", "m3", resumed(True), "live4"]
    finally:
        await store.close()
        await db.close()


async def test_a_channel_that_keeps_no_history_refuses_resume_and_history() -> None:
    node = await started(make_node(history=(HistoryRule("live-*", False),)))
    session, transport = connect(node)
    subscribe(session, "live-feed")
    transport.calls.clear()
    send(session, "parley:resume", {"channel": "live-feed", "since": {"offset": 0, "epoch": ""}})
    send(session, "parley:history", {"channel": "live-feed"})
    assert [m["data"]["message"] for m in transport.written] == [
        "Channel live-feed keeps no history"
    ] * 2


async def test_a_history_request_is_answered_with_a_page() -> None:
    node = await started(make_node())
    session, transport, epoch = await subscribed_after(node, "room", 3)
    page = await node.read_history(APP, "room", HistoryQuery(limit=2))
    assert [e["data"] for e in page["events"]] == ["m1", "m2"]
    assert (page["channel"], page["epoch"], page["next"]) == ("room", epoch, 2)
    await node.recovery.history_page(session, node.hubs[APP.id], "room", HistoryQuery(after=2))
    [answer] = transport.written
    assert answer["event"] == "parley:history_page"
    assert [e["data"] for e in answer["data"]["events"]] == ["m3"]
    assert answer["data"]["events"][0]["parley"]["offset"] == 3
