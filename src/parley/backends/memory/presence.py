"""`MemoryPresenceStore`: presence members in this process's memory, for one node (and the
tests' two-node cases, which share one instance). Nothing survives the process.

Every method answers without suspending: the node's presence subscribe then completes in the
same turn of the event loop, as it did before the store existed.

Positions (`members_page`) come from one counter for the whole store, so they only grow. A
channel's members are a dict in the order they became members, which is also their positions'
order: a page skips the members up to its `after` (a walk of the dict: a page of a channel of
10,000 costs well under a millisecond).
"""

from __future__ import annotations

import itertools
from typing import Any

from parley.backends.presence import Departure, MembersPage, PresenceFull, PresenceStore

Entry = tuple[str, str]  # (node id, connection id)


class _Member:
    __slots__ = ("entries", "info", "position")

    def __init__(self, info: Any, position: int) -> None:
        self.info = info
        self.position = position
        self.entries: set[Entry] = set()


class MemoryPresenceStore(PresenceStore):
    def __init__(self) -> None:
        # (app id, channel) -> user id -> member, in the order users became members
        self._channels: dict[tuple[str, str], dict[str, _Member]] = {}
        # node id -> (app id, channel, connection id) -> user id: what remove_node drops
        self._nodes: dict[str, dict[tuple[str, str, str], str]] = {}
        self._positions = itertools.count(1)  # a member's position: the order it came in

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
        members = self._channels.get((app_id, channel))
        member = members.get(user_id) if members is not None else None
        entry = (node_id, connection_id)
        if member is not None:
            if entry in member.entries:
                return False
            member.entries.add(entry)
            self._nodes.setdefault(node_id, {})[(app_id, channel, connection_id)] = user_id
            return False
        if members is None:
            members = self._channels[(app_id, channel)] = {}
        if len(members) >= limit:
            if not members:
                del self._channels[(app_id, channel)]
            raise PresenceFull(channel, limit)
        member = members[user_id] = _Member(user_info, next(self._positions))
        member.entries.add(entry)
        self._nodes.setdefault(node_id, {})[(app_id, channel, connection_id)] = user_id
        return True

    async def remove(
        self, app_id: str, channel: str, user_id: str, *, node_id: str, connection_id: str
    ) -> bool:
        return self._remove(app_id, channel, user_id, node_id, connection_id, forget_node=True)

    def _remove(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        node_id: str,
        connection_id: str,
        forget_node: bool,
    ) -> bool:
        members = self._channels.get((app_id, channel))
        member = members.get(user_id) if members is not None else None
        entry = (node_id, connection_id)
        if member is None or entry not in member.entries:
            return False
        assert members is not None
        member.entries.discard(entry)
        if forget_node:
            entries = self._nodes[node_id]
            del entries[(app_id, channel, connection_id)]
            if not entries:
                del self._nodes[node_id]
        if member.entries:
            return False
        del members[user_id]
        if not members:
            del self._channels[(app_id, channel)]
        return True

    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        members = self._channels.get((app_id, channel))
        if members is None:
            return {}
        return {user_id: member.info for user_id, member in members.items()}

    async def members_page(
        self, app_id: str, channel: str, *, after: int = 0, limit: int | None = None
    ) -> MembersPage:
        members = self._channels.get((app_id, channel))
        page: dict[str, Any] = {}
        if members is None:
            return MembersPage(page, None)
        last = 0
        for user_id, member in members.items():
            if member.position <= after:
                continue
            if limit is not None and len(page) >= limit:
                return MembersPage(page, last)
            page[user_id] = member.info
            last = member.position
        return MembersPage(page, None)

    async def count(self, app_id: str, channel: str) -> int:
        return len(self._channels.get((app_id, channel), ()))

    async def remove_node(self, node_id: str) -> list[Departure]:
        gone: list[Departure] = []
        for (app_id, channel, connection_id), user_id in self._nodes.pop(node_id, {}).items():
            if self._remove(app_id, channel, user_id, node_id, connection_id, forget_node=False):
                gone.append(Departure(app_id, channel, user_id))
        return gone

    async def close(self) -> None:
        pass
