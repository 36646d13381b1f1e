"""The Broker contract (parley.backends.broker): one suite, run against every implementation,
the memory broker and the Redis one: the tests wait for deliveries, so they hold for a broker
that delivers later than `publish` returns. A broker between processes also runs the
two-node cases (`open_node`): what one node publishes reaches the other's handler, in order,
and a message that is not signed with the cluster secret reaches nobody.

A negative ("not delivered") is proved with a marker: a publication on a subscribed channel
published after it, in the same order a broker keeps per node, arrives and the other did not.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parley.backends.broker import Broker
from parley.backends.memory.broker import MemoryBroker
from parley.backends.redis.broker import RedisBroker
from parley.publication import NO_EXTRAS, Publication, Publisher, StreamPosition
from tests.conftest import require
from tests.support.redis import (
    CLUSTER_SECRET,
    REDIS_URL,
    OwnRedis,
    redis_problem,
    unique_prefix,
)
from tests.support.server import TIMEOUT

BROKERS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
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
        self.reconnected = 0
        self._changed = asyncio.Event()

    def on_reconnected(self) -> None:
        self.reconnected += 1
        self._changed.set()

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


def redis_broker(prefix: str, node_id: str, url: str = REDIS_URL) -> RedisBroker:
    return RedisBroker(url, secret=CLUSTER_SECRET.encode(), prefix=prefix, node_id=node_id)


async def connected(broker: Broker) -> None:
    """Wait (bounded) until the broker reaches its server."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                await broker.check()
                return
            except (RuntimeError, OSError):
                await asyncio.sleep(0.01)


async def subscribed(broker: Broker, app_id: str, channel: str) -> None:
    """Subscribe and wait for the confirmation a broker with a server gives."""
    confirming = broker.subscribe(app_id, channel)
    if confirming is not None:
        await asyncio.wait_for(confirming, TIMEOUT)


@pytest.fixture(params=BROKERS)
async def open_broker(request: pytest.FixtureRequest) -> AsyncIterator[OpenBroker]:
    """Starts a broker (one node's) delivering to a handler; every one closed afterwards.
    Every broker one test opens is a node of the same cluster."""
    opened: list[Broker] = []
    prefix = unique_prefix("broker")
    if request.param == "redis":
        require(await redis_problem() is None, f"Redis: {await redis_problem()}")

    async def open_(handler: RecordingHandler) -> Broker:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker()
        elif request.param == "redis":
            broker = redis_broker(prefix, f"node-{len(opened) + 1}")
        else:
            raise AssertionError(request.param)
        await broker.start(handler)
        opened.append(broker)
        await connected(broker)
        return broker

    yield open_
    for broker in opened:
        await broker.close()


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis)])
async def open_node(request: pytest.FixtureRequest) -> AsyncIterator[OpenBroker]:
    """Nodes of one cluster over a broker between processes (two brokers, one server)."""
    require(await redis_problem() is None, f"Redis: {await redis_problem()}")
    prefix = unique_prefix("nodes")
    opened: list[Broker] = []

    async def open_(handler: RecordingHandler) -> Broker:
        broker = redis_broker(prefix, f"node-{len(opened) + 1}")
        await broker.start(handler)
        opened.append(broker)
        await connected(broker)
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
    await subscribed(broker, APP, "room")
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
    await subscribed(broker, APP, "#server-to-user-x")
    sent = Publication("#server-to-user-x", "e", "text", Publisher("server", APP))
    await publish(broker, APP, sent)
    [got] = await handler.wait_for(1)
    assert got.publication == sent
    assert got.publication.position.offset == 0


async def test_the_sender_to_exclude_is_carried_as_its_socket_id(open_broker: OpenBroker) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    await subscribed(broker, APP, "room")
    await publish(broker, APP, stored("room"), "123.456")
    await publish(broker, APP, stored("room"), None)
    assert [r.exclude for r in await handler.wait_for(2)] == ["123.456", None]


async def test_nothing_is_delivered_for_a_channel_or_app_the_node_did_not_subscribe_to(
    open_broker: OpenBroker,
) -> None:
    handler = RecordingHandler()
    broker = await open_broker(handler)
    await subscribed(broker, APP, "room")
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
    await subscribed(broker, APP, "a")
    await subscribed(broker, APP, "b")
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
    await subscribed(broker, APP, "room")
    await subscribed(broker, APP, "room")  # not counted: one unsubscribe ends it
    await subscribed(broker, APP, "marker")
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
    await subscribed(broker, APP, "room")
    await broker.close()
    with pytest.raises(RuntimeError):
        broker.publish(APP, stored("room"), None)
    with pytest.raises(RuntimeError):
        await broker.check()
    assert handler.received == []


# -- two nodes of a cluster (brokers between processes) -----------------------------------------


async def test_what_one_node_publishes_reaches_the_other_in_order_once(
    open_node: OpenBroker,
) -> None:
    near, far = RecordingHandler(), RecordingHandler()
    a = await open_node(near)
    b = await open_node(far)
    await subscribed(a, APP, "room")
    await subscribed(b, APP, "room")
    sent = [stored("room", extras={"sig": f"s{i}"}) for i in range(300)]
    for publication in sent:
        a.publish(APP, publication, "1.2")
    await a.drain()
    got = await far.wait_for(len(sent))
    assert [r.publication for r in got] == sent  # the same values, in order
    assert {(r.app_id, r.exclude) for r in got} == {(APP, "1.2")}
    assert [r.publication for r in await near.wait_for(len(sent))] == sent
    await b.drain()
    marker = stored("room", "marker")
    await publish(a, APP, marker)
    await far.wait_for(len(sent) + 1)
    assert len(far.received) == len(sent) + 1  # nothing twice


async def test_a_node_gets_only_the_channels_it_subscribed_to(open_node: OpenBroker) -> None:
    near, far = RecordingHandler(), RecordingHandler()
    a = await open_node(near)
    b = await open_node(far)
    await subscribed(b, APP, "room")
    await publish(a, APP, stored("elsewhere"))
    await publish(a, OTHER_APP, stored("room"))
    await publish(a, APP, stored("room", "marker"))
    [got] = await far.wait_for(1)
    assert (got.app_id, got.publication.event) == (APP, "marker")
    b.unsubscribe(APP, "room")
    await subscribed(b, APP, "marker-channel")
    await publish(a, APP, stored("room", "after"))
    await publish(a, APP, stored("marker-channel", "marker-2"))
    await far.wait_for(2)
    assert [r.publication.event for r in far.received] == ["marker", "marker-2"]


async def test_a_message_not_signed_with_the_cluster_secret_reaches_nobody(
    open_node: OpenBroker, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio as aioredis

    handler = RecordingHandler()
    node = await open_node(handler)
    assert isinstance(node, RedisBroker)
    await subscribed(node, APP, "room")
    key = node.key(APP, "room")
    payload = b'[1,"intruder","app-1",null,"room","e",{"type":"server","app_id":"app-1"},1,"e1",1,"x",null]\n"forged"'
    forger = RedisBroker(REDIS_URL, secret=b"x" * 32, prefix=node.prefix, node_id="forger")
    client = aioredis.Redis.from_url(REDIS_URL)
    caplog.set_level(logging.WARNING, logger="parley")
    try:
        await client.publish(key, b"\0" * 32 + payload)  # no valid HMAC
        await client.publish(key, forger.seal(key, payload))  # signed with another secret
        await client.publish(key, node.seal(node.key(APP, "other"), payload))  # another channel's
        await client.publish(key, node.seal(key, b"not a payload"))  # signed, unreadable
        await publish(node_b := await open_node(RecordingHandler()), APP, stored("room", "marker"))
        [got] = await handler.wait_for(1)
        assert got.publication.event == "marker"
        assert node.stats()["refused"] == 4
        assert node_b.stats()["refused"] == 0
        dropped = [r for r in caplog.records if r.getMessage() == "broker message dropped"]
        assert dropped and dropped[0].fields["redis_channel"] == key  # type: ignore[attr-defined]
        assert "HMAC" in dropped[0].fields["reason"]  # type: ignore[attr-defined]
    finally:
        await client.aclose()


async def test_subscribe_is_confirmed_before_it_is_answered(open_node: OpenBroker) -> None:
    """A node told its subscription holds gets what another node publishes right after."""
    far = RecordingHandler()
    a = await open_node(RecordingHandler())
    b = await open_node(far)
    for i in range(20):
        channel = f"fresh-{i}"
        confirming = b.subscribe(APP, channel)
        assert confirming is not None  # a new channel: Redis has yet to confirm it
        await asyncio.wait_for(confirming, TIMEOUT)
        assert b.subscribe(APP, channel) is None  # confirmed: nothing to wait for
        await publish(a, APP, stored(channel))
        await far.wait_for(i + 1)
    assert [r.publication.channel for r in far.received] == [f"fresh-{i}" for i in range(20)]


async def test_an_outage_is_reported_then_what_waited_is_sent_and_the_node_told(
    tmp_path: Path,
) -> None:
    """Redis stopped (a server of the test's own): the nodes say so, publishing goes on (what
    waits is sent once Redis is back, in order), and each node hears that it is back, so it
    fills from history what it may have missed (core.delivery)."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    own = OwnRedis(tmp_path).start()
    prefix = unique_prefix("outage")
    near, far = RecordingHandler(), RecordingHandler()
    a = redis_broker(prefix, "node-a", own.url)
    b = redis_broker(prefix, "node-b", own.url)
    try:
        for broker, handler in ((a, near), (b, far)):
            await broker.start(handler)
            await connected(broker)
        await subscribed(b, APP, "room")
        await publish(a, APP, stored("room", "before"))
        await far.wait_for(1)
        own.stop()
        async with asyncio.timeout(TIMEOUT):
            while a.stats()["connected"] or b.stats()["connected"]:
                await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="unreachable"):
            await a.check()
        assert b.subscribe(APP, "new-while-away") is None  # no wait while Redis is away
        during = [stored("room", "during") for _ in range(5)]
        for publication in during:
            a.publish(APP, publication, None)
        await a.drain()  # stored; sent once Redis is back: no wait meanwhile
        assert a.stats()["waiting"] == 5
        own.start()
        await connected(a)
        await connected(b)
        async with asyncio.timeout(TIMEOUT):
            while a.stats()["waiting"] or not (near.reconnected and far.reconnected):
                await asyncio.sleep(0.01)
        assert (a.stats()["reconnects"], b.stats()["reconnects"]) == (1, 1)
        after = stored("room", "after")
        await publish(a, APP, after)
        async with asyncio.timeout(TIMEOUT):
            while after not in [r.publication for r in far.received]:
                await far.wait_for(len(far.received) + 1)
        # what arrived came in order: before, then those of `during` sent after b was back
        ids = [r.publication.id for r in far.received]
        assert ids == sorted(ids, key=lambda i: int(i[3:])) and len(ids) == len(set(ids))
    finally:
        await a.close()
        await b.close()
        own.stop()
