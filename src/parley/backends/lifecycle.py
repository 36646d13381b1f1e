"""What every store of accounts and records shares, whatever its technology: it answers
between `start` and `close` (a call outside raises RuntimeError naming the store), and it
reads time from a `clock` it is given (Unix seconds), in milliseconds.

Stores of users and grants (and the later record stores) extend `StoreLifecycle` through
their role's interface; the history and presence stores, with lifecycles of their own, do
not. A durable store's database handle is opened, migrated and closed by its owner, never by
the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar


class StoreLifecycle:
    """Start, close, the running check and the clock of one store."""

    what: ClassVar[str] = "store"  # as errors name it: "user store", "grant store"

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._running = False

    async def start(self) -> None:
        """Begin answering, then do `started`'s work; a failure there leaves it stopped."""
        self._running = True
        try:
            await self.started()
        except BaseException:
            self._running = False
            raise

    async def started(self) -> None:
        """Work done once running (a first sweep); nothing by default."""

    async def close(self) -> None:
        """Stop answering: calls afterwards raise RuntimeError. The database handle, if any,
        stays open: its owner closes it."""
        self._running = False

    def check_running(self) -> None:
        if not self._running:
            raise RuntimeError(f"{self.what} is not running")

    def now_ms(self) -> int:
        return int(self._clock() * 1000)
