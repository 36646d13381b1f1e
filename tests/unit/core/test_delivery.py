"""core.delivery: store then publish, and the ordering rule a node keeps whatever order its
broker delivers in. A scripted broker holds what the node publishes and hands it back in the
order a test chooses; the history store is the memory one (PostgreSQL where a real store must
refuse an event), the clients record what they get."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from parley.backends.broker import BrokerHandler
from parley.core.delivery import GAP_HOLD_LIMIT
from parley.core.node import Node
from parley.core.session import Session
from parley.publication import Publication
from parley.settings import HistoryRule
from tests.support.transport import (
    APP,
    RecordingTransport,
    connect,
    make_node,
    send,
    started,
    subscribe,
)


class ScriptedBroker:
    """A Broker that delivers nothing by itself: `release` hands its publications, by
    position in `published` (1 = the first), to the node, in the order asked."""

    engine = "scripted"

    def __init__(self) -> None:
        self.handler: BrokerHandler | None = None
        self.published: list[tuple[str, Publication, str | None]] = []
        self.subscribed: set[tuple[str, str]] = set()

    async def start(self, handler: BrokerHandler) -> None:
        self.handler = handler

    async def close(self) -> None:
        self.handler = None

    def publish(self, app_id: str, publication: Publication, exclude: str | None) -> None:
        self.published.append((app_id, publication, exclude))

    async def drain(self) -> None:
        pass

    def subscribe(self, app_id: str, channel: str) -> None:
        self.subscribed.add((app_id, channel))

    def unsubscribe(self, app_id: str, channel: str) -> None:
        self.subscribed.discard((app_id, channel))

    async def check(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"connected": 1}

    def release(self, *numbers: int) -> None:
        assert self.handler is not None
        for n in numbers:
            app_id, publication, exclude = self.published[n - 1]
            self.handler.on_publication(app_id, publication, exclude)


async def scripted(**settings: Any) -> tuple[Node, ScriptedBroker]:
    broker = ScriptedBroker()
    return await started(make_node(broker, **settings)), broker


def subscribed(node: Node, channel: str) -> tuple[Session, RecordingTransport]:
    session, transport = connect(node)
    subscribe(session, channel)
    assert transport.events[0] == "pusher_internal:subscription_succeeded"
    transport.calls.clear()
    return session, transport


def received(transport: RecordingTransport) -> list[tuple[str, int]]:
    """(data, offset) of every event delivered (not the pusher ones)."""
    return [
        (m["data"], m["parley"].get("offset", 0))
        for m in transport.written
        if not m["event"].startswith("pusher")
    ]


async def publish_all(node: Node, channel: str, count: int, first: int = 1) -> None:
    for i in range(first, first + count):
        await node.publish(APP, "e", f"m{i}", [channel])


async def test_an_offset_that_arrives_before_the_one_it_follows_waits_for_it_from_the_store() -> (
    None
):
    node, broker = await scripted()
    _, transport = subscribed(node, "room")
    await publish_all(node, "room", 12)
    broker.release(*range(1, 11))
    broker.release(12)  # 11 is late
    assert [offset for _, offset in received(transport)] == list(range(1, 11))  # 12 waits
    await node.delivery.idle()  # 11 is read from history, then 12 goes
    broker.release(11)  # the broker's late copy: a duplicate
    await node.delivery.idle()
    assert received(transport) == [(f"m{i}", i) for i in range(1, 13)]


async def test_after_a_broker_outage_what_other_nodes_published_is_filled_from_the_store() -> None:
    """Publications the broker never brought (made by other nodes while it was cut off) are
    read from history once it says it is back; a channel with no position yet is left."""
    node, broker = await scripted()
    _, transport = subscribed(node, "room")
    _, quiet = subscribed(node, "quiet")  # nothing received yet: no position to fill from
    await publish_all(node, "room", 5)
    await node.publish(APP, "e", "q1", ["quiet"])
    broker.release(1, 2)  # 3, 4 and 5 are lost with the link
    assert node.delivery.on_reconnected() is None
    await node.delivery.idle()
    assert received(transport) == [(f"m{i}", i) for i in range(1, 6)]
    assert received(quiet) == []
    broker.release(3, 4, 5)  # copies that come after all: duplicates
    assert len(received(transport)) == 5


async def test_what_waited_behind_a_gap_keeps_its_sender_excluded() -> None:
    node, broker = await scripted()
    _, subscriber = subscribed(node, "room")
    sender_session, sender = subscribed(node, "room")
    await publish_all(node, "room", 2)
    await node.publish(APP, "e", "m3", ["room"], socket_id=sender_session.socket_id)
    broker.release(1, 3)
    await node.delivery.idle()
    assert [data for data, _ in received(subscriber)] == ["m1", "m2", "m3"]
    assert [data for data, _ in received(sender)] == ["m1", "m2"]  # 2 came from the store


async def test_a_repeated_offset_is_dropped() -> None:
    node, broker = await scripted()
    _, transport = subscribed(node, "room")
    await publish_all(node, "room", 3)
    broker.release(1, 1, 2, 1, 3, 2)
    assert [offset for _, offset in received(transport)] == [1, 2, 3]


async def test_a_new_epoch_resets_the_channel_and_is_ordered_from_offset_1() -> None:
    node, broker = await scripted()
    _, transport = subscribed(node, "room")
    await publish_all(node, "room", 3)
    broker.release(1, 2, 3)
    old_epoch = transport.written[-1]["parley"]["epoch"]
    new_epoch = await node.delete_history(APP, "room")
    await publish_all(node, "room", 2, first=4)  # offsets 1 and 2 of the new epoch
    broker.release(5)  # offset 2 first: 1 is filled from the new epoch's history
    await node.delivery.idle()
    broker.release(4)
    await node.delivery.idle()
    got = [(m["data"], m["parley"]["offset"], m["parley"]["epoch"]) for m in transport.written]
    assert got == [
        ("m1", 1, old_epoch),
        ("m2", 2, old_epoch),
        ("m3", 3, old_epoch),
        ("m4", 1, new_epoch),
        ("m5", 2, new_epoch),
    ]


async def test_a_gap_the_store_cannot_fill_is_skipped_and_what_waited_delivered() -> None:
    node, broker = await scripted(recovery_limit=2)
    _, transport = subscribed(node, "room")
    await publish_all(node, "room", 6)
    broker.release(1, 6)  # 2..5 missing: more than recovery_limit
    await node.delivery.idle()
    broker.release(3, 2)  # too late: at or below the last delivered
    assert [offset for _, offset in received(transport)] == [1, 6]


async def test_what_waits_behind_a_gap_is_bounded() -> None:
    node, broker = await scripted()
    _, transport = subscribed(node, "room")
    await publish_all(node, "room", GAP_HOLD_LIMIT + 3)
    broker.release(1, *range(3, GAP_HOLD_LIMIT + 3))  # 2 missing, the limit held behind it
    assert [offset for _, offset in received(transport)] == [1]
    broker.release(GAP_HOLD_LIMIT + 3)  # one more: what waited goes as it is, at once
    expected = [1, *range(3, GAP_HOLD_LIMIT + 4)]
    assert [offset for _, offset in received(transport)] == expected
    await node.delivery.idle()
    broker.release(2)
    assert [offset for _, offset in received(transport)] == expected


async def test_the_first_publication_a_node_gets_for_a_channel_sets_its_position() -> None:
    node, broker = await scripted()
    await publish_all(node, "room", 3)  # nobody subscribed here yet
    _, transport = subscribed(node, "room")
    broker.release(3)
    assert received(transport) == [("m3", 3)]  # nothing before it is replayed
    assert ("1", "room") in broker.subscribed


async def test_channels_that_keep_no_history_are_delivered_as_they_arrive() -> None:
    node, broker = await scripted(history=(HistoryRule("live-*", enabled=False),))
    _, transport = subscribed(node, "live-feed")
    await publish_all(node, "live-feed", 3)
    broker.release(3, 1, 2, 1)
    assert received(transport) == [("m3", 0), ("m1", 0), ("m2", 0), ("m1", 0)]


async def test_the_node_subscribes_the_broker_while_a_channel_has_local_subscribers() -> None:
    node, broker = await scripted()
    session, _ = subscribed(node, "room")
    other, _ = subscribed(node, "room")
    assert broker.subscribed == {(APP.id, "room")}
    send(session, "pusher:unsubscribe", {"channel": "room"})
    assert broker.subscribed == {(APP.id, "room")}
    other.disconnected()
    assert broker.subscribed == set()


async def test_a_failed_append_fails_the_publish_and_publishes_nothing() -> None:
    node, broker = await scripted()
    subscribed(node, "room")
    await node.history.close()  # every append now raises
    with pytest.raises(RuntimeError, match="not running"):
        await node.publish(APP, "e", "lost", ["room"])
    assert broker.published == []


async def test_a_publish_returns_once_its_events_are_delivered() -> None:
    node = await started(make_node())  # the memory broker
    _, transport = subscribed(node, "room")
    await node.publish(APP, "e", "now", ["room", "elsewhere"])
    assert received(transport) == [("now", 1)]


async def test_an_api_event_on_a_cache_channel_is_cached_as_delivered_even_with_nobody_here() -> (
    None
):
    node = await started(make_node())
    _, transport = subscribed(node, "cache-room")
    await node.publish(APP, "e", "last", ["cache-room", "cache-empty"])
    [frame] = [call[1] for call in transport.calls]
    cached = node.cached(APP, "cache-room")
    assert cached is not None and cached.frame == frame  # encoded once
    empty = node.cached(APP, "cache-empty")
    assert empty is not None and json.loads(empty.frame)["data"] == "last"
    assert node.cached(APP, "room") is None


async def test_a_client_event_reaches_the_others_but_not_its_sender_and_is_not_cached() -> None:
    node = await started(make_node())
    _, other = subscribed(node, "private-cache-room")
    session, sender = subscribed(node, "private-cache-room")
    send(session, "client-typing", {"on": True}, "private-cache-room")
    await node.delivery.idle()
    assert [(m["event"], m["data"]) for m in other.written] == [("client-typing", {"on": True})]
    assert sender.written == []
    assert node.cached(APP, "private-cache-room") is None  # Pusher caches API events only


async def test_an_event_the_store_refuses_fails_alone_and_the_rest_of_its_batch_goes_on() -> None:
    # PostgreSQL refuses a text column holding U+0000 (the event name is one; the entry points
    # refuse such names before they get here), so a batch with one such event fails as a
    # whole while the database is up; the others must still go out, in order.
    from parley.backends.postgres.db import PostgresDb
    from parley.backends.postgres.history import PostgresHistoryStore
    from tests.conftest import require
    from tests.support.databases import open_database
    from tests.support.stores import PG_URL, postgres_problem

    problem = await postgres_problem()
    require(problem is None, problem or "")
    db = await open_database("postgres", PG_URL)
    assert isinstance(db, PostgresDb)
    store = PostgresHistoryStore(db, sweep_interval_s=0)
    channel = f"room-{uuid.uuid4().hex}"
    node = await started(make_node(store=store))
    try:
        _, transport = subscribed(node, channel)
        results = await asyncio.gather(
            *(
                node.publish(APP, name, data, [channel])
                for name, data in (("e", "m1"), ("e\x00", "m2"), ("e", "m3"))
            ),
            return_exceptions=True,
        )
        assert isinstance(results[1], Exception)
        first, third = results[0], results[2]
        assert isinstance(first, list) and isinstance(third, list)
        assert [p.position.offset for p in (*first, *third)] == [1, 2]
        assert received(transport) == [("m1", 1), ("m3", 2)]
        page = await store.read(APP.id, channel, limit=10)
        assert [p.data for p in page.publications] == ["m1", "m3"]
    finally:
        await store.delete(APP.id, channel)
        await node.shutdown()
        await db.close()
