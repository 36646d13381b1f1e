"""Two nodes on one Redis and one PostgreSQL answer the channel counts of the cluster: `GET
channels` and `channels/{name}` agree on both nodes whichever node the subscribers are on; a
node that stops leaves the answers at once, and one whose lease lapses (it died, as far as the
others can tell) leaves them once the reaper took its lease; and the per-app connection quota
counts the connections of both nodes (Pusher's 4004 beyond it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import LEASE_S, REFRESH_S, an_app, apis, two_nodes
from tests.support.inproc import InProcessApp
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool
from tests.support.pusher_raw import presence_data, unique

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]


async def get(api: AsyncApi, path: str, **params: str) -> Any:
    answer = await api.signed("GET", f"/apps/{api.app_id}{path}", params=params)
    assert answer.status == 200, answer.body
    return answer.json()


async def eventually(what: Callable[[], Awaitable[bool]], within: float = 2.0) -> float:
    """Poll `what` until it holds (bounded by `within` seconds); the seconds it took."""
    began = time.monotonic()
    async with asyncio.timeout(within):
        while not await what():
            await asyncio.sleep(0.02)
    return time.monotonic() - began


async def test_channel_counts_agree_on_both_nodes_and_a_dead_nodes_leave(tmp_path: Path) -> None:
    app = an_app()
    room, members = unique("room-"), unique("presence-")
    async with two_nodes(tmp_path, app) as nodes, apis(nodes) as (api_a, api_b):
        pool_a, pool_b = AsyncClientPool(nodes[0].ws_url), AsyncClientPool(nodes[1].ws_url)
        try:
            for pool, count in ((pool_a, 2), (pool_b, 1)):
                for _ in range(count):
                    await (await pool.connect()).subscribe(room)
            for pool, user in ((pool_a, "ann"), (pool_b, "bob"), (pool_b, "ann")):
                client = await pool.connect()
                data = presence_data(user)
                await client.subscribe(members, key=app.key, secret=app.secret, channel_data=data)

            everything = {room: {"subscription_count": 3}, members: {"subscription_count": 3}}

            async def agreed() -> bool:
                for api in (api_a, api_b):
                    listed = await get(api, "/channels", info="subscription_count")
                    if listed != {"channels": everything}:
                        return False
                return True

            await eventually(agreed)  # within a batch or two (50 ms each)
            for api in (api_a, api_b):
                assert await get(api, f"/channels/{room}", info="subscription_count") == {
                    "occupied": True,
                    "subscription_count": 3,
                }
                assert await get(
                    api, f"/channels/{members}", info="subscription_count,user_count"
                ) == {"occupied": True, "subscription_count": 3, "user_count": 2}
                assert await get(
                    api, "/channels", filter_by_prefix="presence-", info="user_count"
                ) == {"channels": {members: {"user_count": 2}}}
                assert await get(api, "/channels", filter_by_prefix="room-") == {
                    "channels": {room: {}}
                }
                assert await get(api, f"/channels/{unique('empty-')}") == {"occupied": False}

            # node b goes silent (its lease is no longer renewed): to node a it died
            await nodes[1].running.node.cluster.stop()

            async def b_gone() -> bool:
                listed = await get(api_a, "/channels", info="subscription_count")
                return bool(
                    listed
                    == {
                        "channels": {
                            room: {"subscription_count": 2},
                            members: {"subscription_count": 1},
                        }
                    }
                )

            took = await eventually(b_gone, within=LEASE_S + 3 * REFRESH_S + 2)
            assert took < LEASE_S + 3 * REFRESH_S + 0.5, f"node b's counts left after {took:.2f} s"
            assert await get(api_a, f"/channels/{members}", info="user_count") == {
                "occupied": True,
                "user_count": 1,
            }
        finally:
            await pool_a.close_all()
            await pool_b.close_all()


async def test_a_node_that_stops_leaves_the_answers_at_once(tmp_path: Path) -> None:
    app = an_app()
    room = unique("room-")
    async with two_nodes(tmp_path, app) as nodes, apis(nodes) as (api_a, api_b):
        pool_a, pool_b = AsyncClientPool(nodes[0].ws_url), AsyncClientPool(nodes[1].ws_url)
        try:
            await (await pool_a.connect()).subscribe(room)
            await (await pool_b.connect()).subscribe(room)

            async def both() -> bool:
                for api in (api_a, api_b):
                    info = await get(api, f"/channels/{room}", info="subscription_count")
                    if info["subscription_count"] != 2:
                        return False
                return True

            await eventually(both)
            await nodes[1].stop()  # drained: its numbers are deleted as it closes
            assert await get(api_a, f"/channels/{room}", info="subscription_count") == {
                "occupied": True,
                "subscription_count": 1,
            }
        finally:
            await pool_a.close_all()
            await pool_b.close_all()


async def refused(node: InProcessApp) -> int | None:
    client = await AsyncClient.connect(node.ws_url, established=False)
    try:
        await client.expect_error(4004, "over its connection quota of 2")
        code, _ = await client.expect_close()
        return code
    finally:
        await client.close()


async def test_the_connection_quota_counts_both_nodes(tmp_path: Path) -> None:
    app = an_app(max_connections=2)
    async with two_nodes(tmp_path, app) as nodes:
        one, two = (node.running.node for node in nodes)
        pool_a, pool_b = AsyncClientPool(nodes[0].ws_url), AsyncClientPool(nodes[1].ws_url)
        try:
            await pool_a.connect()
            leaving = await pool_b.connect()

            def remote(on_a: int, on_b: int) -> Callable[[], Awaitable[bool]]:
                """Do the nodes see that many connections on the other node?"""

                async def seen() -> bool:
                    return (
                        one.counts.remote_connections(app.id) == on_a
                        and two.counts.remote_connections(app.id) == on_b
                    )

                return seen

            await eventually(remote(1, 1))
            assert await one.counts.connections(app.id) == 2
            for node in nodes:
                assert await refused(node) == 4004  # one here, one on the other node
            await leaving.close()
            await eventually(remote(0, 1))
            await pool_a.connect()  # room again: admitted on node a
            await eventually(remote(0, 2))
            assert await refused(nodes[1]) == 4004  # and node b knows it
        finally:
            await pool_a.close_all()
            await pool_b.close_all()
