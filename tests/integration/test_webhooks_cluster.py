"""Pusher's channel_occupied / channel_vacated webhooks from a cluster of two nodes (Redis and
PostgreSQL) describe the cluster, not each node: one occupied when the first node gets a
subscriber, one vacated when the last node's last one left and nobody came back within the
hold, on whichever node; a page reload that lands on the other node makes no noise; a dead
node's channels are vacated by the reaper's node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from parley.settings import WebhookConfig
from tests.support.cluster import LEASE_S, REFRESH_S, an_app, apis, two_nodes
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.pusher_raw import presence_data, unique
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

HOLD_S = 1.0


async def eventually(what: Callable[[], Awaitable[bool]], within: float) -> None:
    async with asyncio.timeout(within):
        while not await what():
            await asyncio.sleep(0.05)


async def all_sent(api: AsyncApi) -> None:
    """Every webhook queued so far is delivered (the queue, shared, has none pending)."""

    async def empty() -> bool:
        answer = await api.signed("GET", f"/apps/{api.app_id}/webhooks/failed")
        return bool(answer.status == 200 and answer.json()["pending"] == 0)

    await eventually(empty, 10)


def of(receiver: Receiver, channel: str) -> list[str]:
    return [e["name"] for e in receiver.events() if e["channel"] == channel]


async def test_occupancy_webhooks_describe_the_cluster(tmp_path: Path, receiver: Receiver) -> None:
    app = an_app(webhooks=(WebhookConfig(receiver.url),))
    room, reload, members = unique("room-"), unique("reload-"), unique("presence-")
    async with (
        two_nodes(tmp_path, app, webhook_hold_s=HOLD_S) as nodes,
        apis(nodes) as (api_a, _),
    ):
        pool_a, pool_b = AsyncClientPool(nodes[0].ws_url), AsyncClientPool(nodes[1].ws_url)
        try:
            # a subscriber on each node: one occupied
            first = await pool_a.connect()
            await first.subscribe(room)
            second = await pool_b.connect()
            await second.subscribe(room)
            await first.close()  # node a is empty, node b is not: nothing
            await second.close()  # empty everywhere: vacated after the hold
            await receiver.wait_for(2, timeout=HOLD_S + 10)

            # a reload: leaves node a, back on node b within the hold: no pair
            leaving = await pool_a.connect()
            await leaving.subscribe(reload)
            await leaving.close()
            back = await pool_b.connect()
            await back.subscribe(reload)
            await back.close()  # and for good: one vacated, after the hold
            await eventually(lambda: _has(receiver, reload, "channel_vacated"), HOLD_S + 10)

            # a member's reload, from node a to node b within the hold: no removed/added pair
            stays = await pool_b.connect()  # (the channel stays occupied throughout)
            await stays.subscribe(
                members, key=app.key, secret=app.secret, channel_data=presence_data("watcher")
            )
            ann = await pool_a.connect()
            await ann.subscribe(
                members, key=app.key, secret=app.secret, channel_data=presence_data("ann")
            )
            await ann.close()
            # (a reload takes longer than node a's steps: its member leaves the presence store,
            # then its hold begins; a return on node b in between would not be seen as one)
            await stays.expect("pusher_internal:member_removed", members)  # node a told it...
            await nodes[0].running.node.webhooks.written()  # type: ignore[union-attr]  # ...and held
            ann = await pool_b.connect()
            await ann.subscribe(
                members, key=app.key, secret=app.secret, channel_data=presence_data("ann")
            )
            await ann.close()  # and for good: one member_removed, after the hold
            await eventually(lambda: _has(receiver, members, "member_removed"), HOLD_S + 10)
            await all_sent(api_a)
            assert of(receiver, room) == ["channel_occupied", "channel_vacated"]
            assert of(receiver, reload) == ["channel_occupied", "channel_vacated"]
            ann_events = [
                e["name"]
                for e in receiver.events()
                if e["channel"] == members and e.get("user_id") == "ann"
            ]
            assert ann_events == ["member_added", "member_removed"]
        finally:
            await pool_a.close_all()
            await pool_b.close_all()


async def _has(receiver: Receiver, channel: str, name: str) -> bool:
    return name in of(receiver, channel)


async def test_a_dead_nodes_channels_are_vacated_by_the_reaper(
    tmp_path: Path, receiver: Receiver
) -> None:
    app = an_app(webhooks=(WebhookConfig(receiver.url),))
    lonely, shared = unique("lonely-"), unique("shared-")
    async with (
        two_nodes(tmp_path, app, webhook_hold_s=HOLD_S) as nodes,
        apis(nodes) as (api_a, _),
    ):
        pool_a, pool_b = AsyncClientPool(nodes[0].ws_url), AsyncClientPool(nodes[1].ws_url)
        try:
            await (await pool_b.connect()).subscribe(lonely)
            await (await pool_b.connect()).subscribe(shared)
            await (await pool_a.connect()).subscribe(shared)
            await all_sent(api_a)
            # node b goes silent (its lease is no longer renewed): to node a it died
            await nodes[1].running.node.cluster.stop()
            within = LEASE_S + 3 * REFRESH_S + 5
            await eventually(lambda: _has(receiver, lonely, "channel_vacated"), within)
            await all_sent(api_a)
            assert of(receiver, lonely) == ["channel_occupied", "channel_vacated"]
            assert of(receiver, shared) == ["channel_occupied"]  # node a still has one
        finally:
            await pool_a.close_all()
            await pool_b.close_all()


async def test_subscription_counts_are_the_clusters(tmp_path: Path, receiver: Receiver) -> None:
    """`pusher_internal:subscription_count` frames and the subscription_count webhook carry
    the count over both nodes: a subscriber on node b changes what node a's subscribers hear."""
    hook = WebhookConfig(receiver.url, events=("subscription_count",))
    app = an_app(subscription_count=True, webhooks=(hook,))
    room = unique("room-")
    async with two_nodes(tmp_path, app) as nodes:
        pool_a, pool_b = AsyncClientPool(nodes[0].ws_url), AsyncClientPool(nodes[1].ws_url)

        async def heard(client: Any, count: int) -> None:
            frame = await client.expect(
                "pusher_internal:subscription_count",
                room,
                where=lambda f: json.loads(f["data"])["subscription_count"] == count,
            )
            assert frame["channel"] == room

        try:
            ann = await pool_a.connect()
            await ann.subscribe(room)
            await heard(ann, 1)
            bob = await pool_b.connect()
            await bob.subscribe(room)
            await heard(bob, 2)  # node b's own subscriber hears the cluster's count...
            await heard(ann, 2)  # ...and so does node a's, told by node b
            cat = await pool_a.connect()
            await cat.subscribe(room)
            await heard(bob, 3)
            await bob.close()
            await heard(ann, 2)
            await heard(cat, 2)
            # one webhook per change, each with the cluster's count (the two nodes' webhooks
            # may arrive in either order)
            counts = [e["subscription_count"] for e in await receiver.wait_for(4)]
            assert sorted(counts) == [1, 2, 2, 3], counts
        finally:
            await pool_a.close_all()
            await pool_b.close_all()
