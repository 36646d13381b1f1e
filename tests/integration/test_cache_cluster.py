"""Two nodes on one Redis and one PostgreSQL keep the cache channels' last events cluster-wide:
an event published through node a on a cache channel nobody subscribes to anywhere is the
cached event of a subscribe on node b (after its subscription_succeeded, not cache_miss), and
of `Node.cached_event` (`info=cache`) on both, until it expires by the app's `cache_ttl_s`; a
node that once had the channel gives the newer event published since elsewhere, not its own
stale one."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from parley.core.node import Node
from parley.settings import AppConfig
from tests.support.cluster import two_nodes
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool
from tests.support.pusher_raw import presence_data, unique

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

TTL_S = 1.5  # the app's cache_ttl_s: short, so a case sees its events expire


def an_app() -> AppConfig:
    return AppConfig(
        id=str(secrets.randbelow(10**9) + 10**9),  # an app of its own in the shared engines
        key=f"key-{secrets.token_hex(4)}",
        secret="test-secret",
        cache_ttl_s=TTL_S,
    )


async def eventually(what: Callable[[], Awaitable[bool]], within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not await what():
            await asyncio.sleep(0.01)


def in_cluster(
    node: Node, app: AppConfig, channel: str, data: Any
) -> Callable[[], Awaitable[bool]]:
    """Does `node` answer `data` as the channel's cached event (`info=cache`)?"""

    async def answered() -> bool:
        cached = await node.cached_event(app, channel)
        return cached is not None and cached.data == data

    return answered


async def expect_cached(client: AsyncClient, channel: str, event: str, data: Any) -> None:
    """The frame after subscription_succeeded is the cached event, and nothing follows it."""
    frame = await client.expect_next(event, channel)
    assert frame["data"] == data
    await client.expect_quiet("no cache_miss after the cached event")


async def test_an_event_published_through_one_node_is_the_cached_event_on_the_other(
    tmp_path: Path,
) -> None:
    app = an_app()
    channel = unique("cache-")
    data = json.dumps({"price": 42})
    async with two_nodes(tmp_path, app, short_leases=False) as nodes:
        node_a, node_b = (n.running.node for n in nodes)
        pool_a, pool_b = AsyncClientPool(nodes[0].ws_url), AsyncClientPool(nodes[1].ws_url)
        api = AsyncApi(nodes[0].http_url, app.id, app.key, app.secret)
        try:
            await api.trigger(channel, "quote", data)  # nobody subscribes to it anywhere
            published = time.monotonic()
            await eventually(in_cluster(node_b, app, channel, data))  # one write after it
            cached = await node_b.cached_event(app, channel)
            assert cached is not None and cached.event == "quote"
            assert 0 < node_b.cache_ttl(cached) <= TTL_S

            client = await pool_b.connect()
            await client.subscribe(channel)
            await expect_cached(client, channel, "quote", data)
            # b keeps what it recalled: the next subscribe there answers from its hub
            assert node_b.cached(app, channel) is not None
            again = await pool_b.connect()
            await again.subscribe(channel)
            await expect_cached(again, channel, "quote", data)

            # past the TTL (counted from the publish, on every node): gone everywhere
            await asyncio.sleep(max(0.0, published + TTL_S + 0.1 - time.monotonic()))
            for node in (node_a, node_b):
                assert await node.cached_event(app, channel) is None
            for pool in (pool_b, pool_a):  # b has subscribers of it, a has none
                late = await pool.connect()
                await late.subscribe(channel)
                await late.expect_next("pusher:cache_miss", channel)
        finally:
            await api.close()
            await pool_a.close_all()
            await pool_b.close_all()


async def test_a_node_gives_the_event_published_elsewhere_since_not_its_stale_one(
    tmp_path: Path,
) -> None:
    app = an_app()
    channel = unique("private-cache-")
    async with two_nodes(tmp_path, app, short_leases=False) as nodes:
        node_a, node_b = (n.running.node for n in nodes)
        pool_b = AsyncClientPool(nodes[1].ws_url)
        api = AsyncApi(nodes[0].http_url, app.id, app.key, app.secret)
        try:
            first = await pool_b.connect()
            await first.subscribe(channel, key=app.key, secret=app.secret)
            await first.expect_next("pusher:cache_miss", channel)
            await api.trigger(channel, "e", "one")
            assert (await first.expect("e", channel))["data"] == "one"  # b caches it too
            await first.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
            await first.ping()  # b has no subscriber of it now: it receives none of its events

            await api.trigger(channel, "e", "two")
            await node_a.last_events.flush()
            assert node_b.cached(app, channel) is not None  # "one": b's own, stale
            cached = await node_b.cached_event(app, channel)
            assert cached is not None and cached.data == "two"

            client = await pool_b.connect()
            await client.subscribe(channel, key=app.key, secret=app.secret)
            await expect_cached(client, channel, "e", "two")
        finally:
            await api.close()
            await pool_b.close_all()


async def test_a_presence_cache_subscribe_on_the_other_node_gets_its_members_then_the_event(
    tmp_path: Path,
) -> None:
    app = an_app()
    channel = unique("presence-cache-")
    async with two_nodes(tmp_path, app, short_leases=False) as nodes:
        node_b = nodes[1].running.node
        pool_b = AsyncClientPool(nodes[1].ws_url)
        api = AsyncApi(nodes[0].http_url, app.id, app.key, app.secret)
        try:
            await api.trigger(channel, "state", "ready")
            await eventually(in_cluster(node_b, app, channel, "ready"))
            client = await pool_b.connect()
            answer = await client.subscribe(
                channel, key=app.key, secret=app.secret, channel_data=presence_data("ann")
            )
            assert json.loads(answer["data"])["presence"]["ids"] == ["ann"]
            await expect_cached(client, channel, "state", "ready")
            # the member leaves, and b sends the other node its member_removed, before b
            # closes: a broker closed while that write is under way may wait for it without
            # end (redis-py's pipeline execute can swallow the writer's cancellation)
            await client.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
            await client.ping()  # answered once the leave is over (the session held it)
            await node_b.broker.drain()
        finally:
            await api.close()
            await pool_b.close_all()
