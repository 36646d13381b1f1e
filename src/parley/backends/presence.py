"""The presence role: who is a member of each presence channel (`PresenceStore`), and the values
it trades in.

It knows nothing of the wire, the hub or sessions.

Theory of operation. A member is a user; the store keeps one entry per connection of that user
in the channel, keyed by the node the connection is on and its connection id (the socket id),
so a store shared by a cluster counts a user once across every node's connections, and the
entries of a node that died can be dropped together (`remove_node`). The user's info is the one
given with its first entry, kept until its last entry goes (as Pusher does). Members are listed
in the order they became members.

Large channels are read in pages (`members_page`). Each member has a position, a whole number
given when it became a member; positions only grow (also across a channel that emptied and
filled again), so a page that asks for the members after the last position of the previous
page skips no one who stayed and repeats no one, whoever joins or leaves in between: a user
who joined meanwhile comes at the end, one who left is not listed, one who left and came back
comes at the end again.

The member limit is checked by `add` in the same atomic step as the addition, so two nodes
adding two new users to a channel one short of its limit cannot both succeed (a Redis store
does the check and the write in one script). What a cluster still cannot avoid: the entries of
a node that died count until they are removed (its lease runs out, issue 13), so a full
channel may refuse a user for that long.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any


class PresenceFull(Exception):
    """`add` refused a new user: the channel has `limit` members."""

    def __init__(self, channel: str, limit: int) -> None:
        super().__init__(f"Presence channel {channel} is full: {limit} members")
        self.channel = channel
        self.limit = limit


@dataclass(frozen=True, slots=True)
class MembersPage:
    """Members of a channel in the order they became members (user id -> info), and the
    position to read the next page `after`: None when no member follows."""

    members: dict[str, Any]
    next: int | None


@dataclass(frozen=True, slots=True)
class Departure:
    """`user_id` left `channel` of `app_id`: its last entry was removed."""

    app_id: str
    channel: str
    user_id: str


class PresenceStore(abc.ABC):
    """Members of presence channels, per user, from entries per (node id, connection id).

    Channels are keyed by (app_id, channel). Every method may be called concurrently from many
    tasks (of one node, or of several nodes sharing the store); each is atomic. An
    implementation that keeps its data in this process should answer without suspending (the
    node then handles a presence subscribe with no extra turn of the event loop).
    Implementations: `memory.presence.MemoryPresenceStore`, `redis.presence.RedisPresenceStore`.
    One contract suite (tests/contract/test_presence_store.py) runs against each.
    """

    # May its calls begin outside a task (core.eager steps the caller's coroutine itself)?
    # A store whose client needs a task around every call (redis.asyncio) says False.
    eager = True

    @abc.abstractmethod
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
        """Add the entry (node_id, connection_id) for `user_id`; True when the user is new to
        the channel (then `user_info` becomes its info). A user that is new when the channel
        already has `limit` members is refused with `PresenceFull`, and nothing is added.
        Adding an entry that exists changes nothing and returns False."""

    @abc.abstractmethod
    async def remove(
        self, app_id: str, channel: str, user_id: str, *, node_id: str, connection_id: str
    ) -> bool:
        """Remove the entry (node_id, connection_id) of `user_id`; True when it was the user's
        last entry in the channel (the user is no longer a member). Removing an entry that does
        not exist changes nothing and returns False."""

    @abc.abstractmethod
    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        """The channel's members: user id -> user info, in the order they became members
        (empty when none). The caller owns the dict."""

    @abc.abstractmethod
    async def members_page(
        self, app_id: str, channel: str, *, after: int = 0, limit: int | None = None
    ) -> MembersPage:
        """At most `limit` members (all when None) whose position is above `after` (0: from
        the first), in the order they became members; `next` is the position of the last one
        given when more follow."""

    @abc.abstractmethod
    async def count(self, app_id: str, channel: str) -> int:
        """How many members (users, not connections) the channel has."""

    @abc.abstractmethod
    async def remove_node(self, node_id: str) -> list[Departure]:
        """Remove every entry of `node_id` (a node that died, or this one shutting down);
        returns the users that are no longer members of a channel because of it, in no
        particular order."""

    async def heartbeat(self, node_id: str, registered: bool) -> bool:
        """Extend the lease of `node_id` (a node's key: its id and generation), or begin it
        when `registered` is False. False when it has ended meanwhile (the node was paused or
        cut off longer than the lease): a reaper removes, or has removed, its entries, and the
        node must register again under a new key and write its live entries anew. A store of
        one process has no leases: always True."""
        return True

    async def reap(self, node_id: str) -> list[str]:
        """The keys of the nodes whose lease ended, taken out of the leases: their entries are
        for the caller to remove (`remove_node`). One node of a cluster at a time gets any
        (the reaper, elected among the callers); the others get []. A store of one process:
        []."""
        return []

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the store holds (connections); its data is the owner's concern."""
