"""Presence and fan-out rules of the hub, with recording peers instead of sockets."""

from __future__ import annotations

import json

import pytest

from parley.core.hub import AppHub, PresenceFull
from parley.protocol.channels import channel_type
from parley.protocol.connection import Member
from parley.settings import AppConfig
from tests.support.transport import RecordingTransport


class Peer:
    def __init__(
        self, socket_id: str, user_id: str | None = None, watchlist: tuple[str, ...] = ()
    ) -> None:
        self.socket_id, self.user_id, self.watchlist = socket_id, user_id, watchlist
        self.frames: list[dict] = []  # type: ignore[type-arg]
        self.transport = self  # broadcast writes to a session's transport, not through send

    def send(self, data: bytes) -> None:
        self.frames.append(json.loads(data))

    write = send

    def events(self) -> list[str]:
        return [f["event"] for f in self.frames]


APP = AppConfig(id="1", key="k", secret="s", max_presence_members=2)
PRESENCE = channel_type("presence-room")


def test_member_events_once_per_user_and_never_to_the_originator() -> None:
    hub = AppHub(APP)
    watcher, a1, a2 = Peer("0.0"), Peer("1.1"), Peer("1.2")
    hub.join(watcher, "presence-room", PRESENCE, Member("w", None))
    hub.join(a1, "presence-room", PRESENCE, Member("a", {"n": 1}))
    hub.join(a2, "presence-room", PRESENCE, Member("a", {"n": 1}))
    assert watcher.events() == ["pusher_internal:member_added"]
    assert json.loads(watcher.frames[0]["data"]) == {"user_id": "a", "user_info": {"n": 1}}
    assert a1.events() == [] and a2.events() == []
    channel = hub.channels["presence-room"]
    assert hub.presence_data(channel) == {
        "ids": ["w", "a"],
        "hash": {"w": None, "a": {"n": 1}},
        "count": 2,
    }
    hub.leave(a1, "presence-room", Member("a", None))
    assert watcher.events() == ["pusher_internal:member_added"]
    hub.leave(a2, "presence-room", Member("a", None))
    assert watcher.events()[-1] == "pusher_internal:member_removed"
    assert hub.user_count("presence-room") == 1


def test_presence_member_limit_counts_users_not_connections() -> None:
    hub = AppHub(APP)
    hub.join(Peer("1"), "presence-room", PRESENCE, Member("a", None))
    hub.join(Peer("2"), "presence-room", PRESENCE, Member("b", None))
    hub.join(Peer("3"), "presence-room", PRESENCE, Member("a", None))  # same user: fine
    with pytest.raises(PresenceFull):
        hub.join(Peer("4"), "presence-room", PRESENCE, Member("c", None))


def test_broadcast_same_bytes_to_all_but_the_excluded() -> None:
    hub = AppHub(APP)
    peers = [Peer(str(i)) for i in range(3)]
    for p in peers:
        hub.join(p, "news", channel_type("news"), None)
    assert hub.broadcast("news", b'{"event":"e"}', exclude=peers[1]) == 2
    assert [len(p.frames) for p in peers] == [1, 0, 1]
    hub.leave(peers[0], "news", None)
    assert hub.broadcast("news", b'{"event":"e"}') == 2
    assert hub.broadcast("empty", b'{"event":"e"}') == 0


def test_broadcast_writes_to_the_peers_transport_not_through_its_send() -> None:
    """The fan-out skips `Session.send`: one Python call per delivery fewer."""
    hub = AppHub(APP)
    peer = Peer("1")
    peer.transport = RecordingTransport()
    hub.join(peer, "news", channel_type("news"), None)
    hub.broadcast("news", b'{"event":"e"}')
    assert peer.transport.calls == [("write", b'{"event":"e"}')] and peer.frames == []


def test_online_offline_follow_the_first_and_last_connection() -> None:
    hub = AppHub(APP)
    watcher = Peer("w", "w", watchlist=("u",))
    hub.sign_in(watcher)
    u1, u2 = Peer("1", "u"), Peer("2", "u")
    assert hub.sign_in(u1) is True
    assert hub.sign_in(u2) is False
    assert hub.sign_out(u1) is False
    assert hub.sign_out(u2) is True
    assert hub.send_to_user("u", b"{}") == 0
