"""Large presence channels (issue 13): beyond Pusher's 100 members, over real sockets.

- `GET channels/{name}/users` pages with `limit` and `after` (the `next` of the page before),
  in the order users joined; without either it answers exactly as before (and as Pusher).
- A channel of 10,000 members (the app's `max_presence_members`), with the memory store and
  with Redis: the 10,000th user joins over a real socket and gets every member in one
  `subscription_succeeded` (its size is measured: it is larger than `max_outbound_bytes`, and
  the connection is not taken for a slow reader); the 10,001st is refused; the users are
  listed whole and in pages. The other 9,999 are written straight into the presence store, as
  another node's connections would be: a socket each would only make the test slow.
- `presence_events_off`: on matching channels no member_added/member_removed frames nor
  webhooks, and `parley:member_count` {count} to the members instead (at once up to 100
  members, then at most once per window); the subscription's answer carries the count and the
  joiner alone; other presence channels of the app are unchanged. Across two nodes on Redis,
  a join on one node reaches the other's members as a count.

What needs the two hooks outside this change (core/subscriptions.py asks
`Node.presence_answer` for the subscription's answer; core/webhooks.py skips member events
where `AppConfig.member_events_off`) is skipped until they are in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import parley
import parley.app
from parley.backends.presence import PresenceStore
from parley.backends.redis.presence import RedisPresenceStore
from parley.settings import AppConfig, Settings, WebhookConfig
from tests.conftest import require
from tests.support.cluster import two_nodes
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool
from tests.support.pusher_raw import channel_auth, presence_data, unique
from tests.support.receiver import Receiver
from tests.support.redis import REDIS_URL, redis_problem, unique_prefix

pytestmark = pytest.mark.integration

MEMBER_COUNT = "parley:member_count"
OTHER_NODE = "elsewhere.1"  # the node the members written straight into the store are on

_SOURCE = Path(parley.__file__).parent
SNAPSHOT_HOOKED = "presence_answer" in (_SOURCE / "core" / "subscriptions.py").read_text()
WEBHOOKS_HOOKED = "member_events_off" in (_SOURCE / "core" / "webhooks.py").read_text()
needs_snapshot_hook = pytest.mark.skipif(
    not SNAPSHOT_HOOKED, reason="core/subscriptions.py does not ask Node.presence_answer yet"
)
needs_webhooks_hook = pytest.mark.skipif(
    not WEBHOOKS_HOOKED, reason="core/webhooks.py does not check member_events_off yet"
)


def data_of(frame: dict[str, Any]) -> Any:
    data = frame["data"]
    return json.loads(data) if isinstance(data, str) else data


async def join(
    app: InProcessApp, client: AsyncClient, room: str, user: str, info: Any = None
) -> dict[str, Any]:
    """Subscribe `client` to `room` as `user`; the `presence` of the answer."""
    frame = await client.subscribe(
        room, key=app.app.key, secret=app.app.secret, channel_data=presence_data(user, info)
    )
    return data_of(frame)["presence"]  # type: ignore[no-any-return]


async def fill(
    presence: PresenceStore, app: AppConfig, room: str, users: list[str], info: Any = None
) -> None:
    """`users` become members of `room` on another node (straight into the store)."""
    for start in range(0, len(users), 50):
        await asyncio.gather(
            *(
                presence.add(
                    app.id,
                    room,
                    user,
                    info,
                    node_id=OTHER_NODE,
                    connection_id=f"9.{i}",
                    limit=app.max_presence_members,
                )
                for i, user in enumerate(users[start : start + 50], start)
            )
        )


async def users(api: AsyncApi, room: str, **params: str) -> tuple[int, Any]:
    answer = await api.signed("GET", f"/apps/{api.app_id}/channels/{room}/users", params=params)
    return answer.status, answer.json()


# -- GET channels/{name}/users in pages ------------------------------------------------------


async def test_users_in_pages_in_the_order_they_joined(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    room = unique("presence-room-")
    for user in ("ann", "bob", "cid", "dee", "eve"):
        await join(app, await clients.connect(), room, user)
    assert await users(api, room) == (
        200,
        {"users": [{"id": u} for u in ("ann", "bob", "cid", "dee", "eve")]},
    )  # no paging asked: Pusher's answer, unchanged
    status, first = await users(api, room, limit="2")
    assert status == 200 and [u["id"] for u in first["users"]] == ["ann", "bob"]
    assert isinstance(first["next"], int)
    status, second = await users(api, room, limit="2", after=str(first["next"]))
    assert [u["id"] for u in second["users"]] == ["cid", "dee"]
    status, last = await users(api, room, limit="2", after=str(second["next"]))
    assert last == {"users": [{"id": "eve"}], "next": None}
    # from a position on, with no limit: the rest, and no page after it
    assert await users(api, room, after=str(first["next"])) == (
        200,
        {"users": [{"id": u} for u in ("cid", "dee", "eve")], "next": None},
    )
    assert await users(api, unique("presence-empty-"), limit="10") == (
        200,
        {"users": [], "next": None},
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "'limit' must be a whole number from 1 to 1000"),
        ({"limit": "1001"}, "'limit' must be a whole number from 1 to 1000"),
        ({"limit": "ten"}, "'limit' must be a whole number from 1 to 1000"),
        ({"limit": "-1"}, "'limit' must be a whole number from 1 to 1000"),
        ({"after": "x"}, "'after' must be a whole number from 0 to 9223372036854775807"),
        ({"after": "9" * 40}, "'after' must be a whole number from 0 to 9223372036854775807"),
    ],
)
async def test_bad_paging_parameters_are_400(
    api: AsyncApi, params: dict[str, str], message: str
) -> None:
    assert await users(api, "presence-room", **params) == (400, {"error": message, "status": 400})


# -- 10,000 members -------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def big(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcessApp]:
    """An app of 10,000 presence members at most, whose connections may buffer 1 MiB; its
    presence store in memory or in Redis (under a prefix of its own)."""
    if request.param == "redis":
        require(await redis_problem() is None, f"Redis: {await redis_problem()}")
        prefix = unique_prefix("big")

        def in_redis(settings: Settings) -> PresenceStore:
            return RedisPresenceStore(REDIS_URL, prefix=prefix)

        monkeypatch.setattr(parley.app, "make_presence", in_redis)
    settings = app_settings(tmp_path, max_presence_members=10_000)
    async with serving(dataclasses.replace(settings, max_outbound_bytes=1 << 20)) as running:
        yield running


async def test_ten_thousand_members_in_one_channel(big: InProcessApp) -> None:
    app = big.app
    room = unique("presence-big-")
    info = {"name": "A member with a long enough name", "about": "x" * 200}
    began = time.monotonic()
    await fill(big.running.node.presence, app, room, [f"user-{i:05}" for i in range(9_999)], info)
    filled_s = time.monotonic() - began
    pool = AsyncClientPool(big.ws_url)
    api = AsyncApi(big.http_url, app.id, app.key, app.secret)
    try:
        last = await pool.connect(max_size=None)
        channel_data = presence_data("user-09999", info)
        auth = channel_auth(app.key, app.secret, last.socket_id, room, channel_data)
        began = time.monotonic()
        await last.send(
            {
                "event": "pusher:subscribe",
                "data": {"channel": room, "auth": auth, "channel_data": channel_data},
            }
        )
        raw = await asyncio.wait_for(last.ws.recv(), 20)
        answered_s = time.monotonic() - began
        frame = json.loads(raw)
        assert frame["event"] == "pusher_internal:subscription_succeeded", frame["event"]
        presence = data_of(frame)["presence"]
        assert presence["count"] == 10_000 and len(presence["ids"]) == 10_000
        assert presence["ids"][-1] == "user-09999"  # the last to join (the others: 50 at once)
        assert sorted(presence["ids"]) == [f"user-{i:05}" for i in range(10_000)]
        assert presence["hash"]["user-04242"] == info
        size = len(raw.encode() if isinstance(raw, str) else raw)
        # every member's id twice and its info, as a JSON string inside the frame: ~3 MB,
        # more than max_outbound_bytes (1 MiB), and not a slow reader for it
        assert size > big.settings.max_outbound_bytes, size
        print(f"subscription_succeeded of 10,000 members: {size} bytes in {answered_s:.3f} s")
        await last.ping()  # still connected: not closed as a slow consumer (4100)

        one_more = await pool.connect()
        channel_data = presence_data("user-10000")
        await one_more.send(
            {
                "event": "pusher:subscribe",
                "data": {
                    "channel": room,
                    "auth": channel_auth(
                        app.key, app.secret, one_more.socket_id, room, channel_data
                    ),
                    "channel_data": channel_data,
                },
            }
        )
        refused = await one_more.expect("pusher:error")
        assert data_of(refused)["message"] == f"Presence channel {room} is full: 10000 members"

        began = time.monotonic()
        status, everyone = await users(api, room)
        assert status == 200 and len(everyone["users"]) == 10_000 and "next" not in everyone
        listed: list[str] = []
        after = "0"
        while True:
            status, page = await users(api, room, limit="1000", after=after)
            assert status == 200 and len(page["users"]) <= 1000
            listed += [u["id"] for u in page["users"]]
            if page["next"] is None:
                break
            after = str(page["next"])
        paged_s = time.monotonic() - began
        assert listed == [u["id"] for u in everyone["users"]]
        assert listed[-1] == "user-09999" and len(set(listed)) == 10_000
        info_answer = await api.signed(
            "GET", f"/apps/{app.id}/channels/{room}", params={"info": "user_count"}
        )
        assert info_answer.json()["user_count"] == 10_000
        print(f"filled in {filled_s:.2f} s; listed whole and in 10 pages in {paged_s:.2f} s")
    finally:
        await pool.close_all()
        await api.close()
        await big.running.node.presence.remove_node(OTHER_NODE)  # Redis keeps nothing of it


# -- member events off ------------------------------------------------------------------------


@pytest.fixture
async def quiet(tmp_path: Path, receiver: Receiver) -> AsyncIterator[InProcessApp]:
    """An app whose `presence-big-*` channels have member events off, with a webhook."""
    settings = app_settings(tmp_path, client_events=True, client_event_rate=0)
    app = dataclasses.replace(
        settings.apps[0],
        presence_events_off="presence-big-*, presence-huge-*",
        max_presence_members=1000,
        webhooks=(WebhookConfig(receiver.url),),
    )
    async with serving(dataclasses.replace(settings, apps=(app,), webhook_hold_s=0.1)) as running:
        yield running


async def expect_count(client: AsyncClient, room: str, count: int) -> None:
    frame = await client.expect(
        MEMBER_COUNT,
        room,
        forbid=lambda f: f.get("event", "").startswith("pusher_internal:member_"),
    )
    assert data_of(frame) == {"count": count}, frame


async def test_members_are_told_counts_where_member_events_are_off(quiet: InProcessApp) -> None:
    room = unique("presence-big-")
    pool = AsyncClientPool(quiet.ws_url)
    try:
        alice, bob, carol = [await pool.connect() for _ in range(3)]
        await join(quiet, alice, room, "alice", {"name": "Alice"})
        await expect_count(alice, room, 1)  # the joiner's own join, after its answer
        answer = await join(quiet, bob, room, "bob", {"name": "Bob"})
        if SNAPSHOT_HOOKED:  # the count and the joiner alone
            assert answer == {"count": 2, "ids": ["bob"], "hash": {"bob": {"name": "Bob"}}}
        else:
            assert answer["count"] == 2
        await expect_count(alice, room, 2)
        await expect_count(bob, room, 2)
        await join(quiet, carol, room, "carol")
        await expect_count(alice, room, 3)
        await expect_count(carol, room, 3)
        await bob.close()
        await expect_count(alice, room, 2)
        await expect_count(carol, room, 2)
        # a user's second connection is no new member: its answer counts 2, nobody is told
        again = await pool.connect()
        assert (await join(quiet, again, room, "alice"))["count"] == 2
        await alice.expect_quiet("no count for alice's second connection")
        await again.expect_quiet("no count for alice's second connection")

        # another presence channel of the app: member events as always
        small = unique("presence-small-")
        await join(quiet, alice, small, "alice")
        await join(quiet, carol, small, "carol")
        added = await alice.expect("pusher_internal:member_added", small)
        assert data_of(added) == {"user_id": "carol"}
        assert not [
            f for f in alice.seen if f.get("event") == MEMBER_COUNT and f["channel"] == small
        ]
    finally:
        await pool.close_all()


async def test_counts_above_a_hundred_members_come_at_most_once_a_window(
    quiet: InProcessApp,
) -> None:
    app = quiet.app
    frames_ = quiet.running.node.pusher_frames
    frames_.count_throttle_s = 0.5
    room = unique("presence-huge-")
    await fill(quiet.running.node.presence, app, room, [f"u{i}" for i in range(150)])
    pool = AsyncClientPool(quiet.ws_url)
    try:
        watcher = await pool.connect()
        await join(quiet, watcher, room, "watcher")
        await expect_count(watcher, room, 151)  # the first change: at once
        began = time.monotonic()
        joiners = [await pool.connect() for _ in range(5)]
        for i, joiner in enumerate(joiners):
            await join(quiet, joiner, room, f"late-{i}")
        await expect_count(watcher, room, 156)  # the five joins: one count, after the window
        assert time.monotonic() - began >= 0.4
        await watcher.expect_quiet("one count for the five joins")
    finally:
        await pool.close_all()


@needs_webhooks_hook
async def test_no_member_webhooks_where_member_events_are_off(
    quiet: InProcessApp, receiver: Receiver
) -> None:
    room, small = unique("presence-big-"), unique("presence-small-")
    pool = AsyncClientPool(quiet.ws_url)
    try:
        alice = await pool.connect()
        await join(quiet, alice, room, "alice")
        await join(quiet, alice, small, "alice")
        await alice.send({"event": "client-hi", "channel": room, "data": {}})

        def client_event_seen() -> bool:
            return any(e["name"] == "client_event" for e in receiver.events())

        async with asyncio.timeout(10):
            while not client_event_seen():  # after anything else of that channel's
                await asyncio.sleep(0.02)
    finally:
        await pool.close_all()
    events = await receiver.wait_for(5)  # and the leaves' after the hold
    of_room = [e["name"] for e in events if e["channel"] == room]
    of_small = [e["name"] for e in events if e["channel"] == small]
    assert "member_added" not in of_room and "member_removed" not in of_room, of_room
    assert of_room[:2] == ["channel_occupied", "client_event"], of_room
    assert of_small[:2] == ["channel_occupied", "member_added"], of_small


# -- two nodes -------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_join_on_another_node_is_told_as_a_count(tmp_path: Path) -> None:
    app = AppConfig(
        id=str(secrets.randbelow(10**9) + 10**9),
        key=f"key-{secrets.token_hex(4)}",
        secret="test-secret",
        presence_events_off="presence-big-*",
    )
    room = unique("presence-big-")
    async with two_nodes(tmp_path, app, short_leases=False) as (one, two):
        pools = [AsyncClientPool(one.ws_url), AsyncClientPool(two.ws_url)]
        try:
            alice = await pools[0].connect()
            await join(one, alice, room, "alice")
            await expect_count(alice, room, 1)
            bob = await pools[1].connect()
            assert (await join(two, bob, room, "bob"))["count"] == 2
            await expect_count(alice, room, 2)  # from node b, through Redis
            await bob.close()
            await expect_count(alice, room, 1)
        finally:
            for pool in pools:
                await pool.close_all()
