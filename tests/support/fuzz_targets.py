"""The coverage-guided fuzzer's targets (scripts/fuzz --atheris), and what replays its corpus
in the suite (tests/fuzz/test_corpus.py). Each takes the bytes libFuzzer made and raises
AssertionError (or whatever escaped) on a finding; they are deterministic and keep no state
between inputs.

- `frame`: the first byte picks a connection state and an app, the rest is what the client
  sends, cut into text messages at each 0x1E byte (at most four): `frames.loads` and
  `PusherConnection.receive` must answer each as docs/protocol.md says.
- `http`: the bytes of one connection to the HTTP front (`transport.server.FrontProtocol`),
  in reads as long as the first byte says, then the end of the input: every answer must be a
  documented status with the API's error shape, one per request in order, and a request
  handed on must be well formed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from parley.protocol import frames
from parley.protocol.connection import State
from parley.transport.server import Request
from tests.support.fuzzing import assert_documented, assert_error_response
from tests.support.http_front import UpgradeRecorder, front
from tests.support.protocol_states import APPS, STATES, connection_in

SEPARATOR = b"\x1e"  # record separator: where one text message ends in a `frame` input


def frame(data: bytes) -> None:
    if not data:
        return
    state = STATES[data[0] % len(STATES)]
    app = APPS[data[0] // len(STATES) % len(APPS)]
    texts = data[1:].split(SEPARATOR, 3)
    conn = connection_in(state, app)
    for index, text in enumerate(texts):
        try:
            frames.loads(text)
        except frames.BadJson:
            pass
        closed = conn.state is State.CLOSED
        commands = conn.receive(text, float(index))
        assert_documented(commands)
        assert not closed or commands == [], commands


_loop: asyncio.AbstractEventLoop | None = None


def http(data: bytes) -> None:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    _loop.run_until_complete(_http(data))


async def _http(data: bytes) -> None:
    protocol, transport, seen = front()
    protocol.server.ws_info_log = True  # hand the upgrade the fake transport itself
    upgrade = UpgradeRecorder()
    protocol.server.make_ws_protocol = lambda: upgrade  # type: ignore[assignment,return-value]
    read = 1 + (data[0] if data else 0) * 16  # bytes per read: 1 to 4081
    for start in range(1, len(data), read):
        if transport.protocol is not None or transport.closed:
            break
        protocol.data_received(data[start : start + read])
        await asyncio.sleep(0)
    if transport.protocol is None and not transport.closed and not protocol.eof_received():
        transport.close()
    for _ in range(20):  # the worker answers one request per turn of the loop
        await asyncio.sleep(0)
    protocol.check_timeouts(time.monotonic() + 3600)  # past every timeout: 408 or a close
    for _ in range(5):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    if transport.protocol is not None:
        assert isinstance(transport.protocol, UpgradeRecorder)
        return  # a WebSocket now, handed every byte from its request on
    for request in seen:
        check_request(request)
    answers = split_answers(transport.written, [r.method == "HEAD" for r in seen])
    assert len(seen) <= len(answers) <= len(seen) + 1, (len(seen), answers)
    for index, (status, body) in enumerate(answers):
        if index < len(seen):
            assert status == 200, (status, body)  # the handler's own answer
        else:
            assert status in (400, 408, 413, 431), (status, body)  # the front's refusal
            assert_error_response(status, body)


def check_request(request: Request) -> None:
    """What the front hands the API: text where text is expected, the body within bounds."""
    assert isinstance(request.method, str) and request.method.isupper(), request
    assert isinstance(request.path, str) and isinstance(request.query, str), request
    assert all(isinstance(k, str) and k == k.lower() for k in request.headers), request
    assert all(isinstance(v, str) for v in request.headers.values()), request
    assert isinstance(request.body, bytes) and len(request.body) <= 1024, request


def split_answers(written: bytes, heads_only: list[bool]) -> list[tuple[int, bytes]]:
    """The answers in what the front wrote: (status, body) each; no body for the answers to
    HEAD requests, whose places `heads_only` gives."""
    answers = []
    rest = written
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"an answer cut short: {head[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 "), status_line
        status = int(status_line.split(" ")[1])
        length = next(
            int(v) for n, _, v in (x.partition(": ") for x in lines) if n == "Content-Length"
        )
        no_body = len(answers) < len(heads_only) and heads_only[len(answers)]
        body, rest = (b"", rest) if no_body else (rest[:length], rest[length:])
        assert no_body or len(body) == length, "a body cut short"
        answers.append((status, body))
    return answers


TARGETS: dict[str, Callable[[bytes], None]] = {"frame": frame, "http": http}


def describe(data: bytes) -> str:
    """An input as text, for a failure's message."""
    return json.dumps(data[:300].decode("latin-1"))
