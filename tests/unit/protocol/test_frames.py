"""The wire's encoders: a frame built from pre-encoded parts equals the general one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from parley.protocol import frames


@pytest.mark.parametrize(
    ("event", "channel", "data", "user_id", "publisher"),
    [
        (
            "client-pub",
            "private-chat-1",
            {"m": "x", "n": [1, 2.5, None]},
            "user-1",
            {"type": "user", "id": "user-1"},
        ),
        ("message", "news", 'a "quoted"\nline é ☃', None, {"type": "server", "app_id": "1"}),
        (
            'client-é"\\',
            "presence-r\u00f6om",
            ["\u2028", {"k": True}],
            'u"\\\u0001',
            {"type": "connection", "socket_id": "1.2"},
        ),
        ("e", "c", None, "", {"type": "user", "id": ""}),
    ],
)
def test_stored_event_is_byte_for_byte_the_general_frame(
    event: str, channel: str, data: Any, user_id: str | None, publisher: dict[str, Any]
) -> None:
    parley = {
        "publisher": publisher,
        "offset": 12,
        "epoch": "Ab-9_x",
        "ts": 1795322828311,
        "id": "f" * 32,
    }
    expected = frames.frame(event, data, channel, user_id=user_id, parley=parley)
    got = frames.stored_event(
        event,
        channel,
        orjson.dumps(data),
        user_id,
        orjson.dumps(publisher),
        12,
        "Ab-9_x",
        1795322828311,
        "f" * 32,
    )
    assert got == expected
    assert orjson.loads(got)["parley"] == parley
