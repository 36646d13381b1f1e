"""Events: the HTTP API publishing to subscribers with the `parley` object, client events
stamped with their sender and never echoed, and resume after a gap."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.support.inproc import InProcessApp
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.pusher_raw import presence_data, unique

pytestmark = pytest.mark.integration


async def test_api_events_reach_subscribers_with_their_position_and_publisher(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    channel, elsewhere = unique("orders-"), unique("other-")
    first, second, bystander = (
        await clients.connect(),
        await clients.connect(),
        await clients.connect(),
    )
    await first.subscribe(channel)
    await second.subscribe(channel)
    await bystander.subscribe(elsewhere)
    before_ms = int(time.time() * 1000)

    response = await api.trigger(channel, "shipped", {"id": 1})
    assert response.json() == {}
    await api.trigger(channel, "shipped", '{"id": 2}')
    for client in (first, second):
        one = await client.expect_next("shipped", channel)
        two = await client.expect_next("shipped", channel)
        assert [one["data"], two["data"]] == ['{"id": 1}', '{"id": 2}']  # the data string as sent
        assert "user_id" not in one
        meta = one["parley"]
        assert meta["publisher"] == {"type": "server", "app_id": app.app.id}
        assert (meta["offset"], two["parley"]["offset"]) == (1, 2)
        assert isinstance(meta["epoch"], str) and meta["epoch"] == two["parley"]["epoch"]
        assert before_ms - 1000 <= meta["ts"] <= int(time.time() * 1000) + 1000
        assert re.fullmatch(r"[0-9a-f]{32}", meta["id"]) and meta["id"] != two["parley"]["id"]
    assert first.seen[-1]["parley"] == second.seen[-1]["parley"]
    await bystander.expect_quiet("an event of another channel")

    # socket_id excludes that connection; info counts the subscribers
    response = await api.trigger(
        channel, "shipped", "3", socket_id=first.socket_id, info="subscription_count"
    )
    assert response.json() == {"channels": {channel: {"subscription_count": 2}}}
    assert (await second.expect_next("shipped", channel))["parley"]["offset"] == 3
    await first.expect_quiet("the event excluded by socket_id")


async def test_one_api_event_to_several_channels_and_a_batch(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    a, b = unique("a-"), unique("b-")
    client = await clients.connect()
    await client.subscribe(a)
    await client.subscribe(b)
    await api.trigger([a, b], "ping", "x")
    got = [await client.expect_next("ping") for _ in range(2)]
    assert sorted(f["channel"] for f in got) == sorted([a, b])
    assert [f["parley"]["offset"] for f in got] == [1, 1]  # offsets count per channel
    batch = {
        "batch": [
            {"channel": a, "name": "one", "data": "1"},
            {"channel": b, "name": "two", "data": "2"},
        ]
    }
    response = await api.signed("POST", f"/apps/{app.app.id}/batch_events", body=batch)
    assert (response.status, response.json()) == (200, {})
    one, two = await client.expect_next("one", a), await client.expect_next("two", b)
    assert (one["data"], one["parley"]["offset"]) == ("1", 2)
    assert (two["data"], two["parley"]["offset"]) == ("2", 2)


async def test_client_events_carry_the_senders_identity_and_are_not_echoed(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    key, secret = app.app.key, app.app.secret
    chat = unique("private-chat-")
    alice, bob = await clients.connect(), await clients.connect()
    signed = await alice.signin("alice", key=key, secret=secret)
    assert json.loads(signed["data"]["user_data"]) == {"id": "alice"}
    await alice.subscribe(chat, key=key, secret=secret)
    await bob.subscribe(chat, key=key, secret=secret)

    # what a client says about its sender is ignored
    forged = {"type": "user", "id": "mallory"}
    await alice.send_event(
        "client-msg", {"text": "hi"}, chat, user_id="mallory", parley={"publisher": forged}
    )
    got = await bob.expect_next("client-msg", chat)
    assert got["data"] == {"text": "hi"}  # forwarded as received: an object stays an object
    assert got["user_id"] == "alice"
    assert got["parley"]["publisher"] == {"type": "user", "id": "alice"}
    assert got["parley"]["offset"] == 1
    await alice.expect_quiet("her own client event")

    # an unidentified sender is named by its connection, with no user_id
    await bob.send_event("client-msg", "plain", chat, user_id="alice")
    got = await alice.expect_next("client-msg", chat)
    assert "user_id" not in got and got["data"] == "plain"
    assert got["parley"]["publisher"] == {"type": "connection", "socket_id": bob.socket_id}
    await bob.expect_quiet("his own client event")

    # a presence member is identified by its user_id
    room = unique("presence-room-")
    await alice.subscribe(room, key=key, secret=secret, channel_data=presence_data("alice"))
    await bob.subscribe(room, key=key, secret=secret, channel_data=presence_data("bob"))
    await alice.expect_next("pusher_internal:member_added", room)
    await bob.send_event("client-typing", {}, room)
    got = await alice.expect_next("client-typing", room)
    assert got["user_id"] == "bob" and got["parley"]["publisher"] == {"type": "user", "id": "bob"}

    # public channels take no client events; the connection stays open
    public = unique("public-")
    await bob.subscribe(public)
    await bob.send_event("client-msg", "x", public)
    await bob.expect_error(None, contains="only private and presence channels")
    await bob.ping()


async def test_resume_replays_the_gap_then_answers_resumed(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    channel = unique("feed-")
    first = await clients.connect()
    await first.subscribe(channel)
    await api.trigger(channel, "e", "0")
    seen = (await first.expect_next("e", channel))["parley"]
    await first.close()
    for i in range(1, 6):
        await api.trigger(channel, "e", str(i))

    again = await clients.connect()
    await again.subscribe(channel)
    since = {"offset": seen["offset"], "epoch": seen["epoch"]}
    await again.send_event("parley:resume", {"channel": channel, "since": since})
    replay = [await again.expect_next("e", channel) for _ in range(5)]
    assert [f["data"] for f in replay] == ["1", "2", "3", "4", "5"]
    assert [f["parley"]["offset"] for f in replay] == [2, 3, 4, 5, 6]
    assert {f["parley"]["epoch"] for f in replay} == {seen["epoch"]}
    resumed = await again.expect_next("parley:resumed", channel)
    assert resumed["data"] == {"channel": channel, "recovered": True}
    await api.trigger(channel, "e", "6")
    live = await again.expect_next("e", channel)
    assert (live["data"], live["parley"]["offset"]) == ("6", 7)

    # nothing missed: an empty replay, still recovered
    since = {"offset": 7, "epoch": seen["epoch"]}
    await again.send_event("parley:resume", {"channel": channel, "since": since})
    resumed = await again.expect_next("parley:resumed", channel)
    assert resumed["data"] == {"channel": channel, "recovered": True}

    # another epoch cannot be resumed: reload the channel's state
    stale = {"offset": 1, "epoch": "not-the-epoch"}
    await again.send_event("parley:resume", {"channel": channel, "since": stale})
    resumed = await again.expect_next("parley:resumed", channel)
    assert resumed["data"] == {"channel": channel, "recovered": False}

    # only a channel the connection is subscribed to
    other = unique("feed-")
    await again.send_event("parley:resume", {"channel": other, "since": since})
    await again.expect_error(None, contains="needs a channel this connection is subscribed to")
