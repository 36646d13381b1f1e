"""What the fuzz tests share: hypothesis strategies for what a hostile client sends (strings,
JSON text, Pusher frames with every field of every event mistyped), the answers
docs/protocol.md documents, checked for every case, and the count of cases the fuzz job
reports.

`PARLEY_FUZZ=1` (scripts/fuzz) runs each property for its full count (`cases`); the normal
suite runs a sliver of it, a few seconds in all.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st

from parley.auth.signatures import channel_auth_string, make_token, user_auth_string
from parley.protocol import frames
from parley.protocol.connection import (
    ClientEvent,
    Close,
    Command,
    HistoryRequest,
    Refresh,
    Reply,
    Resume,
    Signin,
    Subscribe,
    Unsubscribe,
)

FULL = os.environ.get("PARLEY_FUZZ") == "1"
QUICK_SHARE = 250  # the normal suite runs 1/QUICK_SHARE of each property's cases

APP_USER = "alice"  # of the fuzzed app (tests/fuzz/conftest.py): holds every grant
CASES: Counter[str] = Counter()  # cases run, by test: the fuzz job prints and checks the sum


def cases(full: int) -> int:
    """Examples for a property: `full` in the fuzz job, a sliver of it in the normal suite."""
    return full if FULL else max(10, full // QUICK_SHARE)


def counted(name: str) -> None:
    CASES[name] += 1


# -- what the documentation allows ------------------------------------------------------------

# docs/protocol.md: what a client's frame may get back. `pusher:error` code null for every
# refusal that keeps the connection, 4009 (+ close 4009) before connection_established or for a
# failed signin, 4301 for the client event rate limit, 4302 for a watchlist over the limit;
# close 1007 (no pusher:error) for text that is not UTF-8.
FRAME_ERROR_CODES = frozenset({None, 4009, 4301, 4302})
FRAME_CLOSE_CODES = frozenset({4009, 1007})
# What the HTTP API answers (docs/protocol.md, HTTP rows; README's API section): every 4xx
# carries {"error": message, "status": status}.
HTTP_STATUSES = frozenset({200, 204, 400, 401, 403, 404, 405, 408, 413, 429, 431})


def error_data(frame: bytes, codes: frozenset[int | None] = FRAME_ERROR_CODES) -> dict[str, Any]:
    """The data of a documented `pusher:error` frame, or AssertionError saying what is off."""
    parsed = json.loads(frame)
    assert isinstance(parsed, dict), frame
    assert parsed.get("event") == "pusher:error", frame
    assert set(parsed) <= {"event", "data", "channel"}, frame
    assert isinstance(parsed.get("channel", ""), str), frame
    data = parsed.get("data")
    assert isinstance(data, dict) and set(data) == {"code", "message"}, frame
    assert data["code"] in codes, f"undocumented error code: {frame!r}"
    message = data["message"]
    assert isinstance(message, str) and message.strip(), f"empty error message: {frame!r}"
    return data


def assert_documented(commands: list[Command]) -> None:
    """Every command `PusherConnection.receive` returned is a documented answer: a Reply is a
    pong or a documented pusher:error; a Close comes last, with a documented code, after a
    pusher:error of the same code (1007 alone, as RFC 6455 has it)."""
    assert isinstance(commands, list), commands
    for index, command in enumerate(commands):
        if isinstance(command, Reply):
            if command.frame == frames.PONG:
                assert not command.error
                continue
            data = error_data(command.frame)
            assert command.code == data["code"], command
        elif isinstance(command, Close):
            assert command.code in FRAME_CLOSE_CODES, command
            assert isinstance(command.reason, str) and command.reason, command
            assert index == len(commands) - 1, f"a close must be the last command: {commands}"
            if command.code == 1007:
                assert len(commands) == 1, commands
            else:
                assert index == 1 and isinstance(commands[0], Reply), commands
                assert json.loads(commands[0].frame)["data"]["code"] == command.code
        else:
            assert isinstance(
                command,
                Subscribe | Unsubscribe | ClientEvent | Signin | Resume | HistoryRequest | Refresh,
            ), command


def assert_error_response(status: int, body: bytes) -> None:
    """A documented HTTP answer: a known status (never 500), and a 4xx is the JSON object
    {"error": message, "status": status}."""
    assert status in HTTP_STATUSES, f"undocumented status {status}: {body[:300]!r}"
    if 400 <= status < 500:
        parsed = json.loads(body)
        assert isinstance(parsed, dict) and set(parsed) == {"error", "status"}, body[:300]
        assert parsed["status"] == status, body[:300]
        assert isinstance(parsed["error"], str) and parsed["error"].strip(), body[:300]


# -- strings and JSON values ------------------------------------------------------------------

EDGE_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil",  # right-to-left override
    "\u200f\u200e",  # RTL and LTR marks
    "e\u0301\u0301\u0301",  # combining marks
    "\U0001f600",  # outside the BMP
    "\U0010ffff",
    "\ufeff",  # byte order mark
    "\ufffd",
    "\uffff",
    "\u2028\u2029",  # JSON may hold them raw, JavaScript may not
    "\\",
    '"',
    "'",
    "%00",
    "%ZZ",
    "../../",
    "presence-",
    "private-",
    "#server-to-user-",
    "client-",
    "pusher:",
    "parley:",
    "null",
    "1.2",
    "-1",
    "1e309",
    "NaN",
)


def _repeat(piece: str, n: int) -> str:
    return (piece * (n // len(piece) + 1))[:n]


# Long strings made cheaply: a short piece repeated to lengths around the limits.
huge_strings = st.builds(
    _repeat,
    st.sampled_from(("a", "é", "\U0001f600", "\x00", "ab\u0301")),
    st.sampled_from((129, 200, 201, 1024, 1025, 10240, 10241, 65535, 65536, 65537, 70000)),
)
# Text a client may send: any unicode (no lone surrogates: UTF-8 cannot carry them; escaped
# ones are in `json_text`), the edge cases above, and now and then a huge string.
edge_text = st.one_of(
    st.text(max_size=24),
    st.sampled_from(EDGE_STRINGS),
    st.lists(st.sampled_from(EDGE_STRINGS), max_size=3).map("".join),
    huge_strings,
)
small_text = st.one_of(st.text(max_size=12), st.sampled_from(EDGE_STRINGS))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from((0, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30)),
    st.floats(allow_nan=False, allow_infinity=False),
    small_text,
)


def json_values(
    max_leaves: int = 10, text: st.SearchStrategy[str] = small_text
) -> st.SearchStrategy[Any]:
    """Any JSON value, big integers (beyond 64 bits) included."""
    scalars = _scalars if text is small_text else st.one_of(_scalars, text)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(small_text, inner, max_size=4),
        max_leaves=max_leaves,
    )


any_json = json_values(8, edge_text)  # huge strings too
small_json = json_values(4)


def dump(value: Any, *, ascii_only: bool = False) -> str:
    """JSON text of `value` (big integers as digits, as a client may write them)."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=False)


def nested(depth: int, kind: str, leaf: str = "1") -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return '{"a":' * depth + leaf + "}" * depth


# Arrays and objects nested around the 128 limit and orjson's own 1024.
nested_json = st.builds(
    nested,
    st.one_of(st.integers(1, 140), st.sampled_from((127, 128, 129, 300, 1023, 1024, 1025, 5000))),
    st.sampled_from(("array", "object")),
    st.sampled_from(("1", "[]", "{}", '""', "[1,{}]")),
)

ESCAPES = (
    "\\ud800",  # a lone high surrogate
    "\\udc00",  # a lone low surrogate
    "\\ud83d\\ude00",  # a pair: fine
    "\\ud83d\\u0041",  # a high surrogate, then no low one
    "\\u0000",
    "\\u202e",
    "\\uFFFF",
    "\\x41",  # not an escape JSON knows
    "\\u12",  # cut short
    "\\",
)
# A JSON string literal (quotes included) holding escapes, some of them invalid.
escaped_strings = st.lists(st.sampled_from((*ESCAPES, "a", "é", " ")), min_size=1, max_size=6).map(
    lambda parts: '"' + "".join(parts) + '"'
)


def _cut(text: str, at: int) -> str:
    return text[: at % (len(text) + 1)]


# Text that is JSON, nearly JSON, or not: values, values cut short, nested, escaped.
json_text = st.one_of(
    st.builds(dump, any_json, ascii_only=st.booleans()),
    st.builds(_cut, st.builds(dump, small_json), st.integers(0, 10**6)),
    nested_json,
    escaped_strings,
    st.text(max_size=40),
    st.sampled_from(
        ("", "null", "[]", "{}", '{"event":null}', '{"event":""}', "NaN", "1e400", "-", "{,}")
    ),
)

# -- Pusher frames ----------------------------------------------------------------------------

KNOWN_EVENTS = (
    "pusher:ping",
    "pusher:pong",
    "pusher:subscribe",
    "pusher:unsubscribe",
    "pusher:signin",
    "parley:resume",
    "parley:history",
    "parley:refresh",
)
OTHER_EVENTS = (
    "client-x",
    "client-",
    "pusher:connection_established",
    "pusher:error",
    "pusher:unknown",
    "pusher_internal:subscription_succeeded",
    "pusher_internal:member_added",
    "parley:unknown",
    "parley:",
    "message",
    "",
)
CHANNEL_PREFIXES = (
    "",
    "private-",
    "private-cache-",
    "private-encrypted-",
    "private-encrypted-cache-",
    "presence-",
    "presence-cache-",
    "cache-",
    "#server-to-user-",
    "#",
)
NAME_CHARS = "abcXYZ019_-=@,.;"
names = st.text(NAME_CHARS, min_size=1, max_size=30)


def channel_names(known: Iterable[str] = ()) -> st.SearchStrategy[str]:
    """Channel names: mostly the ones a test's connections hold (`known`) and valid ones of
    every kind, else names that break the rules."""
    valid = st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(CHANNEL_PREFIXES), names)
    known = tuple(known)
    if known:
        valid = st.one_of(st.sampled_from(known), valid)
    return mostly(valid, st.one_of(edge_text, st.sampled_from(("x" * 200, "x" * 201))), 8)


# A value of each JSON type, the edges of each: what a mistyped field holds (one draw, where a
# generated JSON value takes dozens: the fuzz job's count depends on it).
WRONG_VALUES = st.sampled_from(
    (
        None,
        True,
        False,
        0,
        -1,
        2**63,
        2**64,
        -(2**63) - 1,
        10**30,
        1.5,
        -0.0,
        1e300,
        "",
        "x",
        "\x00",
        "\U0001f600",
        "x" * 300,
        [],
        [None],
        [[[]]],
        {},
        {"": None},
        {"channel": {}},
    )
)


def mostly(
    usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any], tenths: int = 7
) -> st.SearchStrategy[Any]:
    """`usual` `tenths` times in ten, else `other`. (st.one_of cannot weigh its branches:
    it merges a strategy given twice.)"""
    dice = st.integers(0, 9)

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(usual if draw(dice) < tenths else other)

    return pick()


def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: a good one seven times in ten, else one of any type."""
    return mostly(good, WRONG_JSON)


# A wrong value: one of WRONG_VALUES mostly (one draw), a generated JSON value now and then.
WRONG_JSON = mostly(WRONG_VALUES, small_json, 8)
_LEFT_OUT = object()


def fields(
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """An object with `required` keys and `optional` ones (each there one time in two): all
    good four times in ten; else one key, or (one time in ten) any of them, left out or given
    a value of any type; and now and then a stray key. Objects wrong in one field at a time
    reach every check, and valid ones the code behind the checks."""
    optional = optional or {}
    keys = [*required, *optional]
    goods = {**required, **optional}
    fuzzed = {key: field(good) for key, good in goods.items()}
    broken = mostly(WRONG_JSON, st.just(_LEFT_OUT))
    tenths = st.integers(0, 9)
    which = st.sampled_from(keys) if keys else st.none()

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        mode = draw(tenths)  # 0-3 all good, 4-8 one key broken, 9 any
        wrong = draw(which) if 4 <= mode <= 8 else None
        out: dict[str, Any] = {}
        for key in keys:
            if key in optional and draw(tenths) >= 5:
                continue
            if mode == 9:
                value = draw(fuzzed[key]) if draw(tenths) < 8 else _LEFT_OUT
            else:
                value = draw(broken if key == wrong else goods[key])
            if value is not _LEFT_OUT:
                out[key] = value
        if draw(tenths) == 9:
            out[draw(small_text)] = draw(WRONG_VALUES)
        return out

    return build()


# Offsets and bounds: fine, negative, past 64 bits, of the wrong type.
positions = st.one_of(
    st.integers(-5, 1000),
    st.sampled_from((2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 1e300, True)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(("", "7", "-1", "1e3", "x", "²")),
)


def frame_texts(
    key: str, secret: str, socket_id: str, known: Iterable[str] = ()
) -> st.SearchStrategy[bytes]:
    """Text messages a client may send to a connection `socket_id` of app `key`/`secret`: a
    known event with good or mistyped fields (data an object, or a JSON string as some clients
    send it), an unknown event, a client event on a channel held or not (`known` names the
    ones the connection may hold), signatures right and wrong, JSON broken, too deep or not
    an object, text over the size limit, bytes that are not UTF-8."""
    channels = channel_names(known)
    good_channel = field(channels)
    member = fields(
        {"user_id": st.one_of(names, small_text, st.integers())}, {"user_info": small_json}
    )
    user = fields(
        {"id": st.one_of(names, small_text)},
        {
            "user_info": small_json,
            "watchlist": st.lists(st.one_of(names, small_json), max_size=120),
        },
    )

    channel_data = field(st.builds(dump, member))
    signers = st.sampled_from((key, key, "other", None))  # right, of another app, none
    coin = st.booleans()
    quarters = st.integers(0, 3)

    @st.composite
    def subscribe_data(draw: st.DrawFn) -> dict[str, Any]:
        channel = draw(good_channel)
        data: dict[str, Any] = {"channel": channel}
        if draw(coin):
            data["channel_data"] = draw(channel_data)
        signer = draw(signers)
        if signer is not None and isinstance(channel, str):
            signed = data.get("channel_data")
            message = channel_auth_string(
                socket_id, channel, signed if isinstance(signed, str) else None
            )
            data["auth"] = make_token(signer, secret, message)
        elif draw(coin):
            data["auth"] = draw(small_json)
        return data

    user_datas = field(st.one_of(st.builds(dump, user), json_text))

    @st.composite
    def signin_data(draw: st.DrawFn) -> dict[str, Any]:
        user_data = draw(user_datas)
        data: dict[str, Any] = {"user_data": user_data}
        if isinstance(user_data, str) and draw(quarters):
            data["auth"] = make_token(key, secret, user_auth_string(socket_id, user_data))
        elif draw(coin):
            data["auth"] = draw(small_json)
        return data

    data_values = mostly(WRONG_JSON, st.one_of(any_json, huge_strings), 6)
    datas: dict[str, st.SearchStrategy[Any]] = {
        "pusher:subscribe": subscribe_data(),
        "pusher:unsubscribe": fields({"channel": channels}),
        "pusher:signin": signin_data(),
        "parley:resume": fields(
            {"channel": channels, "since": fields({"offset": positions, "epoch": small_text})}
        ),
        "parley:history": fields(
            {"channel": channels},
            {
                "limit": positions,
                "before": positions,
                "after": positions,
                "direction": st.sampled_from(("forward", "backward", "up", "")),
            },
        ),
        "parley:refresh": fields({"token": st.one_of(st.just("a.b.c"), small_text)}),
    }
    events = mostly(
        st.sampled_from(KNOWN_EVENTS),
        st.one_of(
            st.sampled_from(OTHER_EVENTS), small_text.map(lambda s: "client-" + s), small_text
        ),
        tenths=6,
    )

    tenths = st.integers(0, 9)
    shapes = st.integers(0, 5)
    fifths = st.integers(0, 4)

    @st.composite
    def event_frame(draw: st.DrawFn) -> bytes:
        event = draw(events)
        # the event's name is of the wrong type one time in ten
        message: dict[str, Any] = {"event": event if draw(tenths) < 9 else draw(WRONG_VALUES)}
        if event.startswith("client-") or draw(fifths) == 0:
            message["channel"] = draw(good_channel)
        data = draw(datas.get(event, data_values))
        shape = draw(shapes)
        if shape == 1:
            message["data"] = dump(data)  # JSON-encoded, as some clients send it
        elif shape == 2:
            message["data"] = draw(nested_json)  # a JSON string nested too deep, or not
        elif shape != 4:  # 4: no data at all
            message["data"] = data
        text = dump(message, ascii_only=draw(coin))
        if shape == 5:  # data replaced by a string literal with escapes (lone surrogates...)
            text = dump({**message, "data": None})[: -len("null}")]
            text += draw(escaped_strings) + "}"
        if draw(tenths) == 9:
            text = _cut(text, draw(st.integers(0, len(text))))
        return text.encode()

    @st.composite
    def deep_frame(draw: st.DrawFn) -> bytes:
        """Deep JSON in a frame, or in a JSON string inside one."""
        deep = draw(nested_json)
        where = draw(st.sampled_from(("frame", "data", "channel_data", "user_data")))
        if where == "frame":
            return ('{"event":"client-x","channel":"private-a","data":' + deep + "}").encode()
        if where == "data":
            return dump({"event": "pusher:subscribe", "data": deep}).encode()
        event = "pusher:signin" if where == "user_data" else "pusher:subscribe"
        return dump({"event": event, "data": {where: deep, "channel": "presence-a"}}).encode()

    @st.composite
    def large_frame(draw: st.DrawFn) -> bytes:
        """A client event around the size limit, whole or cut at it (maybe mid-character)."""
        size = draw(st.sampled_from((65535, 65536, 65537, 100_000)))
        filler = draw(st.sampled_from(("a", "é", "\U0001f600")))
        head = '{"event":"client-x","channel":"private-a","data":"'
        raw = (head + _repeat(filler, (size - len(head)) // len(filler.encode())) + '"}').encode()
        return raw if draw(st.booleans()) else raw[:size]

    return mostly(
        event_frame(),
        st.one_of(
            json_text.map(str.encode),
            st.binary(max_size=100),
            deep_frame(),
            large_frame(),
        ),
        tenths=7,
    )
