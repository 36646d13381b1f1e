"""One listening port for HTTP and WebSocket.

Every connection starts in `FrontProtocol`. A request whose head asks for a WebSocket
upgrade is handed, bytes and all, to a picows protocol (C framing, the fast path for
fan-out); anything else is parsed by httptools and answered by the HTTP handler, with
keep-alive. This layer knows nothing of channels, auth or storage.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import httptools
import orjson
from picows import (
    WSFrame,
    WSListener,
    WSTransport,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSAutoPingStrategy, WSProtocol  # type: ignore[attr-defined]

from parley import logs
from parley.transport.proxies import TrustedProxies

MAX_HEAD_BYTES = 16 * 1024


class _WsLog:
    """picows's logger. Not a `logging.Logger` on purpose: given one, picows makes a child
    logger per connection (an object, a level lookup under the logging lock), a measurable
    part of accepting a connection. Its lines go to the `picows.parley` logger (warnings and
    up, see logs.configure)."""

    __slots__ = ("_info", "_logger")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._info = logger.isEnabledFor(logging.INFO)

    def isEnabledFor(self, level: int) -> bool:  # the logging API's name
        return self._logger.isEnabledFor(level)

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.debug(msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self._info:  # "New connection accepted"/"Disconnected" per connection: cheap no-op
            self._logger.info(msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.error(msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.exception(msg, *args, **kwargs)  # noqa: LOG004 - picows calls it in handlers


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: str  # the socket's address, ip:port
    client_ip: str = ""  # the client's: the socket's, or X-Forwarded-For from a trusted proxy


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class WsHandler(Protocol):
    """What a WebSocket connection is handed to: picows's listener callbacks, and
    `on_ws_upgrade`, called once the handshake is known to be valid and before it is answered:
    it returns the text messages to send in the same write as the 101 response."""

    def on_ws_upgrade(self) -> list[bytes]: ...

    def on_ws_connected(self, transport: WSTransport) -> None: ...

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None: ...

    def on_ws_disconnected(self, transport: WSTransport) -> None: ...

    def pause_writing(self) -> None: ...  # the socket's buffer went over its high-water mark

    def resume_writing(self) -> None: ...


class Listener(WSListener):
    """picows's listener for a handler, so that the handler need not be of picows's C type (a
    mypyc-compiled class cannot extend it).

    picows looks each callback up on the listener at every call, since a subclass may override
    it; the handler's bound methods are held in slots of those names, so a frame goes from
    picows to the handler with no Python frame of this class in between."""

    __slots__ = (
        "on_ws_connected",
        "on_ws_disconnected",
        "on_ws_frame",
        "pause_writing",
        "resume_writing",
    )

    def __init__(self, handler: WsHandler) -> None:
        # slots that shadow WSListener's methods on purpose (see above)
        self.on_ws_connected = handler.on_ws_connected  # type: ignore[method-assign]
        self.on_ws_disconnected = handler.on_ws_disconnected  # type: ignore[method-assign]
        self.on_ws_frame = handler.on_ws_frame  # type: ignore[method-assign]
        self.pause_writing = handler.pause_writing  # type: ignore[method-assign]
        self.resume_writing = handler.resume_writing  # type: ignore[method-assign]


class _Counted:
    """A handler whose connection counts against its client's address
    (`Server.max_connections_per_address`) from its upgrade to its end. Only the upgrade and
    the end go through it: the other callbacks are the handler's own bound methods, so
    frames reach the handler as directly as without the limit."""

    __slots__ = (
        "_counted",
        "_counts",
        "_handler",
        "_ip",
        "on_ws_connected",
        "on_ws_frame",
        "pause_writing",
        "resume_writing",
    )

    def __init__(self, handler: WsHandler, counts: dict[str, int], ip: str) -> None:
        self._handler = handler
        self._counts = counts
        self._ip = ip
        self._counted = False
        self.on_ws_connected = handler.on_ws_connected
        self.on_ws_frame = handler.on_ws_frame
        self.pause_writing = handler.pause_writing
        self.resume_writing = handler.resume_writing

    def on_ws_upgrade(self) -> list[bytes]:
        self._counts[self._ip] = self._counts.get(self._ip, 0) + 1
        self._counted = True
        return self._handler.on_ws_upgrade()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._counted:
            self._counted = False
            left = self._counts[self._ip] - 1
            if left:
                self._counts[self._ip] = left
            else:
                del self._counts[self._ip]
        self._handler.on_ws_disconnected(transport)


_SWITCH_HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Accept: "
)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class SwitchingProtocols:
    """The 101 answer picows writes, duck-typed as its `WSUpgradeResponse`. picows calls
    `to_bytes` once it has checked the upgrade request, so that is where the handler is told
    the handshake succeeded (`on_ws_upgrade`): what it sends then (`connection_established`)
    follows the 101 in the same write, one send and one TCP segment per connection fewer. The
    head is a constant, not picows's header multidict."""

    __slots__ = ("_handler", "headers")
    status = 101  # compared with HTTPStatus.SWITCHING_PROTOCOLS, an IntEnum

    def __init__(self, handler: WsHandler) -> None:
        self.headers: dict[str, str] = {}
        self._handler: WsHandler | None = handler

    def to_bytes(self) -> bytearray:
        out = bytearray(_SWITCH_HEAD)
        out += self.headers.pop("Sec-WebSocket-Accept").encode("ascii")
        out += b"\r\n\r\n"
        handler, self._handler = self._handler, None
        if handler is not None:
            for message in handler.on_ws_upgrade():
                out += text_frame(message)
        return out


class _Accepted:
    """What picows's `connection_made` is given instead of uvloop's transport.

    picows asks the transport for its socket, peer and local address, then sets TCP_NODELAY and
    TCP_QUICKACK and reads four options back for an info log line: six system calls and a
    socket object per connection, a sixth of the server's work in a connection storm. Here the
    options it sets are already in effect (uvloop sets TCP_NODELAY on every accepted socket,
    and Linux starts a connection in quick-ack mode; tests/unit/transport checks both) and the addresses
    and options it reads only feed that info line, which is off whenever this is used (see
    `Server.make_ws_protocol`). Everything picows and the WebSocket handler call later goes
    straight to uvloop's transport: `write` and `get_write_buffer_size` are its bound methods."""

    __slots__ = ("_fd", "_transport", "get_write_buffer_size", "write")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._fd: int = transport.get_extra_info("socket").fileno()
        self.write = transport.write
        self.get_write_buffer_size = transport.get_write_buffer_size

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self
        if name in ("peername", "sockname"):
            return default  # only read for picows's info line
        return self._transport.get_extra_info(name, default)

    # -- the socket picows is given: see the class docstring --

    def fileno(self) -> int:
        return self._fd

    def setsockopt(self, level: int, option: int, value: int) -> None:
        pass  # TCP_NODELAY and TCP_QUICKACK, already on

    def getsockopt(self, level: int, option: int) -> int:
        return 0  # only read for picows's info line

    # -- the rest of asyncio.Transport that picows or the WebSocket handler use --

    def writelines(self, data: Any) -> None:
        self._transport.writelines(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()


HttpHandler = Callable[[Request], Awaitable[Response]]
WsFactory = Callable[[str, str, Any], WsHandler | None]

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _Phase(Enum):
    """Where a connection is, for its timeouts (`FrontProtocol.check_timeouts`)."""

    HEAD = "head"  # a request head is awaited or under way: the header timeout
    BODY = "body"  # its body is under way: the header timeout again
    BUSY = "busy"  # requests are being answered: no timeout (the server's own work)
    IDLE = "idle"  # kept alive, nothing under way: the keep-alive timeout


@dataclass(slots=True)
class _Pending:
    """A request waiting for its answer, or an answer already made (a refusal) waiting for the
    answers before it: answers go out in the order the requests came in."""

    request: Request | None
    response: Response | None
    keep_alive: bool


_SLICE = 4096  # bytes fed to the parser at a time, so that parsing stops soon after a bound
_MAX_QUEUED = 8  # requests waiting for an answer before the connection is no longer read


class FrontProtocol(asyncio.Protocol):
    """One connection until it is upgraded: HTTP/1.1 requests, kept alive and pipelined,
    parsed by httptools and answered in order by one worker task.

    What one client can make it hold is bounded. A request head is at most `max_head_bytes`
    counted over every read (431 beyond; a head that starts inside a read is counted from
    the next slice, so it may pass the bound by one slice before the 431). Once `_MAX_QUEUED`
    requests wait for an answer, or the client leaves answers unread (uvloop's pause_writing),
    the connection is not read any more and what was read stays unparsed in `_unread` (at
    most one read) until the answers drain. Timeouts: `check_timeouts`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""  # a request head not yet whole, while the parser is between messages
        self.in_request = False  # the parser is inside a message
        # Made on the first plain HTTP request: a WebSocket upgrade never needs one.
        self.parser: httptools.HttpRequestParser | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._queue: deque[_Pending] = deque()
        self._worker: asyncio.Task[None] | None = None
        self.peer = ""
        self.peer_ip = ""
        self._unread = b""  # received, not parsed: reading is paused (back-pressure)
        self._paused = False  # reading is paused
        self._writable = True  # False from uvloop's pause_writing to its resume_writing
        self._drained: asyncio.Future[None] | None = None  # the worker waits on it meanwhile
        self._stalled_at = 0.0  # when writing was paused, or last made progress since
        self._stalled_size = 0  # the answers' bytes still buffered then
        self._refused = False  # an error answer is made: nothing more is read
        self._phase = _Phase.HEAD
        self._since = 0.0  # when the phase began
        self._head_seen = 0  # bytes of a head begun inside a read, from the next slice on
        self._begun = 0  # messages the parser has begun
        self._ended = False  # the client half-closed: close once what it asked is answered

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._since = time.monotonic()
        self.server.http_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.http_connections.discard(self)
        self.transport = None
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._phase is _Phase.IDLE:  # a kept-alive connection's next request begins
            self._phase, self._since = _Phase.HEAD, time.monotonic()
        if self._paused or self._refused:
            if not self._refused:
                self._unread += data  # a read already under way when reading was paused
            return
        self._receive(data)

    def eof_received(self) -> bool:
        """The client sent all it will (a half-close, as `nc -N` does). Requests it already
        sent are answered before the connection closes; with nothing owed it closes now."""
        if self._queue or self._worker is not None or self._unread:
            self._ended = True
            return True  # keep the transport open for the answers
        return False

    def pause_writing(self) -> None:
        self._writable = False
        self._stalled_at = time.monotonic()
        self._stalled_size = self.transport.get_write_buffer_size() if self.transport else 0

    def resume_writing(self) -> None:
        self._writable = True
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        self._maybe_resume()

    # -- HTTP --------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self.in_request:
            self._feed(data)
            return
        if self.buf:
            data, self.buf = self.buf + data, b""
        limit = self.server.max_head_bytes
        head_end = _head_end(data)
        if head_end < 0:
            if len(data) > limit:
                self._refuse(431, "Request head too large")
            else:
                self.buf = data
            return
        if head_end > limit:
            self._refuse(431, "Request head too large")
            return
        head = data[:head_end].lower()
        if b"\r\nupgrade:" in head and b"websocket" in head:
            if self._queue or self._worker is not None:  # answers still owed: upgrade after
                self._unread = data
                self._pause()
                return
            if b"\r\nconnection: upgrade\r\n" not in head and not head.endswith(
                b"\r\nconnection: upgrade"
            ):
                data = _one_connection_token(data, head_end)
            self._upgrade(data)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse `data` a slice at a time; stop where a bound is reached, keeping the rest."""
        if self.parser is None:
            self.parser = httptools.HttpRequestParser(self)
        view = memoryview(data)
        for start in range(0, len(data), _SLICE):
            if len(self._queue) >= _MAX_QUEUED or not self._writable:
                self._unread = bytes(view[start:])
                self._pause()
                return
            piece = view[start : start + _SLICE]
            begun = self._begun
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._refuse(400, "Unexpected upgrade request")
            except httptools.HttpParserError as exc:
                self._refuse(400, f"Malformed HTTP request: {str(exc)[:80]}")
            if self._refused or self.transport is None or self.transport.is_closing():
                return
            if self.in_request and self._phase is _Phase.HEAD and self._begun == begun:
                self._head_seen += len(piece)  # the whole slice was head
                if self._head_seen > self.server.max_head_bytes:
                    self._refuse(431, "Request head too large")
                    return

    def on_message_begin(self) -> None:
        self.in_request = True
        self._begun += 1
        self._phase, self._since = _Phase.HEAD, time.monotonic()
        self._head_seen = 0
        self._url = b""
        self._headers = {}
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._phase, self._since = _Phase.BODY, time.monotonic()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body += body
        if len(self._body) > self.server.max_body_bytes:
            self._refuse(413, "Request body too large")

    def on_message_complete(self) -> None:
        self.in_request = False
        self._phase = _Phase.BUSY
        if self._refused or self.transport is None or self.transport.is_closing():
            return
        if not self.peer:  # asked only for HTTP requests: uvloop builds a socket object for it
            peer = self.transport.get_extra_info("peername")
            self.peer = f"{peer[0]}:{peer[1]}" if peer else "unknown"
            self.peer_ip = str(peer[0]) if peer else "unknown"
        url = httptools.parse_url(self._url)
        assert self.parser is not None
        request = Request(
            method=self.parser.get_method().decode(),
            path=(url.path or b"/").decode("utf-8", "replace"),
            query=(url.query or b"").decode("utf-8", "replace"),
            headers=self._headers,
            body=bytes(self._body),
            peer=self.peer,
            client_ip=self.server.proxies.client_of(
                self.peer_ip, self._headers.get("x-forwarded-for")
            ),
        )
        self._queue.append(_Pending(request, None, self.parser.should_keep_alive()))
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._queue:
                if not self._writable:  # the client is not reading its answers: wait
                    self._drained = asyncio.get_running_loop().create_future()
                    await self._drained
                    continue
                pending = self._queue.popleft()
                request, response = pending.request, pending.response
                if response is None:
                    assert request is not None
                    response = await self.server.http_handler(request)
                head_only = request is not None and request.method == "HEAD"
                self._write(response, keep_alive=pending.keep_alive, head_only=head_only)
                if self._queue:  # pipelined: read on if there is room, and let others in
                    self._maybe_resume()
                    await asyncio.sleep(0)
        finally:
            self._worker = None
            if self.transport is not None and not self.transport.is_closing():
                waiting = self.in_request or bool(self.buf)
                self._phase = _Phase.HEAD if waiting else _Phase.IDLE
                self._since = time.monotonic()
                self._maybe_resume()
                if self._ended and self._worker is None and not self._queue and not self._unread:
                    self.transport.close()

    def _write(self, response: Response, keep_alive: bool = True, head_only: bool = False) -> None:
        """Send `response`; its head alone for a HEAD request (RFC 9110 9.3.2: a body there
        would be read as the start of the next answer)."""
        if self.transport is None or self.transport.is_closing():
            return
        reason = _REASONS.get(response.status, "Unknown")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Access-Control-Allow-Origin: *",
        ]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.transport.write(head if head_only else head + response.body)
        if not keep_alive:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer with an error and close, after the answers to the requests before it;
        nothing more is read from the connection. The body is the HTTP API's error shape,
        {"error", "status"}."""
        if self._refused:
            return
        self._refused = True
        self._unread = b""
        body = orjson.dumps({"error": message, "status": status})
        if not self._queue and self._worker is None:
            self._write(Response(status, body), keep_alive=False)
            return
        self._pause()
        self._queue.append(_Pending(None, Response(status, body), False))

    # -- back-pressure and timeouts ----------------------------------------------------------

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        """Read again once there is room: fewer than _MAX_QUEUED requests waiting and the
        client reading its answers; what was left unparsed is parsed first."""
        if (
            not self._paused
            or self._refused
            or len(self._queue) >= _MAX_QUEUED
            or not self._writable
            or self.transport is None
            or self.transport.is_closing()
        ):
            return
        self._paused = False
        self.transport.resume_reading()
        unread, self._unread = self._unread, b""
        if unread:
            self._receive(unread)  # may pause again

    def check_timeouts(self, now: float) -> None:
        """Close the connection if it is past its phase's timeout (`Server._sweep` asks every
        connection, often): a request head, then its body, must each arrive within
        `header_timeout_s` (408); a kept-alive connection with nothing under way is closed
        after `keepalive_timeout_s`, and so is one whose client reads none of its answers
        for as long."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        server = self.server
        if not self._writable:
            size = transport.get_write_buffer_size()
            if size < self._stalled_size:  # the client reads, however slowly
                self._stalled_at, self._stalled_size = now, size
            elif now - self._stalled_at > server.keepalive_timeout_s:
                transport.abort()  # what is buffered will never be read
            return
        if self._queue or self._worker is not None:
            return
        if self._phase is _Phase.IDLE:
            if now - self._since > server.keepalive_timeout_s:
                transport.close()
            return
        if now - self._since <= server.header_timeout_s:
            return
        if self._phase is _Phase.HEAD and not self.buf and not self.in_request:
            transport.close()  # not a byte of a request: nothing to answer
            return
        part = "head" if self._phase is _Phase.HEAD else "body"
        self._refuse(
            408, f"Request timeout: its {part} did not arrive within {server.header_timeout_s:g} s"
        )

    def held_bytes(self) -> int:
        """What this connection holds in memory, in bytes: input not yet parsed, the request
        being read, requests waiting for their answer, and answers not yet sent."""
        held = len(self.buf) + len(self._unread) + len(self._url) + len(self._body)
        for pending in self._queue:
            request = pending.request
            if request is not None:
                held += len(request.path) + len(request.query) + len(request.body)
                held += sum(len(k) + len(v) for k, v in request.headers.items())
        if self.transport is not None:
            held += self.transport.get_write_buffer_size()
        return held

    # -- WebSocket ---------------------------------------------------------------------------

    def _upgrade(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.server.http_connections.discard(self)
        ws = self.server.make_ws_protocol()
        transport.set_protocol(ws)
        if self.server.max_connections_per_address:
            # picows calls the listener factory within `buffer_updated` below
            peer = transport.get_extra_info("peername")
            self.server.upgrading_peer = str(peer[0]) if peer else "unknown"
        ws.connection_made(transport if self.server.ws_info_log else _Accepted(transport))
        buffer = ws.get_buffer(len(data))
        memoryview(buffer)[: len(data)] = data
        ws.buffer_updated(len(data))


def _head_end(data: bytes) -> int:
    """Where the blank line that ends a request head starts, or -1. Bare LF line ends count
    (the parser then refuses them with 400), so such a request is answered, not kept
    waiting for a CRLF that never comes."""
    ends = [i for i in (data.find(b"\n\r\n"), data.find(b"\n\n")) if i >= 0]
    if not ends:
        return -1
    end = min(ends)
    return end - 1 if end > 0 and data[end - 1] == 13 else end  # at its CR, if any


def _one_connection_token(data: bytes, head_end: int) -> bytes:
    """The request with `Connection: Upgrade` in place of a Connection header that lists
    `upgrade` among other tokens. picows accepts only the single token, while Firefox sends
    `Connection: keep-alive, Upgrade` (RFC 9110 7.6.1: a comma-separated list). A header that
    lists no `upgrade` is left for picows to refuse with 400."""
    lines = data[:head_end].split(b"\r\n")
    for i, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"connection":
            tokens = [t.strip().lower() for t in value.split(b",")]
            if b"upgrade" in tokens:
                lines[i] = b"Connection: Upgrade"
            break
    return b"\r\n".join(lines) + data[head_end:]


class Server:
    """The listening socket; `ws_factory(path, query, headers)` returns a listener or None.

    A sweep, every quarter of the shorter timeout (at most a second), closes the HTTP
    connections (upgrades not yet made included) that are past their timeout
    (`FrontProtocol.check_timeouts`)."""

    def __init__(
        self,
        http_handler: HttpHandler,
        ws_factory: WsFactory,
        *,
        max_frame_bytes: int,
        max_body_bytes: int,
        max_head_bytes: int = MAX_HEAD_BYTES,
        header_timeout_s: float = 10.0,
        keepalive_timeout_s: float = 60.0,
        proxies: TrustedProxies | None = None,
        max_connections_per_address: int = 0,
    ) -> None:
        self.http_handler = http_handler
        self.ws_factory = ws_factory
        self.max_frame_bytes = max_frame_bytes
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.header_timeout_s = header_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.proxies = proxies or TrustedProxies()
        # WebSocket connections per client address (after trusted proxies); 0: no limit.
        self.max_connections_per_address = max_connections_per_address
        self.addresses: dict[str, int] = {}  # client address -> its open WebSocket connections
        self.upgrading_peer = ""  # the socket address of the upgrade picows is parsing
        self.http_connections: set[FrontProtocol] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._logger = _WsLog(logging.getLogger("picows.parley"))
        self.ws_info_log = self._logger.isEnabledFor(logging.INFO)

    def _listener_factory(self, request: Any) -> WSListener | WSUpgradeResponseWithListener | None:
        raw_path = request.path.decode("latin-1")
        path, _, query = raw_path.partition("?")
        limit = self.max_connections_per_address
        client_ip = ""
        if limit:
            client_ip = self.proxies.client_of(
                self.upgrading_peer, request.headers.get("x-forwarded-for")
            )
            if self.addresses.get(client_ip, 0) >= limit:
                return self._too_many(client_ip, limit)
        handler: WsHandler | None = self.ws_factory(path, query, request.headers)
        if handler is None:
            return None
        if limit:
            handler = _Counted(handler, self.addresses, client_ip)
        # A request picows then finds broken gets its 400 without `to_bytes` being called:
        # the handler never hears of it (tests/e2e/test_handshake.py).
        return WSUpgradeResponseWithListener(
            SwitchingProtocols(handler),  # type: ignore[arg-type]  # duck-typed, see the class
            Listener(handler),
        )

    @staticmethod
    def _too_many(client_ip: str, limit: int) -> WSUpgradeResponseWithListener:
        """The upgrade refused with 429: pusher-js then retries after its back-off."""
        message = f"Too many connections from {client_ip}: the limit is {limit}"
        logs.refused("connection refused", client_ip=client_ip, status=429, reason=message)
        body = orjson.dumps({"error": message, "status": 429})
        response = WSUpgradeResponse.create_error_response(
            429, body, {"Content-Type": "application/json", "Retry-After": "5"}
        )
        return WSUpgradeResponseWithListener(response, None)

    def make_ws_protocol(self) -> WSProtocol:
        return WSProtocol(
            None,  # host+port: server side
            None,  # ws_path
            False,  # is_client_side
            self._listener_factory,
            self._logger,
            True,  # disconnect_on_exception
            None,  # handshake timeout: none, picows gets the whole request head at once
            False,  # enable_auto_ping: the node sweeps idle sessions itself
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: the handler answers PINGs so they count as activity
            self.max_frame_bytes,
            None,  # extra headers
            1024,  # initial read buffer: small (it grows), memory per idle connection matters
        )

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, reuse_port: bool = False
    ) -> int:
        """Listen on host:port (with TLS when `tls` is given; with SO_REUSEPORT, beside other
        processes on the same port, when `reuse_port`); return the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrontProtocol(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=4096,
            ssl=tls,
        )
        sockets = self._server.sockets
        self._sweeper = loop.create_task(self._sweep())
        return int(sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        interval = min(1.0, self.header_timeout_s / 4, self.keepalive_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.http_connections):
                conn.check_timeouts(now)

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    def close_http(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.http_connections):
            if conn.transport is not None:
                conn.transport.close()
