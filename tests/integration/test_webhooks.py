"""Pusher webhooks from a real server to a local receiver: signed so that the official PyPI
`pusher` SDK's `validate_webhook` accepts them, exactly `Content-Type: application/json`; a
page reload within the hold sends no vacated/occupied pair; a receiver that is down, with the
server restarted meanwhile, gets every webhook once and in order afterwards; one that never
comes back ends in the dead letters (`GET /apps/{id}/webhooks/failed`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pusher import Pusher

from parley.core import subscriptions
from parley.errors import StoreUnavailable
from parley.settings import AppConfig, Settings, WebhookConfig
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.keys import token
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.pusher_raw import channel_auth
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


class GatedQueue:
    """The webhook queue's writes held at a gate (`entered` once one waits there); or
    refused while `refusing`."""

    def __init__(self, webhooks: Any) -> None:
        self.entered, self.gate = asyncio.Event(), asyncio.Event()
        self.refusing = False
        self.real = webhooks.queue.enqueue
        webhooks.queue.enqueue = self.enqueue

    async def enqueue(self, *args: Any, **kwargs: Any) -> int:
        self.entered.set()
        if self.refusing:
            raise StoreUnavailable("the test's store is down")
        await self.gate.wait()
        result: int = await self.real(*args, **kwargs)
        return result


@asynccontextmanager
async def gated(
    settings: Settings,
) -> AsyncIterator[tuple[InProcessApp, GatedQueue, AsyncClientPool, AsyncApi]]:
    """The app serving `settings` with its webhook queue gated, a client pool and an API
    client."""
    async with serving(settings) as app:
        assert app.running.node.webhooks is not None
        queue = GatedQueue(app.running.node.webhooks)
        pool = AsyncClientPool(app.ws_url)
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            yield app, queue, pool, api
        finally:
            queue.gate.set()
            await pool.close_all()
            await api.close()


async def test_a_subscription_is_answered_once_its_webhooks_are_stored(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The joiner's output (the answer, then what was published meanwhile, in order) waits
    for the channel_occupied and member_added webhooks to be in the store."""
    async with gated(hooked(tmp_path, receiver)) as (app, queue, pool, api):
        ann = await pool.connect()
        data = json.dumps({"user_id": "ann"})
        auth = channel_auth(app.app.key, app.app.secret, ann.socket_id, "presence-r", data)
        await ann.send(
            {
                "event": "pusher:subscribe",
                "data": {"channel": "presence-r", "auth": auth, "channel_data": data},
            }
        )
        async with asyncio.timeout(5):
            await queue.entered.wait()
        said = await api.trigger("presence-r", "said", {"n": 1})  # while held
        assert said.status == 200
        with pytest.raises(AssertionError, match="no frame within"):
            await ann.recv(timeout=0.5)  # (a frame sent before the store would be here)
        queue.gate.set()
        answer = await ann.expect("pusher_internal:subscription_succeeded", "presence-r")
        assert json.loads(answer["data"])["presence"]["ids"] == ["ann"]
        await ann.expect_next("said", "presence-r")  # after the answer, not lost
        events = await receiver.wait_for(2)
        assert [e["name"] for e in events] == ["channel_occupied", "member_added"]
        # a channel already occupied makes no webhook: answered at once
        await (await pool.connect()).subscribe(
            "presence-r", key=app.app.key, secret=app.app.secret, channel_data=data
        )


async def test_a_subscription_whose_webhooks_cannot_be_stored_is_closed_with_4100(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriptions, "WEBHOOK_STORE_WAIT_S", 0.5)
    async with gated(hooked(tmp_path, receiver)) as (_, queue, pool, _api):
        queue.refusing = True
        ann = await pool.connect()
        await ann.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
        code, _ = await ann.expect_close()
        assert code == 4100
        assert not [f for f in ann.seen if f.get("channel") == "news"], ann.seen
        queue.refusing = False  # the store is back: the webhook, kept, is stored and sent
        queue.gate.set()
        events = await receiver.wait_for(1)
        assert events[0] == {"name": "channel_occupied", "channel": "news"}


async def test_a_corked_subscriber_sent_too_much_meanwhile_is_closed_as_a_slow_reader(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = hooked(tmp_path, receiver, max_outbound_bytes=64 * 1024)
    async with gated(settings) as (_, queue, pool, api):
        ann = await pool.connect()
        await ann.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
        async with asyncio.timeout(5):
            await queue.entered.wait()
        for n in range(8):
            answer = await api.trigger("news", "said", {"n": n, "pad": "x" * 9000})
            assert answer.status == 200
        code, _ = await ann.expect_close()
        assert code == 4100
