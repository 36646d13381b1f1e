"""The transport's own pieces: server frames, the 101 answer, the query parser, and the
socket options `_Accepted` relies on uvloop and Linux to have set."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import parse_qsl

import pytest
import uvloop
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from parley.core.session import parse_query
from parley.transport.server import (
    Request,
    SwitchingProtocols,
    _head_end,
    text_frame,
)
from tests.support.http_front import FakeTransport, front


def parse_server_frame(data: bytes) -> Frame:
    """Parse with websockets' own RFC 6455 parser, as a client does (unmasked frames)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        assert reader.at_eof(), "bytes left after the frame"
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_round_trips_through_a_client_parser(size: int) -> None:
    payload = bytes(48 + i % 10 for i in range(size))
    frame = parse_server_frame(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


class Opening:
    def __init__(self) -> None:
        self.upgrades = 0

    def on_ws_upgrade(self) -> list[bytes]:
        self.upgrades += 1
        return [b'{"event":"a"}', b"x" * 300]


def test_switching_protocols_is_101_then_the_first_messages() -> None:
    handler = Opening()
    answer = SwitchingProtocols(handler)  # type: ignore[arg-type]
    assert answer.status == 101
    answer.headers["Sec-WebSocket-Accept"] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # as picows sets it
    out = bytes(answer.to_bytes())
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in lines
    assert b"Upgrade: websocket" in lines and b"Connection: upgrade" in lines
    first = text_frame(b'{"event":"a"}')
    assert rest[: len(first)] == first
    assert parse_server_frame(rest[len(first) :]).data == b"x" * 300
    assert handler.upgrades == 1


@pytest.mark.parametrize(
    "query",
    [
        "",
        "protocol=7&client=js&version=8.4.0&flash=false",
        "protocol=7&&client=",
        "flag&protocol=7",
        "a=1&a=2",
        "token=abc.def%2Bghi&protocol=7",
        "name=two+words&x=%E2%9C%93",
        "eq=a=b",
    ],
)
def test_parse_query_matches_urllib(query: str) -> None:
    assert parse_query(query) == dict(parse_qsl(query, keep_blank_values=True))


def test_accepted_sockets_already_have_nodelay_and_quickack() -> None:
    """`transport.server._Accepted` skips picows's setsockopt calls because these are set."""
    seen: dict[str, int] = {}

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            seen["quickack"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        server.close()

    uvloop.run(main())
    assert seen == {"nodelay": 1, "quickack": 1}


def test_an_http_request_head_split_across_reads_is_parsed_once_whole() -> None:
    async def main() -> tuple[FakeTransport, list[Request]]:
        protocol, transport, seen = front()
        raw = b"POST /x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"
        for i in range(0, len(raw), 7):  # the head arrives in 7-byte pieces
            protocol.data_received(raw[i : i + 7])
        for _ in range(10):
            await asyncio.sleep(0)  # let the request's worker task run
        return transport, seen

    transport, seen = uvloop.run(main())
    assert [(r.method, r.path, r.query, r.body) for r in seen] == [("POST", "/x", "a=1", b"body")]
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written.endswith(b'{"ok":true}') and not transport.closed


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),  # malformed (the parser's message)
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000, 413),
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{", 408),  # then no more
    ],
)
def test_the_transports_refusals_have_the_apis_error_shape(raw: bytes, status: int) -> None:
    """Found by fuzzing: they were `{"error": ...}` without the status the API's errors
    carry, the 400 built by hand from the parser's message."""
    protocol, transport, seen = front()
    protocol.data_received(raw)
    protocol.check_timeouts(time.monotonic() + 60)  # past the header timeout
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), transport.written[:200]
    parsed = json.loads(body)
    assert set(parsed) == {"error", "status"} and parsed["status"] == status, parsed
    assert transport.closed and seen == []


def test_a_request_head_over_16_kib_gets_431_and_is_closed() -> None:
    protocol, transport, seen = front()
    protocol.data_received(b"GET / HTTP/1.1\r\n")
    for _ in range(20):
        protocol.data_received(b"X-Filler: " + b"a" * 1000 + b"\r\n")  # no blank line yet
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert b"Request head too large" in transport.written and transport.closed
    assert seen == []


def test_a_pipelined_head_growing_over_reads_gets_431() -> None:
    """The second head starts inside the first read, so the pre-scan never sees it whole:
    it is counted as the parser reads it, slice by slice."""

    async def main() -> tuple[FakeTransport, list[Request]]:
        protocol, transport, seen = front()
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\n")
        for _ in range(40):
            protocol.data_received(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            await asyncio.sleep(0)
            if transport.closed:
                break
        return transport, seen

    transport, seen = uvloop.run(main())
    assert [r.path for r in seen] == ["/a"]
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 431 " in transport.written and transport.closed
    assert len(transport.written) < 1000


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\nbody", 23),
        (b"GET / HTTP/1.1\nHost: h\n\n", 22),
        (b"GET / HTTP/1.1\r\nHost: h\n\r\n", 23),
        (b"GET / HTTP/1.1\r\nHost: h\r\n", -1),
    ],
)
def test_head_end_finds_the_blank_line_with_or_without_cr(data: bytes, end: int) -> None:
    assert _head_end(data) == end


def test_a_client_reading_no_answers_is_cut_off_once_it_makes_no_progress() -> None:
    protocol, transport, _ = front()
    keepalive = protocol.server.keepalive_timeout_s
    transport.buffered = 100_000
    protocol.pause_writing()  # uvloop: the answers went over the high-water mark
    start = protocol._stalled_at
    for step in range(1, 5):  # it reads a little in every keep-alive period: kept
        transport.buffered -= 1000
        protocol.check_timeouts(start + step * keepalive * 0.9)
        assert not transport.aborted
    protocol.check_timeouts(start + 4 * keepalive * 0.9 + keepalive + 1)  # then nothing
    assert transport.aborted


def test_the_timeout_of_each_phase() -> None:
    protocol, transport, _ = front()
    header = protocol.server.header_timeout_s
    opened = protocol._since
    protocol.check_timeouts(opened + header - 0.1)
    assert not transport.closed
    protocol.check_timeouts(opened + header + 0.1)  # not a byte sent: closed, no answer
    assert transport.closed and transport.written == b""

    protocol, transport, _ = front()
    protocol.data_received(b"GET / HTTP/1.1\r\n")
    protocol.check_timeouts(protocol._since + header + 0.1)  # a head under way: 408
    assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closed
