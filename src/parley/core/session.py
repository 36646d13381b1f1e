"""One WebSocket connection: pumps frames between the transport and the protocol machine.

picows calls it through `transport.server.Listener`, not as a WSListener subclass: a class
extending picows's C type could not be compiled by mypyc (see speedups), and the node reads a
session's fields on every message.

The session owns no protocol rules (those are in protocol.connection) and no shared state
(that is the node's); it owns the socket, its liveness and its bounded outbound buffer:
a client that cannot keep up with `max_outbound_bytes` queued is closed with 4100.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from picows import WSCloseCode, WSMsgType, WSTransport

from parley import logs
from parley.errors import ConnectionRefused
from parley.protocol import frames
from parley.protocol.codes import CloseCode
from parley.protocol.connection import PusherConnection
from parley.publication import Publisher

if TYPE_CHECKING:
    from parley.core.hub import AppHub
    from parley.core.node import Node

_TEXT = WSMsgType.TEXT  # Enum members looked up once, not on every frame
_CONTINUATION = WSMsgType.CONTINUATION
_MAX_FRAME_PAYLOAD = 8192  # picows copies frames up to this size (see send)
_HIGH_WATER = 65536  # uvloop's default: pause_writing once more than this is buffered


def parse_query(query: str) -> dict[str, str]:
    """`dict(parse_qsl(query, keep_blank_values=True))`, without urllib's work per pair when
    nothing is escaped (pusher-js's `protocol=7&client=js&version=8.4.0&flash=false`)."""
    if "%" in query or "+" in query:
        return dict(parse_qsl(query, keep_blank_values=True))
    out: dict[str, str] = {}
    for pair in query.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            out[name] = value
    return out


class Session:
    __slots__ = (
        "_close_on_connect",
        "_early",
        "_fragments",
        "_opened",
        "_raw",
        "closing",
        "conn",
        "headers",
        "hub",
        "last_seen",
        "node",
        "path",
        "paused",
        "pinged",
        "publisher",
        "query",
        "socket_id",
        "token_expires_at",
        "transport",
        "watchlist",
    )

    def __init__(self, node: Node, path: str, query: str, headers: Any) -> None:
        self.node = node
        self.path = path
        self.query = parse_query(query)
        self.headers = headers
        self.hub: AppHub | None = None
        self.conn: PusherConnection | None = None
        self.socket_id = ""
        self.watchlist: tuple[str, ...] = ()
        self.transport: WSTransport | None = None
        self._raw: Any = None
        self.last_seen = time.monotonic()
        self.pinged = False
        self.paused = False  # the socket's buffer is over its high-water mark (64 KiB)
        self.closing = False
        self._fragments: bytearray | None = None
        self._opened = False
        self._early: list[bytes] | None = None  # what is sent before the transport exists
        self._close_on_connect: tuple[int, str] | None = None  # a close asked for before then
        self.token_expires_at: float | None = None
        # the publisher of its client events (with its JSON), made at its first one
        self.publisher: Publisher | None = None

    @property
    def user_id(self) -> str | None:
        return self.conn.user_id if self.conn is not None else None

    # -- picows callbacks --------------------------------------------------------------------

    def on_ws_upgrade(self) -> list[bytes]:
        """The handshake is valid and not yet answered: open the session now, so that what it
        sends first (connection_established, or a refusal) goes out with the 101 response."""
        early: list[bytes] = []
        self._early = early
        try:
            self._open()
        finally:
            self._early = None
        return early

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._raw = transport.underlying_transport
        if self.node.max_outbound_bytes < _HIGH_WATER:  # pause_writing must come first
            self._raw.set_write_buffer_limits(high=self.node.max_outbound_bytes)
        if not self._opened:  # a transport that does not call on_ws_upgrade
            self._open()
        elif self._close_on_connect is not None:
            code, reason = self._close_on_connect
            self.close(code, reason)

    def _open(self) -> None:
        self._opened = True
        try:
            self.node.open_session(self)
            self.headers = None  # read once at the handshake; not kept per connection
        except ConnectionRefused as exc:
            self.node.count_error(self, exc.code)
            path = self.path if not self.path.startswith("/token/") else "/token/<redacted>"
            logs.info("connection refused", code=exc.code, reason=exc.message, path=path)
            self.send(frames.error_frame(exc.code, exc.message))
            self.close(exc.code or CloseCode.UNAUTHORIZED, exc.message)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        self.last_seen = time.monotonic()
        self.pinged = False
        kind = frame.msg_type
        if kind is _TEXT or kind is _CONTINUATION:
            if self.conn is None or self.closing:
                return
            payload = frame.get_payload_as_bytes()
            if kind is _CONTINUATION or not frame.fin:
                payload = self._reassemble(kind, payload, frame.fin)
                if payload is None:
                    return
            try:
                self.node.receive(self, payload, self.last_seen)
            except Exception:
                logs.error("unexpected error handling a frame", socket_id=self.socket_id)
                self.close(CloseCode.INTERNAL_ERROR, "Internal server error")
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind is WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind is WSMsgType.BINARY:
            self.send(frames.error_frame(None, "Binary frames are not supported: send JSON text"))
        # A PONG only counts as activity, which is recorded above.

    def _reassemble(self, kind: Any, payload: bytes, fin: bool) -> bytes | None:
        """A fragmented text message, whole once its last frame arrives (bounded in size)."""
        if kind is _TEXT:
            self._fragments = bytearray(payload)
        elif self._fragments is None:
            return None  # a continuation of a binary or unknown message: ignored
        else:
            self._fragments += payload
        if len(self._fragments) > self.node.max_message_bytes:
            self._fragments = None
            self.close(CloseCode.MESSAGE_TOO_BIG, "Message too big")
            return None
        if not fin:
            return None
        whole, self._fragments = bytes(self._fragments), None
        return whole

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closing = True
        self.node.close_session(self)

    # -- output ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closing:
            if self._early is not None and not self.closing:
                self._early.append(data)
            return
        if len(data) <= _MAX_FRAME_PAYLOAD:
            transport.send(_TEXT, data)
        else:
            # picows 2.3.1 hands uvloop a view of its reused header buffer for payloads over
            # 8 KiB; while the socket is backed up that header is overwritten by the next send
            # and the stream is corrupted. Fragments of at most 8 KiB are copied whole.
            view = memoryview(data)
            last = len(data) - _MAX_FRAME_PAYLOAD
            for start in range(0, len(data), _MAX_FRAME_PAYLOAD):
                kind = _TEXT if start == 0 else WSMsgType.CONTINUATION
                transport.send(kind, view[start : start + _MAX_FRAME_PAYLOAD], start >= last)
        if self.paused and self._raw.get_write_buffer_size() > self.node.max_outbound_bytes:
            self.closing = True
            self.node.loop.call_soon(self._slow_consumer)

    def pause_writing(self) -> None:
        self.paused = True  # only now can a send find more than max_outbound_bytes buffered

    def resume_writing(self) -> None:
        self.paused = False

    def _slow_consumer(self) -> None:
        logs.warning(
            "slow consumer closed",
            app_id=self.hub.app.id if self.hub else None,
            socket_id=self.socket_id,
            buffered=self._raw.get_write_buffer_size(),
        )
        self.node.count_error(self, CloseCode.OVER_CAPACITY)
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        # The close frame queues behind what is buffered; a reader that never drains it is
        # cut off without ceremony once the grace period is over.
        transport.send_close(
            WSCloseCode(CloseCode.OVER_CAPACITY), b"Slow consumer: too much buffered"
        )
        transport.disconnect()
        self.node.loop.call_later(5.0, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.disconnect(graceful=False)

    def close(self, code: int, reason: str) -> None:
        transport = self.transport
        if transport is None:  # opened during the handshake: close once it is answered
            self._close_on_connect = (code, reason)
            return
        if transport.is_close_frame_sent:
            return
        self.closing = True
        transport.send_close(WSCloseCode(code), reason.encode()[:120])
        transport.disconnect()
