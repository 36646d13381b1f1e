"""Pusher webhooks from a real server to a local receiver: signed so that the official PyPI
`pusher` SDK's `validate_webhook` accepts them, exactly `Content-Type: application/json`; a
page reload within the hold sends no vacated/occupied pair; a receiver that is down, with the
server restarted meanwhile, gets every webhook once and in order afterwards; one that never
comes back ends in the dead letters (`GET /apps/{id}/webhooks/failed`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from pusher import Pusher

from parley.settings import AppConfig, Settings, WebhookConfig
from tests.support.inproc import app_settings, serving
from tests.support.keys import token
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.receiver import Receiver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


def hooked(tmp_path: Path, receiver: Receiver, **server: Any) -> Settings:
    settings = app_settings(tmp_path, store="sqlite", client_events=True, client_event_rate=0)
    app = dataclasses.replace(settings.apps[0], webhooks=(WebhookConfig(receiver.url),))
    return dataclasses.replace(settings, apps=(app,), **{"webhook_hold_s": 0.3, **server})


def sdk(app: AppConfig) -> Pusher:
    return Pusher(app_id=app.id, key=app.key, secret=app.secret)


async def test_webhooks_are_what_the_official_sdk_validates(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with serving(hooked(tmp_path, receiver)) as app:
        pool = AsyncClientPool(app.ws_url)
        try:
            alice = await pool.connect()
            channel_data = json.dumps({"user_id": "alice"})
            await alice.subscribe(
                "presence-room", key=app.app.key, secret=app.app.secret, channel_data=channel_data
            )
            await alice.send({"event": "client-hi", "channel": "presence-room", "data": {"n": 1}})
            events = await receiver.wait_for(3)
        finally:
            await pool.close_all()
        assert [e["name"] for e in events] == ["channel_occupied", "member_added", "client_event"]
        assert events[1] == {"name": "member_added", "channel": "presence-room", "user_id": "alice"}
        assert events[2] == {
            "name": "client_event",
            "channel": "presence-room",
            "event": "client-hi",
            "data": {"n": 1},
            "socket_id": alice.socket_id,
            "user_id": "alice",
        }
        client = sdk(app.app)
        for request in receiver.accepted:
            assert request["content_type"] == "application/json"
            valid = client.validate_webhook(request["key"], request["signature"], request["body"])
            assert valid is not None and len(valid["events"]) == 1
        forged = receiver.accepted[0]["body"].replace(b"presence-room", b"presence-ruin")
        assert (
            client.validate_webhook(app.app.key, receiver.accepted[0]["signature"], forged) is None
        )
        # after the hold, leaving sends member_removed and channel_vacated
        await receiver.wait_for(5)
        assert {e["name"] for e in receiver.events()[3:]} == {"member_removed", "channel_vacated"}


async def test_a_reload_within_the_hold_sends_no_vacated_occupied_pair(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with serving(hooked(tmp_path, receiver, webhook_hold_s=1.0)) as app:
        pool = AsyncClientPool(app.ws_url)
        try:
            first = await pool.connect()
            await first.subscribe("news")
            await receiver.wait_for(1)
            await first.close()  # the page reloads...
            second = await pool.connect()
            await second.subscribe("news")  # ...and is back within the hold
            await second.send({"event": "pusher:unsubscribe", "data": {"channel": "news"}})
            events = await receiver.wait_for(2, timeout=5)  # the last leave, after the hold
        finally:
            await pool.close_all()
        assert [e["name"] for e in events] == ["channel_occupied", "channel_vacated"]
        assert app.running.node.webhooks is not None
        assert app.running.node.webhooks.stats.suppressed == 1


async def test_a_receiver_down_across_a_restart_gets_every_webhook_once_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 503
    settings = hooked(tmp_path, receiver)
    async with serving(settings) as app:
        pool = AsyncClientPool(app.ws_url)
        try:
            sender = await pool.connect()
            await sender.subscribe("private-room", key=app.app.key, secret=app.app.secret)
            for n in range(10):
                await sender.send({"event": "client-n", "channel": "private-room", "data": str(n)})
            await sender.ping()
            async with asyncio.timeout(5):
                while receiver.refused == 0:
                    await asyncio.sleep(0.02)
        finally:
            await pool.close_all()
    receiver.status = 200
    async with serving(settings) as app:  # the same SQLite file: the queue survived
        events = await receiver.wait_for(12, timeout=15)
        await asyncio.sleep(0.5)  # nothing more may come: each webhook once
        events = receiver.events()
    client_events = [e["data"] for e in events if e["name"] == "client_event"]
    assert client_events == [str(n) for n in range(10)]
    names = [e["name"] for e in events if e["name"] != "client_event"]
    assert names == ["channel_occupied", "channel_vacated"]


async def test_a_receiver_that_never_comes_back_ends_in_the_dead_letters(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 500
    async with serving(hooked(tmp_path, receiver, webhook_retry_s=1.0)) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        pool = AsyncClientPool(app.ws_url)
        try:
            client = await pool.connect()
            await client.subscribe("news")
            async with asyncio.timeout(10):
                while True:
                    failed = await api.signed("GET", f"/apps/{app.app.id}/webhooks/failed")
                    assert failed.status == 200, failed.body
                    if failed.json()["failed"]:
                        break
                    await asyncio.sleep(0.1)
            (dead,) = failed.json()["failed"]
            assert (dead["url"], dead["channel"], dead["error"]) == (
                receiver.url,
                "news",
                "HTTP 500",
            )
            assert dead["events"] == [{"name": "channel_occupied", "channel": "news"}]
            assert dead["attempts"] >= 1 and receiver.refused >= 2
            unsigned = await api.request("GET", f"/apps/{app.app.id}/webhooks/failed")
            assert unsigned.status == 401
        finally:
            await pool.close_all()
            await api.close()


async def test_conversation_and_bot_events_reach_the_app_webhooks_that_ask_for_them(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = hooked(tmp_path, receiver)
    wanted = ("conversation_created", "conversation_requested", "conversation_accepted")
    filtered = WebhookConfig(receiver.url, (*wanted, "bot_created", "bot_message"))
    app_config = dataclasses.replace(settings.apps[0], webhooks=(filtered,))
    settings = dataclasses.replace(settings, apps=(app_config,))
    async with serving(settings) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            alice = {"Authorization": f"Bearer {token(app, 'alice')}"}
            body = json.dumps({"members": ["alice", "bob"]}).encode()
            made = await api.request(
                "POST", f"/apps/{app.app.id}/conversations", body=body, headers=alice
            )
            conversation = made.json()
            bob = {"Authorization": f"Bearer {token(app, 'bob')}"}
            accepted = await api.request(
                "POST", f"/apps/{app.app.id}/conversations/{conversation['id']}/accept", headers=bob
            )
            assert accepted.status == 200, accepted.body
            bot = await api.signed("POST", f"/apps/{app.app.id}/bots", body={"name": "echo"})
            events = await receiver.wait_for(4)
        finally:
            await api.close()
    by_name = {e["name"]: e for e in events}
    in_conversation = [e["name"] for e in events if e["channel"] == conversation["channel"]]
    assert in_conversation == list(wanted)  # in order on its channel; no occupancy: filtered
    assert sorted(e["name"] for e in events) == sorted([*wanted, "bot_created"])
    assert by_name["conversation_created"] == {
        "name": "conversation_created",
        "channel": conversation["channel"],
        "conversation_id": conversation["id"],
        "by": "alice",
    }
    assert by_name["conversation_requested"]["user_id"] == "bob"
    assert by_name["conversation_accepted"]["user_id"] == "alice"  # the requester, answered
    assert by_name["bot_created"]["bot_id"] == bot.json()["id"]
    client = sdk(app.app)
    for request in receiver.accepted:
        assert client.validate_webhook(request["key"], request["signature"], request["body"])


async def test_a_conversation_call_answers_once_its_webhooks_are_stored(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with serving(hooked(tmp_path, receiver)) as app:
        webhooks = app.running.node.webhooks
        assert webhooks is not None
        entered, gate = asyncio.Event(), asyncio.Event()
        real = webhooks.queue.enqueue

        async def slow(*args: Any, **kwargs: Any) -> int:
            entered.set()
            await gate.wait()
            return await real(*args, **kwargs)

        webhooks.queue.enqueue = slow  # type: ignore[method-assign]
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            body = {"members": ["ann", "ben"]}
            call = asyncio.create_task(
                api.signed("POST", f"/apps/{app.app.id}/conversations", body=body)
            )
            async with asyncio.timeout(5):
                await entered.wait()
            healthy = await api.request("GET", "/healthz")  # the server got this far meanwhile
            assert healthy.status == 200
            assert not call.done(), "answered before its webhook was stored"
            gate.set()
            assert (await call).status == 201
            (created,) = await receiver.wait_for(1)
            assert created["name"] == "conversation_created" and created["by"] is None
        finally:
            gate.set()
            await api.close()
