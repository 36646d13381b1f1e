"""JSON nested a few hundred levels deep, wherever a client may send it: in a frame, in the
JSON strings inside a frame, in an HTTP API body and in the built-in auth endpoints' bodies.

Each is refused as bad input (a `pusher:error` naming the depth, the connection kept; a 400
naming it), never with 1011 or 500: the value never reaches code that recurses (orjson's
encoder stops at 254 levels, Python's repr near 1,000). The limit is 128 levels
(protocol/frames.MAX_JSON_DEPTH); one level less is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from parley.http_api.builtin import issue_token
from parley.settings import AppConfig
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.pusher_raw import channel_auth, unique, user_auth

pytestmark = pytest.mark.integration

TOO_DEEP = "nested deeper than 128 levels"
DEPTHS = [300, 1000]  # past orjson's encoder; near Python's repr limit


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def embed(value: Any, depth: int) -> str:
    """`value` as JSON, with the string "DEEP" in it replaced by arrays `depth` levels deep."""
    return json.dumps(value, separators=(",", ":")).replace('"DEEP"', nested(depth))


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_nested_client_event_is_refused_and_the_connection_kept(
    app: InProcessApp, clients: AsyncClientPool, depth: int
) -> None:
    channel = unique("private-")
    sender, receiver = await clients.connect(), await clients.connect()
    for client in (sender, receiver):
        await client.subscribe(channel, key=app.app.key, secret=app.app.secret)
    await sender.send(embed({"event": "client-deep", "channel": channel, "data": "DEEP"}, depth))
    await sender.expect_error(None, TOO_DEEP)
    await sender.ping()  # the connection was kept
    # one level under the limit (the frame's own object is the first) goes through
    await sender.send(embed({"event": "client-deep", "channel": channel, "data": "DEEP"}, 127))
    got = await receiver.expect("client-deep", channel)
    assert json.dumps(got["data"], separators=(",", ":")) == nested(127)


@pytest.mark.parametrize("depth", DEPTHS)
async def test_nested_json_inside_a_frame_is_refused_and_the_connection_kept(
    app: InProcessApp, clients: AsyncClientPool, depth: int
) -> None:
    client = await clients.connect()
    # the data of a pusher:* event given as a JSON string
    await client.send_event("pusher:subscribe", embed({"channel": "DEEP"}, depth))
    await client.expect_error(None, TOO_DEEP)
    # a value in an error message (the channel of an unsubscribe)
    await client.send(embed({"event": "pusher:unsubscribe", "data": {"channel": "DEEP"}}, depth))
    await client.expect_error(None, TOO_DEEP)
    # presence channel_data: a member's user_info
    room = unique("presence-")
    channel_data = embed({"user_id": "u1", "user_info": "DEEP"}, depth)
    auth = channel_auth(app.app.key, app.app.secret, client.socket_id, room, channel_data)
    await client.send_event(
        "pusher:subscribe", {"channel": room, "auth": auth, "channel_data": channel_data}
    )
    await client.expect_error(None, TOO_DEEP)
    await client.ping()  # the connection was kept


async def test_a_signin_with_nested_user_info_is_refused_with_4009(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    client = await clients.connect()
    user_data = embed({"id": "u2", "user_info": "DEEP"}, 300)
    auth = user_auth(app.app.key, app.app.secret, client.socket_id, user_data)
    await client.send_event("pusher:signin", {"auth": auth, "user_data": user_data})
    await client.expect_error(4009, TOO_DEEP)
    assert (await client.expect_close())[0] == 4009  # as every refused signin


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_nested_http_api_body_is_a_400_naming_the_depth(
    app: InProcessApp, api: AsyncApi, depth: int
) -> None:
    body = embed({"name": "e", "channel": "c", "data": "x", "info": "DEEP"}, depth)
    for path in ("events", "batch_events"):
        response = await api.signed("POST", f"/apps/{app.app.id}/{path}", body=body.encode())
        assert response.status == 400, response.body
        assert TOO_DEEP in response.json()["error"]


@pytest.fixture
async def builtin_app(tmp_path: Path) -> AsyncIterator[InProcessApp]:
    """An app with the built-in authorizer (and a secret long enough for HS256 tokens)."""
    settings = dataclasses.replace(
        app_settings(tmp_path),
        apps=(AppConfig(id="4243", key="builtin-key", secret="s" * 32, auth="builtin"),),
    )
    async with serving(settings) as running:
        yield running


@pytest.mark.parametrize("depth", DEPTHS)
async def test_nested_bodies_of_the_built_in_auth_endpoints_are_a_400(
    builtin_app: InProcessApp, depth: int
) -> None:
    app = builtin_app.app
    api = AsyncApi(builtin_app.http_url, app.id, app.key, app.secret)
    token, _ = issue_token(app, "alice", None, time.time())
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        for path, body in (
            ("auth/token", embed({"username": "DEEP", "password": "p"}, depth)),
            ("pusher/auth", embed({"socket_id": "1.2", "channel_name": "DEEP"}, depth)),
            ("pusher/user-auth", embed({"socket_id": "DEEP"}, depth)),
            ("grants", embed({"subject": "a", "resource": "b", "operations": "DEEP"}, depth)),
        ):
            response = await api.request(
                "POST", f"/apps/{app.id}/{path}", body=body.encode(), headers=bearer
            )
            assert response.status == 400, (path, response.status, response.body)
            assert TOO_DEEP in response.json()["error"], (path, response.body)
    finally:
        await api.close()
