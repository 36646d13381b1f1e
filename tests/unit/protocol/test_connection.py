"""The protocol state machine, without sockets or an event loop."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from parley.auth.signatures import channel_auth_string, make_token, user_auth_string
from parley.protocol.channels import Kind
from parley.protocol.connection import (
    ClientEvent,
    Close,
    Member,
    PusherConnection,
    Reply,
    Signin,
    Subscribe,
    Unsubscribe,
)
from parley.settings import AppConfig

APP = AppConfig(id="1", key="key", secret="secret", client_events=True)
SID = "123.456"


def connection(app: AppConfig = APP) -> PusherConnection:
    conn = PusherConnection(app, SID)
    conn.establish(120)
    return conn


def send(
    conn: PusherConnection, event: str, data: Any = None, now: float = 0.0, **extra: Any
) -> list[Any]:
    message: dict[str, Any] = {"event": event, **extra}
    if data is not None:
        message["data"] = data
    return conn.receive(json.dumps(message).encode(), now)


def error_of(commands: list[Any]) -> dict[str, Any]:
    assert commands and isinstance(commands[0], Reply), commands
    frame = json.loads(commands[0].frame)
    assert frame["event"] == "pusher:error", frame
    assert isinstance(frame["data"], dict)  # pysher indexes data['code']
    return frame["data"]  # type: ignore[no-any-return]


def private_auth(channel: str, socket_id: str = SID, key: str = "key") -> str:
    return make_token(key, "secret", channel_auth_string(socket_id, channel))


def presence_auth(channel: str, channel_data: str) -> str:
    return make_token("key", "secret", channel_auth_string(SID, channel, channel_data))


def signin(conn: PusherConnection, user_id: str, **extra: Any) -> list[Any]:
    user_data = json.dumps({"id": user_id, **extra})
    auth = make_token("key", "secret", user_auth_string(SID, user_data))
    return send(conn, "pusher:signin", {"auth": auth, "user_data": user_data})


def test_connection_established_has_string_data_and_activity_timeout() -> None:
    frame = json.loads(PusherConnection(APP, SID).establish(120))
    assert frame["event"] == "pusher:connection_established"
    assert json.loads(frame["data"]) == {"socket_id": SID, "activity_timeout": 120}


@pytest.mark.parametrize("data", [{}, ""])
def test_ping_is_answered_in_both_forms_even_before_established(data: Any) -> None:
    conn = PusherConnection(APP, SID)
    (reply,) = send(conn, "pusher:ping", data)
    assert json.loads(reply.frame) == {"event": "pusher:pong", "data": {}}


def test_subscribe_before_established_is_refused_with_4009() -> None:
    conn = PusherConnection(APP, SID)
    commands = send(conn, "pusher:subscribe", {"channel": "a"})
    assert error_of(commands)["code"] == 4009
    assert commands[1] == Close(4009, commands[1].reason)


def test_public_subscribe_and_sequencing() -> None:
    conn = connection()
    assert send(conn, "pusher:subscribe", {"channel": "news", "auth": ""}) == [
        Subscribe("news", replace_type("news"), None)
    ]
    assert (
        "Existing subscription"
        in error_of(send(conn, "pusher:subscribe", {"channel": "news"}))["message"]
    )
    assert send(conn, "pusher:unsubscribe", {"channel": "news"}) == [Unsubscribe("news", None)]
    assert (
        "No current subscription"
        in error_of(send(conn, "pusher:unsubscribe", {"channel": "news"}))["message"]
    )
    assert isinstance(send(conn, "pusher:subscribe", {"channel": "news"})[0], Subscribe)


def replace_type(name: str):  # type: ignore[no-untyped-def]
    from parley.protocol.channels import channel_type

    return channel_type(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a" * 201, "longer than 200"),
        ("bad name", "may only contain"),
        ("#other", "reserved"),
        ("", "non-empty"),
    ],
)
def test_invalid_channel_names(name: str, problem: str) -> None:
    assert problem in error_of(send(connection(), "pusher:subscribe", {"channel": name}))["message"]


def test_subscribe_with_missing_data_is_an_error_not_a_crash() -> None:
    conn = connection()
    assert "needs an object" in error_of(send(conn, "pusher:subscribe"))["message"]
    assert "needs an object" in error_of(send(conn, "pusher:subscribe", 42))["message"]
    assert "non-empty" in error_of(send(conn, "pusher:subscribe", {"channel": 5}))["message"]


def test_private_channel_auth() -> None:
    conn = connection()
    (ok,) = send(
        conn, "pusher:subscribe", {"channel": "private-a", "auth": private_auth("private-a")}
    )
    assert isinstance(ok, Subscribe) and ok.type.kind is Kind.PRIVATE
    assert (
        "Missing" in error_of(send(conn, "pusher:subscribe", {"channel": "private-b"}))["message"]
    )
    other_socket = private_auth("private-c", socket_id="9.9")
    error = error_of(send(conn, "pusher:subscribe", {"channel": "private-c", "auth": other_socket}))
    assert error["code"] is None and "Invalid signature" in error["message"]
    wrong_key = private_auth("private-d", key="nope")
    assert (
        "Invalid key"
        in error_of(send(conn, "pusher:subscribe", {"channel": "private-d", "auth": wrong_key}))[
            "message"
        ]
    )
    # a private-channel signature does not open the encrypted channel of another name
    assert (
        "Invalid signature"
        in error_of(
            send(
                conn,
                "pusher:subscribe",
                {"channel": "private-encrypted-a", "auth": private_auth("private-a")},
            )
        )["message"]
    )


def test_presence_with_channel_data_signed_over_the_raw_string() -> None:
    conn = connection()
    raw = '{"user_id": 10, "user_info": {"name": "A"}}'  # pysher-style separators
    (sub,) = send(
        conn,
        "pusher:subscribe",
        {"channel": "presence-x", "auth": presence_auth("presence-x", raw), "channel_data": raw},
    )
    assert sub.member == Member("10", {"name": "A"})


def test_presence_limits() -> None:
    app = replace(APP, max_presence_user_info_bytes=20, max_user_id_length=5)
    conn = connection(app)
    for data, problem in [
        ('{"user_id":"123456"}', "longer than 5"),
        ('{"user_id":"1","user_info":{"bio":"%s"}}' % ("x" * 30), "limit is 20"),
        ('{"user_info":{}}', "user_id"),
        ("not json", "not valid JSON"),
    ]:
        error = error_of(
            send(
                conn,
                "pusher:subscribe",
                {
                    "channel": "presence-x",
                    "auth": presence_auth("presence-x", data),
                    "channel_data": data,
                },
            )
        )
        assert problem in error["message"]


def test_presence_by_signin_without_channel_data() -> None:
    conn = connection()
    auth = private_auth("presence-room")
    assert (
        "signed-in"
        in error_of(send(conn, "pusher:subscribe", {"channel": "presence-room", "auth": auth}))[
            "message"
        ]
    )
    signin(conn, "42", user_info={"name": "Ann"})
    (sub,) = send(conn, "pusher:subscribe", {"channel": "presence-room", "auth": auth})
    assert sub.member == Member("42", {"name": "Ann"})


def test_signed_in_connection_cannot_join_presence_as_another_user() -> None:
    conn = connection()
    signin(conn, "42")
    data = '{"user_id":"43"}'
    error = error_of(
        send(
            conn,
            "pusher:subscribe",
            {
                "channel": "presence-x",
                "auth": presence_auth("presence-x", data),
                "channel_data": data,
            },
        )
    )
    assert "signed in as '42'" in error["message"]


def test_signin_and_server_to_user_channel() -> None:
    conn = connection()
    assert (
        "not signed in"
        in error_of(send(conn, "pusher:subscribe", {"channel": "#server-to-user-42"}))["message"]
    )
    (command,) = signin(conn, "42", watchlist=["7", "9"])
    assert command == Signin(
        "42", None, json.dumps({"id": "42", "watchlist": ["7", "9"]}), ("7", "9")
    )
    assert (
        "not signed in as"
        in error_of(send(conn, "pusher:subscribe", {"channel": "#server-to-user-43"}))["message"]
    )
    assert isinstance(
        send(conn, "pusher:subscribe", {"channel": "#server-to-user-42"})[0], Subscribe
    )


def test_bad_signin_closes_with_4009() -> None:
    conn = connection()
    commands = send(conn, "pusher:signin", {"auth": "key:00", "user_data": '{"id":"1"}'})
    assert error_of(commands)["code"] == 4009 and commands[1].code == 4009
    assert conn.receive(b'{"event":"pusher:ping"}', 0) == []  # closed: nothing more


def test_watchlist_over_the_limit_is_cut_with_4302() -> None:
    conn = connection(replace(APP, max_watchlist=2))
    commands = signin(conn, "1", watchlist=["a", "b", "c"])
    assert commands[0].watchlist == ("a", "b")
    assert json.loads(commands[1].frame)["data"]["code"] == 4302


def subscribed(channels: list[str], app: AppConfig = APP) -> PusherConnection:
    conn = connection(app)
    for name in channels:
        send(conn, "pusher:subscribe", {"channel": name, "auth": private_auth(name)})
    return conn


def test_client_event_rules() -> None:
    conn = subscribed(["private-a", "news"])
    (event,) = send(conn, "client-typing", {"x": 1}, channel="private-a")
    assert event == ClientEvent("private-a", "client-typing", {"x": 1}, None)
    assert (
        "not subscribed"
        in error_of(send(conn, "client-typing", {}, channel="private-b"))["message"]
    )
    assert (
        "only private and presence"
        in error_of(send(conn, "client-typing", {}, channel="news"))["message"]
    )
    disabled = subscribed(["private-a"], replace(APP, client_events=False))
    assert (
        "not have client messaging enabled"
        in error_of(send(disabled, "client-x", {}, channel="private-a"))["message"]
    )


def test_client_event_names_with_nul_are_refused() -> None:
    """Found by fuzzing: PostgreSQL refused such a name when storing it, failing the whole
    batch of events stored with it (tests/fuzz/test_websocket_properties.py)."""
    conn = subscribed(["private-a"])
    error = error_of(send(conn, "client-a\x00b", {}, channel="private-a"))
    assert error == {"code": None, "message": "Event name may not contain NUL characters"}
    assert isinstance(send(conn, "client-a\u2400b", {}, channel="private-a")[0], ClientEvent)


def test_client_event_carries_the_connection_identity_never_the_payload() -> None:
    conn = connection()
    signin(conn, "42")
    send(conn, "pusher:subscribe", {"channel": "private-a", "auth": private_auth("private-a")})
    (event,) = send(conn, "client-msg", {"text": "hi"}, channel="private-a", user_id="admin")
    assert event.user_id == "42"


def test_client_event_size_cap() -> None:
    conn = subscribed(["private-a"], replace(APP, max_event_bytes=10))
    assert (
        "limit is 10"
        in error_of(send(conn, "client-big", "x" * 11, channel="private-a"))["message"]
    )


def test_client_event_rate_limit_is_an_error_event_not_a_close() -> None:
    conn = subscribed(["private-a"], replace(APP, client_event_rate=2))
    assert isinstance(send(conn, "client-a", {}, now=100.0, channel="private-a")[0], ClientEvent)
    assert isinstance(send(conn, "client-a", {}, now=100.0, channel="private-a")[0], ClientEvent)
    commands = send(conn, "client-a", {}, now=100.1, channel="private-a")
    assert error_of(commands)["code"] == 4301 and len(commands) == 1
    assert isinstance(send(conn, "client-a", {}, now=100.6, channel="private-a")[0], ClientEvent)
    unlimited = subscribed(["private-a"], replace(APP, client_event_rate=0))
    for _ in range(100):
        assert isinstance(
            send(unlimited, "client-a", {}, now=5.0, channel="private-a")[0], ClientEvent
        )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"not json", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"data":{}}', "missing 'event'"),
        (b'{"event":"pusher:whatever","data":{}}', "reserved"),
        (b'{"event":"pusher_internal:member_added","data":{}}', "reserved"),
        (b'{"event":"hello","channel":"private-a","data":{}}', "must start with 'client-'"),
    ],
)
def test_bad_frames_get_an_error_and_keep_the_connection(text: bytes, problem: str) -> None:
    conn = connection()
    error = error_of(conn.receive(text, 0))
    assert problem in error["message"] and error["code"] is None
    assert conn.receive(b'{"event":"pusher:ping"}', 0) != []


def test_oversized_frame_is_refused() -> None:
    conn = PusherConnection(APP, SID, max_frame_bytes=100)
    conn.establish(120)
    assert "too large" in error_of(conn.receive(b" " * 101, 0))["message"]


def test_close_leaves_every_channel_with_its_member() -> None:
    conn = connection()
    signin(conn, "5")
    send(conn, "pusher:subscribe", {"channel": "presence-a", "auth": private_auth("presence-a")})
    send(conn, "pusher:subscribe", {"channel": "news"})
    assert conn.close() == [Unsubscribe("presence-a", Member("5", None)), Unsubscribe("news", None)]


def test_a_connection_holds_at_most_max_channels_per_connection() -> None:
    conn = connection(replace(APP, max_channels_per_connection=2))
    for name in ("a", "b"):
        assert isinstance(send(conn, "pusher:subscribe", {"channel": name})[0], Subscribe)
    error = error_of(send(conn, "pusher:subscribe", {"channel": "c"}))
    assert error["code"] is None and "may hold 2 channels" in error["message"]
    send(conn, "pusher:unsubscribe", {"channel": "a"})
    assert isinstance(send(conn, "pusher:subscribe", {"channel": "c"})[0], Subscribe)


def test_subscriptions_a_second_are_limited_with_4301() -> None:
    conn = connection(replace(APP, subscribe_rate=2))
    for name in ("a", "b"):
        assert isinstance(send(conn, "pusher:subscribe", {"channel": name}, now=50.0)[0], Subscribe)
    commands = send(conn, "pusher:subscribe", {"channel": "c"}, now=50.1)
    assert error_of(commands)["code"] == 4301 and len(commands) == 1
    assert "c" not in conn.subscriptions
    assert isinstance(send(conn, "pusher:subscribe", {"channel": "c"}, now=50.6)[0], Subscribe)


def test_a_rate_under_one_a_second_still_lets_one_through_now_and_then() -> None:
    conn = subscribed(["private-a"], replace(APP, client_event_rate=0.5, subscribe_rate=0.5))
    first = send(conn, "client-a", {}, now=100.0, channel="private-a")
    assert isinstance(first[0], ClientEvent)
    assert error_of(send(conn, "client-a", {}, now=101.0, channel="private-a"))["code"] == 4301
    assert isinstance(send(conn, "client-a", {}, now=102.1, channel="private-a")[0], ClientEvent)
    assert isinstance(send(conn, "pusher:subscribe", {"channel": "b"}, now=200.0)[0], Subscribe)
    assert error_of(send(conn, "pusher:subscribe", {"channel": "c"}, now=200.5))["code"] == 4301
    assert isinstance(send(conn, "pusher:subscribe", {"channel": "c"}, now=202.1)[0], Subscribe)
