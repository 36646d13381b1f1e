"""Raw Pusher-protocol tools for end-to-end tests: a blocking WebSocket client that speaks
frames (no client library in between), the channel/user signatures of PUSHER.md §2, and
HTTP API requests signed by hand per PUSHER.md §3.1 (for what the PyPI SDK refuses to send).

Every wait is bounded by `TIMEOUT` (PARLEY_TEST_TIMEOUT). Negative checks ("X never arrives")
use a sentinel sent after X: frames to one connection arrive in order, so reading up to the
sentinel proves X was not delivered without sleeping and hoping.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pusher
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.server import TIMEOUT, ParleyServer

Frame = dict[str, Any]


def unique(prefix: str = "") -> str:
    """A fresh name (channel, user, event) so tests never see each other's traffic."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- signatures (PUSHER.md §2) ----------------------------------------------------------------


def hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def channel_auth(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    message = (
        f"{socket_id}:{channel}"
        if channel_data is None
        else f"{socket_id}:{channel}:{channel_data}"
    )
    return f"{key}:{hmac_hex(secret, message)}"


def user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    return f"{key}:{hmac_hex(secret, f'{socket_id}::user::{user_data}')}"


# -- the WebSocket client ---------------------------------------------------------------------


def summary(frames: list[Frame], last: int = 5) -> str:
    """The last few frames, each cut short, for assertion messages."""
    out = []
    for frame in frames[-last:]:
        text = json.dumps(frame)
        out.append(text if len(text) <= 240 else text[:240] + f"...({len(text)} chars)")
    return "[" + ", ".join(out) + "]"


@dataclass(frozen=True)
class FrameWait:
    """What `expect` waits for, as one pure check shared by the sync and asyncio clients: a
    frame with this event (and channel) that `where` accepts; `forbid` fails the wait."""

    event: str
    channel: str | None = None
    where: Callable[[Frame], bool] | None = None
    forbid: Callable[[Frame], bool] | None = None

    def matches(self, frame: Frame) -> bool:
        """True for the awaited frame; raises on a forbidden one; False to keep reading."""
        matched = frame.get("event") == self.event and (
            self.channel is None or frame.get("channel") == self.channel
        )
        if matched and (self.where is None or self.where(frame)):
            return True
        if self.forbid is not None and self.forbid(frame):
            raise AssertionError(
                f"forbidden frame arrived before {self.event!r}: {summary([frame])}"
            )
        return False

    def timed_out(self, timeout: float, seen: list[Frame]) -> AssertionError:
        return AssertionError(
            f"no {self.event!r} on {self.channel!r} within {timeout}s; seen: {summary(seen)}"
        )


def error_data(frame: Frame, code: int | str | None, contains: str) -> dict[str, Any]:
    """A pusher:error's data, checked: an object {code, message}, with this code (unless
    "any") and a message containing `contains`."""
    data = frame.get("data")
    assert isinstance(data, dict), f"pusher:error data must be an object: {frame}"
    assert "code" in data and isinstance(data.get("message"), str), frame
    if code != "any":
        assert data["code"] == code, f"expected code {code}, got {frame}"
    if contains:
        assert contains.lower() in data["message"].lower(), (
            f"expected {contains!r} in the error message: {frame}"
        )
    return data


class Closed(AssertionError):
    """The connection closed while a frame was expected."""

    def __init__(self, code: int | None, reason: str, seen: list[Frame]) -> None:
        super().__init__(f"connection closed ({code} {reason!r}); frames seen: {summary(seen)}")
        self.code = code
        self.reason = reason


class RawClient:
    """One Pusher connection driven frame by frame.

    `seen` keeps every frame read, for assertion messages. By default the client sends no
    WebSocket pings of its own (ping_interval=None) so liveness tests control all traffic.
    """

    def __init__(
        self,
        url: str,
        *,
        established: bool = True,
        ping_interval: float | None = None,
        max_queue: int | None = 16,
        **kwargs: Any,
    ) -> None:
        self.url = url
        self.ws: ClientConnection = connect(
            url,
            proxy=None,
            compression=None,
            open_timeout=TIMEOUT,
            close_timeout=2,
            ping_interval=ping_interval,
            ping_timeout=TIMEOUT,
            max_queue=max_queue,
            legacy=True,
            **kwargs,
        )
        self.seen: list[Frame] = []
        self.socket_id = ""
        self.activity_timeout = 0
        if established:
            frame = self.expect("pusher:connection_established")
            assert isinstance(frame["data"], str), "connection_established data must be a string"
            data = json.loads(frame["data"])
            self.socket_id = data["socket_id"]
            self.activity_timeout = data["activity_timeout"]

    # -- sending ---------------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        """A dict/list is sent as JSON text; str and bytes go out as they are (text/binary)."""
        if isinstance(message, (str, bytes)):
            self.ws.send(message)
        else:
            self.ws.send(json.dumps(message))

    def send_event(self, event: str, data: Any, channel: str | None = None, **extra: Any) -> None:
        frame: Frame = {"event": event, "data": data}
        if channel is not None:
            frame["channel"] = channel
        frame.update(extra)
        self.send(frame)

    # -- receiving -------------------------------------------------------------------------------

    def recv(self, timeout: float = TIMEOUT) -> Frame:
        try:
            raw = self.ws.recv(timeout=timeout)
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

    def expect(
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
            if wait.matches(frame := self.recv(left)):
                return frame

    def expect_error(
        self, code: int | str | None = "any", contains: str = "", timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The next pusher:error; its data must be an object {code, message}."""
        frame = self.expect("pusher:error", timeout=timeout)
        return error_data(frame, code, contains)

    def expect_close(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        """Read until the server closes; return its close code and reason."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not closed within {timeout}s; seen: {summary(self.seen)}")
            try:
                self.recv(left)
            except Closed as closed:
                return closed.code, closed.reason

    def ping(self, timeout: float = TIMEOUT) -> None:
        """pusher:ping → pusher:pong: the connection is open and has handled all sent before."""
        self.send({"event": "pusher:ping", "data": {}})
        self.expect("pusher:pong", timeout=timeout)

    # -- channels ---------------------------------------------------------------------------------

    def subscribe_frame(
        self, channel: str, *, auth: str | None = None, channel_data: str | None = None
    ) -> None:
        data: dict[str, Any] = {"channel": channel, "auth": auth or ""}
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send({"event": "pusher:subscribe", "data": data})

    def subscribe(
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
        self.subscribe_frame(channel, auth=auth, channel_data=channel_data)
        frame = self.expect(
            "pusher_internal:subscription_succeeded",
            channel,
            forbid=lambda f: f.get("event") == "pusher:error",
        )
        assert isinstance(frame["data"], str), (
            f"subscription_succeeded data must be a string: {frame}"
        )
        return frame

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def presence_data(user_id: Any, user_info: Any = None, *, compact: bool = False) -> str:
    body: dict[str, Any] = {"user_id": user_id}
    if user_info is not None:
        body["user_info"] = user_info
    return json.dumps(body, separators=(",", ":") if compact else None)


# -- the HTTP API -----------------------------------------------------------------------------


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def sign_query(
    method: str,
    path: str,
    params: Mapping[str, str],
    body: bytes,
    key: str,
    secret: str,
    *,
    timestamp: int | str | None = None,
    always_md5: bool = True,
    body_md5: str | None = None,
) -> dict[str, str]:
    """PUSHER.md §3.1: auth_* params and the signature over METHOD\\nPATH\\nsorted query;
    `timestamp` (now by default) is signed as given, valid or not."""
    query = dict(params)
    query.update(
        auth_key=key,
        auth_timestamp=str(int(time.time()) if timestamp is None else timestamp),
        auth_version="1.0",
    )
    if body_md5 is not None:
        query["body_md5"] = body_md5  # signed as given, right or wrong
    elif body or always_md5:
        query["body_md5"] = hashlib.md5(body).hexdigest()
    to_sign = "&".join(
        f"{k.lower()}={v}" for k, v in sorted(query.items(), key=lambda kv: kv[0].lower())
    )
    query["auth_signature"] = hmac_hex(secret, f"{method.upper()}\n{path}\n{to_sign}")
    return query


def http_request(
    server: ParleyServer,
    method: str,
    path: str,
    query: Mapping[str, str] | None = None,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> ApiResponse:
    target = path
    if query:
        target += "?" + "&".join(f"{quote(k)}={quote(v, safe=',')}" for k, v in query.items())
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
    try:
        all_headers = {"Content-Type": "application/json"} if body else {}
        all_headers.update(headers or {})
        conn.request(method, target, body=body or None, headers=all_headers)
        response = conn.getresponse()
        return ApiResponse(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def assert_compiled(server: ParleyServer) -> None:
    """The server runs the compiled build (scripts/test compiles it first), unless the test
    run asked for the source with PARLEY_COMPILED=0: tests of what lives in compiled code
    must not pass on the source by accident."""
    code = http_request(server, "GET", "/healthz").json()["code"]
    if os.environ.get("PARLEY_COMPILED") == "0":
        assert code.startswith("source"), code
    else:
        assert code.startswith("compiled: mypyc"), f"the compiled build did not load: {code}"


def signed_request(
    server: ParleyServer,
    method: str,
    path: str,
    *,
    body: Any = None,
    params: Mapping[str, str] | None = None,
    key: str | None = None,
    secret: str | None = None,
    timestamp: int | None = None,
    body_md5: str | None = None,
    tamper: Callable[[dict[str, str]], None] | None = None,
) -> ApiResponse:
    """A request signed by hand; `tamper` may edit the signed query before it is sent."""
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    query = sign_query(
        method,
        path,
        params or {},
        raw,
        key or server.key,
        secret or server.secret,
        timestamp=timestamp,
        body_md5=body_md5,
    )
    if tamper is not None:
        tamper(query)
    return http_request(server, method, path, query, raw)


def history(server: ParleyServer, channel: str, **params: str) -> dict[str, Any]:
    """A page of the channel's history from the HTTP API (signed); it must answer 200."""
    response = signed_request(
        server, "GET", f"/apps/{server.app_id}/channels/{channel}/history", params=params
    )
    assert response.status == 200, response.body
    return response.json()  # type: ignore[no-any-return]


def all_history(server: ParleyServer, channel: str) -> list[Any]:
    """The data of every event the channel's history holds, oldest first, page by page."""
    stored: list[Any] = []
    after = None
    while True:
        params = {"limit": "1000"} if after is None else {"limit": "1000", "after": str(after)}
        page = history(server, channel, **params)
        stored += [e["data"] for e in page["events"]]
        after = page["next"]
        if after is None:
            return stored


def sdk(
    server: ParleyServer,
    app_id: str | None = None,
    key: str | None = None,
    secret: str | None = None,
    **options: Any,
) -> pusher.Pusher:
    """The official PyPI SDK pointed at the test server."""
    return pusher.Pusher(
        app_id=app_id or server.app_id,
        key=key or server.key,
        secret=secret or server.secret,
        host=server.host,
        port=server.port,
        ssl=False,
        timeout=TIMEOUT,
        **options,
    )


# -- a witness that the server still serves everyone else -------------------------------------


class Witness:
    """An already-connected bystander on its own public channel; `check()` triggers an API
    event there and waits for it, proving the server still serves other clients."""

    def __init__(self, server: ParleyServer) -> None:
        self.server = server
        self.client = RawClient(server.ws_url)
        self.channel = unique("witness-")
        self.client.subscribe(self.channel)
        self.api = sdk(server)

    def check(self) -> None:
        marker = unique()
        self.api.trigger(self.channel, "still-alive", {"marker": marker})
        frame = self.client.expect("still-alive", self.channel)
        assert json.loads(frame["data"]) == {"marker": marker}

    def close(self) -> None:
        self.client.close()


class ClientPool:
    """Opens RawClients and closes every one of them at teardown."""

    def __init__(self) -> None:
        self.made: list[RawClient] = []

    def connect(self, server_or_url: ParleyServer | str, **kwargs: Any) -> RawClient:
        url = server_or_url if isinstance(server_or_url, str) else server_or_url.ws_url
        client = RawClient(url, **kwargs)
        self.made.append(client)
        return client

    def close_all(self) -> None:
        for client in self.made:
            client.close()


def shutdown(server: ParleyServer) -> None:
    """`server.cleanup()`, then close its pipes: ParleyServer leaves them open, and pytest
    (warnings are errors) fails whichever test is running when they are collected."""
    server.cleanup()
    process = server.process
    if process is not None:
        for pipe in (process.stdout, process.stderr, process.stdin):
            if pipe is not None:
                pipe.close()


@contextmanager
def running(
    env: Mapping[str, str] | None = None, args: list[str] | None = None
) -> Iterator[ParleyServer]:
    """A ParleyServer for one test, shut down cleanly after it."""
    srv = ParleyServer(env=dict(env or {}), args=list(args or []))
    try:
        yield srv.start()
    finally:
        shutdown(srv)
