"""The PresenceStore contract: one suite, run against every implementation in STORES.

The memory store and the Redis one (each Redis case under a key prefix of its own, so cases
never see each other's nodes). Each case uses its own app id. The leases (`heartbeat`,
`reap`) are the Redis store's: a store of one process has none.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from parley.backends.memory.presence import MemoryPresenceStore
from parley.backends.presence import Departure, PresenceFull, PresenceStore
from parley.backends.redis.presence import RedisPresenceStore
from tests.conftest import require
from tests.support.redis import REDIS_URL, redis_problem, unique_prefix
from tests.support.server import TIMEOUT

STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
LIMIT = 100
N1, N2 = "node-1", "node-2"


def redis_store(prefix: str, lease_s: float = 10.0, refresh_s: float = 5.0) -> RedisPresenceStore:
    return RedisPresenceStore(REDIS_URL, prefix=prefix, lease_s=lease_s, refresh_s=refresh_s)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PresenceStore]:
    opened: PresenceStore
    if request.param == "redis":
        require(await redis_problem() is None, f"Redis: {await redis_problem()}")
        opened = redis_store(unique_prefix("presence"))
    else:
        opened = MemoryPresenceStore()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def app() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def add(
    store: PresenceStore,
    app: str,
    user: str,
    connection: str,
    *,
    node: str = N1,
    channel: str = "presence-room",
    info: object = None,
    limit: int = LIMIT,
) -> bool:
    return await store.add(
        app, channel, user, info, node_id=node, connection_id=connection, limit=limit
    )


async def remove(
    store: PresenceStore,
    app: str,
    user: str,
    connection: str,
    *,
    node: str = N1,
    channel: str = "presence-room",
) -> bool:
    return await store.remove(app, channel, user, node_id=node, connection_id=connection)


async def test_a_user_is_one_member_across_connections_and_nodes(
    store: PresenceStore, app: str
) -> None:
    assert await add(store, app, "alice", "1.1", node=N1) is True
    assert await add(store, app, "alice", "1.2", node=N1) is False
    assert await add(store, app, "alice", "1.1", node=N2) is False  # same socket id, other node
    assert await store.count(app, "presence-room") == 1
    assert await remove(store, app, "alice", "1.1", node=N1) is False
    assert await remove(store, app, "alice", "1.1", node=N2) is False
    assert await store.members(app, "presence-room") == {"alice": None}
    assert await remove(store, app, "alice", "1.2", node=N1) is True  # the last connection
    assert await store.count(app, "presence-room") == 0
    assert await store.members(app, "presence-room") == {}


async def test_members_in_the_order_they_became_members_with_their_first_info(
    store: PresenceStore, app: str
) -> None:
    await add(store, app, "carol", "3.1", info={"name": "Carol"})
    await add(store, app, "alice", "1.1", node=N2, info={"name": "Alice", "n": [1, 2]})
    await add(store, app, "bob", "2.1")
    await add(store, app, "carol", "3.2", node=N2, info={"name": "Carol again"})
    members = await store.members(app, "presence-room")
    assert list(members) == ["carol", "alice", "bob"]
    assert members == {
        "carol": {"name": "Carol"},  # the info of the user's first connection
        "alice": {"name": "Alice", "n": [1, 2]},
        "bob": None,
    }
    await remove(store, app, "carol", "3.1")  # the first connection goes, the member stays
    assert (await store.members(app, "presence-room"))["carol"] == {"name": "Carol"}
    await remove(store, app, "alice", "1.1", node=N2)
    await add(store, app, "alice", "1.3", info={"name": "Alice back"})  # joins at the end
    members = await store.members(app, "presence-room")
    assert list(members) == ["carol", "bob", "alice"]
    assert members["alice"] == {"name": "Alice back"}


async def test_channels_and_apps_are_apart(store: PresenceStore, app: str) -> None:
    other_app = app + "-other"
    await add(store, app, "alice", "1.1", channel="presence-a")
    await add(store, app, "bob", "2.1", channel="presence-b")
    await add(store, other_app, "carol", "3.1", channel="presence-a")
    assert await store.members(app, "presence-a") == {"alice": None}
    assert await store.members(app, "presence-b") == {"bob": None}
    assert await store.members(other_app, "presence-a") == {"carol": None}
    assert await remove(store, app, "carol", "3.1", channel="presence-a") is False
    assert await store.count(other_app, "presence-a") == 1


async def test_adding_an_entry_twice_and_removing_one_that_is_not_there_change_nothing(
    store: PresenceStore, app: str
) -> None:
    assert await add(store, app, "alice", "1.1") is True
    assert await add(store, app, "alice", "1.1", info={"other": True}) is False
    assert await remove(store, app, "alice", "9.9") is False  # no such connection
    assert await remove(store, app, "bob", "1.1") is False  # not that user's entry
    assert await remove(store, app, "alice", "1.1", channel="presence-other") is False
    assert await store.members(app, "presence-room") == {"alice": None}
    assert await remove(store, app, "alice", "1.1") is True  # one add, one remove
    assert await remove(store, app, "alice", "1.1") is False


async def test_the_limit_counts_users_and_refuses_only_a_new_one(
    store: PresenceStore, app: str
) -> None:
    await add(store, app, "a", "1", limit=2)
    await add(store, app, "b", "2", node=N2, limit=2)
    assert await add(store, app, "a", "3", node=N2, limit=2) is False  # a member: admitted
    with pytest.raises(PresenceFull) as refused:
        await add(store, app, "c", "4", limit=2)
    assert str(refused.value) == "Presence channel presence-room is full: 2 members"
    assert (refused.value.channel, refused.value.limit) == ("presence-room", 2)
    assert list(await store.members(app, "presence-room")) == ["a", "b"]
    assert await remove(store, app, "b", "2", node=N2) is True
    assert await add(store, app, "c", "4", limit=2) is True
    with pytest.raises(PresenceFull):
        await add(store, app, "d", "5", channel="presence-tiny", limit=0)
    assert await store.count(app, "presence-tiny") == 0


async def test_concurrent_new_users_never_exceed_the_limit(store: PresenceStore, app: str) -> None:
    outcomes = await asyncio.gather(
        *(add(store, app, f"u{i}", f"{i}", node=(N1, N2)[i % 2], limit=5) for i in range(20)),
        return_exceptions=True,
    )
    assert sum(outcome is True for outcome in outcomes) == 5
    assert all(isinstance(o, PresenceFull) for o in outcomes if o is not True)
    assert await store.count(app, "presence-room") == 5


async def test_remove_node_drops_its_entries_and_reports_the_users_gone(
    store: PresenceStore, app: str
) -> None:
    await add(store, app, "alice", "1.1", node=N1)  # only on node 1
    await add(store, app, "bob", "2.1", node=N1)  # on both nodes
    await add(store, app, "bob", "2.2", node=N2)
    await add(store, app, "carol", "3.1", node=N2)  # only on node 2
    await add(store, app, "alice", "1.2", node=N1, channel="presence-other")
    await add(store, app, "alice", "1.1", node=N1, channel="presence-other")
    gone = await store.remove_node(N1)
    assert sorted(gone, key=lambda d: (d.channel, d.user_id)) == [
        Departure(app, "presence-other", "alice"),
        Departure(app, "presence-room", "alice"),
    ]
    assert await store.members(app, "presence-room") == {"bob": None, "carol": None}
    assert await store.count(app, "presence-other") == 0
    assert await store.remove_node(N1) == []  # nothing left of it
    # node 1's entries are gone for good: removing one is no longer a user's last
    assert await remove(store, app, "bob", "2.1", node=N1) is False
    assert await remove(store, app, "bob", "2.2", node=N2) is True
    # node 1 comes back with new connections: counted afresh
    assert await add(store, app, "alice", "1.9", node=N1) is True


# -- pages ---------------------------------------------------------------------------------


async def all_pages(
    store: PresenceStore, app: str, limit: int, channel: str = "presence-room"
) -> list[dict[str, object]]:
    pages: list[dict[str, object]] = []
    after = 0
    while True:
        page = await store.members_page(app, channel, after=after, limit=limit)
        pages.append(page.members)
        if page.next is None:
            return pages
        assert page.next > after
        after = page.next


async def test_pages_follow_the_join_order_with_the_infos(store: PresenceStore, app: str) -> None:
    for i in range(7):
        await add(store, app, f"u{i}", f"{i}", node=(N1, N2)[i % 2], info={"n": i})
    await add(store, app, "u3", "3b", info={"n": "again"})  # a member already: no change
    pages = await all_pages(store, app, limit=3)
    assert [list(p) for p in pages] == [["u0", "u1", "u2"], ["u3", "u4", "u5"], ["u6"]]
    assert pages[1]["u3"] == {"n": 3}
    everything = await store.members_page(app, "presence-room")  # no limit: all, last page
    assert (everything.members, everything.next) == (
        await store.members(app, "presence-room"),
        None,
    )
    exact = await store.members_page(app, "presence-room", limit=7)
    assert (len(exact.members), exact.next) == (7, None)  # no page follows an exact fit
    empty = await store.members_page(app, "presence-nobody", limit=3)
    assert (empty.members, empty.next) == ({}, None)


async def test_a_page_after_joins_and_leaves_skips_nobody_who_stayed(
    store: PresenceStore, app: str
) -> None:
    for i in range(6):
        await add(store, app, f"u{i}", f"{i}")
    first = await store.members_page(app, "presence-room", limit=3)
    assert list(first.members) == ["u0", "u1", "u2"] and first.next is not None
    await remove(store, app, "u2", "2")  # the last of the page leaves
    await remove(store, app, "u4", "4")  # one of the next page leaves
    await remove(store, app, "u0", "0")  # one already read leaves and comes back: at the end
    await add(store, app, "u0", "0b")
    await add(store, app, "u9", "9")  # a new one: at the end
    rest = await store.members_page(app, "presence-room", after=first.next, limit=10)
    assert (list(rest.members), rest.next) == (["u3", "u5", "u0", "u9"], None)


async def test_positions_grow_across_a_channel_that_emptied(store: PresenceStore, app: str) -> None:
    for i in range(3):
        await add(store, app, f"u{i}", f"{i}")
    first = await store.members_page(app, "presence-room", limit=2)
    assert first.next is not None
    for i in range(3):
        await remove(store, app, f"u{i}", f"{i}")
    await add(store, app, "v", "9")  # the channel made anew: v comes after any old position
    later = await store.members_page(app, "presence-room", after=first.next, limit=2)
    assert (list(later.members), later.next) == (["v"], None)


async def test_ten_thousand_members_listed_and_paged(store: PresenceStore, app: str) -> None:
    """Beyond Pusher's 100: up to the app's max_presence_members (10,000 here); every read
    holds them all (a Redis script cannot unpack so many values at once: it reads slices)."""
    n = 10_000
    for start in range(0, n, 50):
        await asyncio.gather(
            *(
                add(store, app, f"user-{i:05}", f"c{i}", info={"i": i}, limit=n)
                for i in range(start, start + 50)
            )
        )
    with pytest.raises(PresenceFull):
        await add(store, app, "one-too-many", "x", limit=n)
    members = await store.members(app, "presence-room")
    assert len(members) == n and members["user-09999"] == {"i": 9999}
    assert await store.count(app, "presence-room") == n
    pages = await all_pages(store, app, limit=1000)
    assert [len(p) for p in pages] == [1000] * 10
    assert [u for p in pages for u in p] == list(members)
    assert len(await store.remove_node(N1)) == n  # (and Redis keeps nothing of it)
    assert await store.count(app, "presence-room") == 0


# -- leases (Redis) -------------------------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[list[RedisPresenceStore]]:
    """Three nodes' stores on one Redis, with a short lease (0.3 s) and refresh (0.1 s)."""
    require(await redis_problem() is None, f"Redis: {await redis_problem()}")
    prefix = unique_prefix("leases")
    stores = [redis_store(prefix, lease_s=0.3, refresh_s=0.1) for _ in range(3)]
    try:
        yield stores
    finally:
        for opened in stores:
            await opened.close()


async def test_a_lease_kept_up_is_never_reaped_and_a_lapsed_one_once(
    cluster: list[RedisPresenceStore], app: str
) -> None:
    a, b, c = cluster
    for store_, node in ((a, "a.1"), (b, "b.1"), (c, "c.1")):
        assert await store_.heartbeat(node, registered=False)
    await add(a, app, "ann", "1", node="a.1")
    await add(b, app, "ann", "2", node="b.1")  # ann on two nodes
    await add(b, app, "bob", "3", node="b.1")
    reaped: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while not reaped:  # b stops its heartbeats: it "died"
            assert await a.heartbeat("a.1", registered=True)
            assert await c.heartbeat("c.1", registered=True)
            for store_, node in ((a, "a.1"), (c, "c.1")):
                reaped += await store_.reap(node)
            await asyncio.sleep(0.1)
    assert reaped == ["b.1"]  # once, by one node
    assert await a.reap("a.1") == [] and await c.reap("c.1") == []
    gone = await a.remove_node("b.1")
    assert gone == [Departure(app, "presence-room", "bob")]  # ann is still on node a
    assert await a.members(app, "presence-room") == {"ann": None}
    # b was only paused: its lease is gone, so it registers anew under a new generation
    assert await b.heartbeat("b.1", registered=True) is False
    assert await b.heartbeat("b.2", registered=False) is True
    assert await add(b, app, "bob", "3", node="b.2") is True  # bob back: a new member


async def test_only_one_node_reaps_at_a_time(cluster: list[RedisPresenceStore], app: str) -> None:
    a, b, c = cluster
    for store_, node in ((a, "a.1"), (b, "b.1"), (c, "c.1")):
        await store_.heartbeat(node, registered=False)
    results = await asyncio.gather(a.reap("a.1"), b.reap("b.1"), c.reap("c.1"))
    # nothing lapsed yet; whoever took the reaper's role keeps it while it renews it
    assert results == [[], [], []]
    holders = [await s.reap(n) == [] for s, n in ((a, "a.1"), (b, "b.1"), (c, "c.1"))]
    assert all(holders)
