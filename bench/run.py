#!/usr/bin/env python3
"""Benchmark runner: Parley against soketi, python-socketio, websockets and picows.

Every server under test is started here, pinned to core 0 (``taskset -c 0``) in its
own process group, and killed (whole group) after each run, even on error. The load
generator (bench/loadgen.py) runs pinned to core 1. Scenarios and peers alternate
within each repeat; the table gives medians over repeats with min-max, and the
Parley/peer ratio per repeat (median, min-max).

    python bench/run.py --smoke
    python bench/run.py --scenario fanout --subscribers 1000 --repeats 3 \
        --peers parley,soketi,socketio,websockets,picows
    python bench/run.py --scenario all --repeats 3
    python bench/run.py --scenario cluster-fanout,cluster-chat --repeats 3 \
        --peers parley-cluster,soketi-cluster

See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(os.environ.get("PARLEY_BENCH_VENV", ROOT / ".venv")) / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
SERVER_CORE = os.environ.get("BENCH_SERVER_CORE", "0")
LOADGEN_CORE = os.environ.get("BENCH_LOADGEN_CORE", "1")

APP_ID, APP_KEY, APP_SECRET = "1", "benchkey", "benchsecret"

# The cluster peers' shared services: the machine's Redis, and a PostgreSQL server on which
# each run of a Parley cluster peer creates a database of its own (dropped afterwards).
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# --------------------------------------------------------------------------- peers


@dataclass
class Peer:
    name: str
    proto: str  # pusher | socketio | raw
    port: int
    cmd: list[str]
    env: dict = field(default_factory=dict)
    ready_line: str | None = None  # wait for this on stdout (else: wait for the port)
    cwd: Path = BENCH
    extra_ports: tuple = ()  # other TCP ports it binds (checked free first)
    only: tuple = ()  # the scenarios it can run, when not all of its protocol's
    ready_count: int = 1  # how many times ready_line must appear (one per worker process)
    # A cluster peer: several processes (`nodes`, each a Peer of its own, started in order)
    # on the shared Redis (and, for Parley, a fresh PostgreSQL database `database`). Cluster
    # peers run the cluster scenarios only, and the cluster scenarios run only them.
    nodes: tuple = ()
    cluster: bool = False
    database: str = ""

    @property
    def ports(self) -> list[int]:
        """The ports clients are spread over (round-robin): every node's, in order."""
        return [n.port for n in self.nodes] if self.nodes else [self.port]

    def available(self) -> str | None:
        """None if it can be started, else why not."""
        for node in self.nodes:
            why = node.available()
            if why:
                return why
        if self.cluster:
            u = urlsplit(REDIS_URL)
            if not port_open(u.port or 6379, u.hostname or "127.0.0.1"):
                return "no Redis at %s (BENCH_REDIS_URL)" % REDIS_URL
        if self.database:
            u = urlsplit(POSTGRES_URL)
            if not port_open(u.port or 5432, u.hostname or "127.0.0.1"):
                return "no PostgreSQL at %s (BENCH_POSTGRES_URL)" % POSTGRES_URL
        if self.nodes:
            return None
        exe = self.cmd[0]
        if not (Path(exe).exists() or shutil.which(exe)):
            return "%s not found" % exe
        if self.name.startswith("soketi") and not (BENCH / "node_modules/@soketi/soketi").exists():
            return "bench/node_modules missing: run `npm ci --prefix bench`"
        if self.name == "parley-base" and not self.env.get("PYTHONPATH"):
            return "give --base-src DIR (the src/ of the Parley tree to compare with)"
        return None


PARLEY_CMD = [str(VENV_BIN / "parley"), "serve"]
BASE_SRC: list[str] = []  # --base-src: the source tree of the `parley-base` peer


def compile_parley(names: list[str]) -> None:
    """Bring the compiled build of each Parley tree to be measured up to date first (a no-op
    when it is fresh: src/parley/speedups.py), so that a run measures the source only when
    asked to with PARLEY_COMPILED=0; a peer that ran its source otherwise is reported as a
    problem after the table."""
    if os.environ.get("PARLEY_COMPILED") == "0":
        return
    roots = {ROOT for n in names if n.startswith("parley") and n != "parley-base"}
    if "parley-base" in names and BASE_SRC:
        roots.add(Path(BASE_SRC[0]).parent)
    for root in sorted(roots):
        script = root / "scripts" / "compile.py"
        if script.exists():
            subprocess.run([PY, str(script)], check=False)


def make_peers(scenario: str) -> dict[str, Peer]:
    soketi_env = {
        "SOKETI_HOST": "127.0.0.1",
        "SOKETI_PORT": "6101",
        "SOKETI_METRICS_HOST": "127.0.0.1",
        "SOKETI_METRICS_SERVER_PORT": "9611",
        "SOKETI_CLUSTER_HOST": "127.0.0.1",
        "SOKETI_CLUSTER_PORT": "11102",
        "SOKETI_CLUSTER_UNICAST_ADDRESSES": '["127.0.0.1"]',
        "SOKETI_CLUSTER_BROADCAST_ADDRESS": "127.255.255.255",
        "SOKETI_DEFAULT_APP_ID": APP_ID,
        "SOKETI_DEFAULT_APP_KEY": APP_KEY,
        "SOKETI_DEFAULT_APP_SECRET": APP_SECRET,
        "SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES": "true",
        # the names soketi 1.6.1 really reads (src/cli/cli.ts): *_PER_SEC, not *_PER_SECOND
        "SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC": "-1",
        "SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC": "-1",
        "SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC": "-1",
        "SOKETI_DEFAULT_APP_MAX_CONNS": "-1",
        "SOKETI_DEBUG": "false",
    }
    if scenario == "chat":
        # soketi ignores pusher:signin unless user authentication is on for the app;
        # only the chat scenario signs in (others would be cut off after 30 s unsigned).
        soketi_env["SOKETI_DEFAULT_APP_USER_AUTHENTICATION"] = "true"
    peers = [
        Peer(
            "parley",
            "pusher",
            6001,
            [*PARLEY_CMD, "--host", "127.0.0.1", "--port", "6001"],
            {
                "PARLEY_APP_ID": APP_ID,
                "PARLEY_APP_KEY": APP_KEY,
                "PARLEY_APP_SECRET": APP_SECRET,
                "PARLEY_APP_CLIENT_EVENTS": "true",
                "PARLEY_APP_CLIENT_EVENT_RATE": "0",
            },
            ready_line="listening on 127.0.0.1:6001",
        ),
        # opt-in: Parley with history/state in memory instead of SQLite under the data dir,
        # to show what durability costs (not part of the default peer list)
        Peer(
            "parley-mem",
            "pusher",
            6011,
            [*PARLEY_CMD, "--host", "127.0.0.1", "--port", "6011"],
            {
                "PARLEY_APP_ID": APP_ID,
                "PARLEY_APP_KEY": APP_KEY,
                "PARLEY_APP_SECRET": APP_SECRET,
                "PARLEY_APP_CLIENT_EVENTS": "true",
                "PARLEY_APP_CLIENT_EVENT_RATE": "0",
                "PARLEY_STORE": "memory",
            },
            ready_line="listening on 127.0.0.1:6011",
        ),
        # opt-in: the same Parley with websockets' sans-I/O protocol instead of picows as its
        # WebSocket layer (peers/parley_websockets.py), to compare the two stacks under Parley
        Peer(
            "parley-websockets",
            "pusher",
            6021,
            [
                PY,
                str(BENCH / "peers/parley_websockets.py"),
                "--host",
                "127.0.0.1",
                "--port",
                "6021",
            ],
            {
                "PARLEY_APP_ID": APP_ID,
                "PARLEY_APP_KEY": APP_KEY,
                "PARLEY_APP_SECRET": APP_SECRET,
                "PARLEY_APP_CLIENT_EVENTS": "true",
                "PARLEY_APP_CLIENT_EVENT_RATE": "0",
            },
            ready_line="listening on 127.0.0.1:6021",
        ),
        # opt-in, with --base-src DIR: Parley from another source tree (a worktree of an
        # earlier commit), to check a change for regressions in the same run
        Peer(
            "parley-base",
            "pusher",
            6031,
            [PY, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", "6031"],
            {
                "PARLEY_APP_ID": APP_ID,
                "PARLEY_APP_KEY": APP_KEY,
                "PARLEY_APP_SECRET": APP_SECRET,
                "PARLEY_APP_CLIENT_EVENTS": "true",
                "PARLEY_APP_CLIENT_EVENT_RATE": "0",
                "PYTHONPATH": ":".join(BASE_SRC),
            },
            ready_line="listening on 127.0.0.1:6031",
        ),
        Peer(
            "soketi",
            "pusher",
            6101,
            [
                "node",
                str(BENCH / "node_modules/@soketi/soketi/bin/server.js"),
                "start",
                "--config=" + str(BENCH / "peers/soketi.json"),
            ],
            soketi_env,
            extra_ports=(9611,),
        ),
        Peer(
            "socketio",
            "socketio",
            6401,
            [PY, str(BENCH / "peers/socketio_server.py"), "--port", "6401"],
        ),
        Peer(
            "websockets",
            "raw",
            6301,
            [PY, str(BENCH / "peers/websockets_server.py"), "--port", "6301"],
        ),
        Peer("picows", "raw", 6201, [PY, str(BENCH / "peers/picows_server.py"), "--port", "6201"]),
        # opt-in: a bare picows Pusher relay (no auth, history or stamp), the chat floor
        Peer(
            "picows-chat",
            "pusher",
            6231,
            [PY, str(BENCH / "peers/picows_chat.py"), "--port", "6231"],
            ready_line="listening on 127.0.0.1:6231",
            only=("chat",),
        ),
        *cluster_peers(soketi_env),
    ]
    return {p.name: p for p in peers}


def cluster_peers(soketi_env: dict) -> list[Peer]:
    """Two Parley nodes on Redis + PostgreSQL against two soketi nodes on its Redis adapter
    (issue 13), and one Parley with one or two worker processes on the same engines. Made
    afresh for every run: each gets its own Redis prefix, cluster secret and database."""
    run_id = secrets.token_hex(4)
    redis = urlsplit(REDIS_URL)
    database = "parley_bench_%s" % run_id
    parley_env = {
        "PARLEY_APP_ID": APP_ID,
        "PARLEY_APP_KEY": APP_KEY,
        "PARLEY_APP_SECRET": APP_SECRET,
        "PARLEY_APP_CLIENT_EVENTS": "true",
        "PARLEY_APP_CLIENT_EVENT_RATE": "0",
        "PARLEY_BROKER": REDIS_URL,
        "PARLEY_CLUSTER_SECRET": secrets.token_hex(32),
        "PARLEY_REDIS_PREFIX": "parley-bench-%s" % run_id,
        "PARLEY_STORE": "postgres",
        "PARLEY_POSTGRES_URL": POSTGRES_URL.rsplit("/", 1)[0] + "/" + database,
    }

    def parley_node(name: str, port: int, workers: int = 1, node_id: str = "") -> Peer:
        env = dict(parley_env)
        if node_id:
            env["PARLEY_NODE_ID"] = node_id
        workers_arg = ["--workers", str(workers)] if workers > 1 else []
        return Peer(
            name,
            "pusher",
            port,
            [*PARLEY_CMD, *workers_arg, "--host", "127.0.0.1", "--port", str(port)],
            env,
            ready_line="listening on 127.0.0.1:%d" % port,
            ready_count=workers,
        )

    soketi_ports = ((6141, 9641, 11141), (6142, 9642, 11142))

    def soketi_node(i: int) -> Peer:
        port, metrics, discovery = soketi_ports[i]
        env = dict(soketi_env)
        env.update(
            {
                "SOKETI_PORT": str(port),
                "SOKETI_METRICS_SERVER_PORT": str(metrics),
                # discovery (node-discover, UDP) on loopback: bound to 127.0.0.1
                # (peers/soketi.json), unicast to both nodes' discovery ports only
                "SOKETI_CLUSTER_PORT": str(discovery),
                "SOKETI_CLUSTER_UNICAST_ADDRESSES": json.dumps(
                    ["127.0.0.1:%d" % d for _, _, d in soketi_ports]
                ),
                "SOKETI_ADAPTER_DRIVER": "redis",
                "SOKETI_ADAPTER_REDIS_PREFIX": "soketi-bench-%s" % run_id,
                "SOKETI_DB_REDIS_HOST": redis.hostname or "127.0.0.1",
                "SOKETI_DB_REDIS_PORT": str(redis.port or 6379),
                "SOKETI_DB_REDIS_DB": (redis.path or "/0").lstrip("/") or "0",
            }
        )
        return Peer(
            "soketi-cluster-n%d" % (i + 1),
            "pusher",
            port,
            [
                "node",
                str(BENCH / "node_modules/@soketi/soketi/bin/server.js"),
                "start",
                "--config=" + str(BENCH / "peers/soketi.json"),
            ],
            env,
            extra_ports=(metrics,),
        )

    def cluster(name: str, nodes: list[Peer], database: str = "") -> Peer:
        return Peer(
            name,
            "pusher",
            nodes[0].port,
            nodes[0].cmd,
            nodes=tuple(nodes),
            cluster=True,
            database=database,
        )

    return [
        cluster(
            "parley-cluster",
            [
                parley_node("parley-cluster-n1", 6041, node_id="bench-n1"),
                parley_node("parley-cluster-n2", 6042, node_id="bench-n2"),
            ],
            database,
        ),
        cluster("soketi-cluster", [soketi_node(0), soketi_node(1)]),
        # opt-in: one Parley process on the same engines, and the same with two workers on
        # its port (SO_REUSEPORT): what a second worker adds to one process
        cluster("parley-redis", [parley_node("parley-redis", 6051)], database),
        cluster("parley-workers2", [parley_node("parley-workers2", 6052, workers=2)], database),
    ]


# --------------------------------------------------------------------------- process control

RUNNING: dict[int, subprocess.Popen] = {}  # pgid -> process


def kill_group(pgid: int, grace: float = 3.0) -> None:
    proc = RUNNING.pop(pgid, None)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        t_end = time.monotonic() + wait
        while time.monotonic() < t_end:
            if proc is not None and proc.poll() is None:
                time.sleep(0.05)
                continue
            try:
                os.killpg(pgid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.05)
    if proc is not None:
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def kill_all() -> None:
    for pgid in list(RUNNING):
        kill_group(pgid, grace=1.0)


def _on_signal(signum, frame):
    kill_all()
    sys.exit(128 + signum)


atexit.register(kill_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def port_free(port: int) -> bool:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """A peer started pinned to SERVER_CORE in its own process group."""

    def __init__(self, peer: Peer, logdir: Path):
        self.peer = peer
        self.logdir = logdir
        self.proc: subprocess.Popen | None = None
        self.tmp: str | None = None
        self.log_path = logdir / ("%s.log" % peer.name)
        self.code = (
            ""  # Parley's start line: which code it runs ("compiled: mypyc…" or "source: …")
        )

    def start(self, timeout: float = 30.0) -> None:
        p = self.peer
        for port in (p.port, *p.extra_ports):
            t_end = time.monotonic() + 10
            while not port_free(port):
                if time.monotonic() > t_end:
                    raise RuntimeError("port %d is busy; another server is running?" % port)
                time.sleep(0.2)
        env = dict(os.environ)
        env.update(p.env)
        if p.name.startswith("parley"):
            self.tmp = tempfile.mkdtemp(prefix="parley-bench-")
            env["PARLEY_DATA_DIR"] = self.tmp
        env["PYTHONUNBUFFERED"] = "1"
        cmd = ["taskset", "-c", SERVER_CORE, *p.cmd]
        self.logf = open(self.log_path, "ab")
        self.logf.write(
            (
                "\n==== %s %s\n" % (_dt.datetime.now().isoformat(timespec="seconds"), " ".join(cmd))
            ).encode()
        )
        self.logf.flush()
        log_start = self.logf.tell()  # the log is appended to: look at this start's lines only
        self.proc = subprocess.Popen(
            cmd,
            cwd=p.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=raise_nofile,
        )
        RUNNING[self.proc.pid] = self.proc
        t_end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "%s exited with %s during start-up; see %s"
                    % (p.name, self.proc.returncode, self.log_path)
                )
            if p.ready_line:
                with open(self.log_path, "rb") as f:
                    f.seek(max(log_start, os.path.getsize(self.log_path) - 65536))
                    if f.read().count(p.ready_line.encode()) >= p.ready_count:
                        # the line is printed by the process itself; also make sure the port answers
                        if port_open(p.port):
                            break
            elif port_open(p.port):
                break
            if time.monotonic() > t_end:
                raise RuntimeError(
                    "%s not ready after %.0f s; see %s" % (p.name, timeout, self.log_path)
                )
            time.sleep(0.1)
        time.sleep(0.3)
        if p.name.startswith("parley"):
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 65536))
                tail = f.read().decode("utf-8", "replace")
            found = re.findall(r"listening on \S+ \((.*)\)$", tail, re.M)
            self.code = found[-1] if found else "unknown"

    @property
    def pgid(self) -> int:
        return self.proc.pid

    @property
    def pgids(self) -> list[int]:
        return [self.proc.pid]

    services: dict = {}  # shared processes to measure apart (loadgen.SERVICES)

    @property
    def codes(self) -> list[str]:
        return [self.code] if self.code else []

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc.pid)
            self.logf.close()
            self.proc = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


DATABASES: set[str] = set()  # fresh PostgreSQL databases of cluster peers not dropped yet

_PG_SCRIPT = """
import asyncio, sys
import asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1], timeout=5)
    try:
        await conn.execute(sys.argv[2])
    finally:
        await conn.close()
asyncio.run(main())
"""


def pg_admin(sql: str) -> None:
    """One statement on the PostgreSQL server (asyncpg: a dependency of Parley's store)."""
    done = subprocess.run(
        [PY, "-c", _PG_SCRIPT, POSTGRES_URL, sql], capture_output=True, timeout=60, check=False
    )
    if done.returncode:
        raise RuntimeError("PostgreSQL %r failed: %s" % (sql, done.stderr.decode()[-400:]))


def drop_databases() -> None:
    """At exit (after a signal too): stop what still runs, then drop what is left."""
    kill_all()
    for name in list(DATABASES):
        try:
            pg_admin('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            print("# could not drop database %s: %s" % (name, e), file=sys.stderr)
        DATABASES.discard(name)


atexit.register(drop_databases)


def _resp(f):
    """One reply of the Redis protocol (RESP2) from the buffered reader ``f``."""
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(f) for _ in range(n)]
    return rest


def redis_forget(prefix: str) -> int:
    """Delete a run's keys (``prefix:*``) from the shared Redis: a stopped Parley cluster
    leaves its nodes' lease set behind, with no expiry. Returns how many were deleted."""
    u = urlsplit(REDIS_URL)
    deleted = 0
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=5) as s:
        f = s.makefile("rb")

        def call(*args: str):
            s.sendall(
                b"*%d\r\n" % len(args)
                + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
            )
            return _resp(f)

        if u.password:
            call("AUTH", *([u.username] if u.username else []), u.password)
        db = (u.path or "/0").lstrip("/") or "0"
        call("SELECT", db)
        cursor = "0"
        while True:
            cursor_b, keys = call("SCAN", cursor, "MATCH", prefix + ":*", "COUNT", "1000")
            if keys:
                deleted += int(call("DEL", *(k.decode() for k in keys)))
            cursor = cursor_b.decode()
            if cursor == "0":
                return deleted


class Cluster:
    """A cluster peer: its nodes started in order, each pinned like any server in its own
    process group, on a fresh PostgreSQL database when it has one; all stopped together."""

    def __init__(self, peer: Peer, logdir: Path):
        self.peer = peer
        self.nodes = [Server(n, logdir) for n in peer.nodes]
        self.log_path = self.nodes[0].log_path
        self.code = ""
        u = urlsplit(REDIS_URL)
        self.services = {"redis": ["redis-server", ":%d" % (u.port or 6379)]}
        if peer.database:
            # PostgreSQL titles each backend "postgres: <user> <database> <client> <state>"
            self.services["postgres"] = [" %s " % peer.database]

    def start(self, timeout: float = 30.0) -> None:
        try:
            if self.peer.database:
                pg_admin('CREATE DATABASE "%s"' % self.peer.database)
                DATABASES.add(self.peer.database)
            for node in self.nodes:
                node.start(timeout)
        except BaseException:
            self.stop()
            raise
        self.code = " | ".join(self.codes)

    @property
    def pgid(self) -> int:
        return self.nodes[0].pgid

    @property
    def pgids(self) -> list[int]:
        return [n.pgid for n in self.nodes if n.proc is not None]

    @property
    def codes(self) -> list[str]:
        return sorted({n.code for n in self.nodes if n.code})

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        prefix = self.peer.nodes[0].env.get("PARLEY_REDIS_PREFIX")
        if prefix:
            try:
                redis_forget(prefix)
            except (OSError, RuntimeError, ValueError) as e:
                print("# could not delete Redis keys %s:*: %s" % (prefix, e), flush=True)
        if self.peer.database in DATABASES:
            try:
                pg_admin('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.peer.database)
                DATABASES.discard(self.peer.database)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                print("# could not drop database %s: %s" % (self.peer.database, e), flush=True)


def make_server(peer: Peer, logdir: Path) -> Server | Cluster:
    return Cluster(peer, logdir) if peer.nodes else Server(peer, logdir)


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    spec: dict
    protos: tuple  # which client protocols it applies to
    metrics: list  # (label, path in result, higher_is_better)
    timeout: float = 120.0
    cluster: bool = False  # for the cluster peers (clients spread over their nodes) only


def scenarios(args) -> list[Scenario]:
    smoke = args.smoke
    d = args.duration or (1.0 if smoke else 10.0)
    wu = 0.3 if smoke else 2.0
    subs = args.subscribers or ([50] if smoke else [1000, 100])
    allp = ("pusher", "socketio", "raw")
    out = []
    for n in subs:
        out.append(
            Scenario(
                "fanout-%d" % n,
                {
                    "scenario": "fanout",
                    "subscribers": n,
                    "warmup": wu,
                    "duration": d,
                    "publish": "ws",
                },
                allp,
                [
                    ("deliveries/s", "deliveries_per_s", True),
                    ("p50 ms", "latency_ms.p50", False),
                    ("p99 ms", "latency_ms.p99", False),
                ],
            )
        )
        if args.http_fanout or smoke:
            out.append(
                Scenario(
                    "fanout-http-%d" % n,
                    {
                        "scenario": "fanout",
                        "subscribers": n,
                        "warmup": wu,
                        "duration": d,
                        "publish": "http",
                        "http_conns": 8,
                    },
                    ("pusher",),
                    [
                        ("deliveries/s", "deliveries_per_s", True),
                        ("p50 ms", "latency_ms.p50", False),
                        ("p99 ms", "latency_ms.p99", False),
                    ],
                )
            )
    rn = 50 if smoke else 1000
    out.append(
        Scenario(
            "rate-%dx10" % rn,
            {
                "scenario": "fanout",
                "subscribers": rn,
                "rate": 10,
                "warmup": 0.3 if smoke else 1.0,
                "duration": d if smoke else max(d, 10.0),
                "publish": "ws",
                "sample_every": 1,
            },
            allp,
            [
                ("p50 ms", "latency_ms.p50", False),
                ("p99 ms", "latency_ms.p99", False),
                ("server cpu", "server_cpu", False),
            ],
        )
    )
    n_idle = args.idle_connections or (200 if smoke else 10000)
    out.append(
        Scenario(
            "idle-%d" % n_idle,
            {
                "scenario": "idle",
                "connections": n_idle,
                "settle": 0.3 if smoke else 1.5,
                "hold": 0.3 if smoke else 2.0,
                "concurrency": 200,
                "local_ips": 1,
            },
            allp,
            [("KiB/conn", "rss_per_conn_kb", False), ("RSS MiB", "rss_after_mb", False)],
            timeout=240,
        )
    )
    n_storm = args.storm_connections or (200 if smoke else 5000)
    out.append(
        Scenario(
            "storm-%d" % n_storm,
            {"scenario": "storm", "connections": n_storm, "concurrency": 100},
            allp,
            [
                ("conn/s", "connections_per_s", True),
                ("p99 ms", "connect_latency_ms.p99", False),
                ("server µs/conn", "server_us_per_conn", False),
            ],
            timeout=180,
        )
    )
    cu = 50 if smoke else 1000
    out.append(
        Scenario(
            "chat-%d" % cu,
            {"scenario": "chat", "users": cu, "warmup": wu, "duration": d, "inflight": 1},
            ("pusher", "socketio"),
            [
                ("msgs/s", "messages_per_s", True),
                ("p50 ms", "latency_ms.p50", False),
                ("p99 ms", "latency_ms.p99", False),
                ("server µs/msg", "server_us_per_msg", False),
            ],
        )
    )
    nch = 10 if smoke else 100
    out.append(
        Scenario(
            "httpapi-%d" % nch,
            {"scenario": "httpapi", "channels": nch, "warmup": wu, "duration": d, "http_conns": 8},
            ("pusher",),
            [
                ("publishes/s", "publishes_per_s", True),
                ("p50 ms", "latency_ms.p50", False),
                ("p99 ms", "latency_ms.p99", False),
            ],
        )
    )
    # Cluster peers (issue 13): clients spread round-robin over the nodes' ports.
    ncl = args.cluster_subscribers or (50 if smoke else 1000)
    out.append(
        Scenario(
            "cluster-fanout-%d" % ncl,
            {
                "scenario": "fanout",
                "subscribers": ncl,
                "warmup": wu,
                "duration": d,
                "publish": "http",  # through the first node's HTTP API
                "http_conns": 8,
            },
            ("pusher",),
            [
                ("deliveries/s", "deliveries_per_s", True),
                ("p50 ms", "latency_ms.p50", False),
                ("p99 ms", "latency_ms.p99", False),
            ],
            cluster=True,
        )
    )
    if args.http_spread:
        # the same with the HTTP publishers spread over the nodes: publishes enter the
        # cluster through every node at once
        spec = dict(out[-1].spec, http_spread=True)
        out.append(
            Scenario(
                "cluster-fanout-spread-%d" % ncl, spec, ("pusher",), out[-1].metrics, cluster=True
            )
        )
    out.append(
        Scenario(
            "cluster-chat-%d" % cu,
            # users 2k and 2k+1 share a channel and are on different nodes: every client
            # event crosses from one node to the other
            {"scenario": "chat", "users": cu, "warmup": wu, "duration": d, "inflight": 1},
            ("pusher",),
            [
                ("msgs/s", "messages_per_s", True),
                ("p50 ms", "latency_ms.p50", False),
                ("p99 ms", "latency_ms.p99", False),
                ("server µs/msg", "server_us_per_msg", False),
            ],
            cluster=True,
        )
    )
    wanted = set(args.scenario.split(","))
    if "all" in wanted:
        return out
    return [
        s
        for s in out
        if s.name.split("-")[0] in wanted
        or s.name in wanted
        or any(s.name.startswith(w + "-") for w in wanted)
    ]


# --------------------------------------------------------------------------- one run


def run_loadgen(peer: Peer, server: Server | Cluster, sc: Scenario) -> dict:
    spec = dict(sc.spec)
    spec.update(
        {
            "proto": peer.proto,
            "host": "127.0.0.1",
            "port": peer.port,
            "ports": peer.ports,
            "key": APP_KEY,
            "secret": APP_SECRET,
            "app_id": APP_ID,
            "server_pgid": server.pgid,
            "server_pgids": server.pgids,
            "services": server.services,
            "connect_timeout": 10.0,
            "timeout": sc.timeout,
        }
    )
    cmd = ["taskset", "-c", LOADGEN_CORE, PY, str(BENCH / "loadgen.py")]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=raise_nofile,
    )
    RUNNING[proc.pid] = proc
    try:
        out, err = proc.communicate(json.dumps(spec).encode(), timeout=sc.timeout + 20)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, grace=1)
        return {"ok": False, "error": "load generator timed out after %.0f s" % (sc.timeout + 20)}
    finally:
        RUNNING.pop(proc.pid, None)
    try:
        res = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {
            "ok": False,
            "error": "load generator printed no result (rc=%s): %s"
            % (proc.returncode, err.decode()[-800:]),
        }
    return res


def problems(res: dict) -> list[str]:
    """Why a run does not count (empty list = fine)."""
    p = []
    if not res.get("ok"):
        p.append(res.get("error", "failed"))
        return p
    r = res.get("result", {})
    if res.get("errors"):
        p.append("errors: %s" % "; ".join("%s x%d" % kv for kv in list(res["errors"].items())[:3]))
    if (r.get("missing_deliveries") or 0) > 0:
        p.append("%d deliveries missing" % r["missing_deliveries"])
    elif (r.get("missing_deliveries") or 0) < 0:
        p.append("%d deliveries more than were sent" % -r["missing_deliveries"])
    if r.get("duplicate_deliveries"):
        p.append("%d messages delivered twice" % r["duplicate_deliveries"])
    if r.get("echoed_to_sender"):
        p.append("%d messages delivered back to their sender" % r["echoed_to_sender"])
    if r.get("failed"):
        p.append("%d connections failed" % r["failed"])
    if r.get("echoed_to_publisher"):
        p.append("%d frames echoed to the publisher" % r["echoed_to_publisher"])
    return p


def dig(d: dict, path: str):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# --------------------------------------------------------------------------- report


def fmt(v) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def summarize(results: dict, scs: list[Scenario], all_peers: list[str], baseline: str) -> str:
    """results[scenario][peer] = list of result dicts (one per repeat). A scenario's columns
    are the peers that ran it; its ratios are baseline/peer, or, when the baseline did not
    run it, the first Parley peer that did (parley-cluster in the cluster scenarios)."""
    lines = []
    for sc in scs:
        per = results.get(sc.name, {})
        if not per:
            continue
        peers = [p for p in all_peers if p in per]
        base = (
            baseline
            if baseline in peers
            else next((p for p in peers if p.startswith("parley")), None)
        )
        if len(peers) < 2:
            base = None  # nothing to compare with
        lines.append("")
        lines.append("## %s" % sc.name)
        hdr = "| metric | " + " | ".join(peers) + " |"
        if base:
            hdr += " " + " | ".join("%s/%s" % (base, p) for p in peers if p != base) + " |"
        lines.append(hdr)
        lines.append("|" + "---|" * (hdr.count("|") - 1))
        for label, path, higher in sc.metrics:
            row = ["| %s%s " % (label, " (higher=better)" if higher else "")]
            vals = {}
            for p in peers:
                runs = per.get(p)
                if runs is None:
                    row.append(" n/a ")
                    continue
                v = [dig(r, path) for r in runs]
                v = [x for x in v if isinstance(x, (int, float))]
                vals[p] = [
                    dig(r, path) if isinstance(dig(r, path), (int, float)) else None for r in runs
                ]
                if not v:
                    row.append(" failed ")
                    continue
                med = statistics.median(v)
                row.append(
                    " %s [%s–%s] " % (fmt(med), fmt(min(v)), fmt(max(v)))
                    if len(v) > 1
                    else " %s " % fmt(med)
                )
            if base:
                for p in peers:
                    if p == base:
                        continue
                    a, b = vals.get(base), vals.get(p)
                    if not a or not b:
                        row.append(" - ")
                        continue
                    ratios = [x / y for x, y in zip(a, b, strict=False) if x is not None and y]
                    if not ratios:
                        row.append(" - ")
                        continue
                    med = statistics.median(ratios)
                    row.append(
                        " %.2f [%.2f–%.2f] " % (med, min(ratios), max(ratios))
                        if len(ratios) > 1
                        else " %.2f " % med
                    )
            lines.append("|".join(row) + "|")
        # saturation hints
        cpu = []
        for p in peers:
            runs = per.get(p) or []
            lc = [r["loadgen_cpu"] for r in runs if isinstance(r.get("loadgen_cpu"), (int, float))]
            scpu = [r["server_cpu"] for r in runs if isinstance(r.get("server_cpu"), (int, float))]
            fc = [r["foreign_cpu"] for r in runs if isinstance(r.get("foreign_cpu"), (int, float))]
            sq = [r["softirq_cpu"] for r in runs if isinstance(r.get("softirq_cpu"), (int, float))]
            svc = []
            for name in ("redis", "postgres"):
                v = [
                    r[name + "_cpu"] for r in runs if isinstance(r.get(name + "_cpu"), (int, float))
                ]
                if v:
                    svc.append("%s %s" % (name, fmt(statistics.median(v))))
            if lc or scpu:
                cpu.append(
                    "%s %s / %s / %s%s%s"
                    % (
                        p,
                        fmt(statistics.median(scpu)) if scpu else "-",
                        fmt(statistics.median(lc)) if lc else "-",
                        fmt(statistics.median(sq)) if sq else "-",
                        " + %s" % ", ".join(svc) if svc else "",
                        " (other %s)" % fmt(max(fc)) if fc and max(fc) > 0.05 else "",
                    )
                )
        if cpu:
            lines.append("")
            lines.append(
                "CPU in cores, median, server (all its processes) / loadgen / irq+softirq of"
                " both cores%s (other = max used by other processes or stolen): "
                % (
                    " + the shared Redis and the PostgreSQL backends of the peer's database"
                    if sc.cluster
                    else ""
                )
                + "; ".join(cpu)
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenario",
        default="all",
        help="comma list of fanout,fanout-http,rate,idle,storm,chat,httpapi,cluster-fanout,"
        "cluster-chat (cluster: both) or all (default; the cluster scenarios run only with the "
        "cluster peers)",
    )
    ap.add_argument("--peers", default="parley,soketi,socketio,websockets,picows")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--subscribers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="fan-out subscriber counts (default 1000,100)",
    )
    ap.add_argument(
        "--duration", type=float, default=None, help="measured seconds per run (default 10)"
    )
    ap.add_argument(
        "--cluster-subscribers",
        type=int,
        default=None,
        help="subscribers of cluster-fanout, spread over the nodes (default 1000)",
    )
    ap.add_argument("--idle-connections", type=int, default=None, help="default 10000")
    ap.add_argument("--storm-connections", type=int, default=None, help="default 5000")
    ap.add_argument(
        "--http-fanout",
        action="store_true",
        help="also run fan-out with HTTP API publishing (Pusher peers only)",
    )
    ap.add_argument(
        "--http-spread",
        action="store_true",
        help="also run cluster-fanout with the HTTP publishers spread over the nodes",
    )
    ap.add_argument(
        "--baseline",
        default="parley",
        help="ratios are baseline/peer (default parley; in a scenario it did not run, the "
        "first Parley peer that did, e.g. parley-cluster)",
    )
    ap.add_argument(
        "--smoke", action="store_true", help="a few seconds, small counts, Parley only (CI)"
    )
    ap.add_argument("--json-out", default=None, help="write all raw results here")
    ap.add_argument(
        "--serve",
        metavar="PEER",
        default=None,
        help="just start PEER pinned like in a run and wait (for profiling by hand)",
    )
    ap.add_argument(
        "--serve-scenario", default="", help="with --serve: the scenario's peer settings"
    )
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        help="re-run a run during which other processes used more than this many cores (default 0.15)",
    )
    ap.add_argument(
        "--retries", type=int, default=1, help="re-runs allowed per noisy run (default 1)"
    )
    ap.add_argument(
        "--base-src",
        default=None,
        metavar="DIR",
        help="the src/ of another Parley tree for the parley-base peer, e.g. a "
        "`git worktree add /tmp/base HEAD~1` -> /tmp/base/src",
    )
    ap.add_argument(
        "--parley-O",
        dest="parley_O",
        action="store_true",
        help="start Parley as `python -O -m parley serve` (asserts off) instead of `parley serve`",
    )
    args = ap.parse_args()
    raise_nofile()
    if args.base_src:
        BASE_SRC.append(str(Path(args.base_src).resolve()))
    if args.parley_O:
        PARLEY_CMD[:] = [PY, "-O", "-m", "parley", "serve"]

    if args.serve:
        compile_parley([args.serve])
        peer = make_peers(args.serve_scenario)[args.serve]
        srv = make_server(peer, BENCH / "results" / "logs")
        (BENCH / "results" / "logs").mkdir(parents=True, exist_ok=True)
        srv.start()
        print(
            "%s ready: proto=%s port(s)=%s pgid(s)=%s (Ctrl-C stops it)"
            % (
                peer.name,
                peer.proto,
                ",".join(map(str, peer.ports)),
                ",".join(map(str, srv.pgids)),
            ),
            flush=True,
        )
        servers = srv.nodes if isinstance(srv, Cluster) else [srv]
        try:
            while all(s.proc.poll() is None for s in servers):
                time.sleep(0.5)
        finally:
            srv.stop()
        return 0

    if args.smoke:
        args.repeats = 1
        if args.peers == ap.get_default("peers"):
            args.peers = "parley"

    wanted_peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    scs = scenarios(args)
    if not scs:
        print("no scenario matches %r" % args.scenario, file=sys.stderr)
        return 2
    logdir = BENCH / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)

    compile_parley(wanted_peers)
    # which peers can start at all
    peers_ok = []
    for name in wanted_peers:
        peer = make_peers("").get(name, None)
        if peer is None:
            print("unknown peer %r" % name, file=sys.stderr)
            return 2
        why = peer.available()
        if why is None:
            srv = make_server(peer, logdir)
            try:
                srv.start()
            except Exception as e:
                why = str(e)
            finally:
                srv.stop()
        if why:
            print("# peer %s unavailable: %s" % (name, why), flush=True)
        else:
            peers_ok.append(name)
    if args.smoke and "parley" in wanted_peers and "parley" not in peers_ok:
        print("# smoke: Parley cannot start; falling back to the raw peers", flush=True)
        for name in ("picows", "websockets"):
            if make_peers("")[name].available() is None and name not in peers_ok:
                peers_ok.append(name)
    if not peers_ok:
        print("no peer could start", file=sys.stderr)
        return 1

    results: dict = {}
    failures: list[str] = []
    codes: dict[str, set[str]] = {}  # peer -> the code Parley said it runs, over all runs
    raw: list = []
    t_start = time.time()
    print(
        "# %s, %s, cores: server %s, loadgen %s; peers: %s; %d repeat(s)"
        % (
            _dt.datetime.now().isoformat(timespec="seconds"),
            platform.node(),
            SERVER_CORE,
            LOADGEN_CORE,
            ",".join(peers_ok),
            args.repeats,
        ),
        flush=True,
    )
    for rep in range(args.repeats):
        for sc in scs:
            order = (
                peers_ok[rep % len(peers_ok) :] + peers_ok[: rep % len(peers_ok)]
            )  # rotate per repeat
            for name in order:
                peer = make_peers(sc.spec["scenario"])[name]
                if (
                    peer.proto not in sc.protos
                    or (peer.only and sc.spec["scenario"] not in peer.only)
                    or peer.cluster != sc.cluster
                ):
                    continue
                t0 = time.time()
                best = None
                for attempt in range(1 + args.retries):
                    srv = make_server(peer, logdir)
                    try:
                        srv.start()
                        res = run_loadgen(peer, srv, sc)
                        if srv.code:
                            res["code"] = srv.code
                            codes.setdefault(name, set()).update(srv.codes)
                    except Exception as e:
                        res = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
                    finally:
                        srv.stop()
                    foreign = (res.get("result") or {}).get("foreign_cpu") or 0.0
                    res["attempts"] = attempt + 1
                    if best is None or (
                        res.get("ok")
                        and (
                            not best.get("ok")
                            or foreign < (best.get("result") or {}).get("foreign_cpu", 0.0)
                        )
                    ):
                        best = res
                    if not res.get("ok") or foreign <= args.max_foreign or attempt == args.retries:
                        break
                    print(
                        "    %s/%s: %.2f core used by other processes during the run; again"
                        % (sc.name, name, foreign),
                        flush=True,
                    )
                    time.sleep(2)
                res = best
                r = res.get("result", {})
                if "rss_after_kb" in r:
                    r["rss_after_mb"] = round(r["rss_after_kb"] / 1024, 1)
                bad = problems(res)
                raw.append(
                    {
                        **res,
                        "repeat": rep,
                        "scenario": sc.name,
                        "peer": name,
                        "spec": sc.spec,
                        "started": _dt.datetime.fromtimestamp(t0).isoformat(timespec="seconds"),
                    }
                )
                key = sc.metrics[0][1]
                print(
                    "[%d/%d] %-14s %-10s %6.1fs  %s %s%s"
                    % (
                        rep + 1,
                        args.repeats,
                        sc.name,
                        name,
                        time.time() - t0,
                        sc.metrics[0][0],
                        fmt(dig(r, key)) if r else "-",
                        ("   !! " + " | ".join(bad)) if bad else "",
                    ),
                    flush=True,
                )
                if bad:
                    failures.append("%s/%s: %s" % (sc.name, name, " | ".join(bad)))
                if res.get("ok"):
                    results.setdefault(sc.name, {}).setdefault(name, []).append(r)
                else:
                    results.setdefault(sc.name, {}).setdefault(name, [])
    for name, seen in sorted(codes.items()):
        # A source edit during a run makes the compiled build stale: later runs fall back to
        # the source, and the peer's figures mix two builds.
        if len(seen) > 1:
            failures.append(
                "%s ran different code across runs (a source file changed during the run?): %s"
                % (name, " | ".join(sorted(seen)))
            )
        source = sorted(c for c in seen if c.startswith("source:"))
        if source and os.environ.get("PARLEY_COMPILED") != "0":
            failures.append(
                "%s ran its source, not the compiled build (%s); PARLEY_COMPILED=0 measures "
                "the source on purpose" % (name, source[0])
            )
    table = summarize(results, scs, peers_ok, args.baseline)
    for name, seen in sorted(codes.items()):
        table += "\n%s ran: %s" % (name, " | ".join(sorted(seen)))
    print(
        "\n# Results (median [min–max] over %d repeat(s)%s)"
        % (args.repeats, "; ratios baseline/peer per repeat, as each table's header says")
    )
    print(table)
    out_path = (
        Path(args.json_out)
        if args.json_out
        else BENCH
        / "results"
        / (
            "%s%s.json"
            % ("smoke-" if args.smoke else "", _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
        )
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps(
            {
                "started": t_start,
                "args": vars(args),
                "peers": peers_ok,
                "runs": raw,
                "table": table,
            },
            indent=1,
        )
    )
    print("\n# raw results: %s" % out_path)
    if failures:
        print("\n# %d run(s) had problems:" % len(failures))
        for f in failures:
            print("#   " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
