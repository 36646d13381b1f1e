"""The node's side of the channel counts: with the memory store nothing is built or told per
subscribe; a store that tracks is told of every change of a local channel's count and reads
the hubs' numbers; the HTTP API's queries and the connection quota answer what the store
says of the cluster."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from parley.backends.counts import ChannelCounts
from parley.core.events import SubscriptionCountChanged
from parley.core.node import ChannelInfo
from parley.core.session import Session
from tests.support.transport import APP, RecordingTransport, connect, make_node, send, started
from tests.support.transport import subscribe as subscribe_to


class ClusterCounts(ChannelCounts):
    """A tracking store whose other nodes hold what the test says."""

    tracks = True

    def __init__(self) -> None:
        super().__init__()
        self.told: list[tuple[str, str, int]] = []  # (app, channel, its local count then)
        self.subscribers: dict[tuple[str, str], int] = {}  # on the other nodes
        self.others: dict[str, int] = {}  # connections on the other nodes

    def changed(self, app_id: str, channel: str) -> None:
        self.told.append((app_id, channel, self.local.subscriptions(app_id, channel)))

    def remote_connections(self, app_id: str) -> int:
        return self.others.get(app_id, 0)

    async def subscriptions(self, app_id: str, channel: str) -> int:
        remote = self.subscribers.get((app_id, channel), 0)
        return self.local.subscriptions(app_id, channel) + remote

    async def occupied_channels(self, app_id: str, prefix: str = "") -> dict[str, int]:
        counts = self.local.occupied_channels(app_id, prefix)
        for (app, name), count in self.subscribers.items():
            if app == app_id and name.startswith(prefix):
                counts[name] = counts.get(name, 0) + count
        return counts

    async def connections(self, app_id: str) -> int:
        return self.local.connections(app_id) + self.others.get(app_id, 0)


def names(pairs: Iterable[tuple[str, str, int]]) -> list[tuple[str, int]]:
    return [(channel, count) for _, channel, count in pairs]


async def test_with_the_memory_store_a_subscribe_builds_no_count_event() -> None:
    node = await started(make_node())
    assert node.counts.tracks is False
    assert SubscriptionCountChanged not in node.events.handlers  # not even built
    session, _ = connect(node)
    subscribe_to(session, "room")
    assert await node.channel_info(node.apps[0], "room") == ChannelInfo(True, 1, 0)
    assert await node.channels(node.apps[0]) == {"room": 1}
    assert await node.counts.connections(APP.id) == 1


async def test_a_tracking_store_is_told_of_every_change_and_reads_the_hubs() -> None:
    counts = ClusterCounts()
    node = await started(make_node(counts=counts))
    one, _ = connect(node)
    two, _ = connect(node)
    subscribe_to(one, "room")
    subscribe_to(two, "room")
    subscribe_to(two, "private-other")
    send(one, "pusher:unsubscribe", {"channel": "room"})
    assert counts.local.occupied_channels(APP.id, "") == {"room": 1, "private-other": 1}
    assert counts.local.occupied_channels(APP.id, "priv") == {"private-other": 1}
    assert counts.local.connections(APP.id) == 2
    assert list(counts.local.app_ids()) == [APP.id]
    two.close(1000, "bye")
    node.close_session(two)
    assert names(counts.told) == [
        ("room", 1),
        ("room", 2),
        ("private-other", 1),
        ("room", 1),
        ("room", 0),
        ("private-other", 0),
    ]
    assert counts.local.occupied_channels(APP.id, "") == {}


async def test_channel_info_and_channels_answer_the_clusters_numbers() -> None:
    counts = ClusterCounts()
    counts.subscribers = {(APP.id, "room"): 2, (APP.id, "presence-far"): 1, ("9", "room"): 5}
    node = await started(make_node(counts=counts))
    session, _ = connect(node)
    subscribe_to(session, "room")
    app = node.apps[0]
    assert await node.channel_info(app, "room") == ChannelInfo(True, 3, 0)
    # occupied on another node only; its members are the presence store's (none here)
    assert await node.channel_info(app, "presence-far") == ChannelInfo(True, 1, 0)
    assert await node.channel_info(app, "nowhere") == ChannelInfo(False, 0, 0)
    listed = await node.channels(app)
    assert listed == {"presence-far": 1, "room": 3} and list(listed) == ["presence-far", "room"]
    assert await node.channels(app, "presence-") == {"presence-far": 1}


async def test_the_connection_quota_adds_the_other_nodes_connections() -> None:
    counts = ClusterCounts()
    counts.others = {APP.id: 1}
    node = await started(make_node(app=replace(APP, max_connections=2), counts=counts))
    admitted = RecordingTransport()
    Session(node, "/app/unit-key", "protocol=7", {}).connected(admitted)
    assert admitted.events == ["pusher:connection_established"]
    refused = RecordingTransport()
    Session(node, "/app/unit-key", "protocol=7", {}).connected(refused)
    assert refused.written[0]["data"]["code"] == 4004 and refused.closes[0][0] == 4004
    counts.others = {}  # the other node's connection left
    again = RecordingTransport()
    Session(node, "/app/unit-key", "protocol=7", {}).connected(again)
    assert again.events == ["pusher:connection_established"]
