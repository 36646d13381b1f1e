"""One client connection over WebSocket: picows's frames in, whole text messages to the
core's `Session`; the session's `Transport` (core.transport) out.

Everything picows is here: the RFC 6455 rules picows leaves to its user, the 8 KiB split of
what is sent (a picows 2.3.1 bug, see `write`), ping/pong and close frames, and
back-pressure: a client that lets more than `max_outbound_bytes` queue up is closed with
4100 (`Session.slow_consumer` logs and counts it). A frame larger than that limit by itself
(the answer to a presence subscribe lists every member: thousands of them) is no sign of a
slow reader: the limit grows by the size of each such frame until the buffer has drained.

What picows checks itself (each closed with 1002): unmasked client frames, unknown opcodes,
control frames that are fragmented or over 125 bytes, close frames of one byte or with a
close code below 3000 it does not know, and a frame over `max_message_bytes` (1009). What
is checked here: reserved bits (1002; RSV2 and RSV3 not on whole text frames, see
`on_ws_frame`), the order of data frames (a continuation with no message started, or a new
message before the last one ended: 1002), fragmented messages over `max_message_bytes` in
all (1009), and the close codes picows lets through that a client may not send (0, 1006,
5000 and up: 1002). A close is echoed with its code; one with no code is answered with
1000. UTF-8 is checked where the text is read, once orjson has refused it
(protocol.frames): the session then closes with 1007.

picows calls it through `transport.server.Listener`, not as a WSListener subclass: a class
extending picows's C type could not be compiled by mypyc (see speedups), and every message
in and out goes through this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

from picows import WSCloseCode, WSMsgType, WSTransport

from parley.core.session import Session
from parley.protocol.codes import CloseCode

# Enum members looked up once, not on every frame; Final: C statics, not module dict lookups
_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_CONTINUATION: Final = WSMsgType.CONTINUATION
_CLOSE: Final = WSMsgType.CLOSE
_PING: Final = WSMsgType.PING
_MAX_FRAME_PAYLOAD: Final = 8192  # picows copies frames up to this size (see write)
_HIGH_WATER: Final = 65536  # uvloop's default: pause_writing once more than this is buffered


class Limits:
    """What every connection of a server is held to; one object, shared."""

    __slots__ = ("max_message_bytes", "max_outbound_bytes")

    def __init__(self, max_message_bytes: int, max_outbound_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes  # a longer fragmented message: 1009
        self.max_outbound_bytes = max_outbound_bytes  # more buffered for a client: 4100


class _Fragments:
    """A fragmented message being received: the text so far (a binary one is only counted,
    since it is refused whole)."""

    __slots__ = ("data", "size", "text")

    def __init__(self, text: bool) -> None:
        self.text = text
        self.data = bytearray()
        self.size = 0


def client_may_send(code: int) -> bool:
    """Whether a client's close frame may carry this code (RFC 6455 7.4): the defined codes
    but 1004 (reserved), 1005, 1006 and 1015 (never sent in a frame), and 3000-4999."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class WebSocket:
    """picows's handler for one connection (`transport.server.WsHandler`) and its session's
    `Transport`. Its fields are few on purpose: one per connection (bench/README.md, "The
    Transport seam")."""

    __slots__ = ("_fragments", "_oversize", "limits", "paused", "session", "transport")

    transport: WSTransport  # set once connected; the session writes only after that

    def __init__(self, session: Session, limits: Limits) -> None:
        self.session = session
        self.limits = limits
        self.paused = False  # the socket's buffer is over its high-water mark (64 KiB)
        self._oversize = 0  # bytes of frames over max_outbound_bytes since the buffer drained
        self._fragments: _Fragments | None = None  # a fragmented message under way

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
        # A text message in one frame: nearly every message (picows hands `fin` and the
        # reserved bits over as ints: never give them to a `bool`). Of the reserved bits
        # only RSV1 is read here, the one a client that believes it compresses sets: each
        # read is ~300 instructions of a ~38k message (bench/README.md); all three are
        # checked on every other frame.
        if kind is _TEXT and frame.fin and self._fragments is None and not frame.rsv1:
            if taken:
                session.receive(frame.get_payload_as_bytes())
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail(CloseCode.PROTOCOL_ERROR, "Reserved bits set with no extension agreed")
        elif kind is _TEXT or kind is _CONTINUATION or kind is _BINARY:
            if taken:
                self._data_frame(kind, frame)
        elif kind is _CLOSE:
            self._close_frame(transport, frame)
        elif kind is _PING:
            transport.send_pong(frame.get_payload_as_bytes())
        # A PONG only counts as activity, which is recorded above.

    def _data_frame(self, kind: Any, frame: Any) -> None:
        """A data frame that is not a whole text message: part of a fragmented message, or a
        binary one (RFC 6455 5.4: one message at a time, control frames may come between)."""
        fragments = self._fragments
        if kind is _CONTINUATION:
            if fragments is None:
                self._fail(CloseCode.PROTOCOL_ERROR, "Continuation frame with no message started")
                return
        elif fragments is not None:
            self._fail(CloseCode.PROTOCOL_ERROR, "New message before the last one ended")
            return
        elif frame.fin:  # a whole binary message
            self.session.binary()
            return
        else:
            fragments = self._fragments = _Fragments(kind is _TEXT)
        fragments.size += frame.payload_size
        if fragments.size > self.limits.max_message_bytes:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "Message too big")
            return
        if fragments.text:
            fragments.data += frame.get_payload_as_memoryview()
        if not frame.fin:
            return
        self._fragments = None
        if not fragments.text:
            self.session.binary()
            return
        self.session.receive(bytes(fragments.data))

    def _close_frame(self, transport: WSTransport, frame: Any) -> None:
        """The client's close: echo its code (RFC 6455 5.5.1), unless this side closed first
        and this is the answer; a close with no code (1005 to the application) gets 1000."""
        if not transport.is_close_frame_sent:
            if frame.payload_size < 2:
                transport.send_close(WSCloseCode.OK)
            elif client_may_send(frame.get_close_code()):
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            else:
                transport.send_close(WSCloseCode.PROTOCOL_ERROR, b"Invalid close code")
        transport.disconnect()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7) for a frame the protocol forbids."""
        self._fragments = None
        self.session.close(code, reason)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.session.disconnected()

    def pause_writing(self) -> None:
        self.paused = True  # only now can a write find more than max_outbound_bytes buffered

    def resume_writing(self) -> None:
        self.paused = False
        self._oversize = 0

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
            if len(data) > self.limits.max_outbound_bytes:
                self._oversize += len(data)  # one frame over the limit: not a slow reader
        if (
            self.paused
            and transport.underlying_transport.get_write_buffer_size()
            > self.limits.max_outbound_bytes + self._oversize
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
