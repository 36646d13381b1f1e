"""A recording `Transport` (parley.core.transport) for driving a core `Session` without
a socket, and the node such a session needs (memory history, one app)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from parley.backends.memory.broker import MemoryBroker
from parley.backends.memory.history import MemoryHistoryStore
from parley.core.node import Node
from parley.settings import AppConfig, Settings

APP = AppConfig(id="1", key="unit-key", secret="unit-secret", client_events=True)


def make_node(**settings: Any) -> Node:
    """A node with one app (`APP`), history in memory and the memory broker; nothing started
    (`await node.broker.start(node.delivery)` delivers publications)."""
    data_dir = Path(tempfile.mkdtemp(prefix="parley-unit-"))
    return Node(
        Settings(data_dir=data_dir, store="memory", apps=(APP,), **settings),
        MemoryHistoryStore(),
        MemoryBroker(),
    )


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
