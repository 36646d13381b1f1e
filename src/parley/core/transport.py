"""What the core writes to: one client connection's outbound side, whatever carries it.

A `Session` is handed its `Transport` once the connection is up (`Session.connected`) and
from then on writes whole text messages to it and asks it to close; it never sees frames,
sockets or buffers. `transport.websocket.WebSocket` is the one for picows (it splits,
pings, closes slow consumers); the benchmark's peers and the unit tests have their own
(`tests/support/transport.py` records what it is given).

The contract:

- `write(data)` sends one whole text message (a UTF-8 JSON frame). It does not block and
  does not raise; once the connection is closing it may drop the message.
- `write_many(datas)` sends several, in order, as `write` would one by one.
- `close(code, reason)` ends the connection with that close code (a Pusher 4xxx, or a
  WebSocket 1xxx) and reason, after what was written before it. Closing twice is harmless:
  the second is ignored. The transport tells the session when the connection is gone
  (`Session.disconnected`), which may be later.

The session keeps its own state (`closing`) and never writes after it asked for a close.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def write_many(self, datas: Iterable[bytes]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...
