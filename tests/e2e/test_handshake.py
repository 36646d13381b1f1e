"""The WebSocket handshake over a raw TCP socket: the bytes the server answers with, and
what a broken upgrade request earns (PUSHER.md §1).

The server opens the session while it answers the handshake and sends
`pusher:connection_established` in the same write as the 101 response
(transport.server.SwitchingProtocols); these tests read the raw stream to check both parts,
and that a handshake refused before the 101 leaves no session behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
from collections.abc import Iterator

import pytest

from tests.support.pusher_raw import ClientPool, http_request, running
from tests.support.server import TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    with running() as srv:
        yield srv


class Raw:
    """A TCP connection that sends an upgrade request and reads the answer byte-exact."""

    def __init__(self, srv: ParleyServer, path: str, **headers: str) -> None:
        fields = {
            "Host": f"{srv.host}:{srv.port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
            "Sec-WebSocket-Version": "13",
        }
        fields.update({k.replace("_", "-"): v for k, v in headers.items()})
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
        self.sock = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
        self.sock.sendall(head.encode() + b"\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed early; unread: {self.buf!r}"
        self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, bytes]:
        """One unmasked server frame: (opcode, payload)."""
        b0, b1 = self.read_exact(2)
        assert b1 & 0x80 == 0, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self.read_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self.read_exact(8), "big")
        return b0 & 0x0F, self.read_exact(n)

    def read_to_eof(self) -> bytes:
        while chunk := self.sock.recv(65536):  # bounded by the socket's timeout
            self.buf += chunk
        return self.buf

    def close(self) -> None:
        self.sock.close()


def connections(srv: ParleyServer) -> float:
    text = http_request(srv, "GET", "/metrics").body.decode()
    found = re.search(rf'^parley_connections\{{app_id="{srv.app_id}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_101_carries_the_accept_key_and_connection_established_follows(
    server: ParleyServer,
) -> None:
    raw = Raw(server, f"/app/{server.key}?protocol=7&client=raw&version=1.0")
    try:
        lines = raw.head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1(b"MDEyMzQ1Njc4OWFiY2RlZg==" + GUID).digest())
        assert fields["sec-websocket-accept"] == expected.decode()
        assert fields["upgrade"].lower() == "websocket"
        assert fields["connection"].lower() == "upgrade"
        assert "content-length" not in fields
        opcode, payload = raw.read_frame()
        assert opcode == 0x1
        frame = json.loads(payload)
        assert frame["event"] == "pusher:connection_established"
        assert re.fullmatch(r"\d+\.\d+", json.loads(frame["data"])["socket_id"])
        # and the connection goes on as a WebSocket: a masked ping frame gets a pong
        ping = json.dumps({"event": "pusher:ping", "data": {}}).encode()
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(ping))
        raw.sock.sendall(bytes((0x81, 0x80 | len(ping))) + mask + masked)
        opcode, payload = raw.read_frame()
        assert json.loads(payload)["event"] == "pusher:pong"
    finally:
        raw.close()


def test_a_refused_app_key_gets_101_then_the_error_then_close_4001(
    server: ParleyServer,
) -> None:
    raw = Raw(server, "/app/no-such-key?protocol=7")
    try:
        assert raw.head.startswith(b"HTTP/1.1 101 ")
        opcode, payload = raw.read_frame()
        assert opcode == 0x1
        frame = json.loads(payload)
        assert frame["event"] == "pusher:error" and frame["data"]["code"] == 4001
        opcode, payload = raw.read_frame()
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 4001
        assert raw.read_to_eof() == b""  # and the server hangs up
    finally:
        raw.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec_WebSocket_Key": "not-a-key"},
        {"Sec_WebSocket_Key": ""},
        {"Sec_WebSocket_Version": "12"},
        {"Connection": "close"},
    ],
)
def test_a_broken_upgrade_gets_400_and_leaves_no_session(
    headers: dict[str, str], pool: ClientPool
) -> None:
    # A server of its own: the connections gauge must count this test's sessions only.
    with running() as srv:
        raw = Raw(srv, f"/app/{srv.key}?protocol=7", **headers)
        try:
            assert raw.head.startswith(b"HTTP/1.1 400 "), raw.head
            raw.read_to_eof()  # picows says why in the body, then hangs up
            assert b"pusher:connection_established" not in raw.buf
        finally:
            raw.close()
        assert connections(srv) == 0.0
        client = pool.connect(srv)  # the server is unharmed and counts a real connection
        client.ping()
        assert connections(srv) == 1.0


@pytest.fixture
def pool() -> Iterator[ClientPool]:
    p = ClientPool()
    yield p
    p.close_all()


@pytest.mark.parametrize(
    "connection", ["keep-alive, Upgrade", "Upgrade, HTTP2-Settings", "upgrade"]
)
def test_connection_header_listing_upgrade_among_others_is_accepted(
    server: ParleyServer, connection: str
) -> None:
    """Firefox sends `Connection: keep-alive, Upgrade` (RFC 9110 7.6.1 allows a list)."""
    raw = Raw(server, f"/app/{server.key}?protocol=7", Connection=connection)
    try:
        assert raw.head.startswith(b"HTTP/1.1 101 "), raw.head
        _opcode, payload = raw.read_frame()
        assert json.loads(payload)["event"] == "pusher:connection_established"
    finally:
        raw.close()
