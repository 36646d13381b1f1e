"""Socket ids (Pusher's shape: two integers below 10^10 joined by a dot) and node ids, from the
OS's CSPRNG."""

from __future__ import annotations

import os


class _Entropy:
    """Bytes of the OS's CSPRNG, fetched 4 KiB at a time: one system call per ~400 socket
    ids instead of one each (a connection storm makes thousands a second)."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.pool):
            self.pool, self.at = os.urandom(4096), 0
        self.at += n
        return self.pool[self.at - n : self.at]


_ENTROPY = _Entropy()


def new_socket_id() -> str:
    """Two CSPRNG integers below 10^10 joined by a dot."""
    raw = int.from_bytes(_ENTROPY.take(10), "big")
    return f"{(raw >> 40) % 10**10}.{(raw & (2**40 - 1)) % 10**10}"


def new_node_id() -> str:
    """A node's id for this run: 16 hex digits (names its entries in shared stores)."""
    return _ENTROPY.take(8).hex()
