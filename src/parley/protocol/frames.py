"""The only JSON of the wire: encoding server frames and decoding client frames.

Pusher double-encodes `data` for connection_established, pusher_internal:* and API events
(a JSON string holding JSON); `pusher:error` data is an object (pysher indexes it).

JSON a client sends (a frame, the JSON strings inside one, an HTTP API body) is read by
`loads`, which refuses arrays and objects nested deeper than MAX_JSON_DEPTH: what Parley
does with a value afterwards (encode it again, put it in an error message) recurses, and
orjson's encoder stops at 254 levels, Python's repr near 1,000.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from parley.errors import InvalidText, ProtocolError
from parley.publication import Publication


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def frame(
    event: str,
    data: Any = None,
    channel: str | None = None,
    *,
    user_id: str | None = None,
    parley: dict[str, Any] | None = None,
) -> bytes:
    out: dict[str, Any] = {"event": event}
    if channel is not None:
        out["channel"] = channel
    if data is not None:
        out["data"] = data
    if user_id is not None:
        out["user_id"] = user_id
    if parley is not None:
        out["parley"] = parley
    return orjson.dumps(out)


def stored_event(publication: Publication) -> bytes:
    """The frame of a stored publication, made by `frame` with its data and publisher embedded
    as the JSON already encoded (not parsed again): one orjson call. Extras join `parley`."""
    data_json = publication.data_bytes()
    data = orjson.Fragment(data_json) if data_json != b"null" else None  # `frame` omits None
    publisher = publication.publisher
    position = publication.position
    parley = {
        "publisher": orjson.Fragment(publisher.json()),
        "offset": position.offset,
        "epoch": position.epoch,
        "ts": publication.ts,
        "id": publication.id,
    }
    if publication.extras:
        parley.update(publication.extras)
    return frame(
        publication.event, data, publication.channel, user_id=publisher.user_id, parley=parley
    )


def unstored_event(publication: Publication) -> bytes:
    """The frame of a publication on a channel that keeps no history: no position."""
    data_json = publication.data_bytes()
    data = orjson.Fragment(data_json) if data_json != b"null" else None
    publisher = publication.publisher
    parley = {"publisher": orjson.Fragment(publisher.json())}
    if publication.extras:
        parley.update(publication.extras)
    return frame(
        publication.event, data, publication.channel, user_id=publisher.user_id, parley=parley
    )


def error_frame(code: int | None, message: str, channel: str | None = None) -> bytes:
    return frame("pusher:error", {"code": code, "message": message}, channel)


def connection_established(socket_id: str, activity_timeout: int, **extra: Any) -> bytes:
    data = {"socket_id": socket_id, "activity_timeout": activity_timeout, **extra}
    return frame("pusher:connection_established", dumps(data))


def subscription_succeeded(channel: str, presence: dict[str, Any] | None = None) -> bytes:
    data = dumps({"presence": presence}) if presence is not None else "{}"
    return frame("pusher_internal:subscription_succeeded", data, channel)


def member_added(channel: str, user_id: str, user_info: Any) -> bytes:
    body: dict[str, Any] = {"user_id": user_id}
    if user_info is not None:
        body["user_info"] = user_info
    return frame("pusher_internal:member_added", dumps(body), channel)


def member_removed(channel: str, user_id: str) -> bytes:
    return frame("pusher_internal:member_removed", dumps({"user_id": user_id}), channel)


def subscription_count(channel: str, count: int) -> bytes:
    return frame(
        "pusher_internal:subscription_count", dumps({"subscription_count": count}), channel
    )


def watchlist_events(online: list[str], offline: list[str]) -> bytes:
    events = []
    if online:
        events.append({"name": "online", "user_ids": online})
    if offline:
        events.append({"name": "offline", "user_ids": offline})
    return frame("pusher_internal:watchlist_events", dumps({"events": events}))


PONG = frame("pusher:pong", {})
PING = frame("pusher:ping", {})


MAX_JSON_DEPTH: Final = 128  # arrays and objects one within another (serde_json's limit)
_TOO_DEEP: Final = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


class BadJson(ValueError):
    """What `loads` refuses; its text names the problem ("not valid JSON", or too deep)."""


class NotUtf8(BadJson):
    """Bytes that are not UTF-8 (orjson refuses them as JSON too)."""


def loads(text: str | bytes) -> Any:
    """The value of JSON a client sent, or BadJson. The depth is checked without recursion,
    and only when the text is long enough to hold that many levels (two bytes each); UTF-8
    only once orjson has refused the bytes, so valid input pays for neither."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:  # orjson stops at 1024 levels: "depth limit ..."
        if "depth" in str(exc):
            raise BadJson(_TOO_DEEP) from None
        if isinstance(text, bytes) and not is_utf8(text):
            raise NotUtf8("not valid UTF-8") from None
        raise BadJson("not valid JSON") from None
    if len(text) > 2 * MAX_JSON_DEPTH and _nested_deeper(value, MAX_JSON_DEPTH):
        raise BadJson(_TOO_DEEP)
    return value


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in `value`: one level at a
    time, each container seen once."""
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                inner.extend(v for v in item if isinstance(v, dict | list))
        level = inner
    return False


def decode(text: str | bytes) -> dict[str, Any]:
    """A client frame as a dict with a string `event`, or ProtocolError saying why not
    (InvalidText when the bytes are not UTF-8)."""
    try:
        message = loads(text)
    except NotUtf8:
        raise InvalidText("Text message is not valid UTF-8") from None
    except BadJson as exc:
        raise ProtocolError(f"Invalid message format: frame is {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("Invalid message format: frame must be a JSON object")
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError("Invalid message format: missing 'event'")
    return message


def data_object(message: dict[str, Any]) -> dict[str, Any]:
    """The `data` of a pusher:* frame as an object; some clients send it JSON-encoded."""
    data = message.get("data")
    if isinstance(data, str):
        try:
            data = loads(data) if data else {}
        except BadJson as exc:
            if str(exc) == _TOO_DEEP:
                raise ProtocolError(f"Invalid message format: data is {exc}") from None
            data = None
    if not isinstance(data, dict):
        raise ProtocolError(f"Invalid message format: {message['event']} needs an object 'data'")
    return data
