"""Two nodes on Redis and PostgreSQL deliver every event once, in order, to every subscriber,
when events enter through both nodes at once, and never hand a client event back to its
sender. Both were races the cluster benchmark found: a node whose first delivery on a channel
was its own event dropped the other node's earlier ones as duplicates, and a gap filled from
history while the node's own event was in flight delivered that event to its sender too."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import an_app, apis, two_nodes
from tests.support.pusher_async import AsyncClient, AsyncClientPool
from tests.support.pusher_raw import unique

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

ROUNDS = 20  # fresh channels: the race is at a channel's first deliveries on a node


async def received(client: AsyncClient, channel: str, count: int) -> list[Any]:
    """The data of the next `count` events of `channel` that `client` gets, which must come
    in offset order."""
    out, offsets = [], []
    while len(out) < count:
        frame = await client.expect("tick", channel)
        out.append(json.loads(frame["data"])["n"])
        offsets.append(frame["parley"]["offset"])
    assert offsets == sorted(offsets), offsets
    return out


async def test_events_entering_through_both_nodes_reach_every_subscriber_once_in_order(
    tmp_path: Path,
) -> None:
    async with two_nodes(tmp_path, an_app()) as nodes, apis(nodes) as (api_a, api_b):
        pools = [AsyncClientPool(n.ws_url) for n in nodes]
        try:
            for _ in range(ROUNDS):
                channel = unique("both-")
                readers = [await pool.connect() for pool in pools for _ in range(2)]
                for reader in readers:
                    await reader.subscribe(channel)
                publishes = [
                    (api_a if n % 2 else api_b).trigger(channel, "tick", json.dumps({"n": n}))
                    for n in range(10)
                ]
                await asyncio.gather(*publishes)
                for reader in readers:
                    got = await received(reader, channel, 10)
                    assert sorted(got) == list(range(10)), got  # every event, once
                    await reader.expect_quiet("no event twice")
                for reader in readers:
                    await reader.close()
        finally:
            for pool in pools:
                await pool.close_all()


async def test_a_client_event_never_comes_back_to_its_sender(tmp_path: Path) -> None:
    app = an_app(client_events=True, client_event_rate=0)
    async with two_nodes(tmp_path, app) as nodes:
        pools = [AsyncClientPool(n.ws_url) for n in nodes]
        try:
            for _ in range(ROUNDS):
                channel = unique("private-talk-")
                one, two = [await pool.connect() for pool in pools]
                for client in (one, two):
                    await client.subscribe(channel, key=app.key, secret=app.secret)
                sends = []
                for n in range(10):
                    sender = one if n % 2 else two
                    sends.append(sender.send_event("client-tick", {"n": n}, channel))
                await asyncio.gather(*sends)
                for client, sent in ((one, [1, 3, 5, 7, 9]), (two, [0, 2, 4, 6, 8])):
                    got = []
                    while len(got) < 5:
                        frame = await client.expect("client-tick", channel)
                        got.append(frame["data"]["n"])
                    others = [n for n in range(10) if n not in sent]
                    assert sorted(got) == others, (got, others)  # the other's, none of its own
                    await client.expect_quiet("its own events do not come back")
                await one.close()
                await two.close()
        finally:
            for pool in pools:
                await pool.close_all()
