"""Hostile and broken input over a raw WebSocket client (PUSHER.md §1, §7).

Each test checks the error the bad input earns (a `pusher:error` with an object `data`, and
a close code where the connection must end) and that the server goes on serving everyone
else: a `Witness`, connected before the bad input, still receives an API-triggered event.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import IN_CI
from tests.support.pusher_raw import (
    ClientPool,
    Closed,
    RawClient,
    Witness,
    channel_auth,
    http_request,
    presence_data,
    running,
    sdk,
    shutdown,
    summary,
    unique,
    user_auth,
)
from tests.support.server import TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e

Launch = Callable[..., ParleyServer]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Start a server with extra PARLEY_* variables; every one is stopped at teardown."""
    started: list[ParleyServer] = []

    def start(**env: str) -> ParleyServer:
        srv = ParleyServer(env=env).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        shutdown(srv)


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    """One server (client events on) shared by this module's tests that need no special
    settings: each uses fresh channel and user names. Tests that count connections or
    change settings start their own with `launch`."""
    with running({"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        yield srv


@pytest.fixture
def pool() -> Iterator[ClientPool]:
    p = ClientPool()
    yield p
    p.close_all()


@pytest.fixture
def witness(server: ParleyServer) -> Iterator[Witness]:
    w = Witness(server)
    yield w
    w.close()


def signed_in(pool: ClientPool, srv: ParleyServer, user_id: str) -> RawClient:
    client = pool.connect(srv)
    user_data = json.dumps({"id": user_id})
    client.send_event(
        "pusher:signin",
        {
            "auth": user_auth(srv.key, srv.secret, client.socket_id, user_data),
            "user_data": user_data,
        },
    )
    frame = client.expect("pusher:signin_success")
    assert frame["data"]["user_data"] == user_data
    return client


def private_pair(pool: ClientPool, srv: ParleyServer) -> tuple[RawClient, RawClient, str]:
    """A sender and a receiver subscribed to the same fresh private channel."""
    channel = unique("private-")
    sender, receiver = pool.connect(srv), pool.connect(srv)
    for c in (sender, receiver):
        c.subscribe(channel, key=srv.key, secret=srv.secret)
    return sender, receiver, channel


def sentinel(srv: ParleyServer, channel: str) -> str:
    """Trigger an API event after whatever must not arrive; return its name."""
    name = unique("sentinel-")
    sdk(srv).trigger(channel, name, {})
    return name


def never_before_sentinel(client: RawClient, srv: ParleyServer, channel: str, event: str) -> None:
    """`event` must not reach `client` on `channel`: read up to a later API sentinel."""
    name = sentinel(srv, channel)
    client.expect(name, channel, forbid=lambda f: f.get("event") == event)


# -- malformed frames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, contains",
    [
        ("this is not json", "not valid JSON"),
        ('{"event": "pusher:ping", ', "not valid JSON"),
        ("[1, 2, 3]", "JSON object"),
        ('"pusher:ping"', "JSON object"),
        ("42", "JSON object"),
        ("null", "JSON object"),
        ('{"data": {}}', "event"),
        ('{"event": 5, "data": {}}', "event"),
        ('{"event": "", "data": {}}', "event"),
    ],
)
def test_malformed_text_frames_get_an_error_and_the_connection_stays(
    server: ParleyServer, witness: Witness, pool: ClientPool, payload: str, contains: str
) -> None:
    client = pool.connect(server)
    client.send(payload)
    data = client.expect_error(None, contains)
    assert data["code"] is None
    client.ping()
    witness.check()


def test_binary_frames_are_refused_with_an_error(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    client = pool.connect(server)
    client.send(json.dumps({"event": "pusher:ping", "data": {}}).encode())
    client.expect_error(None, "binary")
    client.ping()
    witness.check()


@pytest.mark.parametrize("event", ["pusher:foo", "pusher:connection_established", "pusher:error"])
def test_unknown_pusher_events_from_clients_are_refused(
    server: ParleyServer, witness: Witness, pool: ClientPool, event: str
) -> None:
    client = pool.connect(server)
    client.send_event(event, {})
    client.expect_error(None, event)
    client.ping()
    witness.check()


def test_pusher_internal_events_from_clients_are_refused_and_not_relayed(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("presence-")
    forger, member = pool.connect(server), pool.connect(server)
    for client, uid in ((forger, "forger"), (member, "member")):
        cd = presence_data(uid)
        client.subscribe(channel, key=server.key, secret=server.secret, channel_data=cd)
    forger.expect("pusher_internal:member_added", channel)  # `member` joined after
    for event in ("pusher_internal:member_added", "pusher_internal:subscription_succeeded"):
        forger.send_event(event, json.dumps({"user_id": "ghost"}), channel)
        forger.expect_error(None, event)
    never_before_sentinel(member, server, channel, "pusher_internal:member_added")
    forger.ping()
    witness.check()


@pytest.mark.parametrize("event", ["my-event", "typing", "Client-typing", "server-event"])
def test_events_without_the_client_prefix_are_refused(
    server: ParleyServer, witness: Witness, pool: ClientPool, event: str
) -> None:
    sender, receiver, channel = private_pair(pool, server)
    sender.send_event(event, {"x": 1}, channel)
    sender.expect_error(None, "client-")
    never_before_sentinel(receiver, server, channel, event)
    witness.check()


# -- sizes ------------------------------------------------------------------------------------


def test_frame_over_max_frame_bytes_gets_an_error_and_the_connection_stays(
    launch: Launch, pool: ClientPool
) -> None:
    srv = launch(PARLEY_MAX_FRAME_BYTES="16384", PARLEY_APP_CLIENT_EVENTS="true")
    witness = Witness(srv)
    sender, receiver, channel = private_pair(pool, srv)
    sender.send_event("client-big", "x" * 20_000, channel)
    sender.expect_error(None, "too large")
    never_before_sentinel(receiver, srv, channel, "client-big")
    sender.ping()
    witness.check()
    witness.close()


def test_frame_over_one_mebibyte_is_closed_by_the_websocket_layer_with_1009(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("private-")
    bystander = pool.connect(server)
    bystander.subscribe(channel, key=server.key, secret=server.secret)
    client = pool.connect(server)
    client.subscribe(channel, key=server.key, secret=server.secret)
    with contextlib.suppress(ConnectionClosed, OSError):  # the server may close mid-frame
        client.send_event("client-huge", "x" * (1024 * 1024 + 1), channel)
    code, _ = client.expect_close()
    assert code == 1009
    never_before_sentinel(bystander, server, channel, "client-huge")
    bystander.ping()
    witness.check()


def test_client_event_data_over_10240_bytes_is_refused(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    sender, receiver, channel = private_pair(pool, server)
    sender.send_event("client-too-big", "y" * 10_241, channel)
    data = sender.expect_error(None, "10240")
    assert "bytes" in data["message"]
    sender.send_event("client-too-big", {"blob": "z" * 10_240}, channel)
    sender.expect_error(None, "10240")
    # exactly at the limit is fine
    sender.send_event("client-just-fits", "w" * 10_240, channel)
    frame = receiver.expect("client-just-fits", channel)
    assert frame["data"] == "w" * 10_240
    never_before_sentinel(receiver, server, channel, "client-too-big")
    sender.ping()
    witness.check()


# -- client events ----------------------------------------------------------------------------


def test_client_events_refused_when_the_app_has_them_disabled(
    launch: Launch, pool: ClientPool
) -> None:
    srv = launch()  # client events default to off
    witness = Witness(srv)
    sender, receiver, channel = private_pair(pool, srv)
    sender.send_event("client-hello", {"x": 1}, channel)
    sender.expect_error(None, "client messaging")
    never_before_sentinel(receiver, srv, channel, "client-hello")
    sender.ping()
    witness.check()
    witness.close()


def test_client_events_refused_on_public_channels(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("public-")
    sender, receiver = pool.connect(server), pool.connect(server)
    sender.subscribe(channel)
    receiver.subscribe(channel)
    sender.send_event("client-hello", {"x": 1}, channel)
    sender.expect_error(None, "private and presence")
    never_before_sentinel(receiver, server, channel, "client-hello")
    witness.check()


def test_client_events_refused_on_channels_not_subscribed(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("private-")
    receiver, outsider = pool.connect(server), pool.connect(server)
    receiver.subscribe(channel, key=server.key, secret=server.secret)
    outsider.send_event("client-hello", {"x": 1}, channel)
    outsider.expect_error(None, "not subscribed")
    outsider.send_event("client-hello", {"x": 1})  # no channel at all
    outsider.expect_error(None, "not subscribed")
    never_before_sentinel(receiver, server, channel, "client-hello")
    witness.check()


def test_client_event_rate_limit_sends_4301_and_keeps_the_connection(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    sender, receiver, channel = private_pair(pool, server)
    sent = 15
    for i in range(sent):
        sender.send_event("client-burst", {"i": i}, channel)
    sender.send({"event": "pusher:ping", "data": {}})  # handled after the whole burst
    errors = []
    while True:
        frame = sender.recv()
        if frame["event"] == "pusher:pong":
            break
        assert frame["event"] == "pusher:error", frame
        assert frame["data"]["code"] == 4301, frame
        errors.append(frame)
    assert 1 <= len(errors) <= sent - 10, f"10/s allows a burst of 10; {len(errors)} refused"
    name = sentinel(server, channel)
    delivered = []
    while True:
        frame = receiver.recv()
        if frame["event"] == name:
            break
        if frame["event"] == "client-burst":
            delivered.append(frame["data"]["i"])
    assert len(delivered) == sent - len(errors)
    assert delivered == sorted(delivered)
    sender.ping()  # still open: 4301 is never a close
    witness.check()


def test_forged_user_id_in_a_client_event_is_never_shown(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("presence-")
    alice, bob = pool.connect(server), pool.connect(server)
    alice.subscribe(
        channel, key=server.key, secret=server.secret, channel_data=presence_data("alice")
    )
    bob.subscribe(channel, key=server.key, secret=server.secret, channel_data=presence_data("bob"))
    forged = {"type": "user", "id": "mallory"}
    alice.send_event(
        "client-msg", {"t": 1}, channel, user_id="mallory", parley={"publisher": forged}
    )
    frame = bob.expect("client-msg", channel)
    assert frame["user_id"] == "alice"
    assert frame.get("parley", {}).get("publisher") != forged
    assert "mallory" not in json.dumps(frame)

    # On a private channel an anonymous sender has no user id to show: none, not the forged one.
    private = unique("private-")
    anon, reader = pool.connect(server), pool.connect(server)
    anon.subscribe(private, key=server.key, secret=server.secret)
    reader.subscribe(private, key=server.key, secret=server.secret)
    anon.send_event(
        "client-msg", {"t": 2}, private, user_id="mallory", parley={"publisher": forged}
    )
    frame = reader.expect("client-msg", private)
    assert "mallory" not in json.dumps(frame)
    assert frame.get("user_id") is None

    # A signed-in sender is shown as who it signed in as.
    carol = signed_in(pool, server, "carol")
    carol.subscribe(private, key=server.key, secret=server.secret)
    carol.send_event("client-msg", {"t": 3}, private, user_id="mallory")
    frame = reader.expect("client-msg", private, where=lambda f: f["data"] == {"t": 3})
    assert frame.get("user_id") == "carol"
    witness.check()


# -- subscription auth ------------------------------------------------------------------------


def test_bad_and_missing_subscription_signatures_are_refused(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    client, other = pool.connect(server), pool.connect(server)
    public = unique("public-")
    client.subscribe(public)
    private = unique("private-")
    good = channel_auth(server.key, server.secret, client.socket_id, private)
    cases = [
        (None, "auth"),  # missing
        ("", "auth"),  # empty
        ("no-colon-here", "auth"),
        (good[:-4] + "0000", "signature"),  # bad hex
        (channel_auth(server.key, "wrong-secret", client.socket_id, private), "signature"),
        (
            channel_auth(server.key, server.secret, other.socket_id, private),
            "signature",
        ),  # other socket
        (channel_auth(server.key, server.secret, client.socket_id, private + "x"), "signature"),
        (channel_auth("wrong-key", server.secret, client.socket_id, private), "key"),
    ]
    for auth, contains in cases:
        data: dict[str, object] = {"channel": private}
        if auth is not None:
            data["auth"] = auth
        client.send_event("pusher:subscribe", data)
        error = client.expect_error("any", contains, timeout=TIMEOUT)
        assert error["code"] in (None, 4009), error
    # none of them subscribed: an event on the private channel does not arrive
    sdk(server).trigger(private, "secret-news", {})
    never_before_sentinel(client, server, public, "secret-news")
    # the right one still works on the same connection
    client.subscribe(private, auth=good)
    client.ping()
    witness.check()


def test_presence_signature_must_cover_the_exact_channel_data(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    client = pool.connect(server)
    channel = unique("presence-")
    signed = presence_data("u1")
    auth = channel_auth(server.key, server.secret, client.socket_id, channel, signed)
    client.subscribe_frame(channel, auth=auth, channel_data=presence_data("u2"))
    client.expect_error("any", "signature")
    client.subscribe_frame(channel, auth=auth)  # channel_data left out: not signed for that
    client.expect_error("any")
    client.subscribe(channel, auth=auth, channel_data=signed)
    witness.check()


# -- connecting -------------------------------------------------------------------------------


def test_wrong_app_key_gets_4001_then_close_4001(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    client = pool.connect(
        f"ws://{server.host}:{server.port}/app/no-such-key?protocol=7", established=False
    )
    client.expect_error(4001)
    code, _ = client.expect_close()
    assert code == 4001
    witness.check()


@pytest.mark.parametrize(
    "query, code",
    [
        ("", 4008),
        ("?client=js&version=8.6.0", 4008),
        ("?protocol=4", 4007),
        ("?protocol=8", 4007),
        ("?protocol=abc", 4007),
        ("?protocol=", 4007),
    ],
)
def test_missing_or_unsupported_protocol_version(
    server: ParleyServer, witness: Witness, pool: ClientPool, query: str, code: int
) -> None:
    url = f"ws://{server.host}:{server.port}/app/{server.key}{query}"
    client = pool.connect(url, established=False)
    client.expect_error(code)
    assert client.expect_close()[0] == code
    witness.check()


@pytest.mark.parametrize("version", ["5", "6", "7"])
def test_protocols_5_to_7_are_accepted(
    server: ParleyServer, pool: ClientPool, version: str
) -> None:
    client = pool.connect(f"ws://{server.host}:{server.port}/app/{server.key}?protocol={version}")
    assert re.fullmatch(r"\d+\.\d+", client.socket_id)
    assert client.activity_timeout > 0


def test_connection_quota_gets_4004_and_frees_up_when_one_leaves(
    launch: Launch, pool: ClientPool
) -> None:
    srv = launch(PARLEY_APP_MAX_CONNECTIONS="3")
    witness = Witness(srv)  # one of the three
    first = pool.connect(srv)
    second = pool.connect(srv)
    refused = pool.connect(srv, established=False)
    refused.expect_error(4004)
    assert refused.expect_close()[0] == 4004
    first.ping()
    second.ping()
    first.close()
    # the slot is freed once the server has seen the close; wait for it, bounded
    deadline = time.monotonic() + TIMEOUT
    while True:
        again = pool.connect(srv, established=False)
        frame = again.recv()
        if frame["event"] == "pusher:connection_established":
            break
        assert frame["data"]["code"] == 4004
        assert time.monotonic() < deadline, "the closed connection's slot was never freed"
        again.expect_close()
    again.send_event("pusher:ping", {})
    again.expect("pusher:pong")
    witness.check()
    witness.close()


# -- presence ---------------------------------------------------------------------------------


def test_presence_user_id_longer_than_128_is_refused(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("presence-")
    client = pool.connect(server)
    too_long = presence_data("u" * 129)
    auth = channel_auth(server.key, server.secret, client.socket_id, channel, too_long)
    client.subscribe_frame(channel, auth=auth, channel_data=too_long)
    client.expect_error("any", "128")
    client.subscribe(
        channel, key=server.key, secret=server.secret, channel_data=presence_data("u" * 128)
    )
    witness.check()


@pytest.mark.parametrize(
    "channel_data, contains",
    [
        ("not json", "channel_data"),
        ('["user_id", "1"]', "user_id"),
        ('{"user_info": {}}', "user_id"),
        ('{"user_id": ""}', "user_id"),
        ('{"user_id": null}', "user_id"),
        ('{"user_id": true}', "user_id"),
        ('{"user_id": {"id": 1}}', "user_id"),
    ],
)
def test_presence_channel_data_must_name_a_user(
    server: ParleyServer, witness: Witness, pool: ClientPool, channel_data: str, contains: str
) -> None:
    channel = unique("presence-")
    client = pool.connect(server)
    auth = channel_auth(server.key, server.secret, client.socket_id, channel, channel_data)
    client.subscribe_frame(channel, auth=auth, channel_data=channel_data)
    client.expect_error("any", contains)
    client.ping()
    witness.check()


def test_presence_member_limit(launch: Launch, pool: ClientPool) -> None:
    srv = launch(PARLEY_APP_MAX_PRESENCE_MEMBERS="2")
    witness = Witness(srv)
    channel = unique("presence-")
    for uid in ("a", "b"):
        pool.connect(srv).subscribe(
            channel, key=srv.key, secret=srv.secret, channel_data=presence_data(uid)
        )
    third = pool.connect(srv)
    cd = presence_data("c")
    third.subscribe_frame(
        channel,
        auth=channel_auth(srv.key, srv.secret, third.socket_id, channel, cd),
        channel_data=cd,
    )
    third.expect_error("any", "full")
    # an existing member on a second connection is not a new member
    again = pool.connect(srv)
    frame = again.subscribe(
        channel, key=srv.key, secret=srv.secret, channel_data=presence_data("a")
    )
    assert json.loads(frame["data"])["presence"]["count"] == 2
    # the refused connection is not subscribed: it can still try again later, and stays open
    third.ping()
    assert sdk(srv).users_info(channel) == {"users": [{"id": "a"}, {"id": "b"}]}
    witness.check()
    witness.close()


def test_presence_user_info_too_big_is_refused(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("presence-")
    client = pool.connect(server)
    big = presence_data("u1", {"bio": "b" * 1100})
    client.subscribe_frame(
        channel,
        auth=channel_auth(server.key, server.secret, client.socket_id, channel, big),
        channel_data=big,
    )
    client.expect_error("any", "1024")
    client.subscribe(
        channel,
        key=server.key,
        secret=server.secret,
        channel_data=presence_data("u1", {"bio": "short"}),
    )
    witness.check()


def test_signed_in_connection_cannot_join_presence_as_another_user(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    alice = signed_in(pool, server, "alice")
    channel = unique("presence-")
    as_bob = presence_data("bob")
    alice.subscribe_frame(
        channel,
        auth=channel_auth(server.key, server.secret, alice.socket_id, channel, as_bob),
        channel_data=as_bob,
    )
    alice.expect_error("any", "signed in as")
    frame = alice.subscribe(
        channel, key=server.key, secret=server.secret, channel_data=presence_data("alice")
    )
    assert json.loads(frame["data"])["presence"]["ids"] == ["alice"]
    witness.check()


# -- server-to-user and subscribe frames -------------------------------------------------------


def test_server_to_user_channel_needs_signin_as_that_user(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    anonymous = pool.connect(server)
    anonymous.subscribe_frame("#server-to-user-alice")
    anonymous.expect_error("any", "signed in")
    bob = signed_in(pool, server, "bob")
    bob.subscribe_frame("#server-to-user-alice")
    bob.expect_error("any", "signed in")
    alice = signed_in(pool, server, "alice")
    alice.subscribe("#server-to-user-alice")
    # neither impostor gets alice's messages
    sdk(server).send_to_user("alice", "for-alice", {"x": 1})
    alice.expect("for-alice", "#server-to-user-alice")
    for impostor in (anonymous, bob):
        impostor.send_event("pusher:ping", {})
        impostor.expect("pusher:pong", forbid=lambda f: f.get("event") == "for-alice")
    witness.check()


@pytest.mark.parametrize(
    "frame, contains",
    [
        ({"event": "pusher:subscribe"}, "data"),
        ({"event": "pusher:subscribe", "data": 42}, "data"),
        ({"event": "pusher:subscribe", "data": [1]}, "data"),
        ({"event": "pusher:subscribe", "data": "not json"}, "data"),
        ({"event": "pusher:subscribe", "data": {}}, "channel"),
        ({"event": "pusher:subscribe", "data": {"channel": 5}}, "channel"),
        ({"event": "pusher:subscribe", "data": {"channel": ""}}, "channel"),
        ({"event": "pusher:subscribe", "data": {"channel": "bad name!"}}, "channel"),
        ({"event": "pusher:subscribe", "data": {"channel": "c" * 201}}, "channel"),
        ({"event": "pusher:subscribe", "data": {"channel": "#other-thing"}}, "reserved"),
        ({"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": 5}}, "auth"),
        (
            {
                "event": "pusher:subscribe",
                "data": {"channel": "presence-x", "auth": "k:s", "channel_data": {"user_id": "1"}},
            },
            "channel_data",
        ),
        ({"event": "pusher:unsubscribe", "data": {"channel": "never-subscribed"}}, "subscription"),
        ({"event": "pusher:unsubscribe"}, "data"),
        ({"event": "pusher:signin", "data": {"auth": "x"}}, "user_data"),
    ],
)
def test_ill_formed_pusher_frames_get_an_error(
    server: ParleyServer,
    witness: Witness,
    pool: ClientPool,
    frame: dict[str, object],
    contains: str,
) -> None:
    client = pool.connect(server)
    client.send(frame)
    client.expect_error("any", contains)
    if frame["event"] != "pusher:signin":  # a bad signin ends the connection (4009)
        client.ping()
    witness.check()


# -- liveness and slow consumers --------------------------------------------------------------


def test_idle_connection_is_pinged_then_closed_with_4201(launch: Launch, pool: ClientPool) -> None:
    srv = launch(PARLEY_ACTIVITY_TIMEOUT_S="1", PARLEY_PONG_TIMEOUT_S="1")
    idle = pool.connect(srv)
    assert idle.activity_timeout == 1
    answering = pool.connect(srv)  # answers pusher:ping with pusher:pong
    ws_pinging = pool.connect(srv, ping_interval=0.3)  # only WebSocket PING frames
    started = time.monotonic()
    pinged = False
    idle_code: int | None = None
    while idle_code is None:
        assert time.monotonic() - started < 3 + TIMEOUT, "idle connection never closed"
        try:
            if idle.recv(timeout=0.1)["event"] == "pusher:ping":
                pinged = True  # and ignored
        except Closed as closed:
            idle_code = closed.code
        except AssertionError:
            pass  # nothing this round
        try:
            if answering.recv(timeout=0.05)["event"] == "pusher:ping":
                answering.send_event("pusher:pong", {})
        except Closed:
            raise
        except AssertionError:
            pass
    elapsed = time.monotonic() - started
    assert pinged, "the server never sent pusher:ping to the idle connection"
    assert idle_code == 4201
    assert 1.5 < elapsed < 5, elapsed
    answering.ping()
    ws_pinging.ping()
    channel = unique("alive-")
    answering.subscribe(channel)
    sdk(srv).trigger(channel, "still-here", {})
    answering.expect("still-here", channel)
    assert idle.seen[-1]["event"] in ("pusher:error", "pusher:ping")


def server_rss(srv: ParleyServer) -> int:
    """The server process's resident memory, in bytes."""
    assert srv.process is not None
    status = Path(f"/proc/{srv.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def test_slow_consumer_is_closed_with_4100_and_others_are_unaffected(
    launch: Launch, pool: ClientPool
) -> None:
    # history kept short in memory: what the server holds is then the subscribers' buffers
    srv = launch(
        PARLEY_MAX_OUTBOUND_BYTES="65536", PARLEY_STORE="memory", PARLEY_HISTORY_MAX_COUNT="10"
    )
    channel = unique("flood-")
    api = sdk(srv)
    # The slow client's socket buffer is small and it never reads until the end.
    sock = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow = pool.connect(srv, sock=sock, max_queue=1)
    slow.subscribe(channel)
    fast = pool.connect(srv, max_queue=None)  # reads everything as it comes
    fast.subscribe(channel)
    witness = Witness(srv)

    payload = "p" * 10_000
    api.trigger(unique("warm-up-"), "warm-up", payload)  # the first publish's buffers, caches
    rss_before = server_rss(srv)
    batches = 0
    closed_by_server = False
    while not closed_by_server:
        assert batches < 300, "no slow-consumer close after 3000 events"
        api.trigger_batch(
            [{"channel": channel, "name": "flood", "data": payload} for _ in range(10)]
        )
        batches += 1
        closed_by_server = any("slow consumer closed" in line for line in srv.stderr_lines)
    sent = batches * 10
    # what the slow reader left unread was bounded by max_outbound_bytes, not kept in memory
    grown = server_rss(srv) - rss_before
    assert grown < 8 * 1024 * 1024, f"server memory grew {grown / 1e6:.1f} MB over {sent} events"
    # the fast reader got every one of them, in order, and then a sentinel
    name = sentinel(srv, channel)
    got = 0
    while True:
        frame = fast.recv()
        if frame["event"] == name:
            break
        assert frame["event"] == "flood"
        got += 1
    assert got == sent
    witness.check()
    # the slow one, reading at last, finds fewer events and then the 4100 close
    code, reason = slow.expect_close()
    assert code in (4100, None), code  # None: the grace period ran out and it was cut off
    if code == 4100:
        assert "slow" in reason.lower(), reason  # intact, not overwritten by queued data
    assert 0 < sum(1 for f in slow.seen if f.get("event") == "flood") < sent
    metrics = http_request(srv, "GET", "/metrics").body.decode()
    assert re.search(r'parley_errors_total\{app_id="4242",code="4100"\} 1\.0', metrics), metrics
    witness.close()


# -- operational endpoints --------------------------------------------------------------------


def test_healthz_readyz_and_metrics(launch: Launch, pool: ClientPool) -> None:
    server = launch(PARLEY_APP_CLIENT_EVENTS="true")
    health = http_request(server, "GET", "/healthz")
    assert health.status == 200 and health.headers["content-type"].startswith("application/json")
    assert health.json()["status"] == "ok"
    # CI compiles the per-message modules (scripts/test), so it tests what users run.
    code = health.json()["code"]
    assert code.startswith("compiled: mypyc" if IN_CI else ("compiled", "source")), code
    ready = http_request(server, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"

    a, b = pool.connect(server), pool.connect(server)
    channel = unique("private-")
    a.subscribe(channel, key=server.key, secret=server.secret)
    b.subscribe(channel, key=server.key, secret=server.secret)
    for i in range(15):
        a.send_event("client-x", {"i": i}, channel)
    a.expect_error(4301)
    a.send("not json")
    a.expect("pusher:error", where=lambda f: f["data"]["code"] is None)
    refused = pool.connect(
        f"ws://{server.host}:{server.port}/app/nope?protocol=7", established=False
    )
    refused.expect_close()

    metrics = http_request(server, "GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    assert re.search(r'^parley_connections\{app_id="4242"\} 2\.0$', text, re.MULTILINE), text
    assert re.search(
        r'^parley_errors_total\{app_id="4242",code="4301"\} [1-9]', text, re.MULTILINE
    ), text
    assert re.search(
        r'^parley_errors_total\{app_id="[^"]*",code="4001"\} 1\.0$', text, re.MULTILINE
    ), text
    assert re.search(
        r'^parley_errors_total\{app_id="4242",code="none"\} [1-9]', text, re.MULTILINE
    ), text
    # a's frames (15 events, "not json", pings) came in; b got the events before a's limit
    received = re.search(r'^parley_messages_in_total\{app_id="4242"\} (\d+)\.0$', text, re.M)
    delivered = re.search(r'^parley_messages_out_total\{app_id="4242"\} (\d+)\.0$', text, re.M)
    assert received and int(received[1]) >= 16, text
    assert delivered and 1 <= int(delivered[1]) <= 15, text


def test_a_backlogged_reader_gets_large_and_small_events_intact(
    launch: Launch, pool: ClientPool
) -> None:
    """Under the outbound limit, a reader that falls behind loses nothing and sees no
    corruption, whatever the mix of frame sizes (8 KiB+ events once broke the stream)."""
    srv = launch(PARLEY_MAX_OUTBOUND_BYTES=str(64 * 1024 * 1024))
    channel = unique("mixed-")
    sock = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    reader = pool.connect(srv, sock=sock, max_queue=1)
    reader.subscribe(channel)
    api = sdk(srv)
    pairs = 600  # about 6 MB: more than the kernel buffers hold, so the server queues
    for start in range(0, pairs, 5):
        batch = []
        for i in range(start, start + 5):
            batch.append(
                {"channel": channel, "name": "big", "data": json.dumps({"i": i, "pad": "x" * 9000})}
            )
            batch.append({"channel": channel, "name": "small", "data": json.dumps({"i": i})})
        api.trigger_batch(batch)
    for i in range(pairs):
        for name in ("big", "small"):
            frame = reader.recv()
            assert frame["event"] == name and json.loads(frame["data"])["i"] == i, summary([frame])
    reader.ping()


def test_signin_refusals(server: ParleyServer, witness: Witness, pool: ClientPool) -> None:
    user_data = json.dumps({"id": "ann"})
    # a bad signature ends the connection with 4009
    client = pool.connect(server)
    client.send_event("pusher:signin", {"auth": f"{server.key}:{'0' * 64}", "user_data": user_data})
    client.expect_error(4009, "signin")
    assert client.expect_close()[0] == 4009
    # a signature made for another socket id
    other, client = pool.connect(server), pool.connect(server)
    auth = user_auth(server.key, server.secret, other.socket_id, user_data)
    client.send_event("pusher:signin", {"auth": auth, "user_data": user_data})
    client.expect_error(4009)
    assert client.expect_close()[0] == 4009
    # user_data without a string id
    for bad in (
        json.dumps({"id": 42}),
        json.dumps({"name": "x"}),
        "not json",
        json.dumps({"id": ""}),
    ):
        client = pool.connect(server)
        client.send_event(
            "pusher:signin",
            {"auth": user_auth(server.key, server.secret, client.socket_id, bad), "user_data": bad},
        )
        client.expect_error(4009)
        assert client.expect_close()[0] == 4009
    # signed in as ann, signing in again as bob fails
    ann = signed_in(pool, server, "ann")
    bob_data = json.dumps({"id": "bob"})
    ann.send_event(
        "pusher:signin",
        {
            "auth": user_auth(server.key, server.secret, ann.socket_id, bob_data),
            "user_data": bob_data,
        },
    )
    ann.expect_error("any", "signed in")
    witness.check()


def test_watchlist_over_100_ids_keeps_the_first_100_and_sends_4302(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    client = pool.connect(server)
    watched = [f"w{i}" for i in range(105)]
    user_data = json.dumps({"id": unique("watcher-"), "watchlist": watched})
    client.send_event(
        "pusher:signin",
        {
            "auth": user_auth(server.key, server.secret, client.socket_id, user_data),
            "user_data": user_data,
        },
    )
    client.expect("pusher:signin_success")
    client.expect_error(4302)
    client.ping()  # 4302 is an error event only
    witness.check()


def test_duplicate_subscribe_is_refused_and_delivers_once(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    channel = unique("dup-")
    client = pool.connect(server)
    client.subscribe(channel)
    client.subscribe_frame(channel)
    client.expect_error("any", "existing subscription")
    sdk(server).trigger(channel, "once", {})
    client.expect("once", channel)
    client.ping()
    assert sum(1 for f in client.seen if f.get("event") == "once") == 1
    client.send_event("pusher:unsubscribe", {"channel": channel})
    sdk(server).trigger(channel, "after-unsubscribe", {})
    client.ping()
    never_before_sentinel(witness.client, server, witness.channel, "nothing")
    assert all(f.get("event") != "after-unsubscribe" for f in client.seen)


def test_client_event_name_longer_than_200_is_refused(
    server: ParleyServer, witness: Witness, pool: ClientPool
) -> None:
    sender, receiver, channel = private_pair(pool, server)
    long_name = "client-" + "n" * 194
    sender.send_event(long_name, {}, channel)
    sender.expect_error(None, "200")
    never_before_sentinel(receiver, server, channel, long_name)
    witness.check()
