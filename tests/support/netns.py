"""A network namespace of the test's own, for a node that can be cut off from Redis while it
keeps its clients: two veth pairs from the root namespace, one that carries Redis alone and one
for everything else (clients, PostgreSQL through `Forwarder`). `cut` takes the Redis link down
(packets are dropped, nothing is reset, as a partition does) and `heal` brings it back.

Addresses are the test's own (10.231.N.x, N picked per namespace); nothing listens beyond
them and the machine's loopback.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass


def netns_problem() -> str | None:
    """Why this machine cannot make namespaces here, or None."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Namespace:
    """`name`, reached from the root namespace at `main_ns` (clients, PostgreSQL: the root
    side is `main_root`) and at `redis_ns` (Redis: the root side is `redis_root`)."""

    name: str
    redis_root: str
    redis_ns: str
    main_root: str
    main_ns: str
    _links: tuple[str, str]

    @classmethod
    def make(cls) -> Namespace:
        tag = secrets.token_hex(3)
        subnet = 16 + secrets.randbelow(200)  # 10.231.{subnet,subnet+1}.0/24
        name = f"parley-{tag}"
        redis_link, main_link = f"pr{tag}", f"pm{tag}"
        made = cls(
            name,
            f"10.231.{subnet}.1",
            f"10.231.{subnet}.2",
            f"10.232.{subnet}.1",
            f"10.232.{subnet}.2",
            (redis_link, main_link),
        )
        ip("netns", "add", name)
        try:
            made._pair(redis_link, made.redis_root, made.redis_ns)
            made._pair(main_link, made.main_root, made.main_ns)
            ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        except Exception:
            made.remove()
            raise
        return made

    def _pair(self, link: str, root: str, inside: str) -> None:
        ip("link", "add", f"{link}a", "type", "veth", "peer", "name", f"{link}b")
        ip("link", "set", f"{link}b", "netns", self.name)
        ip("addr", "add", f"{root}/24", "dev", f"{link}a")
        ip("link", "set", f"{link}a", "up")
        ip("netns", "exec", self.name, "ip", "addr", "add", f"{inside}/24", "dev", f"{link}b")
        ip("netns", "exec", self.name, "ip", "link", "set", f"{link}b", "up")

    def wrap(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """The Redis link goes down: what the node sends there is dropped."""
        ip("link", "set", f"{self._links[0]}a", "down")

    def heal(self) -> None:
        ip("link", "set", f"{self._links[0]}a", "up")

    def remove(self) -> None:
        for link in self._links:
            subprocess.run(["ip", "link", "del", f"{link}a"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


class Forwarder:
    """A TCP forwarder from (`host`, a free port) to `target`, in threads: how a node in a
    namespace reaches a service that listens on the root namespace's loopback."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.host, self.port = host, self.listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for conn in self._open:
            try:
                conn.close()
            except OSError:
                pass


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for conn in (source, sink):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
