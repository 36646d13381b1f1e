"""A recording `Transport` (parley.core.transport) for driving a core `Session` without
a socket, and the node such a session needs (memory history and presence, one app, a
broker)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from parley.backends.broker import Broker
from parley.backends.counts import ChannelCounts
from parley.backends.history import HistoryStore
from parley.backends.last_events import CachedEvents
from parley.backends.memory.broker import MemoryBroker
from parley.backends.memory.history import MemoryHistoryStore
from parley.backends.memory.presence import MemoryPresenceStore
from parley.backends.presence import PresenceStore
from parley.core.node import Node
from parley.core.session import Session
from parley.settings import AppConfig, Settings
from tests.support.pusher_raw import channel_auth

APP = AppConfig(id="1", key="unit-key", secret="unit-secret", client_events=True)


def make_node(
    broker: Broker | None = None,
    store: HistoryStore | None = None,
    *,
    app: AppConfig = APP,
    presence: PresenceStore | None = None,
    counts: ChannelCounts | None = None,
    last_events: CachedEvents | None = None,
    **settings: Any,
) -> Node:
    """A node with one app (`APP` unless given), the history `store` (in memory by default),
    `broker` (the memory broker by default), `presence`, `counts` and `last_events` (the
    memory stores by default); nothing started (`await started(node)` starts the store and
    the broker)."""
    data_dir = Path(tempfile.mkdtemp(prefix="parley-unit-"))
    return Node(
        Settings(data_dir=data_dir, store="memory", apps=(app,), **settings),
        store or MemoryHistoryStore(),
        broker or MemoryBroker(),
        presence or MemoryPresenceStore(),
        counts=counts,
        last_events=last_events,
    )


async def started(node: Node) -> Node:
    """`node` with its history store and broker started, as the composition root does."""
    await node.history.start()
    await node.broker.start(node.cluster)
    await node.cluster.start()
    return node


def connect(node: Node) -> tuple[Session, RecordingTransport]:
    """A session of `APP` connected through a recording transport, connection_established
    written (and forgotten)."""
    session = Session(node, "/app/" + APP.key, "protocol=7", {})
    transport = RecordingTransport()
    session.connected(transport)
    transport.calls.clear()
    return session, transport


def subscribe(session: Session, channel: str) -> None:
    """Subscribe `session` to `channel`, signed as the app's backend would for a private one."""
    data: dict[str, Any] = {"channel": channel}
    if channel.startswith("private-"):
        data["auth"] = channel_auth(APP.key, APP.secret, session.socket_id, channel)
    send(session, "pusher:subscribe", data)


def send(session: Session, event: str, data: Any, channel: str | None = None) -> None:
    """A message from the client, as the transport hands it over."""
    message: dict[str, Any] = {"event": event, "data": data}
    if channel is not None:
        message["channel"] = channel
    assert session.activity()
    session.receive(orjson.dumps(message))


class RecordingTransport:
    """Records every call the session makes, in order: ("write", data),
    ("write_many", [data, ...]) and ("close", code, reason)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def write_many(self, datas: Iterable[bytes]) -> None:
        self.calls.append(("write_many", list(datas)))

    def close(self, code: int, reason: str) -> None:
        self.calls.append(("close", code, reason))

    @property
    def written(self) -> list[dict[str, Any]]:
        """The messages written so far (by write or write_many), decoded."""
        out: list[dict[str, Any]] = []
        for call in self.calls:
            if call[0] == "write":
                out.append(json.loads(call[1]))
            elif call[0] == "write_many":
                out.extend(json.loads(data) for data in call[1])
        return out

    @property
    def events(self) -> list[str]:
        return [message["event"] for message in self.written]

    @property
    def closes(self) -> list[tuple[int, str]]:
        return [(call[1], call[2]) for call in self.calls if call[0] == "close"]
