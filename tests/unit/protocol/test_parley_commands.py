"""Parley's own frames (`parley:resume`, `parley:history`, `parley:refresh`) read into
commands by the protocol machine, and the refusals it answers itself."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.auth.signatures import channel_auth_string, make_token
from parley.errors import InvalidArgument
from parley.protocol.connection import (
    HistoryQuery,
    HistoryRequest,
    PusherConnection,
    Refresh,
    Reply,
    Resume,
    history_query,
)
from parley.settings import AppConfig

APP = AppConfig(id="1", key="key", secret="secret")
SID = "123.456"


def subscribed(*channels: str) -> PusherConnection:
    conn = PusherConnection(APP, SID)
    conn.establish(120)
    for channel in channels:
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith("private-"):
            data["auth"] = make_token("key", "secret", channel_auth_string(SID, channel))
        (command,) = send(conn, "pusher:subscribe", data)
        assert not isinstance(command, Reply), command
    return conn


def send(conn: PusherConnection, event: str, data: Any) -> list[Any]:
    return conn.receive(json.dumps({"event": event, "data": data}).encode(), 0.0)


def refusal(commands: list[Any]) -> dict[str, Any]:
    """The one pusher:error these commands are, as a frame."""
    (reply,) = commands
    assert isinstance(reply, Reply), reply
    frame = json.loads(reply.frame)
    assert frame["event"] == "pusher:error" and frame["data"]["code"] is None, frame
    # not counted in parley_errors_total: these refusals never were
    assert reply.error is False
    return frame  # type: ignore[no-any-return]


# -- parley:resume ---------------------------------------------------------------------------


def test_resume_is_a_command_with_the_channel_and_position() -> None:
    conn = subscribed("chat")
    since = {"offset": 12, "epoch": "e1"}
    assert send(conn, "parley:resume", {"channel": "chat", "since": since}) == [
        Resume("chat", 12, "e1")
    ]


@pytest.mark.parametrize("event", ["parley:resume", "parley:history"])
@pytest.mark.parametrize("channel", [None, 5, "elsewhere"])
def test_resume_and_history_need_a_subscribed_channel(event: str, channel: Any) -> None:
    conn = subscribed("chat")
    frame = refusal(send(conn, event, {"channel": channel, "since": {"offset": 1, "epoch": "e"}}))
    assert frame["data"]["message"] == f"{event} needs a channel this connection is subscribed to"
    assert "channel" not in frame


@pytest.mark.parametrize(
    "since",
    [
        None,
        "1:e",
        {"offset": "1", "epoch": "e"},
        {"offset": True, "epoch": "e"},
        {"offset": 1.0, "epoch": "e"},
        {"offset": 1},
        {"offset": 1, "epoch": 7},
    ],
)
def test_resume_needs_an_integer_offset_and_a_string_epoch(since: Any) -> None:
    conn = subscribed("private-chat")
    frame = refusal(send(conn, "parley:resume", {"channel": "private-chat", "since": since}))
    assert frame["data"]["message"] == "parley:resume needs since: {offset: int, epoch: str}"


def test_resume_refuses_an_offset_no_store_can_hold() -> None:
    """Found by fuzzing: an offset past 64 bits reached PostgreSQL's BIGINT and failed there
    (asyncpg DataError), leaving the client without an answer."""
    conn = subscribed("chat")
    since = {"offset": 2**63, "epoch": "e"}
    frame = refusal(send(conn, "parley:resume", {"channel": "chat", "since": since}))
    assert "since.offset must be at most 9223372036854775807" in frame["data"]["message"]
    since = {"offset": 2**63 - 1, "epoch": "e"}
    assert send(conn, "parley:resume", {"channel": "chat", "since": since}) == [
        Resume("chat", 2**63 - 1, "e")
    ]


# -- parley:history --------------------------------------------------------------------------


def test_history_is_a_command_with_its_page() -> None:
    conn = subscribed("chat")
    args = {"channel": "chat", "limit": 10, "direction": "backward", "before": 50}
    assert send(conn, "parley:history", args) == [
        HistoryRequest("chat", HistoryQuery(10, "backward", None, 50))
    ]
    assert send(conn, "parley:history", {"channel": "chat"}) == [
        HistoryRequest("chat", HistoryQuery(100, "forward", None, None))
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"limit": "ten"}, "'limit' must be an integer"),
        ({"limit": [1]}, "'limit' must be an integer"),
        ({"limit": 0}, "'limit' must be between 1 and 1000"),
        ({"limit": 1001}, "'limit' must be between 1 and 1000"),
        ({"limit": -1}, "'limit' must not be negative"),
        ({"after": "x"}, "'after' must be an integer"),
        ({"before": -5}, "'before' must not be negative"),
        ({"direction": "sideways"}, "'direction' must be forward or backward"),
        # found by fuzzing: past 64 bits, PostgreSQL's BIGINT refused them with a 500
        ({"after": 2**64}, "'after' must be at most 9223372036854775807"),
        ({"before": 1e300}, "'before' must be at most 9223372036854775807"),
        ({"limit": True}, "'limit' must be an integer"),
        ({"before": 2.5}, "'before' must be an integer"),
    ],
)
def test_history_arguments_are_checked_and_the_refusal_names_the_channel(
    args: dict[str, Any], message: str
) -> None:
    conn = subscribed("chat")
    frame = refusal(send(conn, "parley:history", {"channel": "chat", **args}))
    assert (frame["data"]["message"], frame["channel"]) == (message, "chat")


def test_history_query_reads_the_http_apis_strings_too() -> None:
    assert history_query({"limit": "5", "after": "3", "before": "", "direction": ""}) == (
        HistoryQuery(5, "forward", 3, None)
    )
    with pytest.raises(InvalidArgument, match="'limit' must be between 1 and 1000") as refused:
        history_query({"limit": "0"})
    assert refused.value.http_status == 400


# -- parley:refresh and the rest -------------------------------------------------------------


def test_refresh_is_a_command_with_its_token() -> None:
    assert send(subscribed(), "parley:refresh", {"token": "a.b.c"}) == [Refresh("a.b.c")]


@pytest.mark.parametrize("data", [{}, {"token": ""}, {"token": 42}])
def test_refresh_needs_a_token(data: dict[str, Any]) -> None:
    frame = refusal(send(subscribed(), "parley:refresh", data))
    assert frame["data"]["message"] == "Refresh refused: parley:refresh needs a token"


def test_an_unknown_parley_event_is_refused_without_closing() -> None:
    conn = subscribed("chat")
    frame = refusal(send(conn, "parley:rewind", {"channel": "chat"}))
    assert frame["data"]["message"] == "Unsupported event 'parley:rewind'"
    assert send(conn, "parley:refresh", {"token": "t"}) == [Refresh("t")]  # still open


def test_parley_events_need_an_object_data_and_an_open_connection() -> None:
    (reply,) = subscribed().receive(b'{"event":"parley:refresh","data":7}', 0.0)
    assert isinstance(reply, Reply) and reply.error  # a protocol error, counted as before
    assert b"parley:refresh needs an object 'data'" in reply.frame
    early = PusherConnection(APP, SID).receive(b'{"event":"parley:refresh","data":{}}', 0.0)
    assert json.loads(early[0].frame)["data"]["code"] == 4009
