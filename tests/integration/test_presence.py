"""Presence over real sockets when a client does not wait for its subscribe's answer: what it
sends right after (a client event, an unsubscribe, a subscribe again) is handled after the
join, with the memory presence store and with one that suspends on every call (as a store
across the network does)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import parley.app
from parley.backends.presence import PresenceStore
from parley.settings import Settings
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.presence import GatedPresenceStore
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool
from tests.support.pusher_raw import channel_auth, presence_data, unique

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "suspending"])
async def app(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcessApp]:
    made: list[GatedPresenceStore] = []
    if request.param == "suspending":

        def suspending(settings: Settings) -> PresenceStore:
            made.append(GatedPresenceStore(open_=True))
            return made[-1]

        monkeypatch.setattr(parley.app, "make_presence", suspending)
    settings = app_settings(tmp_path, client_events=True, client_event_rate=0)
    async with serving(settings) as running:
        yield running
    assert all("add" in store.calls for store in made)  # the app did use it


def join_message(app: InProcessApp, client: AsyncClient, room: str, user: str) -> dict[str, Any]:
    channel_data = presence_data(user, {"name": user.title()})
    auth = channel_auth(app.app.key, app.app.secret, client.socket_id, room, channel_data)
    return {
        "event": "pusher:subscribe",
        "data": {"channel": room, "auth": auth, "channel_data": channel_data},
    }


async def test_a_client_event_sent_right_after_the_subscribe_follows_the_join(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    room = unique("presence-room-")
    alice, bob = await clients.connect(), await clients.connect()
    await alice.subscribe(
        room, key=app.app.key, secret=app.app.secret, channel_data=presence_data("alice")
    )
    await bob.send(join_message(app, bob, room, "bob"))
    await bob.send_event("client-hello", {"text": "hi"}, room)
    await bob.send_event("pusher:ping", {})
    joined = await bob.expect_next("pusher_internal:subscription_succeeded", room)
    assert json.loads(joined["data"])["presence"]["ids"] == ["alice", "bob"]
    await bob.expect_next("pusher:pong")  # nothing before: no error, no echo
    added = await alice.expect_next("pusher_internal:member_added", room)
    assert json.loads(added["data"]) == {"user_id": "bob", "user_info": {"name": "Bob"}}
    hello = await alice.expect_next("client-hello", room)
    assert hello["data"] == {"text": "hi"}
    await alice.expect_quiet()


async def test_unsubscribe_and_subscribe_again_right_after_the_subscribe_keep_their_order(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    room = unique("presence-room-")
    alice, bob = await clients.connect(), await clients.connect()
    await alice.subscribe(
        room, key=app.app.key, secret=app.app.secret, channel_data=presence_data("alice")
    )
    join = join_message(app, bob, room, "bob")
    await bob.send(join)
    await bob.send_event("pusher:unsubscribe", {"channel": room})
    await bob.send(join)
    await bob.send_event("pusher:ping", {})
    for _ in range(2):
        await bob.expect_next("pusher_internal:subscription_succeeded", room)
    await bob.expect_next("pusher:pong")
    assert [(await alice.recv())["event"] for _ in range(3)] == [
        "pusher_internal:member_added",
        "pusher_internal:member_removed",
        "pusher_internal:member_added",
    ]
    await alice.expect_quiet()
    users = await api.signed("GET", f"/apps/{app.app.id}/channels/{room}/users")
    assert users.json() == {"users": [{"id": "alice"}, {"id": "bob"}]}
    await bob.close()
    await alice.expect_next("pusher_internal:member_removed", room)
