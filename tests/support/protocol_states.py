"""A Pusher connection of the protocol machine driven into each state it can be in, by valid
frames whose answers are checked on the way: what the fuzz tests (hypothesis and atheris)
start from."""

from __future__ import annotations

from typing import Any

from parley.auth.signatures import channel_auth_string, make_token, user_auth_string
from parley.protocol.channels import channel_type
from parley.protocol.connection import Close, Member, PusherConnection, Signin, Subscribe
from parley.settings import AppConfig
from tests.support.fuzzing import dump

KEY, SECRET, SID = "key", "secret", "123.456"
APPS = (
    AppConfig(id="1", key=KEY, secret=SECRET, client_events=True, client_event_rate=0),
    # one client event a second (the second in a row is refused, 4301), 3 users watched
    AppConfig(
        id="1", key=KEY, secret=SECRET, client_events=True, client_event_rate=1, max_watchlist=3
    ),
    AppConfig(id="1", key=KEY, secret=SECRET),  # client events off
    AppConfig(
        id="1",
        key=KEY,
        secret=SECRET,
        client_events=True,
        max_event_bytes=64,
        max_presence_user_info_bytes=16,
        max_user_id_length=4,
    ),
)
PUBLIC = ("news", "cache-news")
PRIVATE = ("private-a", "private-cache-a", "private-encrypted-a", "private-encrypted-cache-a")
PRESENCE = ("presence-a", "presence-cache-a")
STATES = (
    "connecting",
    "open",
    "signed_in",
    "subscribed",
    "signed_in_subscribed",
    "closed",
    "refused",
)


def send(conn: PusherConnection, message: Any, now: float = 0.0) -> list[Any]:
    return conn.receive(dump(message).encode(), now)


def private_auth(channel: str, channel_data: str | None = None) -> str:
    return make_token(KEY, SECRET, channel_auth_string(SID, channel, channel_data))


def subscribe(conn: PusherConnection, channel: str, channel_data: str | None = None) -> Any:
    """Subscribe with a good signature; the one command that must come back."""
    data: dict[str, Any] = {"channel": channel}
    if not channel.startswith(("#", *PUBLIC)):
        data["auth"] = private_auth(channel, channel_data)
    if channel_data is not None:
        data["channel_data"] = channel_data
    (command,) = send(conn, {"event": "pusher:subscribe", "data": data})
    return command


def sign_in(conn: PusherConnection, user: dict[str, Any]) -> list[Any]:
    user_data = dump(user)
    auth = make_token(KEY, SECRET, user_auth_string(SID, user_data))
    return send(conn, {"event": "pusher:signin", "data": {"user_data": user_data, "auth": auth}})


def connection_in(state: str, app: AppConfig) -> PusherConnection:
    """A connection driven into `state` by valid frames, each answered as it must be."""
    conn = PusherConnection(app, SID)
    if state == "connecting":
        return conn
    conn.establish(120)
    if state in ("signed_in", "signed_in_subscribed"):
        (signin, *_) = sign_in(conn, {"id": "bob", "user_info": {"n": 1}})
        assert signin == Signin("bob", {"n": 1}, signin.user_data, ()), signin
    if state in ("subscribed", "signed_in_subscribed"):
        for channel in PUBLIC + PRIVATE:
            command = subscribe(conn, channel)
            assert command == Subscribe(channel, channel_type(channel), None), command
        member = dump({"user_id": "bob", "user_info": {"n": 2}})
        command = subscribe(conn, "presence-a", member)
        assert command.member == Member("bob", {"n": 2}), command
        if state == "signed_in_subscribed":
            command = subscribe(conn, "presence-cache-a")  # as the signed-in user
            assert command.member == Member("bob", {"n": 1}), command
            command = subscribe(conn, "#server-to-user-bob")
            assert isinstance(command, Subscribe), command
    if state == "closed":
        conn.close()
    if state == "refused":
        commands = send(conn, {"event": "pusher:signin", "data": {"user_data": "{}"}})
        assert isinstance(commands[-1], Close) and commands[-1].code == 4009, commands
    return conn
