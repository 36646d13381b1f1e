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
from collections.abc import Iterator

import pytest

from tests.support.pusher_raw import ClientPool, http_request, running
from tests.support.raw_ws import CLOSE, TEXT, RawWebSocket
from tests.support.server import ParleyServer

pytestmark = pytest.mark.e2e

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    with running() as srv:
        yield srv


def connections(srv: ParleyServer) -> float:
    text = http_request(srv, "GET", "/metrics").body.decode()
    found = re.search(rf'^parley_connections\{{app_id="{srv.app_id}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_101_carries_the_accept_key_and_connection_established_follows(
    server: ParleyServer,
) -> None:
    raw = RawWebSocket(
        server.host, server.port, f"/app/{server.key}?protocol=7&client=raw&version=1.0"
    )
    try:
        lines = raw.head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1(b"MDEyMzQ1Njc4OWFiY2RlZg==" + GUID).digest())
        assert fields["sec-websocket-accept"] == expected.decode()
        assert fields["upgrade"].lower() == "websocket"
        assert fields["connection"].lower() == "upgrade"
        assert "content-length" not in fields
        frame = raw.read_message()
        assert frame["event"] == "pusher:connection_established"
        assert re.fullmatch(r"\d+\.\d+", json.loads(frame["data"])["socket_id"])
        # and the connection goes on as a WebSocket: a masked ping frame gets a pong
        ping = json.dumps({"event": "pusher:ping", "data": {}}).encode()
        raw.send_frame(TEXT, ping)
        assert raw.read_message()["event"] == "pusher:pong"
    finally:
        raw.close()


def test_a_refused_app_key_gets_101_then_the_error_then_close_4001(
    server: ParleyServer,
) -> None:
    raw = RawWebSocket(server.host, server.port, "/app/no-such-key?protocol=7")
    try:
        assert raw.head.startswith(b"HTTP/1.1 101 ")
        frame = raw.read_message()
        assert frame["event"] == "pusher:error" and frame["data"]["code"] == 4001
        close = raw.read_frame()
        assert close.opcode == CLOSE and close.close_code == 4001
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
        raw = RawWebSocket(srv.host, srv.port, f"/app/{srv.key}?protocol=7", **headers)
        try:
            assert raw.head.startswith(b"HTTP/1.1 400 "), raw.head
            # picows says why in the body, then hangs up
            assert b"pusher:connection_established" not in raw.read_to_eof()
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
    raw = RawWebSocket(
        server.host, server.port, f"/app/{server.key}?protocol=7", Connection=connection
    )
    try:
        assert raw.head.startswith(b"HTTP/1.1 101 "), raw.head
        assert raw.read_message()["event"] == "pusher:connection_established"
    finally:
        raw.close()
