"""What the core writes to: one client connection's outbound side, whatever carries it.

A `Session` is handed its `Transport` once the connection is up (`Session.connected`) and
from then on writes whole text messages to it and asks it to close; it never sees frames,
sockets or buffers. `transport.websocket.WebSocket` is the one for picows (it splits,
pings, closes slow consumers); the benchmark's peers and the unit tests have their own
(`tests/support/transport.py` records what it is given).

The contract:

- `write(data)` sends one whole text message (a UTF-8 JSON frame). It does not block and
  does not raise.
- `write_many(datas)` sends several, in order, as `write` would one by one.
- `close(code, reason)` ends the connection with that close code (a Pusher 4xxx, or a
  WebSocket 1xxx) and reason, after what was written before it. The transport tells the
  session when the connection is gone (`Session.disconnected`), which may be later.

A transport that finds its client too slow to read (more buffered than allowed) calls
`Session.stalled` within that write and closes the connection itself (4100).

The session calls neither method once it is closing (asked for a close, stalled, or
disconnected): it swaps its transport for one that does nothing, so that the hub's fan-out,
which writes to `session.transport` directly (core.hub.AppHub.broadcast), need not ask.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def write_many(self, datas: Iterable[bytes]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...
