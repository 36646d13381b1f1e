"""`MemoryBroker`: the broker of a single node. A publication reaches the node's handler
within `publish` itself, when the node subscribed to its channel: no queue, no task, no copy,
so per-channel order is call order. Nothing crosses processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from parley.backends.broker import BrokerHandler
from parley.publication import Publication


class MemoryBroker:
    """A `backends.broker.Broker`."""

    def __init__(self) -> None:
        self.engine = "memory"
        # the handler's bound method: no method lookup per publication
        self._deliver: Callable[[str, Publication, str | None], None] | None = None
        self._channels: dict[str, set[str]] = {}  # app id -> the channels subscribed to

    async def start(self, handler: BrokerHandler) -> None:
        self._deliver = handler.on_publication

    async def close(self) -> None:
        self._deliver = None
        self._channels.clear()

    def publish(self, app_id: str, publication: Publication, exclude: str | None) -> None:
        deliver = self._deliver
        if deliver is None:
            raise RuntimeError("broker is not running")
        channels = self._channels.get(app_id)
        if channels is not None and publication.channel in channels:
            deliver(app_id, publication, exclude)

    def broadcast(self, kind: str, app_id: str, body: dict[str, Any]) -> None:
        pass  # no other node

    async def drain(self) -> None:
        pass  # delivered within publish

    def subscribe(self, app_id: str, channel: str) -> None:
        self._channels.setdefault(app_id, set()).add(channel)
        return None  # delivered from now on

    def unsubscribe(self, app_id: str, channel: str) -> None:
        channels = self._channels.get(app_id)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels[app_id]

    async def check(self) -> None:
        if self._deliver is None:
            raise RuntimeError("not running")

    def stats(self) -> dict[str, int]:
        return {"connected": int(self._deliver is not None)}
