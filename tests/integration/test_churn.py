"""Connections opened and dropped in a loop leave nothing behind: 5,000 of them (upgraded and
subscribed then reset, closed politely, or dropped halfway through the upgrade) and the
server holds the same tasks, file descriptors, sessions and channels as before, and its
memory stays within a bound. Counted before and after, in the server's own process."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
from pathlib import Path

import orjson
import pytest

from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.server import TIMEOUT

pytestmark = pytest.mark.integration

ROUNDS = 5000
AT_ONCE = 50  # connections under way together


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def upgrade(app: InProcessApp) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /app/{app.app.key}?protocol=7 HTTP/1.1\r\nHost: {app.host}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked_text(payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    return (
        bytes((0x81, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def one_connection(app: InProcessApp, i: int) -> None:
    reader, writer = await asyncio.open_connection(app.host, app.port)
    try:
        request = upgrade(app)
        if i % 3 == 2:  # dropped halfway through its upgrade
            writer.write(request[: len(request) // 2])
            await writer.drain()
            return
        writer.write(request)
        async with asyncio.timeout(TIMEOUT):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readuntil(b"connection_established")
        if i % 3 == 0:  # subscribed, then reset with nothing said
            subscribe = {"event": "pusher:subscribe", "data": {"channel": f"churn-{i % 7}"}}
            writer.write(masked_text(orjson.dumps(subscribe)))
            await reader.readuntil(b"subscription_succeeded")
            writer.transport.abort()
    finally:
        writer.close()


async def churn(app: InProcessApp, count: int) -> None:
    for start in range(0, count, AT_ONCE):
        await asyncio.gather(
            *(one_connection(app, i) for i in range(start, min(count, start + AT_ONCE)))
        )


async def settled(app: InProcessApp, tasks: int, fds: int) -> None:
    """Wait (bounded) until the server has seen every close."""
    node, server = app.running.node, app.running.server
    async with asyncio.timeout(TIMEOUT):
        while (
            node.hubs[app.app.id].sessions
            or server.http_connections
            or len(asyncio.all_tasks()) > tasks
            or open_fds() > fds
        ):
            await asyncio.sleep(0.05)


async def test_5000_connections_opened_and_dropped_leave_nothing_behind(tmp_path: Path) -> None:
    async with serving(app_settings(tmp_path)) as app:
        await churn(app, 600)  # warm up: buffers, caches and the allocator's arenas
        await settled(app, 1_000_000, 1_000_000)  # every close seen
        gc.collect()
        tasks, fds = len(asyncio.all_tasks()), open_fds()
        before = rss_bytes()
        await churn(app, ROUNDS)
        await settled(app, tasks, fds)
        gc.collect()
        grown = rss_bytes() - before
        hub = app.running.node.hubs[app.app.id]
        assert not hub.sessions and not hub.channels and not hub.users
        assert len(asyncio.all_tasks()) == tasks
        assert open_fds() == fds
        assert not app.running.server.addresses
        # a leak of a few hundred bytes a connection would pass 1 MiB over 5,000
        assert grown < 4 * 1024 * 1024, f"memory grew {grown / 1e6:.1f} MB over {ROUNDS}"
