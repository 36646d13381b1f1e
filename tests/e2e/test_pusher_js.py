"""Parley driven by unmodified pusher-js 8.6.0, laravel-echo 2.5.0 and the npm `pusher` 5.3.4
server SDK, as a Node app would use them (package.json / package-lock.json at the repo root).

Each test starts a server and runs one scenario script from tests/e2e/js/ with `node`; the
script asserts, prints what it saw, and exits 0 or 1. A script that needs the test to act on
the server (drain and restart) prints `@@step NAME` and waits for `@@go NAME` on stdin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

import parley
from tests.support.node_scenarios import run_scenario
from tests.support.pusher_raw import ApiResponse, RawClient, http_request
from tests.support.server import ParleyServer

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.usefixtures("node_modules")]


@pytest.fixture
def counting_server() -> Iterator[ParleyServer]:
    with ParleyServer(
        env={"PARLEY_APP_CLIENT_EVENTS": "true", "PARLEY_APP_SUBSCRIPTION_COUNT": "true"}
    ) as srv:
        yield srv


def test_public_channel_trigger_info_and_batch(server: ParleyServer) -> None:
    run_scenario(server, "public_events.mjs")


def test_private_channel_via_http_auth_endpoint_and_bad_signature(server: ParleyServer) -> None:
    run_scenario(server, "private_auth.mjs")


def test_presence_members_and_one_user_on_two_connections(server: ParleyServer) -> None:
    run_scenario(server, "presence.mjs")


def test_client_events_carry_real_user_id_and_are_not_echoed(server: ParleyServer) -> None:
    run_scenario(server, "client_events.mjs")


def test_client_events_from_one_connection_keep_their_order() -> None:
    with ParleyServer(
        env={"PARLEY_APP_CLIENT_EVENTS": "true", "PARLEY_APP_CLIENT_EVENT_RATE": "0"}
    ) as srv:
        run_scenario(srv, "client_event_order.mjs")


def test_encrypted_channel_decrypted_by_pusher_js(server: ParleyServer) -> None:
    run_scenario(server, "encrypted.mjs")


def test_signin_send_to_user_and_watchlist(server: ParleyServer) -> None:
    run_scenario(server, "signin_user.mjs")


def test_presence_authorized_by_signin_without_channel_data(server: ParleyServer) -> None:
    run_scenario(server, "presence_signin.mjs")


def test_cache_channel_miss_then_replay(server: ParleyServer) -> None:
    run_scenario(server, "cache_channel.mjs")


def test_terminate_user_connections_closes_with_4009_for_good(server: ParleyServer) -> None:
    run_scenario(server, "terminate.mjs")


def test_pusher_js_reconnects_and_resubscribes_after_drain(server: ParleyServer) -> None:
    port = server.port
    exit_codes: list[int] = []

    def drain_and_restart() -> None:
        assert server.process is not None
        process = server.process
        server.restart()
        exit_codes.append(process.returncode)

    run_scenario(server, "reconnect_drain.mjs", steps={"drain": drain_and_restart})
    assert exit_codes == [0], "the drained server should exit cleanly"
    assert server.port == port


@pytest.mark.parametrize(
    "law",
    [
        "sub-sub",
        "sub-wait-sub",
        "sub-unsub",
        "sub-wait-unsub",
        "sub-unsub-sub",
        "sub-unsub-wait-sub",
        "sub-unsub-unsub",
    ],
)
def test_subscription_sequencing_law(server: ParleyServer, law: str) -> None:
    run_scenario(server, "sequencing.mjs", law)


def test_subscription_count_events(counting_server: ParleyServer) -> None:
    run_scenario(counting_server, "subscription_count.mjs")


def test_laravel_echo_pusher_broadcaster(server: ParleyServer) -> None:
    run_scenario(server, "laravel_echo.mjs")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the test secret
def test_conversation_between_pusher_js_and_a_python_client(server: ParleyServer) -> None:
    """docs/protocol.md "Conversations" with two real clients: alice and carol are pusher-js
    (conversations.mjs, signed in with pusher.signin()), bob is a raw Python client connected
    with a token; this test plays bob at each step of the scenario."""

    def token(user: str) -> str:
        claims = {"sub": user, "aud": server.key, "exp": int(time.time()) + 300}
        return jwt.encode(claims, server.secret, algorithm="HS256")

    def call(user: str, method: str, path: str, body: Any = None) -> ApiResponse:
        raw = b"" if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token(user)}"}
        return http_request(
            server, method, f"/apps/{server.app_id}{path}", body=raw, headers=headers
        )

    def direct_id(a: str, b: str) -> str:
        pair = json.dumps(["parley-direct-v1", *sorted((a, b))], separators=(",", ":"))
        digest = hashlib.sha256(pair.encode()).digest()
        return "d_" + base64.urlsafe_b64encode(digest).decode()[:22]

    def data_of(frame: dict[str, Any]) -> Any:
        data = frame["data"]
        return json.loads(data) if isinstance(data, str) else data

    def notified(event: str) -> dict[str, Any]:
        """`event` for bob on both his notification channels; its data."""
        channels = {"private-user-bob", "#server-to-user-bob"}
        got: dict[str, Any] = {}
        while channels - got.keys():
            frame = bob.expect(event, where=lambda f: f.get("channel") in channels - got.keys())
            got[frame["channel"]] = data_of(frame)
        first, second = got.values()
        assert first == second, got
        return first  # type: ignore[no-any-return]

    alice_bob = direct_id("alice", "bob")
    channel = f"private-conv-{alice_bob}"

    def from_carol(frame: dict[str, Any]) -> bool:
        publisher = (frame.get("parley") or {}).get("publisher") or {}
        return frame.get("user_id") == "carol" or publisher.get("id") == "carol"

    def bob_accepts() -> None:
        request = notified("chat-request")
        assert request == {
            "conversation_id": alice_bob,
            "channel": channel,
            "requester": "alice",
            "members": ["alice", "bob"],
        }
        accepted = call("bob", "POST", f"/conversations/{alice_bob}/accept")
        assert (accepted.status, accepted.json()["state"]) == (200, "accepted"), accepted.body
        again = call("bob", "POST", "/conversations", {"members": ["bob", "alice"]})
        assert again.status == 200, again.body
        assert (again.json()["id"], again.json()["state"]) == (alice_bob, "accepted")

    def bob_joins() -> None:
        bob.subscribe(channel, key=server.key, secret=server.secret)
        welcome = bob.recv()
        assert (welcome["event"], welcome["channel"]) == ("parley:welcome", channel), welcome
        spec = ("conversation_id", "members", "bots", "state", "last_offset", "epoch")
        told = {name: data_of(welcome).get(name) for name in spec}
        assert told == {
            "conversation_id": alice_bob,
            "members": ["alice", "bob"],
            "bots": [],
            "state": "accepted",
            "last_offset": 0,
            "epoch": told["epoch"],
        }, welcome
        assert told["epoch"] is not None, welcome
        bob.send_event("client-msg", {"text": "hi alice"}, channel)

    def bob_hears() -> None:
        message = bob.expect("client-msg", channel)
        assert data_of(message) == {"text": "hi bob"}
        assert message["user_id"] == "alice"
        assert message["parley"]["publisher"] == {"type": "user", "id": "alice"}

    def bob_edits() -> None:
        """alice's refused edit reached nobody; her reaction names bob's message; bob edits it."""
        reaction = bob.expect("client-parley-reaction", channel)
        assert not [f for f in bob.seen if f.get("event") == "client-parley-edit"], bob.seen
        assert (data_of(reaction), reaction["user_id"]) == ({"ref": 1, "reaction": "+1"}, "alice")
        bob.send_event("client-parley-edit", {"ref": 1, "data": {"text": "hi alice!"}}, channel)

    def carol_tried() -> None:
        message = bob.expect("client-msg", channel, forbid=from_carol)
        assert (data_of(message), message["user_id"]) == ({"text": "after carol"}, "alice")
        assert not [f for f in bob.seen if from_carol(f)], "bob received something from carol"
        bob.send_event("client-msg", {"text": "nothing from carol"}, channel)

    def bob_declines() -> None:
        carol_bob = direct_id("carol", "bob")
        request = notified("chat-request")
        assert request == {
            "conversation_id": carol_bob,
            "channel": f"private-conv-{carol_bob}",
            "requester": "carol",
            "members": ["carol", "bob"],
        }
        declined = call("bob", "POST", f"/conversations/{carol_bob}/decline")
        assert (declined.status, declined.json()["state"]) == (200, "declined"), declined.body

    tokens = json.dumps({user: token(user) for user in ("alice", "carol")})
    with RawClient(f"{server.ws_url}&token={token('bob')}") as bob:
        established = json.loads(bob.seen[0]["data"])
        assert established.get("user_id") == "bob", established
        bob.subscribe("private-user-bob", key=server.key, secret=server.secret)
        run_scenario(
            server,
            "conversations.mjs",
            steps={
                "bob-accepts": bob_accepts,
                "bob-joins": bob_joins,
                "bob-hears": bob_hears,
                "bob-edits": bob_edits,
                "carol-tried": carol_tried,
                "bob-declines": bob_declines,
            },
            env={"PARLEY_E2E_TOKENS": tokens},
        )

        # history shows bob's first message as it is now: edited, with alice's reaction
        deadline = time.monotonic() + 10
        while True:
            page = call("bob", "GET", f"/channels/{channel}/history?limit=1")
            assert page.status == 200, page.body
            first = page.json()["events"][0]
            if "edited" in first["parley"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the acts' effects are recorded by a follow-up task
        assert first["data"] == {"text": "hi alice!"}, first
        assert first["parley"]["reactions"] == {"+1": ["alice"]}, first

        # bob blocks dave: dave's request is refused, naming the block, and never reaches bob
        blocked = call("bob", "POST", "/users/dave/block")
        assert blocked.status == 200, blocked.body
        assert blocked.json() == {"blocker": "bob", "blocked": "dave"}
        refused = call("dave", "POST", "/conversations", {"members": ["dave", "bob"]})
        assert refused.status == 403, refused.body
        assert refused.json()["error"] == "'bob' has blocked 'dave'", refused.body
        assert call("bob", "GET", "/blocks").json()["blocked"] == ["dave"]
        mark = len(bob.seen)
        bob.ping()
        assert [f["event"] for f in bob.seen[mark:]] == ["pusher:pong"], bob.seen[mark:]


def test_presence_with_member_events_off_tells_counts_to_pusher_js() -> None:
    """presence_events_off: pusher-js subscribes, keeps members.me and members.count, and
    follows parley:member_count; no member events. "me-only" once the subscription's answer
    lists the joiner alone (core/subscriptions.py asks Node.presence_answer for it)."""
    source = Path(parley.__file__).parent / "core" / "subscriptions.py"
    me_only = ["me-only"] if "presence_answer" in source.read_text() else []
    with ParleyServer(env={"PARLEY_APP_PRESENCE_EVENTS_OFF": "presence-big-*"}) as srv:
        run_scenario(srv, "presence_counts.mjs", *me_only)
