"""One client connection, as the core sees it: whole text messages in, whole text messages
out, through a `Transport` (core.transport).

Whatever carries the connection (`transport.websocket.WebSocket` for picows) calls the
session with the connection's events: `open` (the handshake is valid, not yet answered),
`connected` (the transport exists), `activity` (any frame from the client), `receive` (one
whole text message), `binary` (a binary message), `stalled` and `slow_consumer` (too much
buffered: the transport closes it) and `disconnected`. It owns no frames, sockets or buffers.

The session owns no protocol rules (those are in protocol.connection) and no shared state
(that is the node's); it owns the connection's liveness (`last_seen`, `pinged`), its
`closing` state, and what it sends before its transport exists: the first messages go out
in the same write as the handshake's answer, and a close asked for then is carried out as
soon as the transport is there. It also owns the order of what it receives: while a presence
step waits for the store (`hold`), later messages wait, and are handled in order after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from parley import logs
from parley.core.transport import Transport
from parley.errors import ConnectionRefused
from parley.protocol import frames
from parley.protocol.codes import CloseCode
from parley.protocol.connection import PusherConnection
from parley.publication import Publisher

if TYPE_CHECKING:
    from parley.core.hub import AppHub
    from parley.core.node import Node


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


class _Closed:
    """The transport of a session once it is closing: writes nothing, closes nothing."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def write_many(self, datas: Iterable[bytes]) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass


_CLOSED = _Closed()


class _Corked:
    """The transport of a session whose output waits (`Session.cork`): what is written is
    kept, in order, for the real transport; more than `limit` bytes of it closes the
    session as a slow consumer would be."""

    __slots__ = ("limit", "real", "session", "size", "waiting")

    def __init__(self, session: Session, real: Transport, limit: int) -> None:
        self.session = session
        self.real = real
        self.limit = limit
        self.waiting: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.waiting.append(data)
        self.size += len(data)
        if self.size > self.limit:
            self.waiting = []
            self.session.slow_consumer(self.size)
            self.session.close(CloseCode.OVER_CAPACITY, "Over capacity")

    def write_many(self, datas: Iterable[bytes]) -> None:
        for data in datas:
            self.write(data)

    def close(self, code: int, reason: str) -> None:
        self.waiting = []
        self.real.close(code, reason)


@dataclass(frozen=True, slots=True)
class Received:
    """A message received while the session was holding, and when (`last_seen` then)."""

    text: bytes
    at: float


class Session:
    """One connection. `send` is the way to write to it. The hub's fan-out writes to
    `transport` directly, one Python call per delivery fewer (bench/README.md, "The
    Transport seam"): so once the session is closing, `transport` is `_CLOSED`."""

    __slots__ = (
        "_close_on_connect",
        "_early",
        "_opened",
        "closing",
        "conn",
        "corks",
        "headers",
        "held",
        "holds",
        "hub",
        "last_seen",
        "node",
        "path",
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
        self.transport: Transport | None = None
        self.last_seen = time.monotonic()
        self.pinged = False
        self.closing = False
        self._opened = False
        self._early: list[bytes] | None = None  # what is sent before the transport exists
        self._close_on_connect: tuple[int, str] | None = None  # a close asked for before then
        self.token_expires_at: float | None = None
        # the publisher of its client events (with its JSON), made at its first one
        self.publisher: Publisher | None = None
        self.holds = 0  # presence steps waiting for the store
        self.corks = 0  # steps the output waits for (`cork`)
        self.held: list[Received] | None = None  # what was received meanwhile, in order

    @property
    def user_id(self) -> str | None:
        return self.conn.user_id if self.conn is not None else None

    # -- the connection's events, from its transport -----------------------------------------

    def open(self) -> list[bytes]:
        """The handshake is valid and not yet answered: open the session now, so that what it
        sends first (connection_established, or a refusal) goes out with the answer. Returns
        those messages; a close asked for meanwhile waits for `connected`."""
        early: list[bytes] = []
        self._early = early
        try:
            self._open()
        finally:
            self._early = None
        return early

    def connected(self, transport: Transport) -> None:
        """The transport exists: from now on everything sent is written to it."""
        self.transport = transport
        if not self._opened:  # a transport that does not call open first
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
            self.disconnect(exc.code or CloseCode.UNAUTHORIZED, exc.message)

    def activity(self) -> bool:
        """The client was heard from (any frame, a pong included): the idle sweep's clock.
        True while the session takes messages (it is open and not closing)."""
        self.last_seen = time.monotonic()
        self.pinged = False
        return self.conn is not None and not self.closing

    def receive(self, text: bytes) -> None:
        """One whole text message from the client (after `activity` said it is taken)."""
        held = self.held
        if held is not None:  # a presence step waits for the store: this waits behind it
            held.append(Received(text, self.last_seen))
            return
        self._handle(text, self.last_seen)

    def _handle(self, text: bytes, at: float) -> None:
        try:
            self.node.receive(self, text, at)
        except Exception:
            logs.error("unexpected error handling a frame", socket_id=self.socket_id)
            self.close(CloseCode.INTERNAL_ERROR, "Internal server error")

    def hold(self) -> None:
        """A presence step of this session waits for the store: what the session receives
        from now on waits until every such step is over (`unhold`)."""
        self.holds += 1
        if self.held is None:
            self.held = []

    def unhold(self) -> None:
        """A presence step is over: after the last one, handle what was held, in order of
        arrival; if one of those starts a step that waits, the rest waits behind that one."""
        self.holds -= 1
        if self.holds > 0:
            return
        waiting = self.held or []
        self.held = None
        self._release(waiting)

    def _release(self, waiting: list[Received]) -> None:
        for index, received in enumerate(waiting):
            if self.closing:
                return
            held = self.held
            if held is not None:  # held again by the previous one: the rest waits behind it
                held.extend(waiting[index:])
                return
            self._handle(received.text, received.at)

    def binary(self) -> None:
        """A binary message from the client: not part of the protocol, answered, not read."""
        self.send(frames.error_frame(None, "Binary frames are not supported: send JSON text"))

    def stalled(self) -> None:
        """The transport found more buffered than the client may have (within the write that
        went over): nothing more is written; `slow_consumer` follows once it closes."""
        self._stop()

    def slow_consumer(self, buffered: int) -> None:
        """The transport is closing the connection (4100): the client did not read what was
        written to it, `buffered` bytes of it are still queued. Nothing was written since
        `stalled`."""
        logs.warning(
            "slow consumer closed",
            app_id=self.hub.app.id if self.hub else None,
            socket_id=self.socket_id,
            buffered=buffered,
        )
        self.node.count_error(self, CloseCode.OVER_CAPACITY)

    def disconnected(self) -> None:
        """The connection is gone."""
        self._stop()
        self.node.close_session(self)

    # -- output ------------------------------------------------------------------------------

    def cork(self) -> None:
        """Keep what is sent from now on (the fan-out's writes too), in order, until as many
        `uncork`s: a subscription's answer waits for its webhooks to be stored. Bounded by
        the app's `max_outbound_bytes`, as a slow reader is."""
        transport = self.transport
        if transport is None or self.closing:
            return
        self.corks += 1
        if not isinstance(transport, _Corked):
            self.transport = _Corked(self, transport, self.node.settings.max_outbound_bytes)

    def uncork(self) -> None:
        """A step the output waited for is over: after the last, what was kept is written."""
        if self.corks == 0:
            return
        self.corks -= 1
        corked = self.transport
        if self.corks > 0 or not isinstance(corked, _Corked):
            return  # still waiting, or closed meanwhile (nothing to write)
        self.transport = corked.real
        if corked.waiting:
            corked.real.write_many(corked.waiting)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closing:
            if self._early is not None and not self.closing:
                self._early.append(data)
            return
        transport.write(data)

    def send_many(self, datas: Iterable[bytes]) -> None:
        transport = self.transport
        if transport is None or self.closing:
            for data in datas:
                self.send(data)
            return
        transport.write_many(datas)

    def disconnect(self, code: int, message: str, reason: str | None = None) -> None:
        """End the connection and say why: a pusher:error with `code` and `message`, then a
        close with `code` and `reason` (the message unless given)."""
        self.send(frames.error_frame(code, message))
        self.close(code, message if reason is None else reason)

    def close(self, code: int, reason: str) -> None:
        transport = self.transport
        if transport is None:  # opened during the handshake: close once it is answered
            self._close_on_connect = (code, reason)
            return
        self._stop()
        transport.close(code, reason)

    def _stop(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport = _CLOSED
