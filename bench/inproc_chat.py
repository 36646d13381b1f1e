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
        [--signed [--block 10] [--without verify]]  # signed against unsigned, in one run

`--signed` measures what the server's check of signed messages costs (docs/protocol.md,
"Server verification"). The app's `signed_channels` matches the chat channels, every user has
a device key in the node's key directory, and the same node and sessions alternate blocks of
`--block` rounds: unsigned (the key directory swapped for one of the same app without signed
channels: what the node runs for an app that signs nothing) and signed (every client event
carries `parley.sig`: the node parses it, looks the key up, checks the clock, builds the
canonical bytes, verifies the Ed25519 signature, checks the replay window, stores and
delivers the signature). Both send `data` as a string (a signed event's `data` is the JSON
text), with a distinct `mid` per message and `ts` = now; the messages of a block pair are
built and signed before it, outside the timed part. `--rounds` counts the rounds of each
variant. Prints µs CPU per message of both, their ratio, the ratio per pair (median
[min–max]), and what one `signature_valid` costs alone here. `--signed --without verify`
stubs the Ed25519 verification out (`core.keys.signature_valid`, interpreted: it works on
the compiled build too): what the rest of the signed path costs.
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
import dataclasses
import gc
import hashlib
import hmac
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from picows import WSMsgType

from parley import speedups
from parley.app import close_node, make_node, open_database
from parley.backends.history import Stored
from parley.core import keys as keys_module
from parley.core.keys import KeyDirectory
from parley.core.session import Session
from parley.protocol import signed as sig
from parley.publication import StreamPosition
from parley.settings import AppConfig, Settings
from parley.transport.websocket import Limits, WebSocket

KEY, SECRET = "benchkey", "benchsecret"
USERS = 1000
PER_TURN = 50
EVENT = "client-m"
SIGNED_CHANNELS = "private-chat-*"  # --signed: every chat channel is a signed one


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


def payload(seq: int) -> str:
    """The chat payload as a JSON text: `data` of a signed event is a string."""
    return '{"m":"#%d#%d#","p":"%s"}' % (seq, time.time_ns(), "x" * 50)


def event_frame(channel: str, data: str, signature: sig.Signature | None = None) -> Frame:
    message: dict[str, Any] = {"event": EVENT, "channel": channel, "data": data}
    if signature is not None:
        message["parley"] = {"sig": signature.wire()}
    return Frame(orjson.dumps(message))


async def drive(
    node: Any, sessions: list[tuple[Any, Any]], rounds: list[list[Frame]], core: bool
) -> tuple[float, int]:
    """Feed every round's frames (one per user), PER_TURN a loop turn; CPU seconds (the
    history writer's thread included) until the node is idle, and the frames delivered."""
    users = len(sessions)
    before = sum(t.sent for _, t in sessions)
    cpu0 = time.process_time()
    for frames in rounds:
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
    return cpu, sum(t.sent for _, t in sessions) - before


async def main(
    store: str,
    rounds: int,
    without: str | None,
    core: bool,
    users: int = USERS,
    signed: bool = False,
    block: int = 10,
) -> None:
    if without is not None and without != "verify" and speedups.compiled():
        raise SystemExit("--without replaces Node methods: run with PARLEY_COMPILED=0")
    print(speedups.STATUS)
    app = AppConfig(
        id="1",
        key=KEY,
        secret=SECRET,
        client_events=True,
        client_event_rate=0,
        signed_channels=SIGNED_CHANNELS if signed else "",
    )
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), store=store, apps=(app,))
    db = await open_database(settings)
    node = await make_node(settings, db)
    node.start()
    device_keys: list[Ed25519PrivateKey] = []
    if signed:  # one device key per user, registered as POST /apps/1/keys does
        assert node.keys is not None
        for i in range(users):
            key = Ed25519PrivateKey.generate()
            public = sig.b64url(sig.public_raw(key))
            await node.keys.register(app, "user-%d" % i, "bench", public, None, None, None)
            device_keys.append(key)
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
    if signed:
        await signed_against_unsigned(
            node, app, sessions, device_keys, rounds, block, core, store, without
        )
        await close_node(node)
        if db is not None:
            await db.close()
        return
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
    cpu, delivered = await drive(node, sessions, [frames] * rounds, core)
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


async def signed_against_unsigned(
    node: Any,
    app: AppConfig,
    sessions: list[tuple[Any, Any]],
    device_keys: list[Ed25519PrivateKey],
    rounds: int,
    block: int,
    core: bool,
    store: str,
    without: str | None,
) -> None:
    """`--signed`: blocks of `block` rounds, unsigned and signed in turn on the same node
    (order swapped every pair); each block's messages are built and signed before it."""
    users = len(sessions)
    signing: KeyDirectory = node.keys
    # the same app without signed channels: what the node runs for an app that signs nothing
    plain = KeyDirectory(
        signing.store, (dataclasses.replace(app, signed_channels=""),), signing.publish
    )
    head = signing.head(app)
    head_text = "%d:%s" % (head.seq, head.hash)  # the head each sender last verified
    seq = 0

    def make_block(signed: bool) -> list[list[Frame]]:
        nonlocal seq
        out = []
        for _ in range(block):
            frames = []
            for i in range(users):
                seq += 1
                channel, data = "private-chat-%d" % (i // 2), payload(seq)
                signature = None
                if signed:
                    signature = sig.sign(
                        device_keys[i],
                        app.key,
                        channel,
                        EVENT,
                        "user-%d" % i,
                        data,
                        mid="m%d" % seq,
                        ts=int(time.time() * 1000),
                        head=head_text,
                    )
                frames.append(event_frame(channel, data, signature))
            out.append(frames)
        return out

    def errors() -> int:
        return sum(node.metrics.errors.values())

    if without == "verify":  # the signed path with Ed25519 verification stubbed out
        keys_module.signature_valid = lambda public, message, signature: True
    gc.set_threshold(10_000, 50, 100)
    cpu = {False: 0.0, True: 0.0}
    ratios = []
    last_signed: Frame | None = None
    for pair in range(rounds // block):
        blocks = {False: make_block(False), True: make_block(True)}
        last_signed = blocks[True][-1][0]
        gc.freeze()  # as `parley serve` does once it is up (app.serve)
        pair_cpu = {}
        for variant in (False, True) if pair % 2 == 0 else (True, False):
            node.keys = signing if variant else plain
            errors0 = errors()
            spent, delivered = await drive(node, sessions, blocks[variant], core)
            if delivered != block * users or errors() != errors0:
                raise SystemExit(
                    "%s block: expected %d deliveries and no errors, got %d and %d errors"
                    % (
                        "signed" if variant else "unsigned",
                        block * users,
                        delivered,
                        errors() - errors0,
                    )
                )
            pair_cpu[variant] = spent
            cpu[variant] += spent
        ratios.append(pair_cpu[True] / pair_cpu[False])
        del blocks
    n = rounds // block * block * users
    # the check really ran: a replayed message and an unsigned one are refused
    node.keys = signing
    errors0 = errors()
    unsigned = event_frame("private-chat-0", payload(0))
    for frame in (last_signed, unsigned):
        assert frame is not None
        if core:
            sessions[0][0].receive(frame.payload)
        else:
            sessions[0][0].on_ws_frame(sessions[0][1], frame)
    await node.delivery.idle()
    if errors() - errors0 != 2:
        raise SystemExit("a replayed or unsigned event on a signed channel was not refused")
    # what one verification costs alone on this machine
    key = Ed25519PrivateKey.generate()
    message = b"parley-sig-v1\n" + b"x" * 180
    public, signature = sig.public_raw(key), sig.b64url(key.sign(message))
    t0 = time.process_time()
    for _ in range(2000):
        assert sig.signature_valid(public, message, signature)
    verify = (time.process_time() - t0) / 2000
    unsigned_us, signed_us = cpu[False] / n * 1e6, cpu[True] / n * 1e6
    print(
        "store=%s signed%s: %d connections, %d pairs of %d rounds, %d messages each: "
        "unsigned %.2f µs, signed %.2f µs CPU per message, signed/unsigned %.2f "
        "(per pair %.2f [%.2f–%.2f]); signature_valid alone %.1f µs"
        % (
            store,
            " (without verify)" if without == "verify" else "",
            users,
            len(ratios),
            block,
            n,
            unsigned_us,
            signed_us,
            signed_us / unsigned_us,
            statistics.median(ratios),
            min(ratios),
            max(ratios),
            verify * 1e6,
        )
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", default="sqlite", choices=("sqlite", "memory"))
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--without", choices=("fanout", "client", "append", "verify"), default=None)
    ap.add_argument(
        "--core", action="store_true", help="drive Session through the core's seam, no WebSocket"
    )
    ap.add_argument(
        "--users",
        type=int,
        default=USERS,
        help="connections (even, a multiple of 50); with --rounds 0 only their opening is run",
    )
    ap.add_argument(
        "--signed",
        action="store_true",
        help="signed against unsigned client events in one run (--rounds of each)",
    )
    ap.add_argument(
        "--block", type=int, default=10, help="--signed: rounds per block (a multiple of it)"
    )
    args = ap.parse_args()
    if args.signed and (args.without not in (None, "verify") or args.rounds < args.block):
        raise SystemExit("--signed takes --without verify only, and --rounds of at least --block")
    if args.without == "verify" and not args.signed:
        raise SystemExit("--without verify goes with --signed")
    asyncio.run(
        main(args.store, args.rounds, args.without, args.core, args.users, args.signed, args.block)
    )
