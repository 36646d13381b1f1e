"""Domain events: what happened in the core that other parts act on, and the bus that hands
them to those parts.

The core emits an event at the moment its state changes (a channel's first local subscriber
joins, a presence member's first connection arrives, ...) and does not write the frames that
follow from it: each consumer subscribes to the types it wants. Today's consumers are the Pusher
frames (`core.pusher_frames`) and the Prometheus counts (`core.event_counts`); webhooks and push
are to come (issue 15 and after).

The bus is synchronous: `emit` calls every handler before it returns, in the order they
subscribed, so what a consumer writes keeps its place among what the core writes itself (a
`member_added` reaches the other members before the joiner's `subscription_succeeded`). A
handler must not raise and must not block; one that needs I/O queues the work. A handler that
raises anyway is logged, and the next handler still runs.

Each record is a frozen, slotted dataclass with an explicit `__init__`: mypyc compiles that
one (about 50 ns an event), not the one `dataclass` would make (about 300 ns, run as Python);
every subscribe and sign-in builds some. Two records that differ only in meaning share their
fields through a base (`ChannelOccupied` and `ChannelVacated`): they stay two types, which
the bus dispatches apart.

An event built on a hot path is built only when someone listens: `ClientEventSent` (every
client event) and `SubscriptionCountChanged` (every subscribe and leave), tested with
`if ClientEventSent in bus.handlers`. With no handler for a type, `emit` is one dictionary
lookup.

Scope. Every event describes this node. "Occupied" means the channel has a subscriber on this
node, not in the cluster (`ClusterVacated` is the exception: the reaper's finding); member
events come from the presence store's answers, which are cluster-wide once that store is
(docs/architecture.md, "Domain events"). Cluster-wide occupancy is the channel counts'
(`backends.counts`): core.webhooks asks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from parley import logs
from parley.publication import Publication


@dataclass(frozen=True, slots=True, init=False)
class _ChannelChange:
    app_id: str
    channel: str

    def __init__(self, app_id: str, channel: str) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "channel", channel)


class ChannelOccupied(_ChannelChange):
    """`channel` got its first subscriber on this node."""

    __slots__ = ()


class ChannelVacated(_ChannelChange):
    """`channel` lost its last subscriber on this node."""

    __slots__ = ()


class ClusterVacated(_ChannelChange):
    """`channel` has no subscriber on any node any more: its last ones went with a node
    that died (the reaper found it, core.cluster). Emitted on the reaper's node alone."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, init=False)
class SubscriptionCountChanged:
    """`channel` has `count` subscribers on this node now (0 once vacated); every channel
    type, presence included: a consumer decides which it reports."""

    app_id: str
    channel: str
    count: int

    def __init__(self, app_id: str, channel: str, count: int) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "count", count)


@dataclass(frozen=True, slots=True, init=False)
class MemberAdded:
    """`user_id` became a member of the presence channel: its first connection joined.
    `socket_id` is the connection whose join made it one (a subscriber by then, unless it
    left while the store answered); the other subscribers are told, not it. `remote`: it
    happened on another node, which told this one (core.cluster): this node's subscribers
    are told, and nothing else follows from it here (it is counted, and webhooks sent, where
    it happened)."""

    app_id: str
    channel: str
    user_id: str
    user_info: Any
    socket_id: str
    remote: bool

    def __init__(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        user_info: Any,
        socket_id: str,
        remote: bool = False,
    ) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "user_info", user_info)
        object.__setattr__(self, "socket_id", socket_id)
        object.__setattr__(self, "remote", remote)


@dataclass(frozen=True, slots=True, init=False)
class MemberRemoved:
    """`user_id` is no longer a member: its last connection left (`socket_id`, no longer a
    subscriber; "" when no connection of this node left, as for a dead node's members).
    `remote`: as for `MemberAdded`."""

    app_id: str
    channel: str
    user_id: str
    socket_id: str
    remote: bool

    def __init__(
        self, app_id: str, channel: str, user_id: str, socket_id: str, remote: bool = False
    ) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "socket_id", socket_id)
        object.__setattr__(self, "remote", remote)


@dataclass(frozen=True, slots=True, init=False)
class CacheMiss:
    """Connection `socket_id` subscribed to the cache channel `channel`, which had nothing
    cached."""

    app_id: str
    channel: str
    socket_id: str

    def __init__(self, app_id: str, channel: str, socket_id: str) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "socket_id", socket_id)


@dataclass(frozen=True, slots=True, init=False)
class ClientEventSent:
    """Connection `socket_id` sent a client event, queued for delivery (`publication` is
    stamped with its publisher; its position comes when it is stored)."""

    app_id: str
    publication: Publication
    socket_id: str

    def __init__(self, app_id: str, publication: Publication, socket_id: str) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "publication", publication)
        object.__setattr__(self, "socket_id", socket_id)


@dataclass(frozen=True, slots=True, init=False)
class ConversationChanged:
    """A conversation or a bot changed (core.conversations, core.bots), on the node that
    changed it: `change` is created, requested, accepted, declined, member_added,
    member_removed or bot_added (of `conversation_id`), or bot_created, bot_message (of
    bot `bot_id`). `user_id` is whom it concerns, `by` who did it (None: the app's backend)."""

    app_id: str
    change: str
    conversation_id: str
    channel: str
    user_id: str | None
    by: str | None
    bot_id: str | None

    def __init__(
        self,
        app_id: str,
        change: str,
        conversation_id: str,
        channel: str,
        user_id: str | None = None,
        by: str | None = None,
        bot_id: str | None = None,
    ) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "change", change)
        object.__setattr__(self, "conversation_id", conversation_id)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "by", by)
        object.__setattr__(self, "bot_id", bot_id)


@dataclass(frozen=True, slots=True, init=False)
class _UserChange:
    app_id: str
    user_id: str

    def __init__(self, app_id: str, user_id: str) -> None:
        object.__setattr__(self, "app_id", app_id)
        object.__setattr__(self, "user_id", user_id)


class UserOnline(_UserChange):
    """`user_id` signed in on its first connection to this node."""

    __slots__ = ()


class UserOffline(_UserChange):
    """The last signed-in connection of `user_id` to this node closed."""

    __slots__ = ()


E = TypeVar("E")
Handler = Callable[[Any], None]


class EventBus:
    """Handlers by event type. `handlers` is read on hot paths (`Type in bus.handlers`);
    change it only through `subscribe`."""

    __slots__ = ("handlers",)

    def __init__(self) -> None:
        self.handlers: dict[type, tuple[Handler, ...]] = {}

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        """Call `handler` with every event of type `kind` (exactly that type) from now on."""
        self.handlers[kind] = (*self.handlers.get(kind, ()), handler)

    def emit(self, event: object) -> None:
        handlers = self.handlers.get(type(event))
        if handlers is None:
            return
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                logs.error("event handler failed", kind=type(event).__name__)
