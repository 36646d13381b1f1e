"""The HTTP front of the listening port (`transport.server.FrontProtocol`) on a fake asyncio
transport that records what is written: requests fed as bytes, answers read back, no socket."""

from __future__ import annotations

from parley.transport.server import FrontProtocol, Request, Response, Server


class FakeTransport:
    """What FrontProtocol writes, and whether it closed."""

    __slots__ = ("aborted", "buffered", "closed", "protocol", "written")

    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.aborted = False
        self.buffered = 0
        self.protocol: object = None  # what it was handed to (a WebSocket upgrade)

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default


def front() -> tuple[FrontProtocol, FakeTransport, list[Request]]:
    """A connection's FrontProtocol on a FakeTransport, its handler answering every request
    200 `{"ok":true}` and keeping it (the list); bodies over 1 KiB are refused."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response(200, b'{"ok":true}')

    server = Server(handler, lambda *_: None, max_frame_bytes=65536, max_body_bytes=1024)
    protocol = FrontProtocol(server)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, seen


class UpgradeRecorder:
    """Stands in for picows's protocol when a request asks for a WebSocket: keeps the bytes
    the front hands it (`Server.make_ws_protocol` replaced on the instance)."""

    def __init__(self) -> None:
        self.received = bytearray()

    def connection_made(self, transport: object) -> None:
        pass

    def get_buffer(self, size: int) -> bytearray:
        self._buffer = bytearray(size)
        return self._buffer

    def buffer_updated(self, size: int) -> None:
        self.received += self._buffer[:size]
