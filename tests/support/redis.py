"""Redis for the tests: the URL they use (PARLEY_TEST_REDIS_URL, the machine's Redis by
default), why Redis cannot be used (memoized, for `tests.conftest.require`), a key prefix of
the test's own (so tests never see each other's channels or keys, and never flush), and a
redis-server of the test's own on a free port, for tests that stop and start it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.server import TIMEOUT

REDIS_URL = os.environ.get("PARLEY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER_SECRET = "test-cluster-secret-0123456789abcdef-0123456789"

_problem: list[str | None] = []


async def redis_problem() -> str | None:
    if not _problem:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            await client.ping()
            _problem.append(None)
        except Exception as exc:
            _problem.append(f"Redis unreachable at {REDIS_URL}: {exc!r}")
        finally:
            await client.aclose()
    return _problem[0]


def unique_prefix(what: str = "t") -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own on 127.0.0.1 and a free port (never the machine's),
    keeping nothing on disk; `stop` and `start` again on the same port."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra  # more redis-server arguments (--replicaof HOST PORT...)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.process = subprocess.Popen(
            self.command(binary),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_pong(self.port)
        return self

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            *self.extra,
        ]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(TIMEOUT)
        self.process = None


class OwnSentinel(OwnRedis):
    """A Redis Sentinel of the test's own on 127.0.0.1 and a free port, watching the master
    at 127.0.0.1:`master_port` as `service` (quorum 1, down after 1 s); its config file (which
    Sentinel rewrites) is in `directory`."""

    def __init__(self, directory: Path, master_port: int, service: str = "mymaster") -> None:
        super().__init__(directory)
        self.master_port = master_port
        self.service = service

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def command(self, binary: str) -> list[str]:
        conf = self.directory / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 3000\n"
        )
        return [binary, str(conf), "--sentinel"]


def wait_for_pong(port: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)  # not listening yet: bounded by the deadline
    raise RuntimeError(f"redis-server did not start on port {port}")
