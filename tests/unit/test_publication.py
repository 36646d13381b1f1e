"""The envelope: the publisher's wire forms, and frames byte for byte as before it existed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from parley.protocol import frames
from parley.publication import (
    NO_EXTRAS,
    NO_POSITION,
    Publication,
    Publisher,
    StreamPosition,
    extras_of,
)


def old_stored_event(
    event: str,
    channel: str,
    data_json: bytes,
    user_id: str | None,
    publisher_json: bytes,
    offset: int,
    epoch: str,
    ts: int,
    message_id: str,
) -> bytes:
    """`frames.stored_event` as it was before the envelope (nine arguments), kept verbatim."""
    data = orjson.Fragment(data_json) if data_json != b"null" else None
    parley = {
        "publisher": orjson.Fragment(publisher_json),
        "offset": offset,
        "epoch": epoch,
        "ts": ts,
        "id": message_id,
    }
    return frames.frame(event, data, channel, user_id=user_id, parley=parley)


@pytest.mark.parametrize(
    ("publisher", "json"),
    [
        (Publisher("user", "42"), b'{"type":"user","id":"42"}'),
        (Publisher("server", "1"), b'{"type":"server","app_id":"1"}'),
        (Publisher("connection", "1.2"), b'{"type":"connection","socket_id":"1.2"}'),
        (Publisher("bot", "helper"), b'{"type":"bot","id":"helper"}'),
        (Publisher("user", 'é"\\'), b'{"type":"user","id":"\xc3\xa9\\"\\\\"}'),
    ],
)
def test_publisher_wire_forms(publisher: Publisher, json: bytes) -> None:
    assert publisher.json() == json
    assert publisher.json() is publisher.json()  # encoded once
    assert orjson.dumps(publisher.wire()) == json
    assert Publisher.from_wire(orjson.loads(json)) == publisher
    assert publisher.user_id == (publisher.id if publisher.kind == "user" else None)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "robot", "id": "1"},
        {"type": "server", "id": "1"},  # a server's id is its app_id
        {"type": "user", "id": 42},
        {"id": "1"},
        ["user", "1"],
        None,
    ],
)
def test_what_is_not_a_publisher_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="not a publisher"):
        Publisher.from_wire(value)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown publisher kind"):
        Publisher("admin", "1")  # type: ignore[arg-type]


# The publisher stamps that the node made before the envelope, by sender.
OLD_STAMPS = [
    (Publisher("user", "42"), {"type": "user", "id": "42"}, "42"),
    (Publisher("server", "1"), {"type": "server", "app_id": "1"}, None),
    (Publisher("connection", "123.456"), {"type": "connection", "socket_id": "123.456"}, None),
]


@pytest.mark.parametrize(("publisher", "stamp", "user_id"), OLD_STAMPS)
@pytest.mark.parametrize("data", [{"m": "hi", "n": [1, None]}, 'an "API" string', None, ""])
def test_frames_are_byte_for_byte_as_before(
    publisher: Publisher, stamp: dict[str, Any], user_id: str | None, data: Any
) -> None:
    position = StreamPosition(7, "ep0ch")
    publication = Publication(
        "private-chat", "client-m", data, publisher, position, 1_700_000_000_123, "a" * 32
    )
    old = old_stored_event(
        "client-m",
        "private-chat",
        orjson.dumps(data),
        user_id,
        orjson.dumps(stamp),
        7,
        "ep0ch",
        1_700_000_000_123,
        "a" * 32,
    )
    assert frames.stored_event(publication) == old
    # a channel that keeps no history: as the node wrote it before
    unstored = Publication("private-chat", "client-m", data, publisher)
    old_unstored = frames.frame(
        "client-m", data, "private-chat", user_id=user_id, parley={"publisher": stamp}
    )
    assert frames.unstored_event(unstored) == old_unstored
    # the history page's `parley` object
    assert publication.parley() == orjson.loads(old)["parley"]


def test_extras_join_the_parley_object_of_both_frames() -> None:
    extras = {"signature": "c2ln", "conversation": {"id": "c-1"}}
    publication = Publication(
        "c", "e", 1, Publisher("server", "1"), StreamPosition(3, "ep"), 5, "id", extras
    )
    parley = orjson.loads(frames.stored_event(publication))["parley"]
    assert parley == {
        "publisher": {"type": "server", "app_id": "1"},
        "offset": 3,
        "epoch": "ep",
        "ts": 5,
        "id": "id",
        **extras,
    }
    assert publication.parley() == parley
    unstored = Publication("c", "e", 1, Publisher("server", "1"), extras=extras)
    assert orjson.loads(frames.unstored_event(unstored))["parley"] == {
        "publisher": {"type": "server", "app_id": "1"},
        **extras,
    }


@pytest.mark.parametrize("key", ["publisher", "offset", "epoch", "ts", "id"])
def test_extras_may_not_take_a_key_of_the_parley_object(key: str) -> None:
    with pytest.raises(ValueError, match="extras may not use"):
        Publication("c", "e", 1, Publisher("server", "1"), extras={key: 1, "other": 2})


def test_extras_are_stored_as_one_json_object_or_nothing() -> None:
    bare = Publication("c", "e", 1, Publisher("server", "1"))
    assert bare.extras == {} and bare.extras is NO_EXTRAS
    assert bare.extras_json() is None
    assert extras_of(None) is NO_EXTRAS and extras_of("") is NO_EXTRAS
    extras = {"signature": "s", "n": [1, 2.5, None, "é"]}
    signed = Publication("c", "e", 1, Publisher("server", "1"), extras=extras)
    stored = signed.extras_json()
    assert stored is not None and orjson.loads(stored) == extras
    assert extras_of(stored) == extras
    assert extras_of(stored.encode()) == extras
    assert extras_of(extras) == extras  # as a decoded log record holds it
    with pytest.raises(ValueError):
        extras_of("[1]")


def test_equality_is_by_content_and_position_not_caches_nor_key() -> None:
    def make(**kw: Any) -> Publication:
        return Publication(
            "c", "e", {"a": 1}, Publisher("user", "u"), StreamPosition(1, "ep"), 9, "id", **kw
        )

    assert make() == make(idempotency_key="k", data_json=b'{"a":1}')
    assert make() != make(extras={"signature": "s"})
    assert make() != Publication(
        "c", "e", {"a": 1}, Publisher("user", "u"), StreamPosition(2, "ep"), 9, "id"
    )
    assert make() != Publication(
        "c", "e", {"a": 1}, Publisher("connection", "u"), StreamPosition(1, "ep"), 9, "id"
    )
    fresh = Publication("c", "e", None, Publisher("server", "1"))
    assert fresh.position is NO_POSITION and (fresh.ts, fresh.id) == (0, "")
    assert fresh.data_bytes() == b"null" and fresh.data_json is None  # not kept (4 KiB each)
    given = Publication("c", "e", {"a": 1}, Publisher("server", "1"), data_json=b'{"a":1}')
    assert given.data_bytes() is given.data_json
