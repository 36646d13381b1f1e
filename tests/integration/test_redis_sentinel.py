"""A cluster whose broker URL is redis+sentinel://: two nodes find the master through a Redis
Sentinel of the test's own (never the machine's Redis), publications and presence cross
between them, and they follow a failover to the replica."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from parley.backends.redis.connect import SentinelRedis, client
from parley.redis_url import parse_sentinel
from parley.settings import ConfigError, Settings, without_password
from tests.conftest import require
from tests.support.cluster import an_app
from tests.support.cluster import two_nodes as cluster_nodes
from tests.support.inproc import InProcessApp
from tests.support.pusher_async import AsyncApi, AsyncClient
from tests.support.pusher_raw import presence_data, unique
from tests.support.redis import CLUSTER_SECRET, OwnRedis, OwnSentinel
from tests.support.stores import postgres_problem

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

SERVICE = "mymaster"


def test_the_url_form_and_its_password_hidden() -> None:
    url = "redis+sentinel://:s3cr%40t@10.0.0.1:26380,sentinel-b,[::1]:5000/mymaster/2"
    parsed = parse_sentinel(url)
    assert parsed.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 5000))
    assert (parsed.service, parsed.db, parsed.password, parsed.tls) == (
        "mymaster",
        2,
        "s3cr@t",
        False,
    )
    assert parse_sentinel("rediss+sentinel://u:p@h/m").tls
    assert without_password(url) == (
        "redis+sentinel://:***@10.0.0.1:26380,sentinel-b,[::1]:5000/mymaster/2"
    )
    base = Settings(store="postgres", cluster_secret=CLUSTER_SECRET)
    for good in (url, "rediss+sentinel://h1:1,h2:2/m", "redis://127.0.0.1:6379/0"):
        assert dataclasses.replace(base, broker=good).broker == good
    for bad in ("redis+sentinel://h1:1/", "redis+sentinel://:pw@h1:x/m", "sentinel://h/m"):
        with pytest.raises(ConfigError) as caught:
            dataclasses.replace(base, broker=bad)
        assert "pw" not in str(caught.value)


async def eventually(what: Callable[[], Awaitable[bool]], within: float) -> None:
    async with asyncio.timeout(within):
        while not await what():
            await asyncio.sleep(0.05)


@asynccontextmanager
async def own_sentinel(tmp_path: Path, *, replica: bool) -> AsyncIterator[dict[str, Any]]:
    """A master (and a replica of it) and a Sentinel watching it, on free ports."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    require((problem := await postgres_problem()) is None, problem or "")
    started: list[OwnRedis] = []
    try:
        master = OwnRedis(tmp_path).start()
        started.append(master)
        servers = {"master": master}
        if replica:
            copy = OwnRedis(tmp_path, "--replicaof", "127.0.0.1", str(master.port)).start()
            started.append(copy)
            servers["replica"] = copy
            async with aioredis.Redis(port=copy.port) as r:

                async def linked() -> bool:
                    info = await r.info("replication")
                    return bool(info.get("master_link_status") == "up")

                await eventually(linked, 10)
        sentinel = OwnSentinel(tmp_path, master.port, SERVICE).start()
        started.append(sentinel)
        yield {**servers, "sentinel": sentinel}
    finally:
        for server in reversed(started):
            server.stop()


def two_nodes(tmp_path: Path, broker: str) -> Any:
    """Two nodes of a fresh app on `broker` (tests.support.cluster), with short leases."""
    return cluster_nodes(tmp_path, an_app(), broker=broker)


def api_of(node: InProcessApp) -> AsyncApi:
    return AsyncApi(node.http_url, node.app.id, node.app.key, node.app.secret)


async def publish(api: AsyncApi, channel: str, data: Any, within: float = 15) -> None:
    """Trigger on `channel`, again while the node answers 503 (Redis failing over)."""
    deadline = time.monotonic() + within
    body = {"name": "said", "channels": [channel], "data": str(data)}
    while True:
        answer = await api.signed("POST", f"/apps/{api.app_id}/events", body=body)
        if answer.status == 200:
            return
        assert answer.status == 503 and time.monotonic() < deadline, answer.body
        await asyncio.sleep(0.2)


async def crosses(nodes: list[InProcessApp], room: str, members: str, user: str) -> None:
    """A publication on node a reaches a subscriber on node b, and a member joining on node
    b is seen by a member on node a and in node a's HTTP API."""
    sub = await AsyncClient.connect(nodes[1].ws_url)
    app = nodes[0].app
    one = await AsyncClient.connect(nodes[0].ws_url)
    two = await AsyncClient.connect(nodes[1].ws_url)
    api = api_of(nodes[0])
    try:
        await sub.subscribe(room)
        await publish(api, room, f"hello {user}")
        frame = await sub.expect("said", room, timeout=15)
        assert frame["data"] == f"hello {user}"

        watcher = f"watcher-{user}"
        await one.subscribe(
            members, key=app.key, secret=app.secret, channel_data=presence_data(watcher)
        )
        await two.subscribe(
            members, key=app.key, secret=app.secret, channel_data=presence_data(user)
        )
        added = await one.expect("pusher_internal:member_added", members, timeout=15)
        assert '"' + user + '"' in added["data"]

        async def listed() -> bool:
            answer = await api.signed("GET", f"/apps/{app.id}/channels/{members}/users")
            ids = {u["id"] for u in answer.json()["users"]} if answer.status == 200 else set()
            return ids == {watcher, user}

        await eventually(listed, 15)
    finally:
        for ws in (sub, one, two):
            await ws.close()
        await api.close()


async def test_a_cluster_through_sentinel_publishes_and_shares_presence(tmp_path: Path) -> None:
    async with own_sentinel(tmp_path, replica=False) as servers:
        sentinel = servers["sentinel"]
        async with two_nodes(tmp_path, sentinel.url) as nodes:
            await crosses(nodes, unique("room-"), unique("presence-"), "ann")
        # the client really is Sentinel-managed, and closing it closes the sentinels' too
        made = client(sentinel.url, socket_connect_timeout=2)
        assert isinstance(made, SentinelRedis)
        assert await made.ping()
        await made.aclose()
        assert made.sentinel_manager is None


async def test_the_nodes_follow_a_failover(tmp_path: Path) -> None:
    async with own_sentinel(tmp_path, replica=True) as servers:
        master, replica, sentinel = servers["master"], servers["replica"], servers["sentinel"]
        async with aioredis.Redis(port=sentinel.port, decode_responses=True) as ask:

            async def replica_known() -> bool:
                replicas = await ask.execute_command("SENTINEL", "REPLICAS", SERVICE)
                return any(r.get("master-link-status") == "ok" for r in replicas)

            await eventually(replica_known, 20)
            async with two_nodes(tmp_path, sentinel.url) as nodes:
                await crosses(nodes, unique("room-"), unique("presence-"), "ann")

                await ask.execute_command("SENTINEL", "FAILOVER", SERVICE)

                async def promoted() -> bool:
                    address = await ask.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE
                    )
                    return bool(address and int(address[1]) == replica.port)

                await eventually(promoted, 20)
                await crosses(nodes, unique("room-"), unique("presence-"), "bob")
                # the old master goes away altogether: everything is on the new one
                # (what is published while a node's broker is away reaches the other nodes
                # only through history: wait for both to be back, as an outage's tests do)
                before = [n.running.node.broker.stats()["reconnects"] for n in nodes]
                master.stop()

                async def back() -> bool:
                    stats = [n.running.node.broker.stats() for n in nodes]
                    return all(
                        s["connected"] and s["reconnects"] > b
                        for s, b in zip(stats, before, strict=True)
                    )

                await eventually(back, 20)
                await crosses(nodes, unique("room-"), unique("presence-"), "cy")
