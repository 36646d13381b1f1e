"""The cache channels' last events over a cluster (backends.last_events), as the node uses
them: nodes of one process, each with its own memory broker (so one never receives what the
other publishes, as a node without subscribers of a channel does not), sharing one store that
says it is shared, as the cluster's Redis would be. And a node alone, which never calls its
store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from parley.backends.last_events import LastEvent
from parley.backends.memory.last_events import MemoryCachedEvents
from parley.core.node import Node
from parley.errors import StoreUnavailable
from parley.publication import Publication, Publisher
from tests.support.presence import settle
from tests.support.pusher_raw import channel_auth, presence_data
from tests.support.transport import APP, connect, make_node, send, started, subscribe


class Shared(MemoryCachedEvents):
    """The memory store said to be shared; it records its calls, and `get` waits at a gate
    while it is shut (one turn of the loop at least), and raises when `fail` is set."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[Any, ...]] = []
        self.gets: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    def put(
        self,
        app_id: str,
        channel: str,
        frame: bytes,
        ttl_s: float,
        offset: int = 0,
        epoch: str = "",
    ) -> None:
        self.puts.append((app_id, channel, frame, ttl_s, offset, epoch))
        super().put(app_id, channel, frame, ttl_s, offset, epoch)

    async def get(self, app_id: str, channel: str) -> LastEvent | None:
        self.gets.append((app_id, channel))
        await asyncio.sleep(0)
        await self.gate.wait()
        if self.fail:
            raise StoreUnavailable("cached events: Redis: unreachable")
        return await super().get(app_id, channel)


class Alone(MemoryCachedEvents):
    """The memory store, its calls recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def put(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("put")

    async def get(self, app_id: str, channel: str) -> LastEvent | None:
        self.calls.append("get")
        return None


async def cluster() -> tuple[Node, Node, Shared]:
    store = Shared()
    one = await started(make_node(last_events=store))
    two = await started(make_node(last_events=store))
    return one, two, store


def server_event(channel: str, data: str) -> Publication:
    return Publication(channel, "e", data, Publisher("server", APP.id))


async def test_a_node_alone_never_calls_its_store_and_answers_a_subscribe_at_once() -> None:
    store = Alone()
    node = await started(make_node(last_events=store))
    assert node.delivery.last_events is None and node.subscriptions.last_events is None
    await node.publish(APP, "e", "last", ["cache-room"])
    session, transport = connect(node)
    subscribe(session, "cache-room")  # answered within the message: nothing to wait for
    assert transport.events == ["pusher_internal:subscription_succeeded", "e"]
    assert (await node.cached_event(APP, "cache-room")) is node.cached(APP, "cache-room")
    assert store.calls == []


async def test_the_publishing_node_puts_api_events_of_cache_channels_alone() -> None:
    one, _, store = await cluster()
    await one.publish(APP, "e", "last", ["cache-room", "room"])
    cached = one.cached(APP, "cache-room")
    assert cached is not None
    position = json.loads(cached.frame)["parley"]  # its place in the channel's history
    assert store.puts == [
        (APP.id, "cache-room", cached.frame, APP.cache_ttl_s, 1, position["epoch"])
    ]
    session, _ = connect(one)
    subscribe(session, "private-cache-chat")
    await settle()
    send(session, "client-typing", {}, "private-cache-chat")  # Pusher caches API events alone
    await settle()
    assert [put[1] for put in store.puts] == ["cache-room"]


async def test_a_subscribe_on_another_node_gets_the_clusters_event_after_its_answer() -> None:
    one, two, store = await cluster()
    await one.publish(APP, "e", "from one", ["cache-room"])
    assert two.cached(APP, "cache-room") is None  # two never received it
    session, transport = connect(two)
    subscribe(session, "cache-room")
    subscribe(session, "news")  # held behind the recall: answered after it
    assert transport.events == []
    await settle()
    assert transport.events == [
        "pusher_internal:subscription_succeeded",
        "e",
        "pusher_internal:subscription_succeeded",
    ]
    assert transport.written[1]["data"] == "from one"
    kept = two.cached(APP, "cache-room")  # kept with its remaining TTL
    assert kept is not None and 0 < two.cache_ttl(kept) <= APP.cache_ttl_s
    # two has subscribers of it and a fresh event: the next subscribe asks nobody
    asked = len(store.gets)
    other, other_out = connect(two)
    subscribe(other, "cache-room")
    assert other_out.events == ["pusher_internal:subscription_succeeded", "e"]
    assert len(store.gets) == asked


async def test_nothing_anywhere_is_a_cache_miss_after_the_answer() -> None:
    _, two, store = await cluster()
    session, transport = connect(two)
    subscribe(session, "cache-room")
    await settle()
    assert transport.events == ["pusher_internal:subscription_succeeded", "pusher:cache_miss"]
    assert store.gets == [(APP.id, "cache-room")]


async def test_an_event_arriving_while_the_cluster_is_asked_is_the_newer_one() -> None:
    one, two, store = await cluster()
    await one.publish(APP, "e", "older", ["cache-room"])
    store.gate.clear()
    session, transport = connect(two)
    subscribe(session, "cache-room")
    await asyncio.sleep(0)
    assert store.gets  # the recall waits at the gate
    # the broker brings two a newer publication meanwhile (it subscribed before asking)
    two.delivery.on_publication(APP.id, server_event("cache-room", "newer"), None)
    store.gate.set()
    await settle()
    assert transport.events == ["pusher_internal:subscription_succeeded", "e"]
    assert transport.written[1]["data"] == "newer"


async def test_a_node_without_subscribers_of_it_trusts_the_cluster_over_its_own() -> None:
    one, two, _ = await cluster()
    # two had the channel once: its hub kept "stale"; one published since, nobody on two
    two.delivery.on_publication(APP.id, server_event("cache-room", "stale"), None)
    await one.publish(APP, "e", "fresh", ["cache-room"])
    found = await two.cached_event(APP, "cache-room")
    assert found is not None and found.data == "fresh"
    session, transport = connect(two)
    subscribe(session, "cache-room")
    await settle()
    assert transport.written[1]["data"] == "fresh"


async def test_a_store_that_cannot_answer_gives_the_nodes_own_not_a_close() -> None:
    _, two, store = await cluster()
    store.fail = True
    session, transport = connect(two)
    subscribe(session, "cache-room")
    await settle()
    assert transport.events == ["pusher_internal:subscription_succeeded", "pusher:cache_miss"]
    assert transport.closes == []
    two.delivery.on_publication(APP.id, server_event("cache-other", "own"), None)
    subscribe(session, "cache-other")
    await settle()
    assert transport.written[-1]["data"] == "own"  # this node's, since nothing better


async def test_a_presence_cache_subscribe_gets_its_members_then_the_clusters_event() -> None:
    one, two, _ = await cluster()
    await one.publish(APP, "e", "state", ["presence-cache-room"])
    session, transport = connect(two)
    data = presence_data("ann")
    auth = channel_auth(APP.key, APP.secret, session.socket_id, "presence-cache-room", data)
    send(
        session,
        "pusher:subscribe",
        {"channel": "presence-cache-room", "auth": auth, "channel_data": data},
    )
    await settle()
    assert transport.events == ["pusher_internal:subscription_succeeded", "e"]
    assert transport.written[1]["data"] == "state"
