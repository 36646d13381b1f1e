"""The envelope of one event, shared by every layer: what was published, by whom, and where it
stands in its channel's history.

A `Publication` is made once per message by the node (from a client event or an HTTP API
publish), stamped in place by the history store that appends it (`position`, `ts`, `id`), and
turned into its frame by `protocol.frames.stored_event` (or `unstored_event` on a channel that
keeps no history). Stores give back the same shape when they are read. It imports nothing of
Parley: protocol, core and backends all build on it.

Adding a field to what is stored and delivered means adding it to `extras` (a message
signature, a conversation id): stores keep the mapping as one encoded column, and its entries
go into the frame's `parley` object beside the publisher and the position.

Per-message classes: explicit `__init__` (mypyc compiles it; a dataclass-made one stays
interpreted, 5x slower), slots, not frozen (a frozen `__init__` is slower). Treat them as
values all the same: a `StreamPosition` is never changed, only replaced, and a Publication is
not changed once appended but by the store that stamps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson

PublisherKind = Literal["user", "server", "connection", "bot"]

# The key of the publisher's id in its wire JSON, by kind: {"type":"user","id":"42"},
# {"type":"server","app_id":"1"}, {"type":"connection","socket_id":"1.2"}, {"type":"bot","id":..}
ID_KEYS: Final[dict[str, str]] = {
    "user": "id",
    "server": "app_id",
    "connection": "socket_id",
    "bot": "id",
}

# The keys of a frame's `parley` object that extras may not take.
RESERVED_KEYS: Final = frozenset(("publisher", "offset", "epoch", "ts", "id"))


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)
class Publisher:
    """Who published: a signed-in user, the app's server (HTTP API), an anonymous connection
    (client events before sign-in), or a bot. Made once per sender, not per message: its JSON
    is encoded once and kept."""

    kind: str  # one of PublisherKind
    id: str  # the user id, app id, socket id or bot id
    # The id when a user published (else None): the `user_id` of the frames it sends.
    user_id: str | None = field(compare=False, repr=False)
    _json: bytes | None = field(compare=False, repr=False)

    def __init__(self, kind: PublisherKind, id: str) -> None:
        if kind not in ID_KEYS:
            raise ValueError(f"unknown publisher kind {kind!r}")
        self.kind = kind
        self.id = id
        self.user_id = id if kind == "user" else None
        self._json = None

    def wire(self) -> dict[str, str]:
        """As it appears in a frame's `parley.publisher`: {"type": "user", "id": "42"}."""
        return {"type": self.kind, ID_KEYS[self.kind]: self.id}

    def json(self) -> bytes:
        """`wire()` encoded, once."""
        encoded = self._json
        if encoded is None:
            encoded = self._json = orjson.dumps(self.wire())
        return encoded

    @staticmethod
    def from_wire(value: Any) -> Publisher:
        """The publisher of a wire object (as stored); ValueError when it is not one."""
        if isinstance(value, dict):
            kind = value.get("type")
            key = ID_KEYS.get(kind) if isinstance(kind, str) else None
            if key is not None:
                id_ = value.get(key)
                if isinstance(id_, str):
                    return Publisher(kind, id_)  # type: ignore[arg-type]
        raise ValueError(f"not a publisher: {value!r}")


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)  # not frozen: built per message, and frozen __init__ is slower
class StreamPosition:
    """Where a publication stands in its channel: its offset (1, 2, ... in this epoch) and the
    epoch (a random string that changes when the channel's history is deleted). As a channel's
    position: the last offset handed out, 0 when none."""

    offset: int
    epoch: str

    def __init__(self, offset: int, epoch: str) -> None:
        self.offset = offset
        self.epoch = epoch


# The position of a publication that is not stored (yet, or at all: a channel without history).
NO_POSITION: Final = StreamPosition(0, "")
NO_EXTRAS: Final[Mapping[str, Any]] = MappingProxyType({})


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)  # not frozen: built per message, and frozen __init__ is slower
class Publication:
    """One event on one channel: made by the node, stamped by the history store, delivered as
    one frame. Equality is by content and position, not by the caches or the idempotency key.
    """

    channel: str
    event: str
    data: Any  # str for HTTP API events, any JSON value for client events
    publisher: Publisher
    position: StreamPosition  # NO_POSITION until a store appends it
    ts: int  # server time of the append, milliseconds since the Unix epoch; 0 until then
    id: str  # message id, unique; "" until appended
    extras: Mapping[str, Any]  # JSON values by name, into the frame's `parley` object
    # A repeat within 5 minutes on the channel is not stored again (see HistoryStore.append).
    # Not kept by the stores' reads.
    idempotency_key: str | None = field(compare=False)
    # `data` encoded, when the caller has it already: a message is encoded once for its size
    # check, the store and the frame (see `data_bytes`). The node always gives it.
    data_json: bytes | None = field(compare=False, repr=False)

    def __init__(
        self,
        channel: str,
        event: str,
        data: Any,
        publisher: Publisher,
        position: StreamPosition = NO_POSITION,
        ts: int = 0,
        id: str = "",
        extras: Mapping[str, Any] = NO_EXTRAS,
        idempotency_key: str | None = None,
        data_json: bytes | None = None,
    ) -> None:
        if extras and not RESERVED_KEYS.isdisjoint(extras):
            raise ValueError(f"extras may not use {sorted(RESERVED_KEYS & set(extras))}")
        self.channel = channel
        self.event = event
        self.data = data
        self.publisher = publisher
        self.position = position
        self.ts = ts
        self.id = id
        self.extras = extras
        self.idempotency_key = idempotency_key
        self.data_json = data_json

    @property
    def user_id(self) -> str | None:
        """The sender's user id when a user sent it: the frame's top-level `user_id`."""
        return self.publisher.user_id

    def data_bytes(self) -> bytes:
        """`data` encoded: `data_json` when given, else encoded now. Not kept: a stored
        publication replayed to a client must not hold orjson's 4 KiB buffer from then on."""
        encoded = self.data_json
        return orjson.dumps(self.data) if encoded is None else encoded

    def kept(self) -> Publication:
        """The copy a store keeps: the same values, without the idempotency key and the encoded
        data (orjson's output holds a 4 KiB buffer: kept per message, it would be most of a
        store's memory and page faults)."""
        return Publication(
            self.channel,
            self.event,
            self.data,
            self.publisher,
            self.position,
            self.ts,
            self.id,
            self.extras,
        )

    def extras_json(self) -> str | None:
        """`extras` as stored in one column: JSON text, None when there are none."""
        extras = self.extras
        if not extras:
            return None
        return orjson.dumps(extras if type(extras) is dict else dict(extras)).decode()

    def parley(self) -> dict[str, Any]:
        """The frame's `parley` object as plain values (the history page's form)."""
        position = self.position
        out: dict[str, Any] = {
            "publisher": self.publisher.wire(),
            "offset": position.offset,
            "epoch": position.epoch,
            "ts": self.ts,
            "id": self.id,
        }
        if self.extras:
            out.update(self.extras)
        return out


def extras_of(stored: Any) -> Mapping[str, Any]:
    """The extras of a publication as a store kept them: JSON text or bytes (a column), an
    object (a decoded log record), or None / "" for none."""
    if not stored:
        return NO_EXTRAS
    value = orjson.loads(stored) if isinstance(stored, (str, bytes)) else stored
    if not isinstance(value, dict):
        raise ValueError(f"stored extras are not an object: {value!r}")
    return value
