"""HTTP/1.1 framing and connection timeouts of the one listening port, over raw sockets:
the request head limit counted over every read, bare LF line ends answered at once, a
client pipelining thousands of requests it never reads held to a bounded share of the
server (others answered meanwhile, memory counted in bytes), and the header and keep-alive
timeouts (configured small here) closing connections that stall.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.server import TIMEOUT

pytestmark = pytest.mark.integration

SHORT = 0.5  # the timeouts of the `short` app, in seconds


Opener = Callable[[InProcessApp], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def open_raw() -> AsyncIterator[Opener]:
    """Opens raw TCP connections to an app; every one is closed at teardown."""
    writers: list[asyncio.StreamWriter] = []

    async def opener(app: InProcessApp) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(app.host, app.port, limit=1 << 24)
        writers.append(writer)
        return reader, writer

    yield opener
    for writer in writers:
        writer.close()


async def answer(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> bytes:
    """One HTTP answer (head and Content-Length body)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return head + await reader.readexactly(length)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection, which it must do within
    `timeout` seconds."""
    async with asyncio.timeout(timeout):
        return await reader.read()


# -- the request head ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [15 * 1024, 20 * 1024])
async def test_the_head_limit_counts_every_read(
    app: InProcessApp, open_raw: Opener, size: int
) -> None:
    reader, writer = await open_raw(app)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * (size - 50) + b"\r\n\r\n"
    half = len(head) // 2
    writer.write(head[:half])
    await writer.drain()
    writer.write(head[half:])
    got = await answer(reader)
    expected = b"HTTP/1.1 200 " if len(head) <= 16 * 1024 else b"HTTP/1.1 431 "
    assert got.startswith(expected), got[:200]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /app/key?protocol=7 HTTP/1.1\nHost: x\nUpgrade: websocket\n\n",
    ],
)
async def test_bare_lf_line_ends_are_answered_at_once(
    app: InProcessApp, open_raw: Opener, head: bytes
) -> None:
    """They were never answered: the server waited for a CRLF CRLF that never came."""
    reader, writer = await open_raw(app)
    writer.write(head)
    got = await answer(reader, timeout=5)  # half the header timeout
    assert got.startswith(b"HTTP/1.1 400 "), got
    assert await closed_by_server(reader, TIMEOUT) == b""


# -- pipelining ------------------------------------------------------------------------------

PIPELINED = 20_000


async def test_a_client_pipelining_without_reading_holds_a_bounded_share(
    app: InProcessApp, open_raw: Opener
) -> None:
    metrics = app.running.node.metrics
    greedy_reader, greedy = await open_raw(app)
    greedy.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINED)  # never drained
    # another client is answered while the greedy one's requests are mostly unanswered
    reader, writer = await open_raw(app)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")
    answered = metrics.http_requests[("/healthz", 200)]
    assert answered < PIPELINED / 10, f"{answered} of the pipelined requests answered first"
    # what the server holds for the greedy connection: at most a read, a few requests and
    # about uvloop's 64 KiB of unread answers
    server = app.running.server
    held = sum(conn.held_bytes() for conn in server.http_connections)
    buffered = sum(
        conn.transport.get_write_buffer_size()
        for conn in server.http_connections
        if conn.transport is not None
    )
    assert buffered < 256 * 1024, buffered
    assert held < 1024 * 1024, held
    # and every request is answered, in order, once the client reads
    async with asyncio.timeout(TIMEOUT * 3):
        for _ in range(PIPELINED):
            assert (await answer(greedy_reader)).startswith(b"HTTP/1.1 200 ")
    assert metrics.http_requests[("/healthz", 200)] == PIPELINED


# -- timeouts --------------------------------------------------------------------------------


@pytest.fixture
async def short(tmp_path: Path) -> AsyncIterator[InProcessApp]:
    """The app with header and keep-alive timeouts of half a second."""
    settings = dataclasses.replace(
        app_settings(tmp_path), header_timeout_s=SHORT, keepalive_timeout_s=SHORT
    )
    async with serving(settings) as running:
        yield running


def upgrade_head(app: InProcessApp) -> bytes:
    key = base64.b64encode(b"0123456789abcdef").decode()
    return (
        f"GET /app/{app.app.key}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("what", ["upgrade", "request"])
async def test_a_head_sent_a_byte_at_a_time_is_closed_after_the_header_timeout(
    short: InProcessApp, open_raw: Opener, what: str
) -> None:
    head = upgrade_head(short) if what == "upgrade" else b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await open_raw(short)
    started = time.monotonic()
    for byte in head[:-1]:  # never the last byte
        writer.write(bytes((byte,)))
        try:  # the pause between bytes is a wait for the server to give up
            first = await asyncio.wait_for(reader.read(65536), SHORT / 5)
            break
        except TimeoutError:
            continue
    else:
        first = b""
    got = first + await closed_by_server(reader, TIMEOUT)
    elapsed = time.monotonic() - started
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"head did not arrive" in got
    assert SHORT <= elapsed < SHORT + 2, elapsed


async def test_a_connection_that_sends_nothing_is_closed(
    short: InProcessApp, open_raw: Opener
) -> None:
    reader, _ = await open_raw(short)
    assert await closed_by_server(reader, SHORT + 2) == b""


async def test_a_body_that_trickles_is_closed_after_the_header_timeout(
    short: InProcessApp, open_raw: Opener
) -> None:
    reader, writer = await open_raw(short)
    writer.write(b"POST /apps/4242/events HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
    got = await closed_by_server(reader, SHORT + 2)
    assert got.startswith(b"HTTP/1.1 408 ") and b"body did not arrive" in got, got


async def test_an_idle_kept_alive_connection_is_closed_and_a_busy_one_is_not(
    short: InProcessApp, open_raw: Opener
) -> None:
    reader, writer = await open_raw(short)
    for _ in range(4):  # 4 requests, each after most of the keep-alive timeout
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")
        with pytest.raises(TimeoutError):  # still open after 0.6 of the timeout
            await asyncio.wait_for(reader.read(1), SHORT * 0.6)
    assert await closed_by_server(reader, SHORT + 2) == b""


# -- found by fuzzing (tests/fuzz/test_http_properties.py) -----------------------------------


async def test_a_head_request_is_answered_without_a_body(
    app: InProcessApp, open_raw: Opener
) -> None:
    """RFC 9110 9.3.2. The body was sent, and a client read it as the next answer's start."""
    reader, writer = await open_raw(app)
    writer.write(
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 ") and b"Content-Length: " in head, head
        assert (await answer(reader)).startswith(b"HTTP/1.1 200 ")


async def test_a_client_that_half_closes_gets_every_answer(
    app: InProcessApp, open_raw: Opener
) -> None:
    """A client may end its side once its requests are sent (`nc -N`); the answers after the
    first were dropped as the server closed on the end of its input."""
    reader, writer = await open_raw(app)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET /nowhere HTTP/1.1\r\n\r\n")
    writer.write_eof()
    got = await closed_by_server(reader, TIMEOUT)
    assert got.count(b"HTTP/1.1 200 ") == 3 and got.count(b"HTTP/1.1 404 ") == 1, got
