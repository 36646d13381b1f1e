"""The cached events role: the last event of each cache channel (`cache-*`, `private-cache-*`,
`presence-cache-*`) as the whole deployment knows it (`CachedEvents`), and the value it
answers with (`LastEvent`).

It knows nothing of the wire beyond this: a cached event is kept as the frame the node sends
its subscribers (a Pusher event frame, a JSON object with `event` and, unless null, `data`),
and `get` reads the name and the data out of that frame for `info=cache`.

Theory of operation. Each node keeps its channels' last events in its hub (core.hub
`AppHub.cache`), and with one node that is the whole truth: the memory implementation is not
shared (`shared` is False), so the node never calls it, and a node of one process caches
exactly as it did before this role existed. A node of a cluster receives a channel's
publications only while it has subscribers of it, so it cannot know what another node
published meanwhile: a shared implementation (Redis) keeps the cluster's last event of each
cache channel, written by the node that took the publication (`put`, batched, never on the
message path), and read (`get`) by a node that has nothing fresh of its own: a subscribe to a
cache channel, `GET channels/{name}?info=cache`. The event expires by the app's
`cache_ttl_s`, counted from the publish, on every node alike: `get` answers the remaining TTL.

Order. A channel's events are put in the order the node published them, and the store keeps
the newer of two puts of one channel: one with a higher offset in the same epoch (events of a
channel that keeps history), or the later put otherwise (no offset, or a new epoch after the
history was deleted). A put's write may fail (the shared engine away): the publish is not
affected, the write is tried again until the event expires, and `get` on the node that put it
answers it meanwhile.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class LastEvent:
    """A channel's cached event: its frame, its name and data (`info=cache`), and how many
    seconds it has left."""

    frame: bytes
    event: str
    data: Any
    ttl_s: float


def last_event(frame: bytes, ttl_s: float) -> LastEvent:
    """The LastEvent of a cached frame; ValueError when `frame` is not an event frame."""
    message = orjson.loads(frame)
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        raise ValueError("not an event frame")
    return LastEvent(frame, message["event"], message.get("data"), ttl_s)


def newer(offset: int, epoch: str, old_offset: int, old_epoch: str) -> bool:
    """Does a put at (offset, epoch) replace the one kept at (old_offset, old_epoch)? Not
    when both are positions in the same epoch and the kept one is not older."""
    return not (offset and epoch == old_epoch and old_offset >= offset)


class CachedEvents(abc.ABC):
    """The last event of each (app_id, cache channel), with its expiry.

    `put` never blocks and never fails (what a shared implementation cannot write is logged
    and tried again); `get` may be called concurrently from many tasks. Implementations:
    `memory.last_events.MemoryCachedEvents`, `redis.last_events.RedisCachedEvents`. One
    contract suite (tests/contract/test_cached_events.py) runs against each.
    """

    # Is it shared by the nodes of a cluster? A node uses only a shared one: with one node,
    # the hub's cache is the truth and nothing more is done per cached event.
    shared = False

    @abc.abstractmethod
    def put(
        self,
        app_id: str,
        channel: str,
        frame: bytes,
        ttl_s: float,
        offset: int = 0,
        epoch: str = "",
    ) -> None:
        """`frame` is the channel's last event for `ttl_s` seconds from now, unless the store
        keeps a newer one (`newer`). (`offset`, `epoch`): the event's position in its
        channel's history; 0 and "" when the channel keeps none."""

    @abc.abstractmethod
    async def get(self, app_id: str, channel: str) -> LastEvent | None:
        """The channel's last event and its remaining TTL, or None when it has none (or it
        expired). What this instance put is answered even before it is written. Raises
        StoreUnavailable when the shared engine cannot answer."""

    async def flush(self, timeout_s: float = 5.0) -> None:  # noqa: B027 - nothing to write
        """Return once every put made so far is written; StoreUnavailable if that takes more
        than `timeout_s` seconds."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Write what is waiting (briefly), and release what the store holds."""
