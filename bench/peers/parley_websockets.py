"""Parley on a second WebSocket stack (benchmark peer `parley-websockets`).

The whole of Parley (protocol, history, sender stamping, the same `Session`) with the
WebSocket layer swapped: after the HTTP upgrade request arrives, the connection is handed
to the sans-I/O `ServerProtocol` of `websockets` 17 (pure-Python framing with its C
masking helper) instead of picows. The connection is the session's `Transport`
(parley.core.transport) and calls it with whole text messages, as `transport.websocket`
does for picows. This exists to measure Parley's hot path on two stacks; it is not a
supported way to run Parley.

    PARLEY_APP_ID=1 ... python bench/peers/parley_websockets.py --host 127.0.0.1 --port 6021
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from typing import Any

import uvloop
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from parley import logs
from parley.app import serve
from parley.core.session import Session
from parley.settings import load_settings
from parley.transport import server as transport_server


class WebsocketsConnection(asyncio.Protocol):
    """One connection: websockets' sans-I/O protocol driving Parley's Session, and the
    session's Transport."""

    def __init__(self, server: transport_server.Server) -> None:
        self.server = server
        self.ws = ServerProtocol(max_size=server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.fragments: bytearray | None = None

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif self.session is not None:
                self._frame(self.session, event)
        self._flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.session is not None:
            self.session.disconnected()

    def _handshake(self, request: Request) -> None:
        path, _, query = request.path.partition("?")
        handler = self.server.ws_factory(path, query, request.headers)
        if handler is None:
            self.ws.send_response(self.ws.reject(404, "Not found\n"))
            return
        self.ws.send_response(self.ws.accept(request))
        self._flush()
        # picows's handler is not used: only the session it was made for
        self.session = handler.session  # type: ignore[attr-defined]
        self.session.connected(self)

    def _frame(self, session: Session, frame: Frame) -> None:
        """The protocol answers pings and closes itself; text reaches the session whole."""
        taken = session.activity()
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if not taken:
                return
            if opcode is Opcode.TEXT and frame.fin:
                session.receive(bytes(frame.data))
                return
            if opcode is Opcode.TEXT:
                self.fragments = bytearray(frame.data)
                return
            if self.fragments is None:
                return  # a continuation of a binary message
            self.fragments += frame.data
            if frame.fin:
                whole, self.fragments = bytes(self.fragments), None
                session.receive(whole)
        elif opcode is Opcode.BINARY:
            session.binary()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()

    # -- the session's Transport -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.ws.state is State.OPEN:  # not once the client's close is answered
            self.ws.send_text(data)
            self._flush()

    def write_many(self, datas: Iterable[bytes]) -> None:
        for data in datas:
            self.write(data)

    def close(self, code: int, reason: str) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason.encode()[:120].decode(errors="ignore"))
            self._flush()
            if self.transport is not None:
                self.transport.close()


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
