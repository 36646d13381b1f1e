"""Local state of one app on this node: channels, their subscribers, presence members,
signed-in users and watchlists; and fan-out of already-encoded bytes.

The hub never encodes per subscriber: `broadcast` writes the same bytes to every session.
It must not know the wire format beyond calling `frames` for the pusher_internal events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from parley.protocol import frames
from parley.protocol.channels import ChannelType
from parley.protocol.connection import Member
from parley.settings import AppConfig


class Peer(Protocol):
    """What the hub needs of a session. `broadcast` writes to its `transport`
    (core.transport) directly, one Python call per delivery fewer than through `send`; a
    subscribed session always has one (it writes nothing once the session is closing).
    Everything else goes through `send`."""

    socket_id: str
    watchlist: tuple[str, ...]
    transport: Any

    @property
    def user_id(self) -> str | None: ...

    def send(self, data: bytes) -> None: ...


@dataclass(slots=True)
class Channel:
    name: str
    type: ChannelType
    # Peers in join order; the value is None, or a list that holds (offset, frame) pairs for a
    # peer whose resume is being replayed, so no live event overtakes the replay.
    subscribers: dict[Any, list[tuple[int, bytes]] | None] = field(default_factory=dict)
    # presence: user_id -> [user_info, number of this user's connections here]
    members: dict[str, list[Any]] = field(default_factory=dict)
    count_pending: bool = False
    # The ordering of its stored publications here (core.delivery): the last offset delivered
    # and its epoch ("" before the first), and the gap being filled from history, if any.
    last_offset: int = 0
    epoch: str = ""
    gap: Any = None  # a core.delivery.Gap


@dataclass(slots=True)
class CachedEvent:
    frame: bytes
    event: str
    data: Any
    expires_at: float


class PresenceFull(Exception):
    pass


class AppHub:
    """Channels and users of one app on this node."""

    def __init__(self, app: AppConfig) -> None:
        self.app = app
        self.channels: dict[str, Channel] = {}
        self.sessions: dict[str, Any] = {}  # socket_id -> Peer
        self.users: dict[str, dict[Any, None]] = {}  # signed-in user id -> Peers
        self.watchers: dict[str, dict[Any, None]] = {}  # watched user id -> Peers watching
        self.cache: dict[str, CachedEvent] = {}
        self.messages_in = 0  # frames received from clients (parley_messages_in_total)
        self.messages_out = 0  # frames delivered to clients (parley_messages_out_total)

    # -- channels ----------------------------------------------------------------------------

    def join(self, peer: Peer, name: str, ctype: ChannelType, member: Member | None) -> Channel:
        """Add a subscriber; presence rules apply. Raises PresenceFull at the member limit."""
        channel = self.channels.get(name)
        if channel is None:
            channel = Channel(name, ctype)
        if member is not None:
            entry = channel.members.get(member.user_id)
            if entry is None:
                if len(channel.members) >= self.app.max_presence_members:
                    raise PresenceFull(
                        f"Presence channel {name} is full: {self.app.max_presence_members} members"
                    )
                added = frames.member_added(name, member.user_id, member.user_info)
                for other in channel.subscribers:
                    other.send(added)
                channel.members[member.user_id] = [member.user_info, 1]
            else:
                entry[1] += 1
        channel.subscribers[peer] = None
        self.channels[name] = channel
        return channel

    def leave(self, peer: Peer, name: str, member: Member | None) -> Channel | None:
        channel = self.channels.get(name)
        if channel is None or peer not in channel.subscribers:
            return None
        del channel.subscribers[peer]
        if member is not None:
            entry = channel.members.get(member.user_id)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del channel.members[member.user_id]
                    removed = frames.member_removed(name, member.user_id)
                    for other in channel.subscribers:
                        other.send(removed)
        if not channel.subscribers:
            del self.channels[name]
        return channel

    @staticmethod
    def presence_data(channel: Channel) -> dict[str, Any]:
        ids = list(channel.members)
        return {
            "ids": ids,
            "hash": {uid: entry[0] for uid, entry in channel.members.items()},
            "count": len(ids),
        }

    def broadcast(self, name: str, data: bytes, exclude: Any = None, offset: int = 0) -> int:
        """Write `data` to every local subscriber of `name` but `exclude`; return the count.

        Peers never leave a channel synchronously inside a write (a slow consumer's close is
        scheduled), so the subscriber dict is iterated without a copy.
        """
        channel = self.channels.get(name)
        if channel is None:
            return 0
        return self.broadcast_to(channel, data, exclude, offset)

    @staticmethod
    def broadcast_to(channel: Channel, data: bytes, exclude: Any = None, offset: int = 0) -> int:
        """`broadcast` to a channel already looked up."""
        subscribers = channel.subscribers
        sent = 0
        for peer, held in subscribers.items():
            if peer is exclude:
                continue
            if held is None:
                peer.transport.write(data)
            else:
                held.append((offset, data))
            sent += 1
        return sent

    # -- users -------------------------------------------------------------------------------

    def sign_in(self, peer: Peer) -> bool:
        """Register a signed-in connection; True when the user just came online."""
        assert peer.user_id is not None
        peers = self.users.setdefault(peer.user_id, {})
        first = not peers
        peers[peer] = None
        for watched in peer.watchlist:
            self.watchers.setdefault(watched, {})[peer] = None
        return first

    def sign_out(self, peer: Peer) -> bool:
        """Drop a signed-in connection; True when the user just went offline."""
        if peer.user_id is None:
            return False
        for watched in peer.watchlist:
            watching = self.watchers.get(watched)
            if watching is not None:
                watching.pop(peer, None)
                if not watching:
                    del self.watchers[watched]
        peers = self.users.get(peer.user_id)
        if peers is None or peer not in peers:
            return False
        del peers[peer]
        if not peers:
            del self.users[peer.user_id]
            return True
        return False

    def notify_watchers(self, user_id: str, online: bool) -> None:
        watching = self.watchers.get(user_id)
        if not watching:
            return
        data = (
            frames.watchlist_events([user_id], [])
            if online
            else frames.watchlist_events([], [user_id])
        )
        for peer in list(watching):
            peer.send(data)

    def send_to_user(self, user_id: str, data: bytes, exclude: Any = None) -> int:
        peers = self.users.get(user_id)
        if not peers:
            return 0
        sent = 0
        for peer in list(peers):
            if peer is not exclude:
                peer.send(data)
                sent += 1
        return sent

    def subscription_count(self, name: str) -> int:
        channel = self.channels.get(name)
        return len(channel.subscribers) if channel else 0

    def user_count(self, name: str) -> int:
        channel = self.channels.get(name)
        return len(channel.members) if channel else 0

    def is_presence(self, name: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and channel.type.is_presence
