"""The transport's own pieces: server frames, the 101 answer, the query parser, and the
socket options `_Accepted` relies on uvloop and Linux to have set."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import parse_qsl

import pytest
import uvloop
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from parley.core.session import parse_query
from parley.transport.server import SwitchingProtocols, text_frame


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
    payload = bytes((48 + i % 10 for i in range(size)))
    frame = parse_server_frame(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


def test_switching_protocols_is_101_then_the_first_messages() -> None:
    answer = SwitchingProtocols([b'{"event":"a"}', b"x" * 300])
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
