"""transport.websocket.WebSocket driven without a socket: fake picows frames in, a fake
picows transport recording what it is asked to send; a real Session and node behind it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from picows import WSMsgType

from parley.core.session import Session
from parley.transport.websocket import Limits, WebSocket
from tests.support.transport import APP, make_node

MAX_MESSAGE = 1000


class Raw:
    """uvloop's transport under picows's: the write buffer's size, set by the test."""

    def __init__(self) -> None:
        self.buffered = 0
        self.limits: dict[str, Any] = {}

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = {"high": high, "low": low}


class FakeWSTransport:
    """What WebSocket uses of picows's WSTransport, recording every frame it is asked for."""

    def __init__(self) -> None:
        self.underlying_transport = Raw()
        self.sent: list[tuple[WSMsgType, bytes, bool]] = []
        self.closes: list[tuple[int, bytes]] = []
        self.pongs: list[bytes] = []
        self.disconnects: list[bool] = []
        self.is_close_frame_sent = False
        self.is_disconnected = False

    def send(self, kind: WSMsgType, data: Any, fin: bool = True) -> None:
        self.sent.append((kind, bytes(data), fin))

    def send_close(self, code: int, reason: bytes = b"") -> None:
        self.is_close_frame_sent = True
        self.closes.append((int(code), reason))

    def send_pong(self, data: bytes) -> None:
        self.pongs.append(data)

    def disconnect(self, graceful: bool = True) -> None:
        self.disconnects.append(graceful)

    def messages(self) -> list[dict[str, Any]]:
        """The text messages sent, reassembled from their frames and decoded."""
        out: list[dict[str, Any]] = []
        part = b""
        for kind, data, fin in self.sent:
            assert (kind is WSMsgType.TEXT) == (part == b"")
            part += data
            if fin:
                out.append(json.loads(part))
                part = b""
        return out


class Frame:
    """What WebSocket reads of a picows frame. Like picows, it gives `fin` and the reserved
    bits as ints (0 or 1), not bools."""

    def __init__(
        self,
        kind: WSMsgType,
        payload: bytes = b"",
        fin: bool = True,
        close: int = 1000,
        rsv1: int = 0,
    ) -> None:
        self.msg_type, self.payload, self.fin, self.close = kind, payload, int(fin), close
        self.rsv1, self.rsv2, self.rsv3 = rsv1, 0, 0
        self.payload_size = len(payload)

    def get_payload_as_bytes(self) -> bytes:
        return self.payload

    def get_payload_as_memoryview(self) -> memoryview:
        return memoryview(self.payload)

    def get_close_code(self) -> int:
        return self.close

    def get_close_message(self) -> bytes:
        return self.payload


def connected(**settings: Any) -> tuple[WebSocket, FakeWSTransport]:
    node = make_node(**settings)
    ws = WebSocket(
        Session(node, "/app/" + APP.key, "protocol=7", {}),
        Limits(MAX_MESSAGE, node.max_outbound_bytes),
    )
    transport = FakeWSTransport()
    ws.on_ws_connected(transport)  # type: ignore[arg-type]
    assert [m["event"] for m in transport.messages()] == ["pusher:connection_established"]
    transport.sent.clear()
    return ws, transport


PING = b'{"event":"pusher:ping","data":{}}'


@pytest.mark.parametrize(
    ("size", "frames"),
    [(0, 1), (8192, 1), (8193, 2), (16384, 2), (16385, 3), (20000, 3)],
)
def test_what_is_written_goes_out_in_frames_of_at_most_8_kib(size: int, frames: int) -> None:
    ws, transport = connected()
    data = bytes(48 + i % 10 for i in range(size))
    ws.write(data)
    assert len(transport.sent) == frames
    assert [kind for kind, _, _ in transport.sent] == [WSMsgType.TEXT] + [
        WSMsgType.CONTINUATION
    ] * (frames - 1)
    assert [fin for _, _, fin in transport.sent] == [False] * (frames - 1) + [True]
    assert all(len(part) <= 8192 for _, part, _ in transport.sent)
    assert b"".join(part for _, part, _ in transport.sent) == data


def test_write_many_writes_each_in_order() -> None:
    ws, transport = connected()
    ws.write_many([b'{"event":"a"}', b'{"event":"b"}'])
    assert [m["event"] for m in transport.messages()] == ["a", "b"]


def test_a_text_frame_reaches_the_session_and_its_answer_comes_back() -> None:
    ws, transport = connected()
    ws.on_ws_frame(transport, Frame(WSMsgType.TEXT, PING))  # type: ignore[arg-type]
    assert [m["event"] for m in transport.messages()] == ["pusher:pong"]


def test_a_fragmented_text_message_reaches_the_session_whole() -> None:
    ws, transport = connected()
    for frame in (
        Frame(WSMsgType.TEXT, PING[:5], fin=False),
        Frame(WSMsgType.CONTINUATION, PING[5:20], fin=False),
    ):
        ws.on_ws_frame(transport, frame)  # type: ignore[arg-type]
        assert transport.sent == []  # nothing handled before the last fragment
    ws.on_ws_frame(transport, Frame(WSMsgType.CONTINUATION, PING[20:]))  # type: ignore[arg-type]
    assert [m["event"] for m in transport.messages()] == ["pusher:pong"]
    assert ws.session.node.hubs[APP.id].messages_in == 1


def test_a_fragmented_message_with_control_frames_between_reaches_the_session_whole() -> None:
    ws, transport = connected()
    text = '{"event":"pusher:ping","data":{"t":"\u20ac"}}'.encode()
    cut = text.index("\u20ac".encode()) + 1  # inside the three bytes of the euro sign
    ws.on_ws_frame(transport, Frame(WSMsgType.TEXT, text[:cut], fin=False))  # type: ignore[arg-type]
    ws.on_ws_frame(transport, Frame(WSMsgType.PING, b"p"))  # type: ignore[arg-type]
    ws.on_ws_frame(transport, Frame(WSMsgType.PONG))  # type: ignore[arg-type]
    ws.on_ws_frame(transport, Frame(WSMsgType.CONTINUATION, text[cut:]))  # type: ignore[arg-type]
    assert transport.pongs == [b"p"]
    assert [m["event"] for m in transport.messages()] == ["pusher:pong"]
    assert transport.closes == []


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([Frame(WSMsgType.CONTINUATION, PING)], 1002),
        ([Frame(WSMsgType.TEXT, PING[:5], fin=False), Frame(WSMsgType.TEXT, PING)], 1002),
        ([Frame(WSMsgType.BINARY, b"\0", fin=False), Frame(WSMsgType.TEXT, PING)], 1002),
        ([Frame(WSMsgType.TEXT, PING[:5], fin=False), Frame(WSMsgType.BINARY, b"\0")], 1002),
        ([Frame(WSMsgType.TEXT, PING, rsv1=1)], 1002),
        ([Frame(WSMsgType.PING, b"", rsv1=1)], 1002),
    ],
)
def test_a_frame_out_of_order_fails_the_connection_with_1002(
    frames: list[Frame], code: int
) -> None:
    ws, transport = connected()
    for frame in frames:
        ws.on_ws_frame(transport, frame)  # type: ignore[arg-type]
    assert [c for c, _ in transport.closes] == [code] and transport.disconnects == [True]
    assert transport.sent == [] and ws.session.closing
    assert ws.session.node.hubs[APP.id].messages_in == 0


@pytest.mark.parametrize(
    "frames",
    [
        [Frame(WSMsgType.TEXT, b'{"event":"\xff"}')],
        [Frame(WSMsgType.TEXT, b'{"event":"\xe2\x82', fin=False), Frame(WSMsgType.CONTINUATION)],
        [Frame(WSMsgType.TEXT, b'"\xff' + b"x" * 70000)],  # over max_frame_bytes too
    ],
)
def test_a_text_message_not_utf8_fails_the_connection_with_1007(frames: list[Frame]) -> None:
    ws, transport = connected()
    for frame in frames:
        ws.on_ws_frame(transport, frame)  # type: ignore[arg-type]
    assert transport.closes == [(1007, b"Text message is not valid UTF-8")]
    assert transport.sent == [] and ws.session.closing  # no pusher:error before the close


def test_a_fragmented_binary_message_is_answered_once_it_ends() -> None:
    ws, transport = connected()
    ws.on_ws_frame(transport, Frame(WSMsgType.BINARY, b"\0", fin=False))  # type: ignore[arg-type]
    assert transport.sent == []
    ws.on_ws_frame(transport, Frame(WSMsgType.CONTINUATION, b"\1"))  # type: ignore[arg-type]
    assert transport.messages()[-1]["data"]["message"].startswith("Binary frames")
    ws.on_ws_frame(transport, Frame(WSMsgType.TEXT, PING))  # type: ignore[arg-type]
    assert transport.messages()[-1]["event"] == "pusher:pong"


def test_a_fragmented_message_over_the_limit_is_closed_with_1009() -> None:
    ws, transport = connected()
    ws.on_ws_frame(transport, Frame(WSMsgType.TEXT, b"x" * 600, fin=False))  # type: ignore[arg-type]
    assert transport.closes == []
    ws.on_ws_frame(transport, Frame(WSMsgType.CONTINUATION, b"x" * 401, fin=False))  # type: ignore[arg-type]
    assert transport.closes == [(1009, b"Message too big")] and transport.disconnects == [True]
    assert ws.session.closing


def test_text_is_not_read_once_the_session_is_closing() -> None:
    ws, transport = connected()
    ws.session.close(1000, "done")
    ws.on_ws_frame(transport, Frame(WSMsgType.TEXT, PING))  # type: ignore[arg-type]
    assert transport.sent == []
    assert ws.session.node.hubs[APP.id].messages_in == 0


def test_ping_pong_binary_and_close_frames() -> None:
    ws, transport = connected()
    session = ws.session
    session.last_seen, session.pinged = 0.0, True
    ws.on_ws_frame(transport, Frame(WSMsgType.PONG))  # type: ignore[arg-type]
    assert session.last_seen > 0.0 and not session.pinged  # a pong is activity, nothing more
    assert transport.sent == [] and transport.pongs == []
    ws.on_ws_frame(transport, Frame(WSMsgType.PING, b"p1"))  # type: ignore[arg-type]
    assert transport.pongs == [b"p1"]
    ws.on_ws_frame(transport, Frame(WSMsgType.BINARY, b"\x00"))  # type: ignore[arg-type]
    assert transport.messages()[-1]["data"]["message"].startswith("Binary frames")
    ws.on_ws_frame(transport, Frame(WSMsgType.CLOSE, b"bye", close=1001))  # type: ignore[arg-type]
    assert transport.closes == [(1001, b"bye")] and transport.disconnects == [True]


@pytest.mark.parametrize(
    ("payload", "code", "answer"),
    [
        (b"", 1000, 1000),  # no code: 1005 to the application, answered with 1000
        (b"\x0f\xa0", 4000, 4000),
        (b"\x00\x00", 0, 1002),
        (b"\x03\xee", 1006, 1002),
        (b"\x13\x88", 5000, 1002),
    ],
)
def test_a_close_is_echoed_unless_its_code_may_not_be_sent(
    payload: bytes, code: int, answer: int
) -> None:
    ws, transport = connected()
    frame = Frame(WSMsgType.CLOSE, payload, close=code)
    frame.payload = payload[2:]  # what get_close_message gives
    frame.payload_size = len(payload)
    ws.on_ws_frame(transport, frame)  # type: ignore[arg-type]
    assert [c for c, _ in transport.closes] == [answer] and transport.disconnects == [True]


def test_the_answer_to_a_close_this_side_sent_is_not_answered() -> None:
    ws, transport = connected()
    ws.close(4009, "refused")
    ws.on_ws_frame(transport, Frame(WSMsgType.CLOSE, b"", close=4009))  # type: ignore[arg-type]
    assert transport.closes == [(4009, b"refused")]
    assert transport.disconnects == [True, True]


def test_close_sends_one_close_frame_with_the_reason_cut_to_120_bytes() -> None:
    ws, transport = connected()
    ws.close(4009, "r" * 200)
    ws.close(4200, "again")
    assert transport.closes == [(4009, b"r" * 120)] and transport.disconnects == [True]


def test_the_handshake_answer_carries_what_the_session_sent_first() -> None:
    node = make_node()
    session = Session(node, "/app/" + APP.key, "protocol=7", {})
    ws = WebSocket(session, Limits(MAX_MESSAGE, 1 << 20))
    early = ws.on_ws_upgrade()
    assert [json.loads(m)["event"] for m in early] == ["pusher:connection_established"]
    transport = FakeWSTransport()
    ws.on_ws_connected(transport)  # type: ignore[arg-type]
    assert transport.sent == []
    assert transport.underlying_transport.limits == {}  # 1 MiB: uvloop's 64 KiB stays


def test_a_small_outbound_limit_lowers_the_high_water_mark() -> None:
    _, transport = connected(max_outbound_bytes=32768)
    assert transport.underlying_transport.limits == {"high": 32768, "low": None}


def test_a_disconnect_ends_the_session() -> None:
    ws, transport = connected()
    hub = ws.session.node.hubs[APP.id]
    assert ws.session.socket_id in hub.sessions
    ws.on_ws_disconnected(transport)  # type: ignore[arg-type]
    assert ws.session.socket_id not in hub.sessions and ws.session.closing


def test_a_slow_consumer_is_closed_with_4100_after_the_write_that_went_over() -> None:
    async def main() -> tuple[WebSocket, FakeWSTransport, list[Any]]:
        ws, transport = connected(max_outbound_bytes=32768)
        raw = transport.underlying_transport
        ws.write(b'{"event":"a"}')  # buffered over the limit, but not paused: fine
        raw.buffered = 40000
        ws.write(b'{"event":"b"}')
        assert not ws.session.closing
        ws.pause_writing()
        ws.resume_writing()
        ws.write(b'{"event":"c"}')
        assert not ws.session.closing
        ws.pause_writing()
        ws.write(b'{"event":"d"}')
        assert ws.session.closing and transport.closes == []  # the close is scheduled
        ws.session.send(b'{"event":"e"}')  # the session writes nothing more
        assert ws.session.transport is not ws  # nor does the hub's fan-out
        await asyncio.sleep(0)
        return ws, transport, [m["event"] for m in transport.messages()]

    ws, transport, events = asyncio.run(main())
    assert events == ["a", "b", "c", "d"]
    assert transport.closes == [(4100, b"Slow consumer: too much buffered")]
    assert transport.disconnects == [True]
    assert ws.session.node.metrics.errors[(APP.id, "4100")] == 1


def test_a_frame_larger_than_the_outbound_limit_is_no_slow_consumer() -> None:
    """The answer to a presence subscribe lists every member (thousands: megabytes): the
    limit grows by the size of such a frame until the buffer drains, then it is the limit
    again."""

    async def main() -> tuple[WebSocket, FakeWSTransport, list[str]]:
        ws, transport = connected(max_outbound_bytes=32768)
        raw = transport.underlying_transport
        big = b'{"event":"big","data":"' + b"x" * 100_000 + b'"}'
        ws.pause_writing()
        raw.buffered = len(big) + 20_000  # the frame, behind what was waiting already
        ws.write(big)
        assert not ws.session.closing
        raw.buffered += 12_000  # more frames behind it, within the limit: still a reader
        ws.write(b'{"event":"after"}')
        assert not ws.session.closing
        ws.resume_writing()  # drained: the limit alone again
        ws.pause_writing()
        raw.buffered = 40_000
        ws.write(b'{"event":"slow"}')
        assert ws.session.closing
        await asyncio.sleep(0)
        return ws, transport, [m["event"] for m in transport.messages()]

    _, transport, events = asyncio.run(main())
    assert events == ["big", "after", "slow"]
    assert transport.closes == [(4100, b"Slow consumer: too much buffered")]


def test_frames_over_the_allowance_of_a_large_one_are_a_slow_consumer() -> None:
    async def main() -> WebSocket:
        ws, transport = connected(max_outbound_bytes=32768)
        raw = transport.underlying_transport
        big = b'{"event":"big","data":"' + b"x" * 100_000 + b'"}'
        ws.pause_writing()
        raw.buffered = len(big)
        ws.write(big)
        raw.buffered = len(big) + 32768 + 1  # the large frame and more than the limit
        ws.write(b'{"event":"after"}')
        return ws

    assert asyncio.run(main()).session.closing
