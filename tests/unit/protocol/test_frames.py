"""The wire's encoders: a frame built from pre-encoded parts equals the general one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

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
