"""One client connection over WebSocket: picows's frames in, whole text messages to the
core's `Session`; the session's `Transport` (core.transport) out.

Everything picows is here: reassembly of fragmented messages (bounded by
`max_message_bytes`, 1009 beyond), the 8 KiB split of what is sent (a picows 2.3.1 bug, see
`write`), ping/pong and close frames, and back-pressure: a client that lets more than
`max_outbound_bytes` queue up is closed with 4100 (`Session.slow_consumer` logs and counts
it).

picows calls it through `transport.server.Listener`, not as a WSListener subclass: a class
extending picows's C type could not be compiled by mypyc (see speedups), and every message
in and out goes through this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from picows import WSCloseCode, WSMsgType, WSTransport

from parley.core.session import Session
from parley.protocol.codes import CloseCode

_TEXT = WSMsgType.TEXT  # Enum members looked up once, not on every frame
_CONTINUATION = WSMsgType.CONTINUATION
_MAX_FRAME_PAYLOAD = 8192  # picows copies frames up to this size (see write)
_HIGH_WATER = 65536  # uvloop's default: pause_writing once more than this is buffered


class Limits:
    """What every connection of a server is held to; one object, shared."""

    __slots__ = ("max_message_bytes", "max_outbound_bytes")

    def __init__(self, max_message_bytes: int, max_outbound_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes  # a longer fragmented message: 1009
        self.max_outbound_bytes = max_outbound_bytes  # more buffered for a client: 4100


class WebSocket:
    """picows's handler for one connection (`transport.server.WsHandler`) and its session's
    `Transport`. Its fields are few on purpose: one per connection (bench/README.md, "The
    Transport seam")."""

    __slots__ = ("_fragments", "limits", "paused", "session", "transport")

    transport: WSTransport  # set once connected; the session writes only after that

    def __init__(self, session: Session, limits: Limits) -> None:
        self.session = session
        self.limits = limits
        self.paused = False  # the socket's buffer is over its high-water mark (64 KiB)
        self._fragments: bytearray | None = None

    # -- picows callbacks --------------------------------------------------------------------

    def on_ws_upgrade(self) -> list[bytes]:
        """The handshake is valid and not yet answered: what the session sends now goes out
        in the same write as the 101 response (transport.server.SwitchingProtocols)."""
        return self.session.open()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        limit = self.limits.max_outbound_bytes
        if limit < _HIGH_WATER:  # pause_writing must come first
            transport.underlying_transport.set_write_buffer_limits(high=limit)
        self.session.connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        session = self.session
        taken = session.activity()
        kind = frame.msg_type
        if kind is _TEXT or kind is _CONTINUATION:
            if not taken:
                return
            payload = frame.get_payload_as_bytes()
            if kind is _CONTINUATION or not frame.fin:
                payload = self._reassemble(kind, payload, frame.fin)
                if payload is None:
                    return
            session.receive(payload)
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind is WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind is WSMsgType.BINARY:
            session.binary()
        # A PONG only counts as activity, which is recorded above.

    def _reassemble(self, kind: Any, payload: bytes, fin: bool) -> bytes | None:
        """A fragmented text message, whole once its last frame arrives (bounded in size)."""
        if kind is _TEXT:
            self._fragments = bytearray(payload)
        elif self._fragments is None:
            return None  # a continuation of a binary or unknown message: ignored
        else:
            self._fragments += payload
        if len(self._fragments) > self.limits.max_message_bytes:
            self._fragments = None
            self.session.close(CloseCode.MESSAGE_TOO_BIG, "Message too big")
            return None
        if not fin:
            return None
        whole, self._fragments = bytes(self._fragments), None
        return whole

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.session.disconnected()

    def pause_writing(self) -> None:
        self.paused = True  # only now can a write find more than max_outbound_bytes buffered

    def resume_writing(self) -> None:
        self.paused = False

    # -- the session's Transport -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if len(data) <= _MAX_FRAME_PAYLOAD:
            transport.send(_TEXT, data)
        else:
            # picows 2.3.1 hands uvloop a view of its reused header buffer for payloads over
            # 8 KiB; while the socket is backed up that header is overwritten by the next send
            # and the stream is corrupted. Fragments of at most 8 KiB are copied whole.
            view = memoryview(data)
            last = len(data) - _MAX_FRAME_PAYLOAD
            for start in range(0, len(data), _MAX_FRAME_PAYLOAD):
                kind = _TEXT if start == 0 else _CONTINUATION
                transport.send(kind, view[start : start + _MAX_FRAME_PAYLOAD], start >= last)
        if (
            self.paused
            and transport.underlying_transport.get_write_buffer_size()
            > self.limits.max_outbound_bytes
        ):
            # The session writes nothing more from now on; the close is scheduled, so that no
            # subscriber leaves a channel while the hub iterates it (AppHub.broadcast).
            self.session.stalled()
            asyncio.get_running_loop().call_soon(self._slow_consumer)

    def write_many(self, datas: Iterable[bytes]) -> None:
        for data in datas:
            self.write(data)

    def close(self, code: int, reason: str) -> None:
        transport = self.transport
        if transport.is_close_frame_sent:
            return
        transport.send_close(WSCloseCode(code), reason.encode()[:120])
        transport.disconnect()

    # -- the slow consumer -------------------------------------------------------------------

    def _slow_consumer(self) -> None:
        transport = self.transport
        self.session.slow_consumer(transport.underlying_transport.get_write_buffer_size())
        if transport.is_disconnected:
            return
        # The close frame queues behind what is buffered; a reader that never drains it is
        # cut off without ceremony once the grace period is over.
        transport.send_close(
            WSCloseCode(CloseCode.OVER_CAPACITY), b"Slow consumer: too much buffered"
        )
        transport.disconnect()
        asyncio.get_running_loop().call_later(5.0, self._abort)

    def _abort(self) -> None:
        if not self.transport.is_disconnected:
            self.transport.disconnect(graceful=False)
