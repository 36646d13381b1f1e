"""The ChannelCounts contract: one suite, run against every implementation in STORES.

Each case's nodes read their own numbers from a `Local` the test sets (as core.counts reads
the hubs) and are told of the channels it changes (`changed`), as the domain events tell them.
The memory store is one process, so one node: its cases are the ones every store keeps (a
node's own numbers answered at once, absent channels, prefixes, apps apart). The Redis cases
run several nodes on one key prefix of their own: numbers add up over the nodes once written
(a batch, or `flush`), leave with `close`, `remove_node` (the reaper) and `rekey`, and a node
that lost writes while Redis was away rewrites everything.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from parley.backends.counts import ChannelCounts, Vacancy
from parley.backends.memory.counts import MemoryChannelCounts
from parley.backends.redis.counts import CHUNK, RedisChannelCounts
from parley.errors import StoreUnavailable
from tests.conftest import require
from tests.support.redis import REDIS_URL, OwnRedis, redis_problem, unique_prefix
from tests.support.server import TIMEOUT

STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


class Local:
    """A node's own numbers (`backends.counts.LocalCounts`), as the test sets them."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, int]] = {}
        self.conns: dict[str, int] = {}

    def app_ids(self) -> Iterable[str]:
        return list({*self.channels, *self.conns})

    def subscriptions(self, app_id: str, channel: str) -> int:
        return self.channels.get(app_id, {}).get(channel, 0)

    def occupied_channels(self, app_id: str, prefix: str) -> dict[str, int]:
        return {
            name: count
            for name, count in self.channels.get(app_id, {}).items()
            if count and name.startswith(prefix)
        }

    def connections(self, app_id: str) -> int:
        return self.conns.get(app_id, 0)


class Node:
    """One node's store and its own numbers."""

    def __init__(self, counts: ChannelCounts) -> None:
        self.counts = counts
        self.local = Local()
        counts.bind(self.local)

    def subscribe(self, app: str, channel: str, count: int) -> None:
        """`channel` has `count` subscriptions on this node now."""
        self.local.channels.setdefault(app, {})[channel] = count
        self.counts.changed(app, channel)

    def connect(self, app: str, count: int) -> None:
        self.local.conns[app] = count


class Cluster:
    """The nodes of a case: made and started by `node`, closed at the end."""

    def __init__(self, kind: str, url: str = REDIS_URL) -> None:
        self.kind = kind
        self.url = url
        self.prefix = unique_prefix("counts")
        self.nodes: list[Node] = []

    def store(self, watched: Iterable[str] = (), interval_s: float = 3600.0) -> ChannelCounts:
        if self.kind == "memory":
            return MemoryChannelCounts()
        # a long interval: the cases write with `flush`, unless they test the batches
        return RedisChannelCounts(
            self.url, prefix=self.prefix, watched=watched, interval_s=interval_s
        )

    async def node(
        self, key: str = "n1.1", watched: Iterable[str] = (), interval_s: float = 3600.0
    ) -> Node:
        node = Node(self.store(watched, interval_s))
        self.nodes.append(node)
        await node.counts.start(key)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.counts.close()


@pytest.fixture(params=STORES)
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    if request.param == "redis":
        require(await redis_problem() is None, f"Redis: {await redis_problem()}")
    made = Cluster(request.param)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def redis() -> AsyncIterator[Cluster]:
    """The Redis store alone: the cases of several nodes."""
    require(await redis_problem() is None, f"Redis: {await redis_problem()}")
    made = Cluster("redis")
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def app() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# -- every store -----------------------------------------------------------------------------


async def test_a_nodes_own_numbers_are_answered_at_once(cluster: Cluster, app: str) -> None:
    one = await cluster.node()
    one.subscribe(app, "room", 2)
    one.subscribe(app, "private-room", 1)
    one.connect(app, 3)
    # no flush: this node's numbers are read when asked
    assert await one.counts.subscriptions(app, "room") == 2
    assert await one.counts.occupied_channels(app) == {"room": 2, "private-room": 1}
    assert await one.counts.connections(app) == 3
    one.subscribe(app, "room", 0)
    assert await one.counts.subscriptions(app, "room") == 0
    assert await one.counts.occupied_channels(app) == {"private-room": 1}


async def test_channels_without_subscribers_are_absent_and_a_prefix_is_literal(
    cluster: Cluster, app: str
) -> None:
    one = await cluster.node()
    for name in ("presence-a.b", "presence-aXb", "presence-a%b", "private-x", "#odd;=@,"):
        one.subscribe(app, name, 1)
    one.subscribe(app, "presence-gone", 0)
    await one.counts.flush()
    assert await one.counts.subscriptions(app, "presence-gone") == 0
    assert await one.counts.subscriptions(app, "never") == 0
    assert set(await one.counts.occupied_channels(app, "presence-")) == {
        "presence-a.b",
        "presence-aXb",
        "presence-a%b",
    }
    assert await one.counts.occupied_channels(app, "presence-a.") == {"presence-a.b": 1}
    assert await one.counts.occupied_channels(app, "presence-a%") == {"presence-a%b": 1}
    assert await one.counts.occupied_channels(app, "#odd;") == {"#odd;=@,": 1}
    assert await one.counts.occupied_channels(app, "nothing-") == {}


async def test_apps_are_apart(cluster: Cluster, app: str) -> None:
    one = await cluster.node()
    other = app + "-other"
    one.subscribe(app, "room", 1)
    one.subscribe(other, "room", 4)
    one.connect(app, 1)
    one.connect(other, 5)
    await one.counts.flush()
    assert await one.counts.subscriptions(app, "room") == 1
    assert await one.counts.subscriptions(other, "room") == 4
    assert await one.counts.connections(other) == 5
    assert await one.counts.occupied_channels(app + "-unknown") == {}
    assert await one.counts.connections(app + "-unknown") == 0


async def test_a_node_alone_has_no_remote_connections(cluster: Cluster, app: str) -> None:
    one = await cluster.node(watched=[app])
    one.connect(app, 3)
    await one.counts.flush()
    assert one.counts.remote_connections(app) == 0


async def test_a_store_unbound_knows_nothing_of_its_node(cluster: Cluster, app: str) -> None:
    counts = cluster.store()
    try:
        assert await counts.subscriptions(app, "room") == 0
        assert await counts.occupied_channels(app) == {}
        assert await counts.connections(app) == 0
    finally:
        await counts.close()


# -- several nodes: Redis --------------------------------------------------------------------


async def test_the_numbers_of_every_node_add_up_once_written(redis: Cluster, app: str) -> None:
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    one.subscribe(app, "room", 2)
    one.subscribe(app, "only-one", 1)
    two.subscribe(app, "room", 3)
    one.connect(app, 2)
    two.connect(app, 3)
    # not written yet: each node sees its own numbers alone
    assert await one.counts.subscriptions(app, "room") == 2
    assert await two.counts.occupied_channels(app) == {"room": 3}
    await one.counts.flush()
    await two.counts.flush()
    for node in (one, two):
        assert await node.counts.subscriptions(app, "room") == 5
        assert await node.counts.occupied_channels(app) == {"room": 5, "only-one": 1}
        assert await node.counts.occupied_channels(app, "only") == {"only-one": 1}
        assert await node.counts.connections(app) == 5
    two.subscribe(app, "room", 0)  # node two's last subscriber left
    one.subscribe(app, "only-one", 0)
    await one.counts.flush()
    await two.counts.flush()
    for node in (one, two):
        assert await node.counts.occupied_channels(app) == {"room": 2}


async def test_a_batch_is_written_within_its_interval_without_a_flush(
    redis: Cluster, app: str
) -> None:
    one = await redis.node("n1.1", interval_s=0.05)
    two = await redis.node("n2.1")
    one.subscribe(app, "room", 4)
    one.connect(app, 7)
    async with asyncio.timeout(TIMEOUT):
        while await two.counts.subscriptions(app, "room") != 4:
            await asyncio.sleep(0.01)
        while await two.counts.connections(app) != 7:  # no event: read off the node
            await asyncio.sleep(0.01)


async def test_the_connections_of_the_other_nodes_are_read_for_the_watched_apps(
    redis: Cluster, app: str
) -> None:
    unwatched = app + "-free"
    one = await redis.node("n1.1", watched=[app])
    two = await redis.node("n2.1", watched=[app])
    three = await redis.node("n3.1")
    one.connect(app, 1)
    two.connect(app, 2)
    three.connect(app, 4)
    three.connect(unwatched, 9)
    for node in (two, three, one):
        await node.counts.flush()
    assert one.counts.remote_connections(app) == 6  # the others', not its own
    assert one.counts.remote_connections(unwatched) == 0  # not watched: never read
    await two.counts.flush()
    assert two.counts.remote_connections(app) == 5
    assert three.counts.remote_connections(app) == 0  # it watches nothing


async def test_a_closed_node_leaves_the_answers(redis: Cluster, app: str) -> None:
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    one.subscribe(app, "room", 1)
    two.subscribe(app, "room", 2)
    two.connect(app, 2)
    await one.counts.flush()
    await two.counts.flush()
    assert await one.counts.subscriptions(app, "room") == 3
    await two.counts.close()
    redis.nodes.remove(two)
    assert await one.counts.subscriptions(app, "room") == 1
    assert await one.counts.connections(app) == 0


async def test_a_dead_node_leaves_the_answers_once_removed(redis: Cluster, app: str) -> None:
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    one.subscribe(app, "room", 1)
    two.subscribe(app, "room", 2)
    two.subscribe(app, "elsewhere", 1)
    two.connect(app, 5)
    await one.counts.flush()
    await two.counts.flush()
    assert await one.counts.occupied_channels(app) == {"room": 3, "elsewhere": 1}
    await one.counts.remove_node("n2.1")  # what the reaper does once its lease lapsed
    assert await one.counts.occupied_channels(app) == {"room": 1}
    assert await one.counts.connections(app) == 0
    await one.counts.remove_node("n2.1")  # again: nothing
    await one.counts.remove_node("never-there.1")


async def test_a_start_replaces_what_an_earlier_process_left_under_its_key(
    redis: Cluster, app: str
) -> None:
    one = await redis.node("n1.1")
    gone = await redis.node("n2.1")  # killed: its numbers stay until reaped or replaced
    gone.subscribe(app, "stale", 3)
    gone.subscribe(app, "room", 3)
    gone.connect(app, 3)
    await gone.counts.flush()
    assert await one.counts.subscriptions(app, "stale") == 3
    again = await redis.node("n2.1")  # the same node id and generation, started again
    again.subscribe(app, "room", 1)
    again.connect(app, 1)
    await again.counts.flush()
    assert await one.counts.occupied_channels(app) == {"room": 1}
    assert await one.counts.connections(app) == 1


async def test_a_rekey_moves_the_numbers_and_counts_them_once(redis: Cluster, app: str) -> None:
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    two.subscribe(app, "room", 2)
    two.connect(app, 2)
    await two.counts.flush()
    await two.counts.rekey("n2.2")  # its lease lapsed, it took a new one
    assert await one.counts.subscriptions(app, "room") == 2
    assert await one.counts.connections(app) == 2
    await one.counts.remove_node("n2.1")  # the reaper, later: nothing of the new key goes
    assert await one.counts.subscriptions(app, "room") == 2
    assert await two.counts.subscriptions(app, "room") == 2  # its own, not twice


async def test_a_large_rewrite_is_written_in_pieces(redis: Cluster, app: str) -> None:
    one = await redis.node("n1.1")
    names = [f"c-{i}" for i in range(CHUNK * 2 + 7)]
    two = Node(redis.store())
    redis.nodes.append(two)
    for name in names:
        two.subscribe(app, name, 1)
    await two.counts.start("n2.1")  # one rewrite of everything
    counted = await one.counts.occupied_channels(app, "c-")
    assert len(counted) == len(names) and set(counted.values()) == {1}


async def test_writes_lost_while_redis_was_away_are_made_good(tmp_path: Path, app: str) -> None:
    """Redis stopped (a server of the test's own) and started empty: the node's next batch
    after a failed one rewrites everything it has."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    own = OwnRedis(tmp_path).start()
    cluster = Cluster("redis", own.url)
    try:
        one, two = await cluster.node("n1.1"), await cluster.node("n2.1")
        two.subscribe(app, "room", 1)
        two.subscribe(app, "kept", 1)
        await two.counts.flush()
        own.stop()
        two.subscribe(app, "room", 2)
        with pytest.raises(StoreUnavailable):
            await two.counts.flush()
        with pytest.raises(StoreUnavailable):
            await one.counts.subscriptions(app, "room")
        own.start()  # empty: it kept nothing on disk
        await two.counts.flush()
        assert await one.counts.occupied_channels(app) == {"room": 2, "kept": 1}
    finally:
        await cluster.close()
        own.stop()


# -- occupancy (the channel_occupied / channel_vacated webhooks) ------------------------------


async def test_a_store_of_one_process_says_yes_to_every_transition(app: str) -> None:
    """(core.webhooks decides a node's own transitions itself, with its own hold.)"""
    memory = Cluster("memory")
    one = await memory.node()
    assert not one.counts.shared
    assert await one.counts.occupy(app, "room")
    assert await one.counts.vacate(app, "room", 3.0)
    assert await one.counts.settle(app, "room")
    assert await one.counts.remove_node("n9.1") == []


async def test_occupancy_is_the_clusters(redis: Cluster, app: str) -> None:
    """One node's first subscriber occupies the channel; another node's does not; it is
    empty once the last node's last one left, and a vacated is due after the hold."""
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    assert one.counts.shared
    assert await one.counts.occupy(app, "room")
    assert not await two.counts.occupy(app, "room")
    assert not await one.counts.vacate(app, "room", 0.2)  # node 2 still has one
    assert await two.counts.vacate(app, "room", 0.2)  # empty everywhere: the hold begins
    assert not await two.counts.settle(app, "room")  # the hold is not over
    await asyncio.sleep(0.25)  # (a hold is a time: this waits it out)
    assert await two.counts.settle(app, "room")
    assert not await one.counts.settle(app, "room")  # taken once


async def test_a_return_within_the_hold_on_another_node_makes_no_noise(
    redis: Cluster, app: str
) -> None:
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    assert await one.counts.occupy(app, "room")
    assert await one.counts.vacate(app, "room", 5.0)
    assert not await two.counts.occupy(app, "room")  # back, elsewhere: no occupied...
    assert not await one.counts.settle(app, "room", now=True)  # ...and no vacated
    assert await two.counts.vacate(app, "room", 5.0)  # gone again: a hold of its own
    assert await two.counts.settle(app, "room", now=True)


async def test_a_dead_nodes_channels_are_vacated_once_and_a_rekey_keeps_them(
    redis: Cluster, app: str
) -> None:
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    assert await two.counts.occupy(app, "alone")
    assert await two.counts.occupy(app, "shared")
    assert not await one.counts.occupy(app, "shared")
    await two.counts.rekey("n2.2")  # its lease lapsed: the channels move to the new key
    assert await one.counts.remove_node("n2.1") == []
    gone = await one.counts.remove_node("n2.2")  # the reaper
    assert gone == [Vacancy(app, "alone")]
    assert await one.counts.remove_node("n2.2") == []
    assert await one.counts.occupy(app, "alone")  # empty: a new subscriber occupies it
    # node 1's process, started again under its key: what the old one held is empty now
    again = Node(redis.store())
    redis.nodes.append(again)
    assert set(await again.counts.start("n1.1")) == {Vacancy(app, "alone"), Vacancy(app, "shared")}
    assert await again.counts.occupy(app, "shared")


async def test_a_members_hold_ends_with_a_return_or_a_settle(redis: Cluster, app: str) -> None:
    one, two = await redis.node("n1.1"), await redis.node("n2.1")
    member = "presence-room\nann"
    assert await one.counts.hold(app, member, 5.0)
    assert await two.counts.returned(app, member)  # back, on another node: no webhooks
    assert not await one.counts.settle(app, member, now=True)
    assert not await two.counts.returned(app, member)  # no hold: a new member
    assert await one.counts.hold(app, member, 0.2)
    assert not await two.counts.settle(app, member)  # not over
    await asyncio.sleep(0.25)  # (a hold is a time: this waits it out)
    assert await two.counts.settle(app, member)
    assert not await one.counts.settle(app, member)
