"""The server's WebSocket layer against RFC 6455, on the compiled build (where
transport/websocket.py runs as C): fragmented messages, control frames between fragments,
UTF-8, reserved bits, masking, control frame limits, close codes and the close handshake.

Frames are written by hand (tests/support/raw_ws.py), so each test sends exactly the bytes
it names. What must be delivered is checked by its answer (a `pusher:pong`, or a client
event another connection receives); what must be refused by the close code the RFC gives,
with nothing logged as a fault.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from tests.support.pusher_raw import RawClient, assert_compiled, channel_auth, running, unique
from tests.support.raw_ws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    close_payload,
    frame_bytes,
)
from tests.support.server import TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e

PING_MESSAGE = b'{"event":"pusher:ping","data":{}}'
# what the server logs for a fault (a 1011): its own line, picows's, a traceback
FAULTS = ("unexpected error", "exception from WSListener", "Traceback")


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    with running({"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        assert_compiled(srv)
        yield srv
        faults = [line for line in srv.stderr_lines if any(f in line for f in FAULTS)]
        assert not faults, "".join(faults[:3])


@pytest.fixture
def ws(server: ParleyServer) -> Iterator[RawWebSocket]:
    """A connection opened by hand, past its connection_established."""
    with RawWebSocket(server.host, server.port, f"/app/{server.key}?protocol=7") as raw:
        assert raw.head.startswith(b"HTTP/1.1 101 "), raw.head
        socket_id(raw)
        yield raw


def socket_id(raw: RawWebSocket) -> str:
    """Read the connection's connection_established: its socket id."""
    established = raw.expect("pusher:connection_established")
    return str(json.loads(established["data"])["socket_id"])


def subscribe_frame(server: ParleyServer, sid: str, channel: str) -> dict[str, object]:
    auth = channel_auth(server.key, server.secret, sid, channel)
    return {"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}


# -- what must be delivered as one message ----------------------------------------------------


def test_a_message_sent_as_a_list_of_parts_is_delivered_whole(server: ParleyServer) -> None:
    """The issue's reproduction: `websockets` sends a list as one fragmented message; the
    compiled build closed it with 1011 and logged a traceback per fragment."""
    channel = unique("private-")
    receiver = RawClient(server.ws_url)
    receiver.subscribe(channel, key=server.key, secret=server.secret)
    with connect(server.ws_url, proxy=None, open_timeout=TIMEOUT) as sender:
        established = json.loads(sender.recv(TIMEOUT))
        sid = json.loads(established["data"])["socket_id"]
        sender.send(json.dumps(subscribe_frame(server, sid, channel)))
        assert json.loads(sender.recv(TIMEOUT))["event"] == (
            "pusher_internal:subscription_succeeded"
        )
        event = {"event": "client-parts", "channel": channel, "data": {"text": "one two three"}}
        text = json.dumps(event)
        sender.send([text[:10], text[10:25], text[25:]])
        got = receiver.expect("client-parts", channel)
        assert got["data"] == {"text": "one two three"}
        sender.send(json.dumps({"event": "pusher:ping", "data": {}}))
        assert json.loads(sender.recv(TIMEOUT))["event"] == "pusher:pong"
    receiver.close()


def test_a_utf8_character_split_across_fragments_arrives_intact(server: ParleyServer) -> None:
    channel = unique("private-")
    receiver = RawClient(server.ws_url)
    receiver.subscribe(channel, key=server.key, secret=server.secret)
    text = "caf\u00e9 \u20ac \U0001f600"
    payload = json.dumps(
        {"event": "client-utf8", "channel": channel, "data": {"text": text}}, ensure_ascii=False
    ).encode()
    ws = RawWebSocket(server.host, server.port, f"/app/{server.key}?protocol=7")
    ws.send_text(subscribe_frame(server, socket_id(ws), channel))
    ws.expect("pusher_internal:subscription_succeeded")
    emoji = payload.index("\U0001f600".encode())
    euro = payload.index("\u20ac".encode())
    cuts = [0, euro + 1, emoji + 2, emoji + 3, len(payload)]  # inside both characters
    parts = [payload[a:b] for a, b in itertools.pairwise(cuts)]
    for i, part in enumerate(parts):
        ws.send_frame(TEXT if i == 0 else CONTINUATION, part, fin=i == len(parts) - 1)
    got = receiver.expect("client-utf8", channel)
    assert got["data"] == {"text": text}
    ws.close()
    receiver.close()


def test_a_ping_between_fragments_is_answered_and_the_message_delivered(
    ws: RawWebSocket,
) -> None:
    ws.send_frame(TEXT, PING_MESSAGE[:12], fin=False)
    ws.send_frame(PING, b"between")
    ws.send_frame(CONTINUATION, PING_MESSAGE[12:20], fin=False)
    ws.send_frame(PONG, b"unsolicited")  # allowed, and ignored
    ws.send_frame(CONTINUATION, PING_MESSAGE[20:], fin=True)
    pong = ws.read_frame()
    assert (pong.opcode, pong.payload) == (PONG, b"between")
    assert ws.read_message()["event"] == "pusher:pong"


def test_a_message_in_2000_fragments_is_delivered(ws: RawWebSocket) -> None:
    bare = json.dumps({"event": "pusher:ping", "data": {"pad": ""}}).encode()
    message = bare.replace(b'""', b'"' + b"x" * (4000 - len(bare)) + b'"')
    parts = [message[i : i + 2] for i in range(0, len(message), 2)]
    assert len(parts) == 2000
    ws.send_raw(
        b"".join(
            frame_bytes(TEXT if i == 0 else CONTINUATION, part, fin=i == len(parts) - 1)
            for i, part in enumerate(parts)
        )
    )
    assert ws.read_message()["event"] == "pusher:pong"


def test_a_fragmented_binary_message_is_answered_like_a_binary_one(ws: RawWebSocket) -> None:
    ws.send_frame(BINARY, b"\x00\x01", fin=False)
    ws.send_frame(CONTINUATION, b"\x02", fin=True)
    error = ws.expect("pusher:error")
    assert "binary" in error["data"]["message"].lower()
    ws.send_frame(TEXT, PING_MESSAGE)
    assert ws.read_message()["event"] == "pusher:pong"


# -- what must close the connection, and with which code --------------------------------------

MiB = 1024 * 1024

REFUSED = {
    "a continuation with no message started": ([frame_bytes(CONTINUATION, b"{}")], 1002),
    "a binary start with a text continuation": (
        [frame_bytes(BINARY, b"\x00", fin=False), frame_bytes(TEXT, PING_MESSAGE)],
        1002,
    ),
    "a new text message while one is open": (
        [frame_bytes(TEXT, b'{"ev', fin=False), frame_bytes(TEXT, PING_MESSAGE)],
        1002,
    ),
    "invalid UTF-8 in a text frame": ([frame_bytes(TEXT, b'{"event":"\xc3\x28"}')], 1007),
    "a UTF-8 character cut off at the message's end": (
        [
            frame_bytes(TEXT, b'{"event":"pusher:ping","data":"\xe2', fin=False),
            frame_bytes(CONTINUATION, b'\x82"}'[:1]),
        ],
        1007,
    ),
    "a fragmented message over the size limit": (
        [
            frame_bytes(TEXT, b"[" + b" " * (MiB // 2), fin=False),
            frame_bytes(CONTINUATION, b" " * (MiB // 2), fin=False),
            frame_bytes(CONTINUATION, b" " * 1024, fin=False),
        ],
        1009,
    ),
    "a ping over 125 bytes": ([frame_bytes(PING, b"p" * 126)], 1002),
    "a fragmented ping": ([frame_bytes(PING, b"p", fin=False)], 1002),
    "an unmasked client frame": ([frame_bytes(TEXT, PING_MESSAGE, masked=False)], 1002),
    "RSV1 without an extension": ([frame_bytes(TEXT, PING_MESSAGE, rsv=4)], 1002),
    "RSV2 on a fragment": ([frame_bytes(TEXT, PING_MESSAGE[:9], fin=False, rsv=2)], 1002),
    "RSV3 on a ping": ([frame_bytes(PING, b"p", rsv=1)], 1002),
    "an unknown opcode": ([frame_bytes(0x3, b"")], 1002),
    "a close frame of one byte": ([frame_bytes(CLOSE, b"\x03")], 1002),
    "a close reason that is not UTF-8": ([frame_bytes(CLOSE, b"\x03\xe8\xff")], 1007),
}
for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
    REFUSED[f"close code {code}"] = ([frame_bytes(CLOSE, close_payload(code))], 1002)


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_protocol_violation_closes_with_the_rfc_code(ws: RawWebSocket, case: str) -> None:
    frames, expected = REFUSED[case]
    ws.send_raw(b"".join(frames))
    close = ws.read_close()
    assert close.close_code == expected, (case, close)


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        (close_payload(1000, "bye"), 1000),
        (close_payload(1001), 1001),
        (close_payload(3000), 3000),
        (close_payload(4999, "app"), 4999),
        (b"", 1000),  # no code (1005 to the application): answered with a normal close
    ],
)
def test_the_close_handshake_echoes_the_code(ws: RawWebSocket, sent: bytes, echoed: int) -> None:
    ws.send_frame(CLOSE, sent)
    close = ws.read_close()
    assert close.close_code == echoed
