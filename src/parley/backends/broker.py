"""The broker role: how a stored publication reaches every node that has subscribers of its
channel (`Broker`), and what a node gives it to deliver to (`BrokerHandler`).

It knows nothing of sessions, the hub or the wire. What crosses a broker is a value a
broker between processes can serialize: the app id, the `Publication` (stamped with its
position by the history store: a broker never assigns or changes an offset), and the socket
id of the sender not to deliver to, as a string.

Positions. The history store is the only source of a channel's offsets and epoch
(`HistoryStore.append`, `position`, `since`); a broker holds no history and is never asked
for a position. A node that receives a publication out of order fills the gap from the store
(core.delivery has the rule). A broker that talks to a server delivers each channel's
publications in the order they were published to it, at most once per subscribed node; the
node drops a repeat.

Implementations: `memory.broker.MemoryBroker` (one process: delivered at once, in the
publishing call) and `redis.broker.RedisBroker` (a cluster over Redis pub/sub). The contract
suite is tests/contract/test_broker.py.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from parley.publication import Publication


class BrokerHandler(Protocol):
    """What a broker delivers to: the node's side (core.delivery.Delivery)."""

    def on_publication(self, app_id: str, publication: Publication, exclude: str | None) -> None:
        """A publication of a channel this node subscribed to, stored (its position set, or
        offset 0 on a channel that keeps no history); `exclude` is the socket id of its
        sender (not to be sent it), or None. Must not raise; must not block."""

    def on_cluster_message(self, kind: str, app_id: str, body: dict[str, Any]) -> None:
        """A message another node broadcast (`Broker.broadcast`). Must not raise or block."""

    def on_reconnected(self) -> None:
        """The broker lost its link to the other nodes and has it back: publications of
        other nodes made meanwhile did not arrive; fill them from history. Must not block."""


class Broker(Protocol):
    """Publish-subscribe between the nodes of a deployment, per (app id, channel).

    A node subscribes only to the channels it has local subscribers for. Every method is
    called from the event loop's thread; `publish`, `subscribe` and `unsubscribe` never
    block.

    A Protocol rather than a base class: an implementation needs no base, compiled or not (a
    test's scripted broker). A compiled base would not make the calls cheaper: mypyc calls a
    method of a class open to interpreted subclasses the way Python does (measured).
    """

    @property
    def engine(self) -> str:
        """As /readyz names it: "memory", "redis"."""

    async def start(self, handler: BrokerHandler) -> None:
        """Connect; from now on deliver to `handler`."""

    async def close(self) -> None:
        """Stop delivering and release everything; `publish` raises RuntimeError after."""

    def publish(self, app_id: str, publication: Publication, exclude: str | None) -> None:
        """Send a stored publication to every node subscribed to its channel, this one
        included, in the order of the calls for one channel. A broker with a server may queue
        it: `drain` waits until what was published is handed over."""

    def broadcast(self, kind: str, app_id: str, body: dict[str, Any]) -> None:
        """Send a message of the cluster's own (a presence change, a termination...) to every
        other node, not this one; in order with this node's other broadcasts. Nothing, with
        a broker of one process. `body` is JSON."""

    async def drain(self) -> None:
        """Return once everything published so far is handed to the engine (delivered, for
        the memory broker); raise when it could not be (the publications are stored: a client
        recovers them with a resume)."""

    def subscribe(self, app_id: str, channel: str) -> Awaitable[None] | None:
        """Deliver the channel's publications to this node from now on (idempotent). None
        when that holds already; else an awaitable done once it holds (a broker with a
        server: once the server confirmed the subscription), which the node awaits before it
        tells the client it is subscribed."""

    def unsubscribe(self, app_id: str, channel: str) -> None:
        """Stop delivering the channel's publications to this node (idempotent)."""

    async def check(self) -> None:
        """Readiness: return when the broker can deliver now; raise, saying why, when not."""

    def stats(self) -> dict[str, int]:
        """For /metrics: `connected` (1 or 0), and what a broker with a server counts:
        `reconnects`, `refused` (messages dropped for a bad HMAC), `dropped` (publications
        never sent: too many waited for the server), `waiting` (publications queued)."""
