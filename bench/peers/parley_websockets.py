"""Parley on a second WebSocket stack (benchmark peer `parley-websockets`).

The whole of Parley (protocol, history, sender stamping, the same `Session`) with the
WebSocket layer swapped: after the HTTP upgrade request arrives, the connection is handed
to the sans-I/O `ServerProtocol` of `websockets` 17 (pure-Python framing with its C
masking helper) instead of picows. A small shim gives `Session` the few picows transport
and frame methods it uses. This exists to measure Parley's hot path on two stacks; it is not
a supported way to run Parley.

    PARLEY_APP_ID=1 ... python bench/peers/parley_websockets.py --host 127.0.0.1 --port 6021
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import uvloop
from picows import WSMsgType
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from parley import logs
from parley.app import serve
from parley.settings import load_settings
from parley.transport import server as transport_server

OPCODES = {
    Opcode.TEXT: WSMsgType.TEXT,
    Opcode.CONT: WSMsgType.CONTINUATION,
    Opcode.BINARY: WSMsgType.BINARY,
    Opcode.CLOSE: WSMsgType.CLOSE,
    Opcode.PING: WSMsgType.PING,
    Opcode.PONG: WSMsgType.PONG,
}


class _Frame:
    """What `Session.on_ws_frame` reads of a picows frame."""

    __slots__ = ("_frame", "fin", "msg_type")

    def __init__(self, frame: Frame) -> None:
        self._frame = frame
        self.msg_type = OPCODES[frame.opcode]
        self.fin = frame.fin

    def get_payload_as_bytes(self) -> bytes:
        return bytes(self._frame.data)

    def get_close_code(self) -> int:
        return Close.parse(self._frame.data).code if self._frame.data else 1005

    def get_close_message(self) -> bytes:
        return Close.parse(self._frame.data).reason.encode() if self._frame.data else b""


class WebsocketsConnection(asyncio.Protocol):
    """One connection: websockets' sans-I/O protocol driving Parley's Session; it also
    stands in for the picows transport that Session writes to."""

    def __init__(self, server: transport_server.Server) -> None:
        self.server = server
        self.ws = ServerProtocol(max_size=server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.underlying_transport: Any = None
        self.session: Any = None
        self.is_disconnected = False
        self.is_close_frame_sent = False

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = self.underlying_transport = transport

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif self.session is not None:
                if event.opcode is Opcode.CLOSE:
                    self.is_close_frame_sent = True  # the protocol answers the close itself
                self.session.on_ws_frame(self, _Frame(event))
        self._flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.is_disconnected = True
        if self.session is not None:
            self.session.on_ws_disconnected(self)

    def _handshake(self, request: Request) -> None:
        path, _, query = request.path.partition("?")
        listener = self.server.ws_factory(path, query, request.headers)
        if listener is None:
            self.ws.send_response(self.ws.reject(404, "Not found\n"))
            return
        self.ws.send_response(self.ws.accept(request))
        self._flush()
        self.session = listener
        listener.on_ws_connected(self)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()

    # -- what Session calls on a picows transport -------------------------------------------

    def send(self, kind: Any, data: Any, fin: bool = True) -> None:
        if kind is WSMsgType.TEXT:
            self.ws.send_text(bytes(data), fin)
        elif kind is WSMsgType.CONTINUATION:
            self.ws.send_continuation(bytes(data), fin)
        else:
            self.ws.send_binary(bytes(data), fin)
        self._flush()

    def send_pong(self, data: bytes) -> None:
        pass  # websockets' protocol answers pings itself

    def send_close(self, code: Any = 1000, reason: bytes = b"") -> None:
        if not self.is_close_frame_sent:
            self.is_close_frame_sent = True
            self.ws.send_close(int(code), reason.decode(errors="replace"))
            self._flush()

    def disconnect(self, graceful: bool = True) -> None:
        if self.transport is not None:
            self.transport.close() if graceful else self.transport.abort()


def _upgrade(front: transport_server.FrontProtocol, data: bytes) -> None:
    transport = front.transport
    assert transport is not None
    front.server.http_connections.discard(front)
    connection = WebsocketsConnection(front.server)
    transport.set_protocol(connection)
    connection.connection_made(transport)
    connection.data_received(data)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6021)
    args = parser.parse_args()
    settings = load_settings({"host": args.host, "port": args.port})
    logs.configure(settings.log_level, settings.log_format)
    transport_server.FrontProtocol._upgrade = _upgrade  # type: ignore[method-assign]
    uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
