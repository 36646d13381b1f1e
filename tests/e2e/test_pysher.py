"""pysher 1.0.8 as a second client library (PUSHER.md §1.1–1.5, §2.4, §7.1–7.4).

pysher is stricter than pusher-js: it connects with protocol 6, pings with data "",
json.loads the connection_established data (a string) and indexes pusher:error data['code']
(an object). It is thread-based, so every wait here is a threading.Event or a queue get
with a timeout.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pysher
import pytest

from tests.support.pusher_raw import ClientPool, running, sdk, unique
from tests.support.server import TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e


class Inbox:
    """Everything one pysher callback receives, to wait on with a timeout."""

    def __init__(self) -> None:
        self.items: queue.Queue[Any] = queue.Queue()

    def __call__(self, data: Any, *args: Any) -> None:
        self.items.put(data)

    def get(self, timeout: float = TIMEOUT) -> Any:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {timeout}s") from None


class Pysher:
    """A pysher.Pusher pointed at the test server, with waitable connection events.

    Every channel frame pysher's connection dispatches is also recorded per (channel, event),
    because pysher registers a channel only after sending its subscribe, and a callback bound
    then can miss a fast `subscription_succeeded`.
    """

    def __init__(self, srv: ParleyServer, key: str | None = None, **options: Any) -> None:
        self.client = pysher.Pusher(
            key or srv.key,
            custom_host=srv.host,
            port=srv.port,
            secure=False,
            reconnect_interval=1,
            **options,
        )
        conn = self.client.connection
        self.established = threading.Event()
        self.pongs, self.pings, self.errors = Inbox(), Inbox(), Inbox()
        conn.bind("pusher:connection_established", lambda data: self.established.set())
        conn.bind("pusher:pong", self.pongs)
        conn.bind("pusher:ping", self.pings)
        conn.bind("pusher:error", self.errors)
        self._lock = threading.Lock()
        self._channel_events: dict[tuple[str, str], Inbox] = {}
        dispatch = conn.event_handler

        def record(event: str, data: Any, channel: str) -> None:
            self.inbox(channel, event)(data)
            dispatch(event, data, channel)

        conn.event_handler = record

    def inbox(self, channel: str, event: str) -> Inbox:
        with self._lock:
            return self._channel_events.setdefault((channel, event), Inbox())

    def connect(self) -> Pysher:
        self.client.connect()
        assert self.established.wait(TIMEOUT), "pysher never got pusher:connection_established"
        return self

    @property
    def socket_id(self) -> str:
        return str(self.client.connection.socket_id)

    def subscribe(self, channel: str, **kwargs: Any) -> tuple[Any, Any]:
        """Subscribe and wait for success; return (pysher channel, subscription data)."""
        ch = self.client.subscribe(channel, **kwargs)
        return ch, self.inbox(channel, "pusher_internal:subscription_succeeded").get()

    def close(self) -> None:
        """pysher's own disconnect() closes the socket under websocket-client's reader, which
        then sleeps in select() for up to 100 s; a close frame ends it at once instead."""
        conn = self.client.connection
        conn.disconnect_called = True
        conn.needs_reconnect = False
        app = conn.socket
        ws = getattr(app, "sock", None)
        if ws is not None:
            try:
                ws.send_close()
            except Exception:
                pass  # already closed
        conn.join(TIMEOUT)
        assert not conn.is_alive(), "pysher's connection thread did not stop"
        for sock in (ws, getattr(app, "sock", None)):
            if sock is not None:
                sock.shutdown()  # websocket-client leaves the TCP socket open


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    with running({"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        yield srv


@pytest.fixture
def clients() -> Iterator[list[Pysher]]:
    made: list[Pysher] = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
def pool() -> Iterator[ClientPool]:
    p = ClientPool()
    yield p
    p.close_all()


def connect(clients: list[Pysher], srv: ParleyServer, **options: Any) -> Pysher:
    c = Pysher(srv, **options)
    clients.append(c)
    return c.connect()


def test_pysher_connects_with_protocol_6_and_its_empty_ping_is_answered(
    server: ParleyServer, clients: list[Pysher]
) -> None:
    c = connect(clients, server)
    assert re.fullmatch(r"\d+\.\d+", c.socket_id)
    # pysher pings with data "" as soon as the socket opens; the server answers
    assert c.pongs.get() == {}
    c.client.connection.send_ping()
    assert c.pongs.get() == {}
    opened = [
        json.loads(line)
        for line in server.stderr_lines
        if '"connection opened"' in line and c.socket_id in line
    ]
    assert opened and opened[0]["protocol"] == "6" and opened[0]["client"] == "Pysher"
    assert c.client.connection.state == "connected"


def test_pysher_public_channel_receives_sdk_events(
    server: ParleyServer, clients: list[Pysher]
) -> None:
    c = connect(clients, server)
    channel = unique("news-")
    ch, data = c.subscribe(channel)
    assert data == "{}"  # a string, as Pusher sends it
    inbox = Inbox()
    ch.bind("story", inbox)
    sdk(server).trigger(channel, "story", {"title": "pysher"})
    assert json.loads(inbox.get()) == {"title": "pysher"}


def test_pysher_private_channel_self_signed_and_client_events(
    server: ParleyServer, clients: list[Pysher]
) -> None:
    channel = unique("private-")
    alice = connect(clients, server, secret=server.secret)
    bob = connect(clients, server, secret=server.secret)
    ch_alice, _ = alice.subscribe(channel)
    ch_bob, _ = bob.subscribe(channel)
    from_api, from_alice = Inbox(), Inbox()
    ch_bob.bind("update", from_api)
    ch_bob.bind("client-typing", from_alice)
    sdk(server).trigger(channel, "update", {"v": 1})
    assert json.loads(from_api.get()) == {"v": 1}
    ch_alice.trigger("client-typing", {"typing": True})
    assert from_alice.get() == {"typing": True}  # pysher sees client data as sent


def test_pysher_private_channel_with_a_custom_auth_endpoint(
    server: ParleyServer, clients: list[Pysher]
) -> None:
    api = sdk(server)
    asked: list[dict[str, list[str]]] = []

    class AuthEndpoint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            asked.append(form)
            body = json.dumps(api.authenticate(form["channel_name"][0], form["socket_id"][0]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), AuthEndpoint)
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{endpoint.server_address[1]}/pusher/auth"
        c = connect(clients, server, auth_endpoint=url)
        channel = unique("private-")
        ch, _ = c.subscribe(channel)
        assert asked == [{"channel_name": [channel], "socket_id": [c.socket_id]}]
        inbox = Inbox()
        ch.bind("secret", inbox)
        sdk(server).trigger(channel, "secret", "s3cr3t")
        assert inbox.get() == "s3cr3t"
    finally:
        endpoint.shutdown()
        endpoint.server_close()
        thread.join(TIMEOUT)


def test_pysher_presence_members_join_and_leave(
    server: ParleyServer, clients: list[Pysher]
) -> None:
    channel = unique("presence-")
    first = connect(
        clients,
        server,
        secret=server.secret,
        user_data={"user_id": "u1", "user_info": {"name": "One"}},
    )
    ch_first, data = first.subscribe(channel)
    assert isinstance(data, str)
    assert json.loads(data)["presence"] == {
        "ids": ["u1"],
        "hash": {"u1": {"name": "One"}},
        "count": 1,
    }
    added = first.inbox(channel, "pusher_internal:member_added")
    removed = first.inbox(channel, "pusher_internal:member_removed")
    news = Inbox()
    ch_first.bind("client-hi", news)

    second = Pysher(server, secret=server.secret, user_data={"user_id": 2, "user_info": None})
    clients.append(second)
    second.connect()
    ch_second, data = second.subscribe(channel)
    presence = json.loads(data)["presence"]
    assert presence["count"] == 2 and set(presence["ids"]) == {"u1", "2"}
    assert json.loads(added.get())["user_id"] == "2"  # a numeric id comes back as a string
    ch_second.trigger("client-hi", {"from": "second"})
    assert news.get() == {"from": "second"}
    assert sorted(u["id"] for u in sdk(server).users_info(channel)["users"]) == ["2", "u1"]

    second.close()
    clients.remove(second)
    assert json.loads(removed.get()) == {"user_id": "2"}


def test_pysher_answers_server_pings_with_an_empty_string_pong() -> None:
    with running({"PARLEY_ACTIVITY_TIMEOUT_S": "1", "PARLEY_PONG_TIMEOUT_S": "1"}) as srv:
        c = Pysher(srv)
        try:
            c.connect()
            channel = unique("alive-")
            ch, _ = c.subscribe(channel)
            # the server pings after 1 s of silence; pysher's {"data": ""} pong must count
            c.pings.get()
            c.pings.get()
            inbox = Inbox()
            ch.bind("still-here", inbox)
            sdk(srv).trigger(channel, "still-here", {})
            inbox.get()
            assert c.client.connection.state == "connected"
            assert not any('"pong not received"' in line for line in srv.stderr_lines)
        finally:
            c.close()


def test_pysher_with_an_invalid_app_key_gets_error_4001_and_stops(
    server: ParleyServer, clients: list[Pysher]
) -> None:
    closed = threading.Event()
    codes: list[Any] = []
    c = Pysher(server, key="not-a-key")
    clients.append(c)
    conn = c.client.connection
    original_on_close = conn._on_close

    def on_close(*args: Any) -> None:
        codes.append(args[1] if len(args) > 1 else None)
        original_on_close(*args)
        closed.set()

    conn._on_close = on_close  # WebSocketApp takes the callback when pysher connects
    c.client.connect()
    error = c.errors.get()
    assert isinstance(error, dict), "pusher:error data must be an object for pysher"
    assert error["code"] == 4001 and isinstance(error["message"], str)
    assert not c.established.is_set()
    assert closed.wait(TIMEOUT), "the connection was never closed"
    conn.join(TIMEOUT)
    assert not conn.is_alive(), "pysher should stop on 4001, not reconnect"
    assert conn.state == "disconnected"
    assert codes[0] in (4001, None)  # pysher's own close may race the server's 4001
    refused = [line for line in server.stderr_lines if '"code":4001' in line]
    assert len(refused) == 1, refused  # one attempt, no reconnection
