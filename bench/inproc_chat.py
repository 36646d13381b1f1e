"""The chat scenario's Python path without sockets: CPU per client event through Parley.

1,000 signed-in sessions in 500 private channels, on fake transports; each round every user
sends one client event, fed to the connection's `WebSocket.on_ws_frame` 50 frames per loop
turn (as a busy server sees them), and the node stores, stamps and delivers it to the
partner, whose `WebSocket.write` hands it to a fake picows transport. Prints CPU µs per
message (the history writer thread included). No kernel, no picows, no uvloop: what is left
is Parley's own Python, the part a profile of the real server spreads thinly. With `--core`
the sessions are driven through the core's seam instead (`Session.receive`, and a
`Transport` that counts writes): the same minus `transport.websocket`.

    .venv/bin/python bench/inproc_chat.py [--store sqlite|memory] [--rounds 60] [--core]
        [--without fanout|client|append]   # stub a stage out, to see what it costs
        [--users 1000]                     # --rounds 0: connect, sign in, subscribe only
    taskset -c 0 ... py-spy record -r 250 -- .venv/bin/python bench/inproc_chat.py --rounds 300

The compiled build is used when it is fresh, as by `parley serve` (src/parley/speedups.py);
PARLEY_COMPILED=0 measures the source. `--without` replaces Node methods, which a compiled
Node does not allow: it needs PARLEY_COMPILED=0.

This machine's VMs vary by ±20 % from one run to the next: compare interleaved runs;
`valgrind --tool=callgrind` gives instruction counts that do not vary (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from picows import WSMsgType

from parley import speedups
from parley.app import close_node, make_node, open_database
from parley.backends.history import Stored
from parley.core.session import Session
from parley.publication import StreamPosition
from parley.settings import AppConfig, Settings
from parley.transport.websocket import Limits, WebSocket

KEY, SECRET = "benchkey", "benchsecret"
USERS = 1000
PER_TURN = 50


class _Raw:
    def get_write_buffer_size(self) -> int:
        return 0


class FakeWSTransport:
    """What WebSocket uses of a picows transport; counts what it is sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.underlying_transport = _Raw()
        self.is_disconnected = False
        self.is_close_frame_sent = False

    def send(self, kind: Any, data: bytes, fin: bool = True) -> None:
        self.sent += 1

    def send_close(self, *args: Any) -> None:
        self.is_close_frame_sent = True

    def disconnect(self, *args: Any) -> None:
        self.is_disconnected = True


class CountingTransport:
    """The core's Transport (parley.core.transport), counting what it is given (`--core`)."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += 1

    def write_many(self, datas: Iterable[bytes]) -> None:
        for _ in datas:
            self.sent += 1

    def close(self, code: int, reason: str) -> None:
        pass


class Frame:
    """A whole text frame as picows gives it: `fin` and the reserved bits are ints."""

    __slots__ = ("fin", "msg_type", "payload", "rsv1", "rsv2", "rsv3")

    def __init__(self, payload: bytes) -> None:
        self.msg_type, self.fin, self.payload = WSMsgType.TEXT, 1, payload
        self.rsv1 = self.rsv2 = self.rsv3 = 0

    def get_payload_as_bytes(self) -> bytes:
        return self.payload


def sign(text: str) -> str:
    return KEY + ":" + hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()


async def main(
    store: str, rounds: int, without: str | None, core: bool, users: int = USERS
) -> None:
    if without is not None and speedups.compiled():
        raise SystemExit("--without replaces Node methods: run with PARLEY_COMPILED=0")
    print(speedups.STATUS)
    app = AppConfig(id="1", key=KEY, secret=SECRET, client_events=True, client_event_rate=0)
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), store=store, apps=(app,))
    db = await open_database(settings)
    node = await make_node(settings, db)
    node.start()
    # per user: its WebSocket and fake picows transport, or (--core) its session and Transport
    sessions: list[tuple[Any, Any]] = []
    limits = Limits(node.max_message_bytes, node.max_outbound_bytes)
    for i in range(users):
        session = Session(node, "/app/" + KEY, "protocol=7", {})
        if core:
            counting = CountingTransport()
            session.connected(counting)
            sessions.append((session, counting))
        else:
            ws, fake = (
                WebSocket(session, limits),
                FakeWSTransport(),
            )
            ws.on_ws_connected(fake)  # type: ignore[arg-type]
            sessions.append((ws, fake))
        user_data = orjson.dumps({"id": "user-%d" % i}).decode()
        channel = "private-chat-%d" % (i // 2)
        for message in (
            {
                "event": "pusher:signin",
                "data": {
                    "auth": sign("%s::user::%s" % (session.socket_id, user_data)),
                    "user_data": user_data,
                },
            },
            {
                "event": "pusher:subscribe",
                "data": {"auth": sign("%s:%s" % (session.socket_id, channel)), "channel": channel},
            },
        ):
            if session.activity():
                session.receive(orjson.dumps(message))
    await asyncio.sleep(0.05)
    frames = [
        Frame(
            b'{"event":"client-m","channel":"private-chat-%d","data":{"m":"#%d#%d#","p":"%s"}}'
            % (i // 2, i, time.time_ns(), b"x" * 50)
        )
        for i in range(users)
    ]
    if without == "fanout":
        node.delivery.fan_out = lambda *a, **k: None  # type: ignore[method-assign]
    elif without == "client":
        node._client_event = lambda *a, **k: None  # type: ignore[method-assign]
    elif without == "append":

        async def append_many(items: Any) -> list[Stored]:
            out = []
            for item in items:
                publication = item.publication
                publication.position = StreamPosition(1, "e")
                publication.ts, publication.id = 1, "id"
                out.append(Stored(publication))
            return out

        node.history.append_many = append_many  # type: ignore[method-assign]
    gc.freeze()  # as `parley serve` does once it is up (app.serve)
    gc.set_threshold(10_000, 50, 100)
    before = sum(t.sent for _, t in sessions)
    cpu0 = time.process_time()
    for _ in range(rounds):
        for start in range(0, users, PER_TURN):
            if core:
                for i in range(start, start + PER_TURN):
                    session = sessions[i][0]
                    if session.activity():
                        session.receive(frames[i].payload)
            else:
                for i in range(start, start + PER_TURN):
                    ws, fake = sessions[i]
                    ws.on_ws_frame(fake, frames[i])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
    await node.delivery.idle()
    cpu = time.process_time() - cpu0
    delivered = sum(t.sent for _, t in sessions) - before
    n = rounds * users
    print(
        "store=%s without=%s: %d connections, %d messages, %d delivered, %s µs CPU per message"
        % (store, without or "-", users, n, delivered, "%.2f" % (cpu / n * 1e6) if n else "-")
    )
    await close_node(node)
    if db is not None:
        await db.close()
    if without is None and delivered != n:
        raise SystemExit("expected %d deliveries, got %d" % (n, delivered))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", default="sqlite", choices=("sqlite", "memory"))
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--without", choices=("fanout", "client", "append"), default=None)
    ap.add_argument(
        "--core", action="store_true", help="drive Session through the core's seam, no WebSocket"
    )
    ap.add_argument(
        "--users",
        type=int,
        default=USERS,
        help="connections (even, a multiple of 50); with --rounds 0 only their opening is run",
    )
    args = ap.parse_args()
    asyncio.run(main(args.store, args.rounds, args.without, args.core, args.users))
