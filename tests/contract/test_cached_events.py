"""The CachedEvents contract: one suite, run against every implementation in STORES.

A case's nodes each get a store from `Cluster.store`: for Redis a store of its own on one key
prefix of the case's (so what one node put, another reads once it is written: `flush`); for
memory the one store of the process (a process is one node). Each case uses its own app id.
The Redis cases after them: a value not written by a node of the cluster is refused, a node's
own puts are answered before they are written, writes wait for a Redis that is away and are
made once it is back, and the waiting puts are bounded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from parley.backends.last_events import CachedEvents
from parley.backends.memory.last_events import MemoryCachedEvents
from parley.backends.redis.last_events import RedisCachedEvents
from parley.errors import StoreUnavailable
from tests.conftest import require
from tests.support.redis import (
    CLUSTER_SECRET,
    REDIS_URL,
    OwnRedis,
    redis_problem,
    unique_prefix,
)

STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
TTL_S = 60.0


def frame(data: str, channel: str = "cache-room", event: str = "e") -> bytes:
    """A frame as the node encodes an API event (its data a JSON string)."""
    return orjson.dumps({"event": event, "channel": channel, "data": data})


class Cluster:
    """The stores of a case's nodes, closed at the end."""

    def __init__(self, kind: str, url: str = REDIS_URL, secret: str = CLUSTER_SECRET) -> None:
        self.kind = kind
        self.url = url
        self.secret = secret
        self.prefix = unique_prefix("cache")
        self.stores: list[CachedEvents] = []
        self.memory = MemoryCachedEvents()

    def store(self, **options: int) -> CachedEvents:
        if self.kind == "memory":
            return self.memory
        made = RedisCachedEvents(
            self.url, prefix=self.prefix, secret=self.secret.encode(), **options
        )
        self.stores.append(made)
        return made

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        await self.memory.close()


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


async def test_nothing_cached_is_none(cluster: Cluster, app: str) -> None:
    assert await cluster.store().get(app, "cache-room") is None


async def test_a_put_event_is_read_with_its_name_data_and_remaining_ttl(
    cluster: Cluster, app: str
) -> None:
    one, two = cluster.store(), cluster.store()
    one.put(app, "cache-room", frame('{"price":1}', event="quote"), TTL_S, 3, "ep")
    await one.flush()
    found = await two.get(app, "cache-room")
    assert found is not None
    assert found.frame == frame('{"price":1}', event="quote")  # the bytes as put
    assert (found.event, found.data) == ("quote", '{"price":1}')
    assert TTL_S - 5 < found.ttl_s <= TTL_S


async def test_apps_and_channels_are_apart(cluster: Cluster, app: str) -> None:
    one, two = cluster.store(), cluster.store()
    other = f"t{uuid.uuid4().hex[:12]}"
    one.put(app, "cache-a", frame("a", "cache-a"), TTL_S)
    one.put(other, "cache-b", frame("b", "cache-b"), TTL_S)
    await one.flush()
    a = await two.get(app, "cache-a")
    assert a is not None and a.data == "a"
    assert await two.get(app, "cache-b") is None
    assert await two.get(other, "cache-a") is None
    b = await two.get(other, "cache-b")
    assert b is not None and b.data == "b"


async def test_an_event_expires_by_its_ttl(cluster: Cluster, app: str) -> None:
    one, two = cluster.store(), cluster.store()
    one.put(app, "cache-room", frame("soon gone"), 0.4)
    await one.flush()
    found = await two.get(app, "cache-room")
    assert found is not None and 0 < found.ttl_s <= 0.4
    await asyncio.sleep(0.5)
    assert await two.get(app, "cache-room") is None
    assert await one.get(app, "cache-room") is None


async def test_the_later_event_replaces_the_earlier(cluster: Cluster, app: str) -> None:
    one, two = cluster.store(), cluster.store()
    one.put(app, "cache-room", frame("first"), TTL_S)
    await one.flush()
    two.put(app, "cache-room", frame("second"), TTL_S)
    await two.flush()
    for store in (one, two):
        found = await store.get(app, "cache-room")
        assert found is not None and found.data == "second"


async def test_an_older_position_does_not_replace_a_newer_one(cluster: Cluster, app: str) -> None:
    """Two nodes published on one channel; the write of the earlier event lands last."""
    one, two = cluster.store(), cluster.store()
    one.put(app, "cache-room", frame("offset 5"), TTL_S, 5, "ep")
    await one.flush()
    two.put(app, "cache-room", frame("offset 4"), TTL_S, 4, "ep")
    two.put(app, "cache-room", frame("offset 5 again"), TTL_S, 5, "ep")  # a duplicate
    await two.flush()
    reader = cluster.store()
    found = await reader.get(app, "cache-room")
    assert found is not None and found.data == "offset 5"
    two.put(app, "cache-room", frame("offset 6"), TTL_S, 6, "ep")
    await two.flush()
    found = await reader.get(app, "cache-room")
    assert found is not None and found.data == "offset 6"


async def test_a_new_epoch_or_no_position_replaces_whatever_is_kept(
    cluster: Cluster, app: str
) -> None:
    one, two = cluster.store(), cluster.store()
    one.put(app, "cache-room", frame("offset 9"), TTL_S, 9, "old")
    await one.flush()
    one.put(app, "cache-room", frame("offset 1, history deleted"), TTL_S, 1, "new")
    await one.flush()
    found = await two.get(app, "cache-room")
    assert found is not None and found.data == "offset 1, history deleted"
    one.put(app, "cache-room", frame("no history"), TTL_S)
    await one.flush()
    found = await two.get(app, "cache-room")
    assert found is not None and found.data == "no history"


async def test_an_expired_event_is_replaced_whatever_its_position(
    cluster: Cluster, app: str
) -> None:
    one, two = cluster.store(), cluster.store()
    one.put(app, "cache-room", frame("offset 7"), 0.2, 7, "ep")
    await one.flush()
    await asyncio.sleep(0.3)
    one.put(app, "cache-room", frame("offset 3"), TTL_S, 3, "ep")
    await one.flush()
    found = await two.get(app, "cache-room")
    assert found is not None and found.data == "offset 3"


# -- the Redis store ---------------------------------------------------------------------------


async def test_a_value_not_sealed_with_the_cluster_secret_is_refused(
    redis: Cluster, app: str
) -> None:
    one = redis.store()
    assert isinstance(one, RedisCachedEvents)
    one.put(app, "cache-room", frame("genuine"), TTL_S)
    await one.flush()
    client = one._client
    key = one.key(app, "cache-room")
    genuine = await client.get(key)
    # forged: written straight into Redis, or sealed with another secret, or moved
    outsider = Cluster("redis", secret="another-secret-0123456789abcdef-0123456789")
    outsider.prefix = redis.prefix
    forger = outsider.store()
    assert isinstance(forger, RedisCachedEvents)
    try:
        for value in (
            b"0 \n" + b"x" * 32 + frame("forged"),
            forger.seal(key, 0, "", frame("forged")),
            b"no header at all",
        ):
            await client.set(key, value, px=60_000)
            assert await redis.store().get(app, "cache-room") is None
        await client.set(one.key(app, "cache-moved"), genuine, px=60_000)
        assert await redis.store().get(app, "cache-moved") is None
    finally:
        await outsider.close()
    reader = redis.store()
    assert isinstance(reader, RedisCachedEvents)
    await reader.get(app, "cache-room")
    assert reader.refused == 1
    await client.set(key, genuine, px=60_000)
    found = await reader.get(app, "cache-room")
    assert found is not None and found.data == "genuine"


async def test_the_value_expires_in_redis_by_the_events_ttl(redis: Cluster, app: str) -> None:
    one = redis.store()
    assert isinstance(one, RedisCachedEvents)
    one.put(app, "cache-room", frame("x"), 30.0)
    await one.flush()
    ttl_ms = await one._client.pttl(one.key(app, "cache-room"))
    assert 25_000 < ttl_ms <= 30_000


async def test_writes_wait_for_redis_and_the_node_answers_its_own_meanwhile(
    tmp_path: Path, app: str
) -> None:
    require(await redis_problem() is None, f"Redis: {await redis_problem()}")
    own = OwnRedis(tmp_path).start()
    cluster = Cluster("redis", own.url)
    try:
        one, two = cluster.store(), cluster.store()
        own.stop()
        one.put(app, "cache-room", frame("during the outage"), TTL_S)  # never raises
        found = await one.get(app, "cache-room")  # its own, not written yet
        assert found is not None and found.data == "during the outage"
        with pytest.raises(StoreUnavailable):
            await one.flush(0.3)
        with pytest.raises(StoreUnavailable):
            await two.get(app, "cache-room")
        own.start()  # empty: it kept nothing on disk
        await one.flush(10.0)  # tried again, with back-off, until written
        found = await two.get(app, "cache-room")
        assert found is not None and found.data == "during the outage"
    finally:
        await cluster.close()
        own.stop()


async def test_the_puts_waiting_to_be_written_are_bounded(redis: Cluster, app: str) -> None:
    one = redis.store(max_pending=2)
    assert isinstance(one, RedisCachedEvents)
    one.put(app, "cache-a", frame("a", "cache-a"), TTL_S)
    one.put(app, "cache-b", frame("b", "cache-b"), TTL_S)
    one.put(app, "cache-a", frame("a2", "cache-a"), TTL_S)  # replaces the one waiting
    one.put(app, "cache-c", frame("c", "cache-c"), TTL_S)  # one channel too many: dropped
    assert one.dropped == 1
    await one.flush()
    two = redis.store()
    a = await two.get(app, "cache-a")
    assert a is not None and a.data == "a2"
    assert await two.get(app, "cache-b") is not None
    assert await two.get(app, "cache-c") is None
