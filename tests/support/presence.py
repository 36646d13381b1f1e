"""A presence store that really suspends, as one across a network does (Redis, issue 13), for
the tests of what the node does while a presence step waits: every call yields to the event
loop, then waits until the test opens the gate."""

from __future__ import annotations

import asyncio
from typing import Any

from parley.backends.memory.presence import MemoryPresenceStore
from parley.backends.presence import Departure, MembersPage


class GatedPresenceStore(MemoryPresenceStore):
    """`MemoryPresenceStore` behind a gate: calls wait while it is shut (`shut`, the start),
    and go through, each after one turn of the loop, once it is open (`open`). `fail` makes
    every call raise ConnectionError once through the gate."""

    def __init__(self, *, open_: bool = False) -> None:
        super().__init__()
        self._gate = asyncio.Event()
        if open_:
            self._gate.set()
        self.fail = False
        self.failure: Exception = ConnectionError("the presence store is unreachable")
        self.calls: list[str] = []

    def open(self) -> None:
        self._gate.set()

    def shut(self) -> None:
        self._gate.clear()

    async def _through(self, call: str) -> None:
        self.calls.append(call)
        await asyncio.sleep(0)  # suspends even when the gate is open
        await self._gate.wait()
        if self.fail:
            raise self.failure

    async def add(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        user_info: Any,
        *,
        node_id: str,
        connection_id: str,
        limit: int,
    ) -> bool:
        await self._through("add")
        return await super().add(
            app_id,
            channel,
            user_id,
            user_info,
            node_id=node_id,
            connection_id=connection_id,
            limit=limit,
        )

    async def remove(
        self, app_id: str, channel: str, user_id: str, *, node_id: str, connection_id: str
    ) -> bool:
        await self._through("remove")
        return await super().remove(
            app_id, channel, user_id, node_id=node_id, connection_id=connection_id
        )

    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        await self._through("members")
        return await super().members(app_id, channel)

    async def members_page(
        self, app_id: str, channel: str, *, after: int = 0, limit: int | None = None
    ) -> MembersPage:
        await self._through("members_page")
        return await super().members_page(app_id, channel, after=after, limit=limit)

    async def count(self, app_id: str, channel: str) -> int:
        await self._through("count")
        return await super().count(app_id, channel)

    async def remove_node(self, node_id: str) -> list[Departure]:
        await self._through("remove_node")
        return await super().remove_node(node_id)


async def settle() -> None:
    """Wait until every other task of the loop is done, and the callbacks they scheduled on
    finishing have run (which may start more tasks: waited for too)."""
    quiet = 0
    while quiet < 3:  # callbacks scheduling callbacks: none in Parley goes deeper than that
        await asyncio.sleep(0)  # runs every callback scheduled before it
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            quiet = 0
            await asyncio.wait(others)
        else:
            quiet += 1
