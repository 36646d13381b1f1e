"""Bots end to end: a bot hears a user's message by a webhook the official PyPI `pusher` SDK
validates (with the bot's id and webhook secret), replies stamped as the bot, never hears
itself, cannot act outside its conversations or without its secret; after the user went
offline and the server restarted, the bot finds its conversation reference and sends a
proactive message, which the user finds in history on return."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pusher import Pusher

from parley.errors import StoreUnavailable
from tests.support.inproc import APP_ID, app_settings, serving
from tests.support.keys import bearer, token
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.receiver import Receiver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


def as_bot(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def bot_says(api: AsyncApi, bot: dict[str, Any], secret: str, **body: Any) -> Any:
    return await api.request(
        "POST",
        f"/apps/{APP_ID}/bots/{bot['id']}/messages",
        body=json.dumps(body).encode(),
        headers=as_bot(secret),
    )


async def test_a_bot_hears_replies_and_speaks_again_after_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = app_settings(tmp_path, store="sqlite", client_events=True, client_event_rate=0)
    async with serving(settings) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        pool = AsyncClientPool(app.ws_url)
        try:
            made = await api.signed(
                "POST", f"/apps/{APP_ID}/bots", body={"name": "helper", "webhook_url": receiver.url}
            )
            assert made.status == 201, made.body
            bot = made.json()
            secret = bot.pop("secret")
            assert set(bot) == {
                "id",
                "name",
                "webhook_url",
                "created_at",
                "disabled",
                "webhook_secret",
            }
            again = await api.signed("POST", f"/apps/{APP_ID}/bots", body={"name": "helper"})
            assert again.status == 409
            for body, reason in (
                ({"name": "x", "webhook_url": "ftp://hooks.example/x"}, "http:// or https://"),
                ({"name": "x y"}, "'name' must be"),
                ({"name": "x", "secret": "mine"}, "Unknown fields: secret"),
            ):
                bad = await api.signed("POST", f"/apps/{APP_ID}/bots", body=body)
                assert bad.status == 400 and reason in bad.json()["error"], bad.body
            listed = (await api.signed("GET", f"/apps/{APP_ID}/bots")).json()["bots"]
            assert [b["id"] for b in listed] == [bot["id"]] and "secret" not in listed[0]

            talk = await api.request(
                "POST",
                f"/apps/{APP_ID}/conversations",
                body=json.dumps({"members": ["alice"], "bots": [bot["id"]]}).encode(),
                headers=bearer(app, "alice"),
            )
            assert talk.status == 201, talk.body
            conversation = talk.json()
            assert (conversation["kind"], conversation["state"]) == ("direct", "accepted")
            channel = conversation["channel"]
            alice = await pool.connect(f"{app.ws_url}&token={token(app, 'alice')}")
            await alice.subscribe(channel, key=app.app.key, secret=app.app.secret)
            welcome = await alice.expect_next("parley:welcome", channel)
            assert welcome["data"]["bots"] == [bot["id"]]
            await alice.send_event("client-msg", {"text": "hello bot"}, channel)

            (heard,) = await receiver.wait_for(1)
            request = receiver.accepted[0]
            assert request["key"] == bot["id"]
            as_the_bot = Pusher(app_id=APP_ID, key=bot["id"], secret=bot["webhook_secret"])
            assert as_the_bot.validate_webhook(
                request["key"], request["signature"], request["body"]
            )
            app_sdk = Pusher(app_id=APP_ID, key=app.app.key, secret=app.app.secret)
            assert (
                app_sdk.validate_webhook(request["key"], request["signature"], request["body"])
                is None
            )
            assert heard["name"] == "conversation_event"
            assert (heard["conversation_id"], heard["event"], heard["user_id"]) == (
                conversation["id"],
                "client-msg",
                "alice",
            )
            assert heard["publisher"] == {"type": "user", "id": "alice"}
            assert heard["data"] == {"text": "hello bot"} and heard["offset"] == 1

            reply = await bot_says(
                api, bot, secret, conversation_id=conversation["id"], data='{"text":"hi alice"}'
            )
            assert reply.status == 200, reply.body
            assert reply.json()["offset"] == 2
            seen = await alice.expect("message", channel)
            assert seen["parley"]["publisher"] == {"type": "bot", "id": bot["id"]}
            assert "user_id" not in seen  # a bot never speaks as a user
            await alice.send_event("client-msg", {"text": "thanks"}, channel)
            events = await receiver.wait_for(2)
            assert [e["publisher"]["type"] for e in events] == ["user", "user"]  # not its own

            # outside its conversations, without its secret, or with bad input: refused
            other = await api.signed(
                "POST", f"/apps/{APP_ID}/conversations", body={"members": ["bob", "carol"]}
            )
            outside = await bot_says(
                api, bot, secret, conversation_id=other.json()["id"], data="{}"
            )
            assert outside.status == 403 and "not a member" in outside.json()["error"]
            forged = await bot_says(
                api, bot, "guess", conversation_id=conversation["id"], data="{}"
            )
            assert forged.status == 403
            no_data = await bot_says(api, bot, secret, conversation_id=conversation["id"])
            assert no_data.status == 400 and "'data'" in no_data.json()["error"]
            as_user = await bot_says(
                api, bot, secret, conversation_id=conversation["id"], event="client-x", data="{}"
            )
            assert as_user.status == 400
        finally:
            await pool.close_all()
            await api.close()

    async with serving(settings) as app:  # alice is offline; the server was restarted
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        pool = AsyncClientPool(app.ws_url)
        try:
            found = await api.request(
                "GET", f"/apps/{APP_ID}/bots/{bot['id']}/references", headers=as_bot(secret)
            )
            (reference,) = found.json()["references"]
            assert reference["user_id"] == "alice"
            assert reference["conversation_id"] == conversation["id"]
            assert reference["last_offset"] == 3
            proactive = await bot_says(
                api,
                bot,
                secret,
                conversation_id=reference["conversation_id"],
                event="reminder",
                data='{"text":"your order shipped"}',
            )
            assert proactive.json()["offset"] == 4, proactive.body

            alice = await pool.connect(f"{app.ws_url}&token={token(app, 'alice')}")
            listed = await api.request(
                "GET", f"/apps/{APP_ID}/conversations", headers=bearer(app, "alice")
            )
            (mine,) = listed.json()["conversations"]
            assert mine["last_event"]["event"] == "reminder"
            assert mine["last_event"]["parley"]["publisher"] == {"type": "bot", "id": bot["id"]}
            await alice.subscribe(channel, key=app.app.key, secret=app.app.secret)
            assert (await alice.expect_next("parley:welcome", channel))["data"]["last_offset"] == 4
            await alice.send_event("parley:history", {"channel": channel, "after": 3})
            page = await alice.expect("parley:history_page", channel)
            (missed,) = page["data"]["events"]
            assert (missed["event"], missed["data"]) == (
                "reminder",
                '{"text":"your order shipped"}',
            )
        finally:
            await pool.close_all()
            await api.close()


async def test_a_bot_webhook_waits_out_a_store_that_is_unavailable(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = app_settings(tmp_path, client_events=True, client_event_rate=0)
    async with serving(settings) as app:
        bots = app.running.node.bots
        assert bots is not None
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        pool = AsyncClientPool(app.ws_url)
        real = bots.webhooks.enqueue
        refusals = 0

        async def flaky(*args: Any, **kwargs: Any) -> int:
            nonlocal refusals
            if refusals < 2:
                refusals += 1
                raise StoreUnavailable("the disk is full")
            return await real(*args, **kwargs)

        bots.webhooks.enqueue = flaky  # type: ignore[method-assign]
        try:
            bot = (
                await api.signed(
                    "POST",
                    f"/apps/{APP_ID}/bots",
                    body={"name": "patient", "webhook_url": receiver.url},
                )
            ).json()
            made = await api.request(
                "POST",
                f"/apps/{APP_ID}/conversations",
                body=json.dumps({"members": ["ann"], "bots": [bot["id"]]}).encode(),
                headers=bearer(app, "ann"),
            )
            channel = made.json()["channel"]
            ann = await pool.connect(f"{app.ws_url}&token={token(app, 'ann')}")
            await ann.subscribe(channel, key=app.app.key, secret=app.app.secret)
            await ann.send_event("client-msg", {"text": "still there?"}, channel)
            (heard,) = await receiver.wait_for(1, timeout=10)
            assert heard["data"] == {"text": "still there?"} and refusals == 2
        finally:
            await pool.close_all()
            await api.close()
