"""Conversations end to end over real sockets: a one-to-one request accepted or declined, the
same conversation whatever the order of its pair, only members on its channel (in a Pusher-mode
app whose channel signatures would let anyone in), `parley:welcome`, the requester's allowance
before acceptance, blocks, groups whose removed members lose their live subscription, and the
list with last event and unread counts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.inproc import InProcessApp
from tests.support.keys import bearer, token
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool, channel_auth

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


async def call(
    api: AsyncApi, app: InProcessApp, method: str, path: str, user: str | None, body: Any = None
) -> Any:
    """A conversation API call as `user` (Bearer), or signed by the app's backend (None)."""
    raw = b"" if body is None else json.dumps(body).encode()
    if user is None:
        return await api.signed(method, f"/apps/{app.app.id}{path}", body=raw)
    return await api.request(
        method, f"/apps/{app.app.id}{path}", body=raw, headers=bearer(app, user)
    )


async def online(clients: AsyncClientPool, app: InProcessApp, user: str) -> AsyncClient:
    """`user` connected with a token, on their notification channel."""
    client = await clients.connect(f"{app.ws_url}&token={token(app, user)}")
    await client.subscribe(f"private-user-{user}", key=app.app.key, secret=app.app.secret)
    return client


async def join(client: AsyncClient, app: InProcessApp, channel: str) -> dict[str, Any]:
    """Subscribe to a conversation channel; the `parley:welcome` that must follow at once."""
    await client.subscribe(channel, key=app.app.key, secret=app.app.secret)
    welcome = await client.expect_next("parley:welcome", channel)
    data = welcome["data"]
    return json.loads(data) if isinstance(data, str) else data


async def refused(client: AsyncClient, app: InProcessApp, channel: str, contains: str) -> None:
    auth = channel_auth(app.app.key, app.app.secret, client.socket_id, channel, None)
    await client.send({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}})
    await client.expect_error(None, contains)


def data_of(frame: dict[str, Any]) -> Any:
    data = frame["data"]
    return json.loads(data) if isinstance(data, str) else data


async def test_a_request_accepted_then_only_the_pair_talks_there(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    alice, bob, carol = [await online(clients, app, u) for u in ("alice", "bob", "carol")]
    created = await call(api, app, "POST", "/conversations", "alice", {"members": ["alice", "bob"]})
    assert created.status == 201, created.body
    conversation = created.json()
    assert (conversation["kind"], conversation["state"]) == ("direct", "pending")
    assert conversation["channel"] == f"private-conv-{conversation['id']}"
    request = await bob.expect("chat-request", "private-user-bob")
    assert data_of(request)["conversation_id"] == conversation["id"]
    assert data_of(request)["requester"] == "alice"
    again = await call(api, app, "POST", "/conversations", "alice", {"members": ["bob", "alice"]})
    assert (again.status, again.json()["id"]) == (200, conversation["id"])
    channel = conversation["channel"]

    welcome = await join(alice, app, channel)
    assert welcome == {
        "conversation_id": conversation["id"],
        "members": ["alice", "bob"],
        "bots": [],
        "state": "pending",
        "last_offset": 0,
        "epoch": welcome["epoch"],
        "receipts": {},
    }
    await join(bob, app, channel)
    await bob.send_event("client-msg", {"text": "early"}, channel)
    await bob.expect_error(None, "Accept the request")
    await alice.send_event("client-msg", {"text": "hi bob"}, channel)  # the one allowed
    first = await bob.expect("client-msg", channel)
    assert first["parley"]["publisher"] == {"type": "user", "id": "alice"}
    await alice.send_event("client-msg", {"text": "hello??"}, channel)
    await alice.expect_error(None, "waits for its request to be accepted")

    accepted = await call(api, app, "POST", f"/conversations/{conversation['id']}/accept", "bob")
    assert accepted.json()["state"] == "accepted", accepted.body
    note = await alice.expect("chat-accepted", "private-user-alice")
    assert data_of(note) == {
        "conversation_id": conversation["id"],
        "channel": channel,
        "by": "bob",
    }
    await bob.send_event("client-msg", {"text": "hi alice"}, channel)
    reply = await alice.expect("client-msg", channel)
    assert (reply["data"], reply["parley"]["publisher"]["id"]) == ({"text": "hi alice"}, "bob")
    await alice.send_event("client-msg", {"text": "now we talk"}, channel)
    assert (await bob.expect("client-msg", channel))["data"] == {"text": "now we talk"}

    # a third user: a valid channel signature does not let her in, nor write there
    await refused(carol, app, channel, "'carol' is not a member")
    await carol.send_event("client-msg", {"text": "let me in"}, channel)
    await carol.expect_error(None, "not subscribed")
    anonymous = await clients.connect()
    await refused(anonymous, app, channel, "needs a signed-in connection")
    outsider = await call(api, app, "GET", f"/conversations/{conversation['id']}", "carol")
    assert outsider.status == 404
    await alice.expect_quiet("carol's attempts reach nobody")


async def test_a_declined_request_and_blocks(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    bob, carol = await online(clients, app, "bob"), await online(clients, app, "carol")
    asked = (
        await call(api, app, "POST", "/conversations", "carol", {"members": ["carol", "bob"]})
    ).json()
    await bob.expect("chat-request", "private-user-bob")
    await join(carol, app, asked["channel"])
    declined = await call(api, app, "POST", f"/conversations/{asked['id']}/decline", "bob")
    assert declined.json()["state"] == "declined"
    revoked = await carol.expect("parley:revoked", asked["channel"])  # at once, then the news
    assert "declined" in data_of(revoked)["reason"]
    heard = await carol.expect("chat-declined", "private-user-carol")
    assert data_of(heard)["by"] == "bob"
    by_requester = await call(api, app, "POST", f"/conversations/{asked['id']}/accept", "carol")
    assert by_requester.status == 403, by_requester.body

    # blocked: a new request is refused, and so are messages of a conversation that exists
    blocked = await call(api, app, "POST", "/users/dave/block", "bob")
    assert blocked.status == 200, blocked.body
    refused_request = await call(
        api, app, "POST", "/conversations", "dave", {"members": ["dave", "bob"]}
    )
    assert refused_request.status == 403
    assert refused_request.json()["error"] == "'bob' has blocked 'dave'"
    own = await call(api, app, "POST", "/conversations", "bob", {"members": ["bob", "dave"]})
    assert own.status == 403 and "unblock them first" in own.json()["error"]

    talk = (
        await call(api, app, "POST", "/conversations", None, {"members": ["bob", "erin"]})
    ).json()
    assert talk["state"] == "accepted"  # the backend's: no request
    erin = await online(clients, app, "erin")
    await join(erin, app, talk["channel"])
    await join(bob, app, talk["channel"])
    await erin.send_event("client-msg", {"text": "before"}, talk["channel"])
    await bob.expect("client-msg", talk["channel"])
    assert (await call(api, app, "POST", "/users/erin/block", "bob")).status == 200
    await erin.send_event("client-msg", {"text": "after"}, talk["channel"])
    await erin.expect_error(None, "is blocked")
    assert (await call(api, app, "GET", "/blocks", "bob")).json()["blocked"] == ["dave", "erin"]
    assert (await call(api, app, "DELETE", "/users/erin/block", "bob")).json()["removed"] is True
    await erin.send_event("client-msg", {"text": "unblocked"}, talk["channel"])
    assert (await bob.expect("client-msg", talk["channel"]))["data"] == {"text": "unblocked"}


async def test_a_group_whose_removed_member_loses_the_channel(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    members = ["alice", "bob", "carol"]
    group = (await call(api, app, "POST", "/conversations", "alice", {"members": members})).json()
    assert (group["kind"], group["state"], group["members"]) == ("group", "accepted", members)
    second = (await call(api, app, "POST", "/conversations", "alice", {"members": members})).json()
    assert second["id"] != group["id"]  # groups are not derived from their members
    alice, carol = await online(clients, app, "alice"), await online(clients, app, "carol")
    await join(alice, app, group["channel"])
    await join(carol, app, group["channel"])
    dave = await online(clients, app, "dave")
    await refused(dave, app, group["channel"], "not a member")
    added = await call(
        api, app, "POST", f"/conversations/{group['id']}/members", "bob", {"user_id": "dave"}
    )
    assert added.json()["members"] == [*members, "dave"], added.body
    assert data_of(await dave.expect("chat-added", "private-user-dave"))["by"] == "bob"
    await join(dave, app, group["channel"])

    not_creator = await call(
        api, app, "DELETE", f"/conversations/{group['id']}/members/carol", "bob"
    )
    assert not_creator.status == 403
    removed = await call(api, app, "DELETE", f"/conversations/{group['id']}/members/carol", "alice")
    assert "carol" not in removed.json()["members"]
    revoked = await carol.expect("parley:revoked", group["channel"])
    assert "not a member" in data_of(revoked)["reason"]
    await alice.send_event("client-msg", {"text": "carol is gone"}, group["channel"])
    assert (await dave.expect("client-msg", group["channel"]))["data"] == {"text": "carol is gone"}
    await carol.expect_quiet("no message after removal")
    await refused(carol, app, group["channel"], "not a member")
    left = await call(api, app, "DELETE", f"/conversations/{group['id']}/members/dave", "dave")
    assert left.status == 200  # anyone may leave


async def test_the_list_carries_the_last_event_and_the_unread_count(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    talk = (
        await call(api, app, "POST", "/conversations", None, {"members": ["ann", "ben"]})
    ).json()
    ann = await online(clients, app, "ann")
    await join(ann, app, talk["channel"])
    for n in range(3):
        await ann.send_event("client-msg", {"n": n}, talk["channel"])
    await ann.ping()
    await app.running.node.delivery.idle()
    listed = (await call(api, app, "GET", "/conversations", "ben")).json()["conversations"]
    assert [c["id"] for c in listed] == [talk["id"]]
    assert (listed[0]["last_offset"], listed[0]["unread"]) == (3, 3)
    assert listed[0]["last_event"]["data"] == {"n": 2}
    assert listed[0]["last_event"]["parley"]["publisher"] == {"type": "user", "id": "ann"}
    read = await call(api, app, "POST", f"/conversations/{talk['id']}/read", "ben", {"offset": 2})
    assert read.json()["read_offset"] == 2
    lower = await call(api, app, "POST", f"/conversations/{talk['id']}/read", "ben", {"offset": 1})
    assert lower.json()["read_offset"] == 2  # never lowered
    too_far = await call(
        api, app, "POST", f"/conversations/{talk['id']}/read", "ben", {"offset": 9}
    )
    assert too_far.status == 400
    listed = (await call(api, app, "GET", "/conversations", "ben")).json()["conversations"]
    assert listed[0]["unread"] == 1
    history = f"/apps/{app.app.id}/channels/{talk['channel']}/history"
    mine = await api.request("GET", history, headers=bearer(app, "ben"))
    assert [e["data"] for e in mine.json()["events"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    theirs = await api.request("GET", history, headers=bearer(app, "eve"))
    assert theirs.status == 403 and "not a member" in theirs.json()["error"]
    all_read = await call(api, app, "POST", f"/conversations/{talk['id']}/read", "ben", {})
    assert all_read.json()["read_offset"] == 3
    signed = await api.signed("GET", f"/apps/{app.app.id}/conversations", params={"user_id": "ben"})
    assert signed.json()["conversations"][0]["unread"] == 0
    assert (await call(api, app, "GET", "/conversations", "nobody")).json() == {"conversations": []}
    # a welcome tells a new subscriber where the conversation stands
    ben = await online(clients, app, "ben")
    assert (await join(ben, app, talk["channel"]))["last_offset"] == 3


@pytest.mark.parametrize(
    ("body", "user", "status", "reason"),
    [
        ({"members": "alice,bob"}, "alice", 400, "must be a list"),
        ({"members": ["alice", "alice"]}, "alice", 400, "distinct"),
        ({"members": ["alice"]}, "alice", 400, "2..100"),
        ({"members": ["bob", "carol"]}, "alice", 403, "they are a member of"),
        ({"members": ["alice", "bob"], "extra": 1}, "alice", 400, "Unknown fields: extra"),
    ],
)
async def test_bad_conversations_are_refused_naming_the_problem(
    app: InProcessApp, api: AsyncApi, body: Any, user: str, status: int, reason: str
) -> None:
    response = await call(api, app, "POST", "/conversations", user, body)
    assert response.status == status, response.body
    assert reason in response.json()["error"]


@pytest.mark.app_options(auth="builtin")
async def test_members_of_a_builtin_app_must_be_its_enabled_users(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    access = app.running.node.access
    assert access is not None
    for name in ("ann", "ben", "gone"):
        await access.users.add(app.app.id, name, "a password")
    await access.users.disable(app.app.id, "gone")
    ghost = await call(api, app, "POST", "/conversations", "ann", {"members": ["ann", "ghost"]})
    assert (ghost.status, ghost.json()["error"]) == (404, "No user 'ghost'")
    disabled = await call(api, app, "POST", "/conversations", None, {"members": ["ann", "gone"]})
    assert (disabled.status, disabled.json()["error"]) == (403, "User 'gone' is disabled")
    bots = await call(
        api, app, "POST", "/conversations", "ann", {"members": ["ann"], "bots": ["b_x"]}
    )
    assert (bots.status, bots.json()["error"]) == (404, "No bot 'b_x'")
    made = await call(api, app, "POST", "/conversations", "ann", {"members": ["ann", "ben"]})
    assert made.status == 201, made.body
    # the built-in authorizer signs a conversation channel for its members alone, not by grants
    channel = made.json()["channel"]
    ann = await clients.connect(f"{app.ws_url}&token={token(app, 'ann')}")
    form = f"socket_id={ann.socket_id}&channel_name={channel}".encode()
    headers = {**bearer(app, "ann"), "Content-Type": "application/x-www-form-urlencoded"}
    signed = await api.request(
        "POST", f"/apps/{app.app.id}/pusher/auth", body=form, headers=headers
    )
    assert signed.status == 200, signed.body
    ben = await clients.connect(f"{app.ws_url}&token={token(app, 'ben')}")
    stranger = {**bearer(app, "gone2"), "Content-Type": "application/x-www-form-urlencoded"}
    form = f"socket_id={ben.socket_id}&channel_name={channel}".encode()
    other = await api.request(
        "POST", f"/apps/{app.app.id}/pusher/auth", body=form, headers=stranger
    )
    assert other.status in (401, 403), other.body
    await ann.subscribe(channel, auth=signed.json()["auth"])
    assert (await ann.expect_next("parley:welcome", channel))["data"]["members"] == ["ann", "ben"]


@pytest.mark.app_options(max_pending_requests=2)
async def test_a_user_waits_on_a_bounded_number_of_answers(
    app: InProcessApp, api: AsyncApi
) -> None:
    for other in ("b1", "b2"):
        made = await call(api, app, "POST", "/conversations", "spam", {"members": ["spam", other]})
        assert made.status == 201, made.body
    again = await call(api, app, "POST", "/conversations", "spam", {"members": ["b2", "spam"]})
    assert again.status == 200  # the same request again is no new one
    third = await call(api, app, "POST", "/conversations", "spam", {"members": ["spam", "b3"]})
    assert third.status == 429 and "max_pending_requests = 2" in third.json()["error"]
    answered = await call(api, app, "POST", f"/conversations/{made.json()['id']}/decline", "b2")
    assert answered.status == 200
    fourth = await call(api, app, "POST", "/conversations", "spam", {"members": ["spam", "b3"]})
    assert fourth.status == 201, fourth.body
