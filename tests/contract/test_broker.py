"""The Broker contract (parley.backends.broker): one suite, run against every implementation.
Today the memory broker; a broker between processes adds its fixture to `BROKERS` (and to
`open_broker`): the tests wait for deliveries, so they hold for a broker that delivers later
than `publish` returns.

A negative ("not delivered") is proved with a marker: a publication on a subscribed channel
published after it, in the same order a broker keeps per node, arrives and the other did not.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from parley.backends.broker import Broker
from parley.backends.memory.broker import MemoryBroker
from parley.publication import NO_EXTRAS, Publication, Publisher, StreamPosition
from tests.support.server import TIMEOUT

BROKERS = ["memory"]
APP = "app-1"
OTHER_APP = "app-2"
EPOCH = "e1"


@dataclass(frozen=True)
class Received:
    app_id: str
    publication: Publication
    exclude: str | None


class RecordingHandler:
    """A BrokerHandler that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._changed = asyncio.Event()

    def on_publication(self, app_id: str, publication: Publication, exclude: str | None) -> None:
        self.received.append(Received(app_id, publication, exclude))
        self._changed.set()

    async def wait_for(self, count: int) -> list[Received]:
        """The first `count` publications received; fails after TIMEOUT seconds."""

        async def enough() -> None:
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(enough(), TIMEOUT)
        return self.received[:count]

    def channels(self) -> list[str]:
        return [r.publication.channel for r in self.received]


OpenBroker = Callable[[RecordingHandler], Awaitable[Broker]]


@pytest.fixture(params=BROKERS)
async def open_broker(request: pytest.FixtureRequest) -> AsyncIterator[OpenBroker]:
    """Starts a broker (one node's) delivering to a handler; every one closed afterwards."""
    opened: list[Broker] = []

    async def open_(handler: RecordingHandler) -> Broker:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker()
        else:
            raise AssertionError(request.param)
        await broker.start(handler)
        opened.append(broker)
        return broker

    yield open_
    for broker in opened:
        await broker.close()


_offsets = itertools.count(1)


def stored(channel: str, event: str = "e", extras: Mapping[str, Any] = NO_EXTRAS) -> Publication:
    """A publication as a history store leaves it: stamped with its position, ts and id."""
    offset = next(_offsets)
    return Publication(
        channel,
        event,
        {"n": offset, "nested": [1, "two", None]},
        Publisher("user", "u-1"),
        StreamPosition(offset, EPOCH),
        1_700_000_000_000 + offset,
        f"id-{offset}",
        extras,
    )


async def publish(
    broker: Broker, app_id: str, publication: Publication, exclude: str | None = None
) -> None:
    broker.publish(app_id, publication, exclude)
    await broker.drain()


async def test_a_publication_reaches_the_handler_of_a_subscribed_node_as_it_was_published(
    open_broker: OpenBroker,
) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    broker.subscribe(APP, "room")
    sent = stored("room", extras={"sig": "abc", "conversation": "c-9"})
    await publish(broker, APP, sent)
    [got] = await handler.wait_for(1)
    assert (got.app_id, got.exclude) == (APP, None)
    assert got.publication == sent  # channel, event, data, publisher, position, ts, id, extras
    assert got.publication.extras == {"sig": "abc", "conversation": "c-9"}
    assert got.publication.publisher.user_id == "u-1"


async def test_a_publication_of_a_channel_that_keeps_no_history_crosses_with_offset_0(
    open_broker: OpenBroker,
) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    broker.subscribe(APP, "#server-to-user-x")
    sent = Publication("#server-to-user-x", "e", "text", Publisher("server", APP))
    await publish(broker, APP, sent)
    [got] = await handler.wait_for(1)
    assert got.publication == sent
    assert got.publication.position.offset == 0


async def test_the_sender_to_exclude_is_carried_as_its_socket_id(open_broker: OpenBroker) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    broker.subscribe(APP, "room")
    await publish(broker, APP, stored("room"), "123.456")
    await publish(broker, APP, stored("room"), None)
    assert [r.exclude for r in await handler.wait_for(2)] == ["123.456", None]


async def test_nothing_is_delivered_for_a_channel_or_app_the_node_did_not_subscribe_to(
    open_broker: OpenBroker,
) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    broker.subscribe(APP, "room")
    await publish(broker, APP, stored("elsewhere"))
    await publish(broker, OTHER_APP, stored("room"))  # the same name in another app
    await publish(broker, APP, stored("room", "marker"))
    [got] = await handler.wait_for(1)
    assert (got.app_id, got.publication.event) == (APP, "marker")
    await asyncio.sleep(0)
    assert handler.channels() == ["room"]


async def test_a_channels_publications_arrive_in_the_order_they_were_published(
    open_broker: OpenBroker,
) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    broker.subscribe(APP, "a")
    broker.subscribe(APP, "b")
    sent = [stored("a" if i % 3 else "b") for i in range(200)]
    for publication in sent:
        broker.publish(APP, publication, None)
    await broker.drain()
    received = [r.publication for r in await handler.wait_for(len(sent))]
    for channel in ("a", "b"):
        assert [p.id for p in received if p.channel == channel] == [
            p.id for p in sent if p.channel == channel
        ]


async def test_unsubscribe_stops_delivery_and_subscribe_is_idempotent(
    open_broker: OpenBroker,
) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    broker.subscribe(APP, "room")
    broker.subscribe(APP, "room")  # not counted: one unsubscribe ends it
    broker.subscribe(APP, "marker")
    await publish(broker, APP, stored("room", "first"))
    await handler.wait_for(1)
    broker.unsubscribe(APP, "room")
    broker.unsubscribe(APP, "room")  # idempotent
    await publish(broker, APP, stored("room", "after"))
    await publish(broker, APP, stored("marker", "marker"))
    await handler.wait_for(2)
    await asyncio.sleep(0)
    assert [r.publication.event for r in handler.received] == ["first", "marker"]


async def test_a_running_broker_is_ready_and_a_closed_one_refuses_to_publish(
    open_broker: OpenBroker,
) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    assert broker.engine in ("memory", "redis")
    await broker.check()
    broker.subscribe(APP, "room")
    await broker.close()
    with pytest.raises(RuntimeError):
        broker.publish(APP, stored("room"), None)
    with pytest.raises(RuntimeError):
        await broker.check()
    assert handler.received == []
