"""Connecting and subscribing: connection_established, wrong keys, public, private (signed
channel auth) and presence channels with member_added/member_removed."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.inproc import InProcessApp
from tests.support.pusher_async import AsyncClientPool
from tests.support.pusher_raw import channel_auth, presence_data, unique

pytestmark = pytest.mark.integration


async def test_connect_gets_connection_established_with_a_socket_id(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    first, second = await clients.connect(), await clients.connect()
    assert re.fullmatch(r"\d+\.\d+", first.socket_id), first.established
    assert first.established == {"socket_id": first.socket_id, "activity_timeout": 120}
    assert second.socket_id != first.socket_id
    await first.ping()


async def test_an_unknown_app_key_gets_4001_and_is_closed(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    url = f"ws://{app.host}:{app.port}/app/not-the-key?protocol=7"
    client = await clients.connect(url, established=False)
    await client.expect_error(4001)
    assert (await client.expect_close())[0] == 4001


async def test_public_and_private_subscriptions_and_a_bad_signature(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    key, secret = app.app.key, app.app.secret
    client = await clients.connect()
    public = unique("news-")
    assert (await client.subscribe(public))["data"] == "{}"
    private = unique("private-team-")
    assert (await client.subscribe(private, key=key, secret=secret))["data"] == "{}"

    refused = unique("private-vault-")
    wrong = channel_auth(key, "not-the-secret", client.socket_id, refused)
    await client.send_event("pusher:subscribe", {"channel": refused, "auth": wrong})
    error = await client.expect_error(
        None,
        contains=f"Invalid signature: Expected HMAC SHA256 hex digest of {client.socket_id}:{refused}",
    )
    assert error["code"] is None
    # a signature made for another connection is refused as well
    other = await clients.connect()
    stolen = channel_auth(key, secret, other.socket_id, refused)
    await client.send_event("pusher:subscribe", {"channel": refused, "auth": stolen})
    await client.expect_error(None, contains="Invalid signature")
    # the connection stays open, and a later good signature subscribes
    assert (await client.subscribe(refused, key=key, secret=secret))["data"] == "{}"


async def test_presence_members_join_and_leave(app: InProcessApp, clients: AsyncClientPool) -> None:
    key, secret = app.app.key, app.app.secret
    room = unique("presence-room-")
    alice, bob, alice_again = (
        await clients.connect(),
        await clients.connect(),
        await clients.connect(),
    )
    joined = await alice.subscribe(
        room, key=key, secret=secret, channel_data=presence_data("alice", {"name": "Alice"})
    )
    assert json.loads(joined["data"]) == {
        "presence": {"ids": ["alice"], "hash": {"alice": {"name": "Alice"}}, "count": 1}
    }

    joined = await bob.subscribe(
        room, key=key, secret=secret, channel_data=presence_data("bob", {"name": "Bob"})
    )
    assert json.loads(joined["data"])["presence"] == {
        "ids": ["alice", "bob"],
        "hash": {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}},
        "count": 2,
    }
    added = await alice.expect_next("pusher_internal:member_added", room)
    assert json.loads(added["data"]) == {"user_id": "bob", "user_info": {"name": "Bob"}}
    await bob.expect_quiet("a member is not told of its own arrival")

    # the same user on a second connection is no new member
    joined = await alice_again.subscribe(
        room, key=key, secret=secret, channel_data=presence_data("alice", {"name": "Alice"})
    )
    assert json.loads(joined["data"])["presence"]["count"] == 2
    await alice.expect_quiet("alice's second connection adds no member")
    await bob.expect_quiet("alice's second connection adds no member")

    await bob.close()
    removed = await alice.expect_next("pusher_internal:member_removed", room)
    assert json.loads(removed["data"]) == {"user_id": "bob"}
    # alice leaves only when her last connection does
    await alice_again.close()
    await alice.expect_quiet("alice is still a member through her first connection")
