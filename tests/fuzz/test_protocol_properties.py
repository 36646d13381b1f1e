"""Properties of the pure protocol (frames, handshake, channel names, the connection machine)
under generated input: every event, good or mistyped in any field, in every state a connection
can be in, and bytes that are not JSON, not UTF-8, nested too deep or too large. Whatever comes
in, nothing raises and every answer is one docs/protocol.md documents; valid input still gets
its command (the round trips below)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from parley.errors import ConnectionRefused, InvalidArgument, InvalidText, ProtocolError
from parley.protocol import frames
from parley.protocol.channels import (
    MAX_CHANNEL_NAME,
    USER_ID_RE,
    channel_name_problem,
    channel_type,
)
from parley.protocol.connection import (
    MAX_OFFSET,
    ClientEvent,
    Close,
    HistoryQuery,
    HistoryRequest,
    Member,
    PusherConnection,
    Reply,
    Resume,
    Signin,
    State,
    Subscribe,
    Unsubscribe,
    history_query,
)
from parley.protocol.handshake import parse_handshake
from parley.settings import AppConfig
from tests.support.fuzzing import (
    any_json,
    assert_documented,
    cases,
    counted,
    dump,
    edge_text,
    error_data,
    frame_texts,
    json_text,
    json_values,
    names,
    nested,
    positions,
    small_json,
    small_text,
)
from tests.support.protocol_states import (
    APPS,
    KEY,
    PRESENCE,
    PRIVATE,
    PUBLIC,
    SECRET,
    SID,
    STATES,
    connection_in,
    private_auth,
    send,
    sign_in,
    subscribe,
)

pytestmark = pytest.mark.fuzz

FRAMES = frame_texts(KEY, SECRET, SID, (*PUBLIC, *PRIVATE, *PRESENCE, "#server-to-user-bob"))


# -- the connection machine -------------------------------------------------------------------


@settings(max_examples=cases(20_000))
@given(
    state=st.sampled_from(STATES),
    app=st.sampled_from(APPS),
    texts=st.lists(FRAMES, min_size=1, max_size=2),
)
def test_every_frame_in_every_state_gets_a_documented_answer(
    state: str, app: AppConfig, texts: list[bytes]
) -> None:
    counted("protocol: frames in every state")
    conn = connection_in(state, app)
    now = 0.0
    for text in texts:
        now += 0.05
        held = tuple(conn.subscriptions)
        was_closed = conn.state is State.CLOSED
        commands = conn.receive(text, now)
        assert_documented(commands)
        if was_closed:
            assert commands == []
            continue
        if any(isinstance(c, Close) for c in commands):
            assert conn.state is State.CLOSED
        for command in commands:
            check_command(conn, command, held)


def check_command(conn: PusherConnection, command: Any, held: tuple[str, ...]) -> None:
    """What a command says is consistent with the connection it came from."""
    if isinstance(command, Subscribe):
        assert channel_name_problem(command.channel) is None, command
        assert command.channel not in held and command.channel in conn.subscriptions
        assert command.type == channel_type(command.channel)
        if command.member is not None:
            assert isinstance(command.member.user_id, str) and command.member.user_id
            assert len(command.member.user_id) <= conn.app.max_user_id_length
    elif isinstance(command, Unsubscribe):
        assert command.channel in held and command.channel not in conn.subscriptions
    elif isinstance(command, ClientEvent):
        assert conn.app.client_events and command.event.startswith("client-")
        assert command.channel in conn.subscriptions
        assert channel_type(command.channel).allows_client_events
        assert command.data_json == orjson.dumps(command.data)
    elif isinstance(command, Signin):
        assert USER_ID_RE.fullmatch(command.user_id) and conn.user_id == command.user_id
        assert len(command.watchlist) <= conn.app.max_watchlist
        assert all(isinstance(w, str) for w in command.watchlist)
    elif isinstance(command, Resume):
        assert command.channel in conn.subscriptions
        assert command.offset <= MAX_OFFSET and isinstance(command.epoch, str)
    elif isinstance(command, HistoryRequest):
        assert command.channel in conn.subscriptions
        check_query(command.query)


def check_query(query: HistoryQuery) -> None:
    assert 1 <= query.limit <= 1000 and query.direction in ("forward", "backward")
    for bound in (query.after, query.before):
        assert bound is None or (type(bound) is int and 0 <= bound <= MAX_OFFSET), query


@settings(max_examples=cases(20))  # every state and data: 20 cases in all
@given(state=st.sampled_from(STATES[:-2]), data=st.sampled_from(({}, "", None, "{}")))
def test_ping_is_answered_in_every_open_state(state: str, data: Any) -> None:
    counted("protocol: ping")
    message = {"event": "pusher:ping"} if data is None else {"event": "pusher:ping", "data": data}
    assert send(connection_in(state, APPS[0]), message) == [Reply(frames.PONG)]


@settings(max_examples=cases(2_000))
@given(
    event=st.sampled_from(("pusher:subscribe", "pusher:signin", "client-x", "parley:history")),
    data=any_json,
)
def test_before_connection_established_everything_but_ping_is_4009(event: str, data: Any) -> None:
    counted("protocol: before established")
    conn = connection_in("connecting", APPS[0])
    text = dump({"event": event, "data": data, "channel": "private-a"}).encode()
    commands = conn.receive(text, 0.0)
    assert_documented(commands)
    if len(text) > 65536:  # the size is checked first: code null, the connection kept
        assert [type(c) for c in commands] == [Reply] and commands[0].code is None
    else:
        assert [type(c) for c in commands] == [Reply, Close] and commands[1].code == 4009


# -- round trips: valid input gets its command -------------------------------------------------

user_ids = names


@settings(max_examples=cases(6_000))
@given(prefix=st.sampled_from(("", "cache-")), name=names)
def test_public_subscribe_and_unsubscribe_round_trip(prefix: str, name: str) -> None:
    counted("protocol: public round trip")
    conn = connection_in("open", APPS[0])
    channel = prefix + name
    assert send(conn, {"event": "pusher:subscribe", "data": {"channel": channel}}) == [
        Subscribe(channel, channel_type(channel), None)
    ]
    assert send(conn, {"event": "pusher:unsubscribe", "data": {"channel": channel}}) == [
        Unsubscribe(channel, None)
    ]
    assert conn.subscriptions == {}


@settings(max_examples=cases(6_000))
@given(prefix=st.sampled_from(PRIVATE), name=names, good=st.booleans(), as_string=st.booleans())
def test_private_subscribe_needs_the_right_signature(
    prefix: str, name: str, good: bool, as_string: bool
) -> None:
    counted("protocol: private round trip")
    conn = connection_in("open", APPS[0])
    channel = prefix + name
    auth = private_auth(channel if good else channel + "x")
    data: Any = {"channel": channel, "auth": auth}
    commands = send(conn, {"event": "pusher:subscribe", "data": dump(data) if as_string else data})
    if good:
        assert commands == [Subscribe(channel, channel_type(channel), None)]
    else:
        assert "Invalid signature" in error_data(commands[0].frame)["message"]
        assert conn.subscriptions == {}


@settings(max_examples=cases(2_000))
@given(
    channel=st.sampled_from(PRESENCE),
    user_id=st.one_of(user_ids, st.integers(0, 10**12)),
    user_info=small_json,
)
def test_presence_member_round_trip(channel: str, user_id: Any, user_info: Any) -> None:
    counted("protocol: presence round trip")
    conn = connection_in("open", APPS[0])
    member: dict[str, Any] = {"user_id": user_id, "user_info": user_info}
    command = subscribe(conn, channel, dump(member))
    info = orjson.loads(dump(user_info))  # what the wire carries (big integers as floats)
    if len(orjson.dumps(info)) > APPS[0].max_presence_user_info_bytes:
        assert "limit is" in error_data(command.frame)["message"]
    else:
        assert command == Subscribe(
            channel, channel_type(channel), Member(str(user_id), None if info is None else info)
        )


@settings(max_examples=cases(4_000))
@given(
    user_id=user_ids,
    info=small_json,
    watchlist=st.lists(st.one_of(user_ids, st.integers(0, 999)), max_size=6),
)
def test_signin_round_trip(user_id: str, info: Any, watchlist: list[Any]) -> None:
    counted("protocol: signin round trip")
    conn = connection_in("open", APPS[1])  # max_watchlist 3
    commands = sign_in(conn, {"id": user_id, "user_info": info, "watchlist": watchlist})
    assert_documented(commands)
    signin = commands[0]
    assert isinstance(signin, Signin) and signin.user_id == user_id == conn.user_id
    assert signin.watchlist == tuple(str(w) for w in watchlist)[:3]
    if len(watchlist) > 3:
        assert error_data(commands[1].frame)["code"] == 4302
    else:
        assert len(commands) == 1


@settings(max_examples=cases(4_000))
@given(channel=st.sampled_from(("private-a", "presence-a")), data=small_json, event=names)
def test_client_event_carries_its_data_as_received(channel: str, data: Any, event: str) -> None:
    counted("protocol: client event round trip")
    conn = connection_in("subscribed", APPS[0])
    commands = send(conn, {"event": "client-" + event, "channel": channel, "data": data})
    received = orjson.loads(dump(data))
    sender = "bob" if channel.startswith("presence-") else None
    encoded = orjson.dumps(received)
    size = len(received.encode()) if isinstance(received, str) else len(encoded)
    if size > APPS[0].max_event_bytes:
        assert "limit is" in error_data(commands[0].frame)["message"]
    else:
        assert commands == [ClientEvent(channel, "client-" + event, received, sender)]
        assert commands[0].data_json == encoded


@settings(max_examples=cases(5_000))
@given(
    limit=st.integers(1, 1000),
    after=st.none() | st.integers(0, 2**63 - 1),
    before=st.none() | st.integers(0, 2**63 - 1),
    direction=st.sampled_from(("forward", "backward")),
    offset=st.integers(0, 2**63 - 1),
    epoch=small_text,
)
def test_history_and_resume_round_trip(
    limit: int, after: int | None, before: int | None, direction: str, offset: int, epoch: str
) -> None:
    counted("protocol: history and resume round trip")
    conn = connection_in("subscribed", APPS[0])
    query = {"channel": "news", "limit": limit, "direction": direction}
    query.update({k: v for k, v in (("after", after), ("before", before)) if v is not None})
    (command,) = send(conn, {"event": "parley:history", "data": query})
    assert command == HistoryRequest(
        "news",
        HistoryQuery(limit, direction, after, before),  # type: ignore[arg-type]
    )
    since = {"offset": offset, "epoch": epoch}
    (command,) = send(conn, {"event": "parley:resume", "data": {"channel": "news", "since": since}})
    assert command == Resume("news", offset, epoch)


# -- frames.loads -----------------------------------------------------------------------------


@settings(max_examples=cases(6_000))
@given(text=st.one_of(json_text, st.binary(max_size=100)))
def test_loads_returns_a_value_or_refuses_it(text: str | bytes) -> None:
    counted("frames: loads")
    for given_text in (text, text.encode() if isinstance(text, str) else text):
        try:
            value = frames.loads(given_text)
        except frames.BadJson as exc:
            assert str(exc) in ("not valid JSON", "not valid UTF-8", frames._TOO_DEEP)
        else:
            orjson.dumps(value)  # what Parley does with a value next: encode it again


@settings(max_examples=cases(2_000))
@given(value=json_values(20, edge_text))
def test_loads_reads_what_was_written(value: Any) -> None:
    counted("frames: loads round trip")
    text = dump(value)
    assert frames.loads(text.encode()) == orjson.loads(text)


@settings(max_examples=cases(1_000))
@given(depth=st.integers(1, 1200), kind=st.sampled_from(("array", "object")))
def test_nesting_beyond_128_levels_is_refused(depth: int, kind: str) -> None:
    counted("frames: nesting limit")
    text = nested(depth, kind)
    if depth <= frames.MAX_JSON_DEPTH:
        assert frames.loads(text) is not None
    else:
        with pytest.raises(frames.BadJson, match="deeper than 128"):
            frames.loads(text)


@settings(max_examples=cases(4_000))
@given(text=st.one_of(json_text, st.binary(max_size=100)))
def test_decode_gives_a_frame_or_a_documented_refusal(text: str | bytes) -> None:
    counted("frames: decode")
    try:
        message = frames.decode(text)
    except InvalidText:
        assert isinstance(text, bytes)
    except ProtocolError as exc:
        assert exc.code is None and exc.message.startswith("Invalid message format")
    else:
        assert isinstance(message, dict) and isinstance(message["event"], str)


# -- handshake, channel names, history arguments ----------------------------------------------

texts = st.one_of(edge_text, st.text(max_size=30))


@settings(max_examples=cases(6_000))
@given(
    path=st.one_of(
        texts,
        st.builds(lambda k: "/app/" + k, texts),
        st.builds(lambda t, k: f"/token/{t}/app/{k}", texts, texts),
    ),
    query=st.dictionaries(
        st.sampled_from(("protocol", "token", "client", "version", "x")), texts, max_size=4
    ),
    headers=st.none()
    | st.dictionaries(st.sampled_from(("authorization", "cookie", "origin")), texts, max_size=3),
)
@example(path="/app/k", query={"protocol": "²"}, headers=None)
def test_handshake_is_read_or_refused_as_documented(
    path: str, query: dict[str, str], headers: Mapping[str, str] | None
) -> None:
    counted("handshake: any")
    try:
        handshake = parse_handshake(path, query, headers)
    except ConnectionRefused as exc:
        assert exc.code == 4005 and exc.message
        return
    assert isinstance(handshake.app_key, str) and handshake.app_key
    assert handshake.protocol in (0, 5, 6, 7)
    if handshake.refusal is None:
        assert handshake.protocol in (5, 6, 7)
    else:
        assert handshake.protocol == 0 and handshake.refusal.code in (4007, 4008)


@settings(max_examples=cases(3_000))
@given(key=names, protocol=st.sampled_from(("5", "6", "7")), token=st.none() | names)
def test_handshake_round_trip(key: str, protocol: str, token: str | None) -> None:
    counted("handshake: round trip")
    query = {"protocol": protocol, "client": "js"}
    if token is not None:
        query["token"] = token
    handshake = parse_handshake(f"/app/{key}", query, {})
    assert (handshake.app_key, handshake.protocol, handshake.token) == (key, int(protocol), token)
    assert handshake.refusal is None


@settings(max_examples=cases(6_000))
@given(name=st.one_of(small_json, edge_text))
def test_a_channel_name_is_valid_or_its_problem_is_said(name: Any) -> None:
    counted("channels: names")
    problem = channel_name_problem(name)
    if problem is None:
        assert isinstance(name, str) and 0 < len(name) <= MAX_CHANNEL_NAME
        assert channel_type(name) is not None
    else:
        assert isinstance(problem, str) and problem


@settings(max_examples=cases(6_000))
@given(
    args=st.dictionaries(
        st.sampled_from(("limit", "after", "before", "direction", "x")),
        st.one_of(positions, small_json, texts),
        max_size=5,
    )
)
@example(args={"limit": 10**30}).via("regression: a limit past 64 bits")
@example(args={"before": 2**64}).via("regression: a bound past 64 bits")
@example(args={"after": 1e300}).via("regression: a float past 64 bits")
def test_history_query_is_read_or_refused(args: dict[str, Any]) -> None:
    counted("history query")
    for given_args in (args, {k: str(v) for k, v in args.items()}):  # JSON, then a query string
        try:
            query = history_query(given_args)
        except InvalidArgument as exc:
            assert exc.message
        else:
            check_query(query)
