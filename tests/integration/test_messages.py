"""What chat users expect of a message, end to end: edits and deletes by the sender only,
reactions, delivery and read receipts, each an event that names the message's offset, stamped
and stored like any other; a late joiner's history shows the current text, the reactions,
and the welcome who has read up to where. Each bad act is refused to its sender alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from parley.settings import HistoryRule
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.keys import token
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


async def member(clients: AsyncClientPool, app: InProcessApp, user: str, channel: str) -> Any:
    client = await clients.connect(f"{app.ws_url}&token={token(app, user)}")
    await client.subscribe(channel, key=app.app.key, secret=app.app.secret)
    welcome = await client.expect_next("parley:welcome", channel)
    return client, welcome["data"]


async def acted(
    sender: AsyncClient, other: AsyncClient, channel: str, event: str, data: Any
) -> Any:
    """`sender` sends an act; `other` receives it, stamped; its frame."""
    await sender.send_event(event, data, channel)
    frame = await other.expect(event, channel)
    assert frame["data"] == data
    return frame


async def refused(client: AsyncClient, channel: str, event: str, data: Any, reason: str) -> None:
    await client.send_event(event, data, channel)
    await client.expect_error(None, reason)


async def test_edits_deletes_reactions_and_receipts_are_what_a_late_joiner_sees(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    made = await api.signed(
        "POST", f"/apps/{app.app.id}/conversations", body={"members": ["ann", "ben", "cat"]}
    )
    channel = made.json()["channel"]
    ann, _ = await member(clients, app, "ann", channel)
    ben, _ = await member(clients, app, "ben", channel)
    await ann.send_event("client-msg", {"text": "helo"}, channel)  # offset 1
    await ben.expect("client-msg", channel)
    await ben.send_event("client-msg", {"text": "hi ann"}, channel)  # offset 2
    await ann.expect("client-msg", channel)

    frame = await acted(
        ann, ben, channel, "client-parley-edit", {"ref": 1, "data": {"text": "hello"}}
    )
    assert frame["user_id"] == "ann" and frame["parley"]["offset"] == 3
    await refused(ben, channel, "client-parley-edit", {"ref": 1, "data": "x"}, "only the sender")
    await refused(ann, channel, "client-parley-delete", {"ref": 2}, "only the sender")
    await acted(ben, ann, channel, "client-parley-reaction", {"ref": 1, "reaction": "+1"})  # 4
    await acted(ann, ben, channel, "client-parley-reaction", {"ref": 1, "reaction": "+1"})  # 5
    await acted(ann, ben, channel, "client-parley-reaction", {"ref": 1, "reaction": "heart"})  # 6
    remove = {"ref": 1, "reaction": "heart", "remove": True}
    await acted(ann, ben, channel, "client-parley-reaction", remove)  # 7
    await acted(ben, ann, channel, "client-parley-delete", {"ref": 2})  # 8
    await refused(
        ann, channel, "client-parley-reaction", {"ref": 2, "reaction": "x"}, "was deleted"
    )
    await refused(ann, channel, "client-parley-edit", {"ref": 3, "data": "y"}, "not a message")
    await acted(ben, ann, channel, "client-parley-receipt", {"type": "delivered", "offset": 8})  # 9
    await acted(ben, ann, channel, "client-parley-receipt", {"type": "read", "offset": 7})  # 10

    # bad acts: each refused to its sender, naming the problem; nobody else hears them
    await refused(ann, channel, "client-parley-edit", {"ref": 0, "data": 1}, "'ref' must be")
    await refused(ann, channel, "client-parley-delete", {"ref": 99}, "past the conversation's last")
    await refused(ann, channel, "client-parley-edit", {"ref": 1}, "'data' (the new content)")
    await refused(ann, channel, "client-parley-reaction", {"ref": 1, "reaction": ""}, "'reaction'")
    await refused(ann, channel, "client-parley-receipt", {"type": "seen", "offset": 1}, "'type'")
    await refused(ann, channel, "client-parley-shout", {"ref": 1}, "unknown")
    await refused(ann, channel, "client-parley-edit", "not json", "must be a JSON object")
    await ben.expect_quiet("no refused act reached ben")
    conversations = app.running.node.conversations
    assert conversations is not None
    await conversations.settled()  # the acts' effects are recorded

    cat, welcome = await member(clients, app, "cat", channel)
    assert welcome["last_offset"] == 10
    assert welcome["receipts"] == {"ben": {"delivered": 8, "read": 7}}
    await cat.send_event("parley:history", {"channel": channel, "limit": 10})
    page = (await cat.expect("parley:history_page", channel))["data"]
    first, second = page["events"][0], page["events"][1]
    assert first["data"] == {"text": "hello"} and first["parley"]["edited"] == {"offset": 3}
    assert first["parley"]["reactions"] == {"+1": ["ben", "ann"]}
    assert second["data"] is None and second["parley"]["deleted"] == {"offset": 8}
    assert [e["event"] for e in page["events"][2:]] == [
        "client-parley-edit",
        *["client-parley-reaction"] * 4,
        "client-parley-delete",
        "client-parley-receipt",
        "client-parley-receipt",
    ]
    over_http = await api.signed("GET", f"/apps/{app.app.id}/channels/{channel}/history")
    assert over_http.json()["events"][:2] == page["events"][:2]
    listed = await api.signed("GET", f"/apps/{app.app.id}/conversations", params={"user_id": "ben"})
    assert listed.json()["conversations"][0]["read_offset"] == 7
    shown = await api.signed("GET", f"/apps/{app.app.id}/conversations/{made.json()['id']}")
    assert shown.json()["receipts"] == {"ben": {"delivered": 8, "read": 7}}


async def test_a_rule_turning_history_off_leaves_conversations_their_history(
    tmp_path: Path,
) -> None:
    """`[[history]] pattern = "private-*", enabled = false` keeps other private channels out
    of history; a conversation's channel keeps its own, so its acts still find their message."""
    base = app_settings(tmp_path, client_events=True, client_event_rate=0)
    settings = dataclasses.replace(base, history=(HistoryRule("private-*", enabled=False),))
    async with serving(settings) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        clients = AsyncClientPool(app.ws_url)
        try:
            made = await api.signed(
                "POST", f"/apps/{app.app.id}/conversations", body={"members": ["ann", "ben", "cat"]}
            )
            channel = made.json()["channel"]
            ann, _ = await member(clients, app, "ann", channel)
            ben, _ = await member(clients, app, "ben", channel)
            await ann.send_event("client-msg", {"text": "helo"}, channel)
            assert (await ben.expect("client-msg", channel))["parley"]["offset"] == 1
            await acted(ann, ben, channel, "client-parley-edit", {"ref": 1, "data": "hello"})
            other = await api.trigger("private-elsewhere", "said", {"n": 1})
            assert other.status == 200
            kept = await api.signed("GET", f"/apps/{app.app.id}/channels/{channel}/history")
            assert kept.json()["events"][0]["data"] == "hello"
            elsewhere = f"/apps/{app.app.id}/channels/private-elsewhere/history"
            refused = await api.signed("GET", elsewhere)
            assert refused.status == 404 and "keeps no history" in refused.json()["error"]
        finally:
            await clients.close_all()
            await api.close()
