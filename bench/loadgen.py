"""Load generator for the Parley benchmark suite.

One process, one asyncio (uvloop) thread, picows WebSocket clients. The runner
(bench/run.py) starts it pinned to core 1 with a JSON spec on stdin and reads one
JSON result line from stdout. It can also be run by hand:

    echo '{"scenario":"fanout","proto":"pusher","port":6101,...}' | python bench/loadgen.py

Three client protocols, chosen by ``proto``:

* ``pusher``   Pusher Channels protocol 7 (Parley, soketi): ``/app/{key}?protocol=7``,
               private-channel auth, signin, client events, and the signed HTTP API.
* ``socketio`` Engine.IO 4 / Socket.IO 5 over a bare WebSocket (python-socketio peer):
               ``join`` (acked) and ``pub`` events, see bench/peers/socketio_server.py.
* ``raw``      the raw broadcast peers: every text frame a client sends goes to every
               other client; the server says ``hello`` once the client is registered.

Every message carries a 100-byte application payload
``{"m":"#<seq>#<monotonic_ns>#","p":"xxx…"}``; latency is "now - timestamp in the
payload" (same host, same clock), measured on a sample of the receiving connections.
All other receivers only count frames, to keep the generator cheap. The result reports
the generator's own CPU use over the measured window (``loadgen_cpu``, 1.0 = one core
saturated) and the server's (``server_cpu``, from /proc/<pid>/stat) so a reader can
tell which side was the bottleneck.

A cluster peer (several server processes) is given as ``ports`` (clients spread over them
round-robin), ``server_pgids`` (its CPU is theirs together) and ``services`` (the shared
Redis and PostgreSQL processes, measured apart: ``redis_cpu``, ``postgres_cpu``).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import hmac
import logging
import os
import resource
import socket
import sys
import time
import traceback
from array import array

import orjson
import uvloop
from picows import WSAutoPingStrategy, WSListener, WSMsgType
from picows.picows import WSProtocol
from picows.url import parse_url

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
now_ns = time.monotonic_ns
PAYLOAD_SIZE = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- payload


def make_payload(seq: int, size: int = PAYLOAD_SIZE) -> bytes:
    head = b'{"m":"#%d#%d#","p":"' % (seq, now_ns())
    pad = size - len(head) - 2
    return head + b"x" * max(pad, 0) + b'"}'


def parse_stamp(p: bytes) -> tuple[int, int]:
    """(seq, send_ns) from a frame that embeds a payload (possibly JSON-escaped)."""
    i = p.find(b"#")
    j = p.find(b"#", i + 1)
    k = p.find(b"#", j + 1)
    return int(p[i + 1 : j]), int(p[j + 1 : k])


# --------------------------------------------------------------------------- hub


class Hub:
    """Global counters shared by every connection (attribute access is the hot path)."""

    def __init__(self) -> None:
        self.delivered = 0  # data frames received by counted connections
        self.measuring = False
        self.lat = array("q")  # latencies (ns) of sampled deliveries in the window
        self.errors: dict[str, int] = {}
        self.on_data = None  # scenario hook: f(conn, payload) or None
        self.echoed = 0  # frames the publisher got back (should stay 0)
        self.disconnects = 0
        self.closing = False

    def error(self, what: str) -> None:
        what = what[:200]
        self.errors[what] = self.errors.get(what, 0) + 1

    def record(self, p: bytes) -> None:
        # inline parse_stamp: the '#'-delimited "seq#send_ns" survives JSON escaping
        j = p.find(b"#", p.find(b"#") + 1)
        k = p.find(b"#", j + 1)
        try:
            self.lat.append(now_ns() - int(p[j + 1 : k]))
        except ValueError:
            self.error("unparsable payload: %r" % p[:80])


H = Hub()


# --------------------------------------------------------------------------- clients


class Conn(WSListener):
    """Base client. Subclasses implement the handshake and the data-frame fast path."""

    def __init__(
        self,
        idx: int,
        channel: str | None,
        sample: bool,
        counted: bool = True,
        signin_user: str | None = None,
    ):
        super().__init__()
        self.idx = idx
        self.channel = channel
        self.sample = sample
        self.counted = counted
        self.t = None
        self.ready = asyncio.get_running_loop().create_future()
        self.user_id: str | None = None
        self.partner: Conn | None = None
        self.t_start = 0

    # hooks ---------------------------------------------------------------
    def on_ws_connected(self, transport) -> None:
        self.t = transport

    def on_ws_disconnected(self, transport) -> None:
        if not H.closing:
            H.disconnects += 1
            H.error("%s: server closed the connection" % type(self).__name__)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before ready"))

    def _ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        H.error(why)
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))

    def _data(self, p: bytes) -> None:
        if self.counted:
            H.delivered += 1
            if self.sample:
                H.record(p)
            cb = H.on_data
            if cb is not None:
                cb(self, p)
        else:
            H.echoed += 1

    def close(self) -> None:
        t = self.t
        if t is not None and not t.is_disconnected:
            try:
                t.send_close()
                t.disconnect()
            except Exception:
                pass


class PusherConn(Conn):
    cfg: dict = {}

    def __init__(self, idx, channel, sample, counted=True, signin_user: str | None = None):
        super().__init__(idx, channel, sample, counted)
        self.socket_id = None
        self.signin_user = signin_user
        self.prefix = b""

    @classmethod
    def url(cls, port: int | None = None) -> str:
        c = cls.cfg
        return "ws://%s:%d/app/%s?protocol=7&client=parley-bench&version=1.0" % (
            c["host"],
            port or c["port"],
            c["key"],
        )

    def on_ws_frame(self, transport, frame) -> None:
        p = frame.get_payload_as_bytes()
        if p and p[0] == 123 and b"pusher" not in p:  # '{' and not pusher:*: a data frame
            # (the hot path: Conn._data inlined)
            if self.counted:
                H.delivered += 1
                if self.sample and H.measuring:
                    H.record(p)
                cb = H.on_data
                if cb is not None:
                    cb(self, p)
            else:
                H.echoed += 1
            return
        if frame.msg_type is not TEXT:
            if frame.msg_type is CLOSE:
                transport.disconnect()
            return
        self._control(p)

    def _control(self, p: bytes) -> None:
        msg = orjson.loads(p)
        ev = msg.get("event")
        if ev == "pusher:connection_established":
            self.socket_id = orjson.loads(msg["data"])["socket_id"]
            if self.signin_user is not None:
                self._signin()
            elif self.channel is not None:
                self._subscribe()
            else:
                self._ready()
        elif ev == "pusher:signin_success":
            if self.channel is not None:
                self._subscribe()
            else:
                self._ready()
        elif ev == "pusher_internal:subscription_succeeded":
            self._ready()
        elif ev == "pusher:ping":
            self.t.send(TEXT, b'{"event":"pusher:pong","data":{}}')
        elif ev == "pusher:pong":
            pass
        elif ev in ("pusher:error", "pusher:subscription_error"):
            self._fail("pusher error: %s" % orjson.dumps(msg.get("data")).decode())
        elif ev.startswith(("pusher_internal:", "pusher:")):
            pass
        else:
            self._data(p)

    def _sign(self, s: str) -> str:
        c = self.cfg
        return "%s:%s" % (
            c["key"],
            hmac.new(c["secret"].encode(), s.encode(), hashlib.sha256).hexdigest(),
        )

    def _signin(self) -> None:
        user_data = orjson.dumps({"id": self.signin_user}).decode()
        auth = self._sign("%s::user::%s" % (self.socket_id, user_data))
        self.t.send(
            TEXT,
            orjson.dumps(
                {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}
            ),
        )

    def _subscribe(self) -> None:
        ch = self.channel
        auth = (
            self._sign("%s:%s" % (self.socket_id, ch))
            if ch.startswith(("private-", "presence-"))
            else ""
        )
        self.t.send(
            TEXT, orjson.dumps({"event": "pusher:subscribe", "data": {"auth": auth, "channel": ch}})
        )
        self.prefix = b'{"event":"client-m","channel":"%s","data":' % ch.encode()

    def publish(self, payload: bytes) -> None:
        """A client event on our (private) channel; payload is the data object."""
        self.t.send(TEXT, self.prefix + payload + b"}")


class SocketIOConn(Conn):
    cfg: dict = {}

    def __init__(self, idx, channel, sample, counted=True, signin_user=None):
        super().__init__(idx, channel, sample, counted)
        self.prefix = b""

    @classmethod
    def url(cls, port: int | None = None) -> str:
        c = cls.cfg
        return "ws://%s:%d/socket.io/?EIO=4&transport=websocket" % (c["host"], port or c["port"])

    def on_ws_frame(self, transport, frame) -> None:
        p = frame.get_payload_as_bytes()
        if p.startswith(b'42["m"'):
            if self.counted:
                H.delivered += 1
                if self.sample and H.measuring:
                    H.record(p)
                cb = H.on_data
                if cb is not None:
                    cb(self, p)
            else:
                H.echoed += 1
            return
        if frame.msg_type is not TEXT:
            if frame.msg_type is CLOSE:
                transport.disconnect()
            return
        if p == b"2":  # engine.io ping
            transport.send(TEXT, b"3")
        elif p.startswith(b"0{"):  # engine.io open
            transport.send(TEXT, b"40")
        elif p.startswith(b"40"):  # socket.io connect ack
            if self.channel is not None:
                transport.send(TEXT, b'420["join","%s"]' % self.channel.encode())
                self.prefix = b'42["pub",["%s",' % self.channel.encode()
            else:
                self._ready()
        elif p.startswith(b"430"):  # join ack
            self._ready()
        elif p.startswith(b"44"):
            self._fail("socket.io connect error: %r" % p[:120])
        elif p.startswith(b"1"):
            pass
        else:
            H.error("socket.io unexpected: %r" % p[:60])

    def publish(self, payload: bytes) -> None:
        self.t.send(TEXT, self.prefix + payload + b"]]")


class RawConn(Conn):
    cfg: dict = {}

    @classmethod
    def url(cls, port: int | None = None) -> str:
        c = cls.cfg
        return "ws://%s:%d/" % (c["host"], port or c["port"])

    def on_ws_frame(self, transport, frame) -> None:
        p = frame.get_payload_as_bytes()
        if p and p[0] == 123:  # '{': a payload
            if self.counted:
                H.delivered += 1
                if self.sample and H.measuring:
                    H.record(p)
                cb = H.on_data
                if cb is not None:
                    cb(self, p)
            else:
                H.echoed += 1
            return
        if frame.msg_type is not TEXT:
            if frame.msg_type is CLOSE:
                transport.disconnect()
            return
        if p == b"hello":
            self._ready()
        else:
            H.error("raw: unexpected frame %r" % p[:60])

    def publish(self, payload: bytes) -> None:
        self.t.send(TEXT, payload)


PROTOS = {"pusher": PusherConn, "socketio": SocketIOConn, "raw": RawConn}


# --------------------------------------------------------------------------- HTTP API publisher


class HttpPub(asyncio.Protocol):
    """One HTTP/1.1 connection sending signed Pusher ``POST /apps/{id}/events``, one at a time.

    Keep-alive when the server allows it; when a response says ``Connection: close``
    (soketi 1.6.1 closes after every HTTP API response: uWS ``res.end(body, true)``),
    it reconnects before reporting the response, so the caller always gets a usable
    connection back. ``reconnects`` counts those."""

    reconnects = 0

    def __init__(self, cfg: dict, on_response):
        self.cfg = cfg
        self.on_response = on_response
        self.tr = None
        self.buf = bytearray()
        self.loop = asyncio.get_running_loop()
        self.path = "/apps/%s/events" % cfg["app_id"]
        self.host_hdr = ("Host: %s:%d\r\n" % (cfg["host"], cfg["port"])).encode()
        self.secret = cfg["secret"].encode()
        self.expect_close = False

    async def connect(self) -> HttpPub:
        s, fut = _connect_sock(self.loop, (self.cfg["host"], self.cfg["port"]), None)
        try:
            await fut
        except BaseException:
            s.close()
            raise
        await self.loop.create_connection(lambda: self, sock=s)
        return self

    def connection_made(self, transport) -> None:
        self.tr = transport
        self.buf.clear()

    def connection_lost(self, exc) -> None:
        if not H.closing and not self.expect_close:
            H.error("http publisher connection lost: %r" % (exc,))
        self.expect_close = False

    def send(self, channel: str, payload: bytes) -> None:
        body = b'{"name":"m","channel":"%s","data":%s}' % (
            channel.encode(),
            orjson.dumps(payload.decode()),
        )
        md5 = hashlib.md5(body).hexdigest()
        q = "auth_key=%s&auth_timestamp=%d&auth_version=1.0&body_md5=%s" % (
            self.cfg["key"],
            int(time.time()),
            md5,
        )
        sig = hmac.digest(self.secret, ("POST\n%s\n%s" % (self.path, q)).encode(), "sha256").hex()
        head = "POST %s?%s&auth_signature=%s HTTP/1.1\r\n" % (self.path, q, sig)
        self.tr.write(
            head.encode()
            + self.host_hdr
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            status = int(head[9:12])
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                n = int(head[i + 15 : j if j > 0 else None])
                if len(buf) < end + 4 + n:
                    return
                body = bytes(buf[end + 4 : end + 4 + n])
                del buf[: end + 4 + n]
            elif b"transfer-encoding: chunked" in head:
                z = buf.find(b"0\r\n\r\n", end + 4)
                if z < 0:
                    return
                body = bytes(buf[end + 4 : z])
                del buf[: z + 5]
            else:
                body = b""
                del buf[: end + 4]
            if b"\r\nconnection: close" in head:
                HttpPub.reconnects += 1
                self.expect_close = True
                self.tr.close()
                self.tr = None
                self.loop.create_task(self._reconnect_then(status, body))
                return
            self.on_response(self, status, body)

    async def _reconnect_then(self, status, body) -> None:
        try:
            await self.connect()
        except OSError as e:
            H.error("http reconnect failed: %s" % e)
            return
        self.on_response(self, status, body)


# --------------------------------------------------------------------------- measurement helpers


def proc_pids(pgid) -> list[int]:
    """The processes of a process group, or of several (a cluster peer: one group per node)."""
    if not pgid:
        return []
    groups = {pgid} if isinstance(pgid, int) else set(pgid)
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(b")") + 2 :].split()
        if int(fields[2]) in groups:  # field 5 (pgrp)
            out.append(int(d))
    return out


def server_cpu_ticks(pgid) -> int:
    tot = 0
    for pid in proc_pids(pgid):
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(b")") + 2 :].split()
        tot += int(fields[11]) + int(fields[12])  # utime, stime
    return tot


def server_rss_kb(pgid) -> int:
    tot = 0
    for pid in proc_pids(pgid):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        tot += int(line.split()[1])
                        break
        except OSError:
            continue
    return tot


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def self_sleeps() -> int:
    """Voluntary context switches: each is the event loop finding nothing to do and
    blocking in epoll_wait. A generator at ~100% CPU that still sleeps thousands of times
    a second is keeping up; one that never sleeps is the bottleneck."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def server_sleeps(pgid) -> int:
    tot = 0
    for pid in proc_pids(pgid):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        tot += int(line.split()[1])
                        break
        except OSError:
            continue
    return tot


# Shared services a cluster peer runs on (the runner's ``services``): name -> substrings
# that are all in the processes' command line, e.g. {"redis": ["redis-server", ":6379"],
# "postgres": [" parley_bench_1a2b "]} (PostgreSQL titles each backend with its database's
# name). They are the machine's, not pinned, so their CPU falls on either core: measured
# apart, and not counted as foreign.
SERVICES: dict[str, list[str]] = {}


def service_ticks(match: list[str]) -> dict[int, int]:
    """utime+stime (ticks) of every process whose command line contains all of ``match``."""
    out = {}
    needles = [m.encode() for m in match]
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
            if not all(n in cmd for n in needles):
                continue
            with open("/proc/%s/stat" % d, "rb") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(b")") + 2 :].split()
        out[int(d)] = int(fields[11]) + int(fields[12])
    return out


def cores_busy(cores=(0, 1)) -> tuple[float, float, float]:
    """Seconds so far of the given CPUs, from /proc/stat: (task time = user+nice+system,
    irq+softirq, steal). Softirq time (much of loopback TCP) is not in any process's
    utime/stime; steal is time the hypervisor gave the vCPU to someone else."""
    task = irq = steal = 0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *v = line.split()
                if int(name[3:]) in cores:
                    v = [int(x) for x in v[:8]]
                    task += v[0] + v[1] + v[2]
                    irq += v[5] + v[6]
                    steal += v[7]
    return task / CLK_TCK, irq / CLK_TCK, steal / CLK_TCK


class Window:
    """Snapshot counters, CPU of both sides and wall time at start/stop of a measured window."""

    def __init__(self, pgid):
        self.pgid = pgid

    def start(self, extra=None) -> None:
        self.t0 = time.monotonic()
        self.c0 = self_cpu()
        self.s0 = server_cpu_ticks(self.pgid)
        self.v0 = self_sleeps()
        self.sv0 = server_sleeps(self.pgid)
        self.b0 = cores_busy()
        self.svc0 = {name: service_ticks(m) for name, m in SERVICES.items()}
        self.d0 = H.delivered
        self.x0 = extra() if extra else 0
        H.measuring = True

    def stop(self, extra=None) -> dict:
        H.measuring = False
        dt = time.monotonic() - self.t0
        b1 = cores_busy()
        task, irq, steal = ((b1[i] - self.b0[i]) / dt for i in range(3))
        r = {
            "seconds": round(dt, 3),
            "deliveries": H.delivered - self.d0,
            "deliveries_per_s": round((H.delivered - self.d0) / dt, 1),
            "loadgen_cpu": round((self_cpu() - self.c0) / dt, 3),
            "server_cpu": round((server_cpu_ticks(self.pgid) - self.s0) / CLK_TCK / dt, 3)
            if self.pgid
            else None,
            "loadgen_sleeps_per_s": round((self_sleeps() - self.v0) / dt, 1),
            "server_sleeps_per_s": round((server_sleeps(self.pgid) - self.sv0) / dt, 1)
            if self.pgid
            else None,
        }
        # Noisy-neighbour detector (the runner re-runs noisy runs): task time of cores 0-1
        # not spent by the server or us (other processes, kernel threads), plus steal.
        # irq/softirq time is reported apart: it is the network stack working for the run.
        r["softirq_cpu"] = round(irq, 3)
        r["steal_cpu"] = round(steal, 3)
        services = 0.0
        for name, m in SERVICES.items():
            before = self.svc0.get(name, {})
            # a process born in the window (a new pool connection) counts whole
            ticks = sum(t - before.get(pid, 0) for pid, t in service_ticks(m).items())
            r["%s_cpu" % name] = round(ticks / CLK_TCK / dt, 3)
            services += r["%s_cpu" % name]
        if r["server_cpu"] is not None:
            r["foreign_cpu"] = round(
                max(0.0, task - r["server_cpu"] - r["loadgen_cpu"] - services) + steal, 3
            )
        if extra:
            r["extra"] = extra() - self.x0
            r["extra_per_s"] = round(r["extra"] / dt, 1)
        return r


def percentiles(vals, ps=(50, 90, 99, 99.9)) -> dict:
    if not vals:
        return {}
    s = sorted(vals)
    n = len(s)
    out = {
        "p%s" % (str(p).replace(".0", "")): round(s[min(n - 1, int(p / 100 * n))] / 1e6, 3)
        for p in ps
    }
    out["max"] = round(s[-1] / 1e6, 3)
    out["samples"] = n
    return out


# --------------------------------------------------------------------------- connection management

_LOG = logging.getLogger("picows.client")


def _connect_sock(loop, addr, local):
    """A non-blocking socket connecting to a numeric address, and a future for the connect.

    loop.create_connection(host, port) and loop.sock_connect both go through getaddrinfo in
    libuv's thread pool, which costs more than the connect itself."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if local:
        s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT: pick the port at connect
        s.bind(local)
    fut = loop.create_future()
    err = s.connect_ex(addr)
    if err == errno.EINPROGRESS:
        fd = s.fileno()

        def done():
            loop.remove_writer(fd)
            if not fut.done():
                e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if e:
                    fut.set_exception(OSError(e, os.strerror(e)))
                else:
                    fut.set_result(None)

        loop.add_writer(fd, done)
    elif err:
        fut.set_exception(OSError(err, os.strerror(err)))
    else:
        fut.set_result(None)
    return s, fut


async def open_conns(
    cls, items, concurrency: int, timeout: float, local_ips: int = 1, max_fail: int = 0
):
    """Connect and make ready ``items`` = [(idx, channel, sample, counted, signin_user)].

    ``concurrency`` workers each connect one client at a time: TCP connect, WebSocket
    upgrade (picows ``WSProtocol``, the same object ``picows.ws_connect`` builds, minus
    its URL/proxy/DNS layers), then the protocol's own handshake (``conn.ready``).
    Gives up on the rest once more than ``max_fail`` failed. With several server ports
    (``ports``: the nodes of a cluster peer), client ``idx`` goes to ``ports[idx % len]``:
    round-robin, so any two consecutive clients are on different nodes.
    Returns (conns, connect_latencies_ns, failures)."""
    loop = asyncio.get_running_loop()
    targets = []  # (address, netloc, path) per server port
    for port in cls.cfg.get("ports") or [cls.cfg["port"]]:
        parsed = parse_url(cls.url(port))
        targets.append(((cls.cfg["host"], port), parsed.netloc, parsed.resource_name))
    conns: list = []
    lats: list = []
    failures = 0
    it_items = iter(items)

    async def one(it):
        c = cls(*it)
        addr, netloc, path = targets[it[0] % len(targets)]
        t0 = now_ns()
        local = ("127.0.0.%d" % (1 + it[0] % local_ips), 0) if local_ips > 1 else None
        s = None
        th = loop.call_later(
            timeout,
            lambda: (
                c.ready.done()
                or c.ready.set_exception(TimeoutError("not ready after %.0f s" % timeout))
            ),
        )
        try:
            s, fut = _connect_sock(loop, addr, local)
            await fut
            proto = WSProtocol(
                netloc,
                path,
                True,
                lambda: c,
                _LOG,
                True,
                timeout,
                False,
                10,
                10,
                WSAutoPingStrategy.PING_WHEN_IDLE,
                True,
                10 * 1024 * 1024,
                None,
                4096,
            )
            await loop.create_connection(lambda: proto, sock=s)
            s = None
            await proto.wait_until_handshake_complete()
            await c.ready
            lats.append(now_ns() - t0)
            conns.append(c)
            return True
        except Exception as e:
            H.error("connect/subscribe failed: %s: %s" % (type(e).__name__, str(e)[:100]))
            if s is not None:
                s.close()
            c.close()
            return False
        finally:
            th.cancel()

    async def worker():
        nonlocal failures
        for it in it_items:
            if failures > max_fail:
                failures += 1
                continue
            if not await one(it):
                failures += 1

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
    return conns, lats, failures


def close_all(conns) -> None:
    H.closing = True
    for c in conns:
        c.close()


# --------------------------------------------------------------------------- scenarios


def chan(spec, base: str, private: bool) -> str:
    if spec["proto"] == "pusher" and private:
        return "private-" + base
    return base


async def sc_fanout(spec, pgid) -> dict:
    """One channel, N subscribers, one publisher.

    rate == 0: closed loop, at most ``window`` deliveries outstanding (max rate);
    rate > 0:  open loop at ``rate`` messages/s."""
    cls = PROTOS[spec["proto"]]
    n = spec["subscribers"]
    rate = spec.get("rate", 0)
    mode = spec.get("publish", "ws")  # ws | http
    if mode == "http" and spec["proto"] != "pusher":
        raise ValueError("http publishing is only for the pusher protocol")
    channel = chan(spec, "fanout", private=(mode == "ws"))
    sample_every = spec.get("sample_every") or max(1, n // 200)
    items = [(i, channel, i % sample_every == 0, True, None) for i in range(n)]
    conns, _clat, fails = await open_conns(
        cls, items, spec.get("concurrency", 200), spec["connect_timeout"]
    )
    if fails:
        raise RuntimeError("%d/%d subscribers failed to connect" % (fails, n))
    loop = asyncio.get_running_loop()
    published = 0
    stop = False
    # outstanding deliveries: enough queued work that the server never waits for us, few
    # enough that max-rate latency stays a queueing figure of tens of ms: 8..40 per subscriber
    window = spec.get("window_deliveries") or n * min(40, max(8, 20000 // n))

    if mode == "ws":
        pubs, _, f = await open_conns(
            cls, [(n, channel, False, False, None)], 1, spec["connect_timeout"]
        )
        if f:
            raise RuntimeError("publisher failed to connect")
        pub = pubs[0]

        def publish_one() -> bool:
            nonlocal published
            published += 1
            pub.publish(make_payload(published))
            return True
    else:
        cfg = cls.cfg
        idle: list[HttpPub] = []
        statuses: dict[int, int] = {}

        def on_resp(h, status, body):
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                H.error("http %d: %r" % (status, body[:100]))
            idle.append(h)
            if rate == 0 and not stop:
                pump()

        hs = []
        # the first node's HTTP API, or (``http_spread``) every node's in turn
        http_ports = cfg["ports"] if spec.get("http_spread") else [cfg["port"]]
        for i in range(spec.get("http_conns", 8)):
            h = await HttpPub(dict(cfg, port=http_ports[i % len(http_ports)]), on_resp).connect()
            hs.append(h)
            idle.append(h)
        pub = None

        def publish_one() -> bool:
            nonlocal published
            if not idle:
                return False
            published += 1
            idle.pop().send(channel, make_payload(published))
            return True

    def pump():
        while not stop and published * n - H.delivered < window:
            if not publish_one():
                break

    if rate == 0:

        def on_data(c, p):
            if published * n - H.delivered < window and not stop:
                pump()

        H.on_data = on_data
    late = 0

    async def ticker():
        nonlocal late
        period = 1.0 / rate
        nxt = loop.time()
        while not stop:
            if not publish_one():
                late += 1
            nxt += period
            await asyncio.sleep(max(0.0, nxt - loop.time()))

    # Max rate: SO_RCVLOWAT makes the kernel wake a subscriber only once ~rcvlowat bytes
    # are queued, so the generator reads several frames per recv() instead of one. Without
    # it the generator burns a core on one-frame reads and a reader cannot tell whether it
    # or the server was the bottleneck; with it, loadgen_cpu shows the real headroom.
    # Off (0) for fixed-rate runs, whose latency must not include batching delays.
    # At most half the per-subscriber window (frames are >= ~100 bytes), or frames below
    # the mark would never be read and the closed loop would stall.
    lowat = spec.get("rcvlowat", min(1024, (window // n // 2) * 100) if rate == 0 else 0)

    def set_lowat(v):
        for c in conns:
            try:
                c.t.underlying_transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVLOWAT, v
                )
            except (OSError, AttributeError):
                pass

    if lowat > 1:
        set_lowat(lowat)
    w = Window(pgid)
    task = None
    if rate == 0:
        pump()
    else:
        task = asyncio.ensure_future(ticker())
    await asyncio.sleep(spec["warmup"])
    p0 = published
    w.start()
    await asyncio.sleep(spec["duration"])
    res = w.stop()
    p1 = published
    stop = True
    if task:
        await task
    if lowat > 1:
        set_lowat(1)  # Linux re-checks readability on this: the tail gets delivered
    # drain: wait until every published message reached every subscriber (or give up)
    t_end = time.monotonic() + spec.get("drain", 5)
    while H.delivered < published * n and time.monotonic() < t_end:
        await asyncio.sleep(0.02)
    res.update(
        {
            "subscribers": n,
            "publish": mode,
            "rate": rate,
            "messages_per_s": round((p1 - p0) / res["seconds"], 1),
            "latency_ms": percentiles(H.lat),
            "missing_deliveries": published * n - H.delivered,
            "echoed_to_publisher": H.echoed,
            "late_ticks": late,
            "rcvlowat": lowat,
        }
    )
    if mode == "http":
        res["http_statuses"] = statuses
        res["http_reconnects"] = HttpPub.reconnects
    if mode == "http":
        H.closing = True
        for h in hs:
            if h.tr is not None:
                h.tr.close()
    close_all(conns + ([pub] if pub else []))
    return res


async def sc_idle(spec, pgid) -> dict:
    cls = PROTOS[spec["proto"]]
    n = spec["connections"]
    await asyncio.sleep(spec.get("settle", 1.0))
    rss0 = server_rss_kb(pgid)
    items = [(i, chan(spec, "idle-%d" % (i % 100), False), False, True, None) for i in range(n)]
    t0 = time.monotonic()
    conns, _clat, fails = await open_conns(
        cls,
        items,
        spec.get("concurrency", 200),
        spec["connect_timeout"],
        spec.get("local_ips", 1),
        max_fail=max(10, n // 100),
    )
    t_conn = time.monotonic() - t0
    await asyncio.sleep(spec.get("settle", 1.0) + 1.0)
    rss1 = server_rss_kb(pgid)
    ok = len(conns)
    w = Window(pgid)
    w.start()
    await asyncio.sleep(spec.get("hold", 2.0))  # idle server CPU while holding them
    wr = w.stop()
    idle_cpu = wr["server_cpu"] or 0.0
    rss2 = server_rss_kb(pgid)
    close_all(conns)
    return {
        "connections": ok,
        "failed": fails,
        "rss_before_kb": rss0,
        "rss_after_kb": max(rss1, rss2),
        "rss_per_conn_kb": round((max(rss1, rss2) - rss0) / max(ok, 1), 2),
        "connect_seconds": round(t_conn, 3),
        "server_cpu_idle": round(idle_cpu, 3),
        "foreign_cpu": wr.get("foreign_cpu"),
        "disconnects": H.disconnects,
    }


def cpu_us_per(cores, per_s) -> float | None:
    """Microseconds of CPU per unit of work, from cores used and units per second."""
    if not isinstance(cores, (int, float)) or not per_s:
        return None
    return round(cores / per_s * 1e6, 1)


async def sc_storm(spec, pgid) -> dict:
    cls = PROTOS[spec["proto"]]
    n = spec["connections"]
    items = [(i, chan(spec, "storm-%d" % (i % 100), False), False, True, None) for i in range(n)]
    w = Window(pgid)
    w.start()
    conns, clat, fails = await open_conns(
        cls,
        items,
        spec.get("concurrency", 100),
        spec["connect_timeout"],
        spec.get("local_ips", 1),
        max_fail=max(10, n // 100),
    )
    r = w.stop()
    close_all(conns)
    return {
        "connections": len(conns),
        "failed": fails,
        "seconds": r["seconds"],
        "connections_per_s": round(len(conns) / r["seconds"], 1),
        # the server's CPU per accepted and subscribed connection: the figure that still
        # compares servers when the generator, not the server, sets the rate
        "server_us_per_conn": cpu_us_per(r["server_cpu"], len(conns) / r["seconds"]),
        "connect_latency_ms": percentiles(clat),
        "loadgen_cpu": r["loadgen_cpu"],
        "server_cpu": r["server_cpu"],
        "foreign_cpu": r.get("foreign_cpu"),
        "softirq_cpu": r.get("softirq_cpu"),
    }


async def sc_chat(spec, pgid) -> dict:
    """``users`` users in users/2 private one-to-one channels; each keeps ``inflight`` client
    events outstanding towards its partner (closed loop): messages/s = deliveries/s."""
    cls = PROTOS[spec["proto"]]
    if spec["proto"] == "raw":
        raise ValueError("chat needs rooms: not applicable to raw broadcast servers")
    users = spec["users"] - spec["users"] % 2
    signin = spec.get("signin", True) and spec["proto"] == "pusher"
    sample_every = spec.get("sample_every") or max(1, users // 200)
    items = [
        (
            i,
            chan(spec, "chat-%d" % (i // 2), True),
            i % sample_every == 0,
            True,
            ("user-%d" % i) if signin else None,
        )
        for i in range(users)
    ]
    conns, _clat, fails = await open_conns(
        cls, items, spec.get("concurrency", 200), spec["connect_timeout"]
    )
    if fails:
        raise RuntimeError("%d/%d chat users failed to connect" % (fails, users))
    by_idx = {c.idx: c for c in conns}
    for c in conns:
        c.partner = by_idx[c.idx ^ 1]
    stop = False
    seq = 0
    sent = 0
    # Every message must reach its sender's partner exactly once: who sent each seq, and
    # which seqs arrived (a cluster that delivers twice, or back to the sender, shows here).
    sender = array("i", [-1])  # sender[seq] = the sender's idx
    seen = bytearray(1)
    dups = echoes = 0

    def on_data(c, p):
        nonlocal seq, sent, seen, dups, echoes
        j = p.find(b"#")
        n = int(p[j + 1 : p.find(b"#", j + 1)])
        if n < len(seen) and seen[n]:
            dups += 1
            if dups <= 3:  # a few samples
                H.error("delivered twice: %r" % p[:400])
        elif n < len(seen):
            seen[n] = 1
        if sender[n] == c.idx:
            echoes += 1
            if echoes <= 3:
                H.error("delivered to its sender: %r" % p[:400])
        if not stop:
            seq += 1
            sent += 1
            sender.append(c.partner.idx)
            seen.append(0)
            c.partner.publish(make_payload(seq))  # the partner's credit came back: it sends again

    H.on_data = on_data
    inflight = spec.get("inflight", 1)
    for c in conns:
        for _ in range(inflight):
            seq += 1
            sent += 1
            sender.append(c.idx)
            seen.append(0)
            c.publish(make_payload(seq))
    w = Window(pgid)
    await asyncio.sleep(spec["warmup"])
    w.start()
    await asyncio.sleep(spec["duration"])
    r = w.stop()
    stop = True
    t_end = time.monotonic() + spec.get("drain", 5)
    while H.delivered < sent and time.monotonic() < t_end:
        await asyncio.sleep(0.02)
    r.update(
        {
            "users": users,
            "channels": users // 2,
            "signin": signin,
            "inflight": inflight,
            "messages_per_s": r["deliveries_per_s"],
            "latency_ms": percentiles(H.lat),
            "server_us_per_msg": cpu_us_per(r.get("server_cpu"), r["deliveries_per_s"]),
            "missing_deliveries": sent - H.delivered,
            "duplicate_deliveries": dups,
            "echoed_to_sender": echoes,
        }
    )
    close_all(conns)
    return r


async def sc_httpapi(spec, pgid) -> dict:
    """Signed HTTP API publishes over keep-alive connections, each closed loop; one
    subscriber per channel; publishes/s = 200 responses/s."""
    if spec["proto"] != "pusher":
        raise ValueError("the HTTP API scenario is only for Pusher servers")
    cls = PROTOS["pusher"]
    nch = spec["channels"]
    items = [(i, "api-%d" % i, True, True, None) for i in range(nch)]
    conns, _clat, fails = await open_conns(
        cls, items, spec.get("concurrency", 200), spec["connect_timeout"]
    )
    if fails:
        raise RuntimeError("%d/%d subscribers failed" % (fails, nch))
    cfg = cls.cfg
    stop = False
    seq = 0
    ok = 0
    statuses: dict[int, int] = {}

    def fire(h):
        nonlocal seq
        seq += 1
        h.send("api-%d" % (seq % nch), make_payload(seq))

    def on_resp(h, status, body):
        nonlocal ok
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            ok += 1
        else:
            H.error("http %d: %r" % (status, body[:100]))
        if not stop:
            fire(h)

    hs = []
    for _ in range(spec.get("http_conns", 8)):
        hs.append(await HttpPub(cfg, on_resp).connect())
    for h in hs:
        fire(h)
    w = Window(pgid)
    await asyncio.sleep(spec["warmup"])
    w.start(lambda: ok)
    await asyncio.sleep(spec["duration"])
    r = w.stop(lambda: ok)
    stop = True
    t_end = time.monotonic() + spec.get("drain", 5)
    while H.delivered < seq and time.monotonic() < t_end:
        await asyncio.sleep(0.02)
    r["publishes_per_s"] = r.pop("extra_per_s")
    r.pop("extra")
    r.update(
        {
            "channels": nch,
            "http_conns": len(hs),
            "http_statuses": statuses,
            "http_reconnects": HttpPub.reconnects,
            "latency_ms": percentiles(H.lat),
            "missing_deliveries": seq - H.delivered,
        }
    )
    H.closing = True
    for h in hs:
        if h.tr is not None:
            h.tr.close()
    close_all(conns)
    return r


SCENARIOS = {
    "fanout": sc_fanout,
    "idle": sc_idle,
    "storm": sc_storm,
    "chat": sc_chat,
    "httpapi": sc_httpapi,
}


async def amain(spec: dict) -> dict:
    cfg = {k: spec.get(k) for k in ("host", "port", "key", "secret", "app_id")}
    cfg["host"] = cfg["host"] or "127.0.0.1"
    for cls in PROTOS.values():
        cls.cfg = cfg
    cfg["ports"] = spec.get("ports") or [cfg["port"]]
    SERVICES.update(spec.get("services") or {})
    pgid = spec.get("server_pgids") or spec.get("server_pgid")
    t0 = time.monotonic()
    res = await asyncio.wait_for(SCENARIOS[spec["scenario"]](spec, pgid), spec.get("timeout", 120))
    await asyncio.sleep(0.2)  # let close frames go out
    res["wall_seconds"] = round(time.monotonic() - t0, 2)
    return res


def main() -> int:
    spec = orjson.loads(sys.stdin.buffer.read() if len(sys.argv) < 2 else sys.argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = {"ok": True, "scenario": spec["scenario"], "proto": spec["proto"]}
    gc.disable()  # tens of thousands of long-lived objects: cyclic GC passes only cost time here
    try:
        out["result"] = uvloop.run(amain(spec))
    except BaseException as e:
        out["ok"] = False
        out["error"] = "%s: %s" % (type(e).__name__, e)
        out["traceback"] = traceback.format_exc()[-2000:]
    out["errors"] = H.errors
    out["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
