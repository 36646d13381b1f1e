"""Channels and fan-out rules of the hub, with recording peers instead of sockets."""

from __future__ import annotations

import json

from parley.core.hub import AppHub
from parley.protocol.channels import channel_type
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


def test_the_channel_is_made_by_its_first_subscriber_and_goes_with_its_last() -> None:
    hub = AppHub(APP)
    a, b = Peer("1"), Peer("2")
    channel = hub.join(a, "news", channel_type("news"))
    assert hub.join(b, "news", channel_type("news")) is channel
    assert list(channel.subscribers) == [a, b]
    assert hub.leave(a, "news") is channel and "news" in hub.channels
    assert hub.leave(a, "news") is None  # not a subscriber (any more)
    assert hub.leave(b, "news") is channel and "news" not in hub.channels


def test_broadcast_same_bytes_to_all_but_the_excluded() -> None:
    hub = AppHub(APP)
    peers = [Peer(str(i)) for i in range(3)]
    for p in peers:
        hub.join(p, "news", channel_type("news"))
    assert hub.broadcast("news", b'{"event":"e"}', exclude=peers[1]) == 2
    assert [len(p.frames) for p in peers] == [1, 0, 1]
    hub.leave(peers[0], "news")
    assert hub.broadcast("news", b'{"event":"e"}') == 2
    assert hub.broadcast("empty", b'{"event":"e"}') == 0


def test_broadcast_writes_to_the_peers_transport_not_through_its_send() -> None:
    """The fan-out skips `Session.send`: one Python call per delivery fewer."""
    hub = AppHub(APP)
    peer = Peer("1")
    peer.transport = RecordingTransport()
    hub.join(peer, "news", channel_type("news"))
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
