"""Asyncio Pusher-protocol tools for tests that run the app in their own event loop (see
tests/support/inproc.py): a WebSocket client that speaks frames (`websockets`' asyncio client,
no Pusher library in between), an HTTP API client that signs as Pusher does (aiohttp), and
`HeldSocket`, a bare WebSocket that never answers the server's close.

The signatures, frame summaries and `ApiResponse` are those of tests/support/pusher_raw.py.
Every wait is bounded by `TIMEOUT`; a negative check ("X never arrives") reads up to a later
sentinel (a pong) instead of sleeping: frames to one connection arrive in order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from yarl import URL

from tests.support.pusher_raw import (
    ApiResponse,
    Closed,
    Frame,
    FrameWait,
    channel_auth,
    error_data,
    sign_query,
    summary,
    user_auth,
)
from tests.support.server import TIMEOUT

# -- the WebSocket client ---------------------------------------------------------------------


class AsyncClient:
    """One Pusher connection driven frame by frame; `seen` keeps every frame read."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[Frame] = []
        self.socket_id = ""
        self.activity_timeout = 0
        self.established: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, *, established: bool = True, **kwargs: Any) -> AsyncClient:
        """Open the connection; unless `established` is False, read connection_established."""
        ws = await connect(
            url,
            proxy=None,
            compression=None,
            open_timeout=TIMEOUT,
            close_timeout=2,
            ping_interval=None,
            **kwargs,
        )
        client = cls(ws)
        if established:
            frame = await client.expect("pusher:connection_established")
            assert isinstance(frame["data"], str), "connection_established data must be a string"
            client.established = json.loads(frame["data"])
            client.socket_id = client.established["socket_id"]
            client.activity_timeout = client.established["activity_timeout"]
        return client

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """A dict/list is sent as JSON text; str and bytes go out as they are."""
        await self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def send_event(
        self, event: str, data: Any, channel: str | None = None, **extra: Any
    ) -> None:
        frame: Frame = {"event": event, "data": data}
        if channel is not None:
            frame["channel"] = channel
        frame.update(extra)
        await self.send(frame)

    # -- receiving -------------------------------------------------------------------------------

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        try:
            async with asyncio.timeout(timeout):
                raw = await self.ws.recv()
        except TimeoutError:
            raise AssertionError(
                f"no frame within {timeout}s; frames seen: {summary(self.seen)}"
            ) from None
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise Closed(
                rcvd.code if rcvd else None, rcvd.reason if rcvd else "", self.seen
            ) from None
        frame = json.loads(raw)
        assert isinstance(frame, dict), f"server frame is not an object: {raw!r}"
        self.seen.append(frame)
        return frame

    async def expect(
        self,
        event: str,
        channel: str | None = None,
        *,
        where: Callable[[Frame], bool] | None = None,
        forbid: Callable[[Frame], bool] | None = None,
        timeout: float = TIMEOUT,
    ) -> Frame:
        """Read until a frame with this event (and channel) arrives; frames before it are
        skipped, unless `forbid` matches one of them."""
        wait = FrameWait(event, channel, where, forbid)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise wait.timed_out(timeout, self.seen)
            if wait.matches(frame := await self.recv(left)):
                return frame

    async def expect_next(self, event: str, channel: str | None = None) -> Frame:
        """The very next frame, which must be this event (on this channel)."""
        frame = await self.recv()
        assert frame.get("event") == event and (
            channel is None or frame.get("channel") == channel
        ), f"expected {event!r} on {channel!r} next, got {summary([frame])}"
        return frame

    async def expect_error(
        self, code: int | str | None = "any", contains: str = "", timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The next pusher:error; its data must be an object {code, message}."""
        frame = await self.expect("pusher:error", timeout=timeout)
        return error_data(frame, code, contains)

    async def expect_close(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        """Read until the server closes; return its close code and reason."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not closed within {timeout}s; seen: {summary(self.seen)}")
            try:
                await self.recv(left)
            except Closed as closed:
                return closed.code, closed.reason

    async def ping(self) -> None:
        """pusher:ping → pusher:pong: the server has handled everything sent before, and
        every frame it sent this connection before the pong has been read."""
        await self.send({"event": "pusher:ping", "data": {}})
        await self.expect("pusher:pong")

    async def expect_quiet(self, what: str = "") -> None:
        """Nothing but the pong arrives in answer to a ping: no frame was pending."""
        await self.send({"event": "pusher:ping", "data": {}})
        frame = await self.recv()
        assert frame.get("event") == "pusher:pong", (
            f"expected no frame{' (' + what + ')' if what else ''}, got {summary([frame])}"
        )

    # -- channels and identity ----------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        key: str = "",
        secret: str = "",
        auth: str | None = None,
        channel_data: str | None = None,
    ) -> Frame:
        """Subscribe (signing private/presence channels when a secret is given) and wait
        for subscription_succeeded; return it."""
        if auth is None and secret and channel.startswith(("private-", "presence-")):
            auth = channel_auth(key, secret, self.socket_id, channel, channel_data)
        data: dict[str, Any] = {"channel": channel, "auth": auth or ""}
        if channel_data is not None:
            data["channel_data"] = channel_data
        await self.send({"event": "pusher:subscribe", "data": data})
        frame = await self.expect(
            "pusher_internal:subscription_succeeded",
            channel,
            forbid=lambda f: f.get("event") == "pusher:error",
        )
        assert isinstance(frame["data"], str), (
            f"subscription_succeeded data must be a string: {frame}"
        )
        return frame

    async def signin(self, user_id: str, *, key: str, secret: str, **user: Any) -> Frame:
        """pusher:signin as `user_id` (PUSHER.md §2 signature); return signin_success."""
        user_data = json.dumps({"id": user_id, **user})
        await self.send_event(
            "pusher:signin",
            {"auth": user_auth(key, secret, self.socket_id, user_data), "user_data": user_data},
        )
        return await self.expect(
            "pusher:signin_success", forbid=lambda f: f.get("event") == "pusher:error"
        )

    async def close(self) -> None:
        await self.ws.close()


class AsyncClientPool:
    """Opens AsyncClients and closes every one of them at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[AsyncClient] = []

    async def connect(self, url: str | None = None, **kwargs: Any) -> AsyncClient:
        client = await AsyncClient.connect(url or self.url, **kwargs)
        self.made.append(client)
        return client

    async def close_all(self) -> None:
        for client in self.made:
            await client.close()


# -- the HTTP API -----------------------------------------------------------------------------


class AsyncApi:
    """HTTP requests to one app's server, signed by hand per PUSHER.md §3.1 (or not at all)."""

    def __init__(self, base_url: str, app_id: str, key: str, secret: str) -> None:
        self.base_url = base_url
        self.app_id = app_id
        self.key = key
        self.secret = secret
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    async def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """An unsigned request; the query is encoded as tests/support/pusher_raw.py does."""
        target = self.base_url + path
        if query:
            target += "?" + "&".join(f"{quote(k)}={quote(v, safe=',')}" for k, v in query.items())
        all_headers = {"Content-Type": "application/json"} if body else {}
        all_headers.update(headers or {})
        async with self.session.request(
            method, URL(target, encoded=True), data=body or None, headers=all_headers
        ) as response:
            return ApiResponse(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                await response.read(),
            )

    async def signed(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """A request signed with the app's key and secret; a non-bytes body is sent as JSON."""
        raw = (
            b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        query = sign_query(method, path, params or {}, raw, self.key, self.secret)
        return await self.request(method, path, query, raw)

    async def trigger(
        self, channels: str | list[str], event: str, data: Any, **extra: Any
    ) -> ApiResponse:
        """POST /apps/{id}/events; `data` not a string is JSON-encoded (as the SDKs do)."""
        body: dict[str, Any] = {
            "name": event,
            "channels": [channels] if isinstance(channels, str) else channels,
            "data": data if isinstance(data, str) else json.dumps(data),
            **extra,
        }
        response = await self.signed("POST", f"/apps/{self.app_id}/events", body=body)
        assert response.status == 200, f"trigger answered {response.status}: {response.body!r}"
        return response

    async def close(self) -> None:
        await self.session.close()


# -- a WebSocket that never answers a close ---------------------------------------------------


class HeldSocket:
    """A WebSocket opened by hand over a bare TCP stream. It reads frames but never answers
    the server's close, so the server keeps the connection (and, draining, waits for it) until
    the test closes the socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> HeldSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), f"no upgrade: {head!r}"
        return cls(reader, writer)

    async def read_frame(self) -> tuple[int, bytes]:
        """The next unfragmented server frame: (opcode, payload)."""
        async with asyncio.timeout(TIMEOUT):
            first, second = await self.reader.readexactly(2)
            assert first & 0x80, "fragmented frames are not expected here"
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

    async def read_text(self) -> Frame:
        opcode, payload = await self.read_frame()
        assert opcode == 0x1, f"expected a text frame, got opcode {opcode}: {payload!r}"
        frame = json.loads(payload)
        assert isinstance(frame, dict)
        return frame

    async def read_close(self) -> tuple[int, str]:
        opcode, payload = await self.read_frame()
        assert opcode == 0x8, f"expected a close frame, got opcode {opcode}: {payload!r}"
        (code,) = struct.unpack("!H", payload[:2])
        return code, payload[2:].decode()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
