"""Local state of one app on this node: channels and their subscribers, signed-in users and
watchlists, the cache channels' last events; and fan-out of already-encoded bytes.

The hub never encodes per subscriber: `broadcast` writes the same bytes to every session. It
writes no frame of its own: the frames that follow from its changes (member_added,
subscription_count, watchlist events...) are `core.pusher_frames`' job. Presence members are
the presence store's (`backends.presence`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from parley.protocol.channels import ChannelType
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

    def join(self, peer: Peer, name: str, ctype: ChannelType) -> Channel:
        """Add a subscriber (the channel is made by its first)."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name, ctype)
        channel.subscribers[peer] = None
        return channel

    def leave(self, peer: Peer, name: str) -> Channel | None:
        """Remove a subscriber (the channel goes with its last); None when it was none."""
        channel = self.channels.get(name)
        if channel is None or peer not in channel.subscribers:
            return None
        del channel.subscribers[peer]
        if not channel.subscribers:
            del self.channels[name]
        return channel

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

    def is_presence(self, name: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and channel.type.is_presence
