"""The wire's encoders: a frame built from pre-encoded parts equals the general one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from parley.errors import InvalidText, ProtocolError
from parley.protocol import frames
from parley.publication import Publication, Publisher, StreamPosition


@pytest.mark.parametrize(
    ("event", "channel", "data", "publisher", "wire"),
    [
        (
            "client-pub",
            "private-chat-1",
            {"m": "x", "n": [1, 2.5, None]},
            Publisher("user", "user-1"),
            {"type": "user", "id": "user-1"},
        ),
        (
            "message",
            "news",
            'a "quoted"\nline é ☃',
            Publisher("server", "1"),
            {"type": "server", "app_id": "1"},
        ),
        (
            'client-é"\\',
            "presence-r\u00f6om",
            ["\u2028", {"k": True}],
            Publisher("user", 'u"\\\u0001'),
            {"type": "user", "id": 'u"\\\u0001'},
        ),
        (
            "client-anon",
            "private-c",
            {"k": 1},
            Publisher("connection", "1.2"),
            {"type": "connection", "socket_id": "1.2"},
        ),
        ("e", "c", None, Publisher("user", ""), {"type": "user", "id": ""}),
    ],
)
def test_stored_event_is_byte_for_byte_the_general_frame(
    event: str, channel: str, data: Any, publisher: Publisher, wire: dict[str, Any]
) -> None:
    parley = {
        "publisher": wire,
        "offset": 12,
        "epoch": "Ab-9_x",
        "ts": 1795322828311,
        "id": "f" * 32,
    }
    user_id = wire["id"] if wire["type"] == "user" else None
    expected = frames.frame(event, data, channel, user_id=user_id, parley=parley)
    publication = Publication(
        channel, event, data, publisher, StreamPosition(12, "Ab-9_x"), 1795322828311, "f" * 32
    )
    got = frames.stored_event(publication)
    assert got == expected
    assert orjson.loads(got)["parley"] == parley
    # with the data already encoded (as a client event has it): the same bytes
    publication.data_json = orjson.dumps(data)
    assert frames.stored_event(publication) == expected
    unstored = Publication(channel, event, data, publisher)
    assert frames.unstored_event(unstored) == frames.frame(
        event, data, channel, user_id=user_id, parley={"publisher": wire}
    )


def nest(depth: int, inner: str = "1") -> str:
    """Arrays and objects, alternating, `depth` levels deep around `inner`."""
    out = inner
    for level in range(depth):
        out = f"[{out}]" if level % 2 else f'{{"k":{out},"pad":"{"x" * 8}"}}'
    return out


@pytest.mark.parametrize("depth", [1, 127, 128])
def test_loads_takes_json_up_to_the_depth_limit(depth: int) -> None:
    assert frames.loads(nest(depth)) == orjson.loads(nest(depth))


@pytest.mark.parametrize("depth", [129, 300, 1024, 1025, 5000])
def test_loads_refuses_deeper_json_naming_the_depth(depth: int) -> None:
    with pytest.raises(frames.BadJson, match="nested deeper than 128 levels"):
        frames.loads(nest(depth).encode())


def test_loads_counts_containers_not_brackets_in_strings() -> None:
    text = orjson.dumps({"event": "client-x", "data": "[" * 5000, "list": [[1], [2], {"a": [3]}]})
    assert frames.loads(text)["data"] == "[" * 5000


def test_loads_refuses_what_is_not_json() -> None:
    with pytest.raises(frames.BadJson, match=r"^not valid JSON$"):
        frames.loads(b'{"event": ')


def test_bytes_that_are_not_utf8_are_told_apart_from_bad_json() -> None:
    with pytest.raises(frames.NotUtf8, match="not valid UTF-8"):
        frames.loads(b'{"event":"\xc3\x28"}')
    with pytest.raises(InvalidText):
        frames.decode(b'{"event":"\xff"}')
    with pytest.raises(ProtocolError, match="not valid JSON"):
        frames.decode('{"event":"caf\u00e9"'.encode())  # UTF-8, but not whole JSON
