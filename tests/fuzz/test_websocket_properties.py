"""Generated frames sent over a real WebSocket to the app in this process, so that what the
protocol machine accepts goes on through the session and the node (subscriptions, presence,
sign-in, client events, history, resume, refresh) and what it refuses comes back as a frame.
Every frame the server sends is JSON with an event, every pusher:error is documented, the
connection is closed only with a documented code (never 1011, an escaped exception), and while
it is open it still answers a ping."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from parley.auth.signatures import channel_auth_string, make_token, user_auth_string
from tests.support.fuzzing import (
    APP_USER,
    FRAME_CLOSE_CODES,
    FRAME_ERROR_CODES,
    cases,
    counted,
    dump,
    frame_texts,
)
from tests.support.inproc import InProcessApp
from tests.support.pusher_async import AsyncClient
from tests.support.server import TIMEOUT

pytestmark = pytest.mark.fuzz

CHANNELS = ("news", "cache-news", "private-a", "presence-a", "private-encrypted-a")
STATES = ("open", "signed_in", "subscribed")


async def into(client: AsyncClient, state: str, key: str, secret: str) -> None:
    """Drive a fresh connection into `state` with valid frames, each answered as it must be."""
    sid = client.socket_id
    if state in ("signed_in", "subscribed"):
        user_data = dump({"id": APP_USER, "user_info": {"n": 1}})
        auth = make_token(key, secret, user_auth_string(sid, user_data))
        await client.send_event("pusher:signin", {"user_data": user_data, "auth": auth})
        await client.expect("pusher:signin_success")
    if state == "subscribed":
        for channel in CHANNELS:
            data: dict[str, Any] = {"channel": channel}
            if channel.startswith(("private-", "presence-")):
                data["auth"] = make_token(key, secret, channel_auth_string(sid, channel))
            await client.send_event("pusher:subscribe", data)
            await client.expect("pusher_internal:subscription_succeeded", channel)


def check_frame(raw: str | bytes) -> dict[str, Any]:
    frame = json.loads(raw)
    assert isinstance(frame, dict) and isinstance(frame.get("event"), str), raw
    if frame["event"] == "pusher:error":
        data = frame["data"]
        assert isinstance(data, dict) and data.get("code") in FRAME_ERROR_CODES, raw
        assert isinstance(data.get("message"), str) and data["message"], raw
    return frame


@settings(
    max_examples=cases(400),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(state=st.sampled_from(STATES), data=st.data())
async def test_frames_through_the_live_server_get_documented_answers(
    app: InProcessApp, state: str, data: Any
) -> None:
    counted("websocket: frames through the app")
    await frames_through(app, state, data)


@pytest.mark.postgres
@settings(
    max_examples=cases(200),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(state=st.sampled_from(STATES), data=st.data())
async def test_frames_through_the_live_server_on_postgresql(
    pg_app: InProcessApp, state: str, data: Any
) -> None:
    counted("websocket: frames through the app on PostgreSQL")
    await frames_through(pg_app, state, data)


async def frames_through(app: InProcessApp, state: str, data: Any) -> None:
    """A fresh connection in `state`, generated frames, then a ping: every frame back is
    documented, and the answer is a pong or a documented close."""
    key, secret = app.app.key, app.app.secret
    client = await AsyncClient.connect(app.ws_url)
    try:
        await into(client, state, key, secret)
        strategy = frame_texts(key, secret, client.socket_id, CHANNELS)
        texts = data.draw(st.lists(strategy, min_size=1, max_size=3), label="frames")
        for text in texts:
            try:
                await client.ws.send(text.decode())
            except UnicodeDecodeError:
                await client.ws.send(text)  # not UTF-8: a binary frame, refused
        await client.send_event("pusher:ping", {})
        try:
            while True:
                async with asyncio.timeout(TIMEOUT):
                    raw = await client.ws.recv()
                if check_frame(raw)["event"] == "pusher:pong":
                    break
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            assert code in FRAME_CLOSE_CODES, f"closed with {code}: {exc}"
    finally:
        await client.ws.close()


@pytest.mark.postgres
async def test_a_client_event_named_with_nul_is_refused_and_drops_nothing_else(
    pg_app: InProcessApp,
) -> None:
    """Found by fuzzing: PostgreSQL refused the name when storing it, and with it the whole
    batch of events being stored, other clients' too (never delivered)."""
    key, secret = pg_app.app.key, pg_app.app.secret
    sender = await AsyncClient.connect(pg_app.ws_url)
    reader = await AsyncClient.connect(pg_app.ws_url)
    try:
        for client in (sender, reader):
            await into(client, "subscribed", key, secret)
        await sender.send_event("client-\x00", {"n": 1}, channel="private-a")
        await sender.send_event("client-ok", {"n": 2}, channel="private-a")
        error = await sender.expect("pusher:error")
        assert "NUL" in error["data"]["message"], error
        delivered = await reader.expect("client-ok", "private-a")
        assert delivered["data"] == {"n": 2}
    finally:
        for client in (sender, reader):
            await client.ws.close()
