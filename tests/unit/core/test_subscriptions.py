"""Subscribing and leaving through the node, presence included: the frames each connection is
written, in order, the domain events and the presence store's state; with the memory store
(every step finished within the message that asked for it) and with a store that really
suspends (later messages of the connection wait behind the step)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import pytest

from parley.backends.memory.broker import MemoryBroker
from parley.backends.presence import PresenceStore
from parley.core.events import (
    CacheMiss,
    ChannelOccupied,
    ChannelVacated,
    ClientEventSent,
    MemberAdded,
    MemberRemoved,
    SubscriptionCountChanged,
    UserOffline,
    UserOnline,
)
from parley.core.node import ChannelInfo, Node
from parley.core.session import Session
from parley.errors import StoreUnavailable
from parley.protocol.codes import CloseCode
from parley.publication import Publisher
from tests.support.presence import GatedPresenceStore, settle
from tests.support.pusher_raw import channel_auth, presence_data, user_auth
from tests.support.transport import APP, RecordingTransport, connect, make_node, send, started

ROOM = "presence-room"
COUNT = "pusher_internal:subscription_count"
EVENT_TYPES = (
    ChannelOccupied,
    ChannelVacated,
    SubscriptionCountChanged,
    MemberAdded,
    MemberRemoved,
    CacheMiss,
    UserOnline,
    UserOffline,
)


class Wire:
    """Every frame written to any of the test's connections, in the order written."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []

    def of(self, who: str) -> list[str]:
        return [frame["event"] for name, frame in self.log if name == who]


class LoggedTransport(RecordingTransport):
    def __init__(self, wire: Wire, who: str) -> None:
        super().__init__()
        self.wire, self.who = wire, who

    def write(self, data: bytes) -> None:
        super().write(data)
        self.wire.log.append((self.who, json.loads(data)))


@dataclass
class Client:
    session: Session
    transport: LoggedTransport
    node: Node

    @property
    def socket_id(self) -> str:
        return self.session.socket_id

    def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event, "data": data if data is not None else {}}
        if channel is not None:
            message["channel"] = channel
        assert self.session.activity()
        self.session.receive(json.dumps(message).encode())

    def join(self, channel: str, user_id: str, info: Any = None) -> None:
        """pusher:subscribe to a presence channel as `user_id`, signed."""
        channel_data = presence_data(user_id, info)
        auth = channel_auth(APP.key, APP.secret, self.socket_id, channel, channel_data)
        self.send(
            "pusher:subscribe", {"channel": channel, "auth": auth, "channel_data": channel_data}
        )

    def subscribe(self, channel: str) -> None:
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith("private-"):
            data["auth"] = channel_auth(APP.key, APP.secret, self.socket_id, channel)
        self.send("pusher:subscribe", data)

    def frames(self, event: str) -> list[dict[str, Any]]:
        return [
            f for name, f in self.transport.wire.log if name == self.who and f["event"] == event
        ]

    @property
    def who(self) -> str:
        return self.transport.who


class World:
    """A node (its app as given) and the connections of a test, all writing to one Wire."""

    def __init__(self, presence: PresenceStore | None = None, **app: Any) -> None:
        self.node = make_node(app=replace(APP, **app), presence=presence)
        self.wire = Wire()
        self.events: list[object] = []
        for kind in EVENT_TYPES:
            self.node.events.subscribe(kind, self.events.append)

    def connect(self, who: str) -> Client:
        session = Session(self.node, "/app/" + APP.key, "protocol=7", {})
        transport = LoggedTransport(self.wire, who)
        session.connected(transport)
        return Client(session, transport, self.node)


async def members_of(world: World, channel: str = ROOM) -> dict[str, Any]:
    return await world.node.presence.members(APP.id, channel)


def member_data(frame: dict[str, Any]) -> dict[str, Any]:
    return json.loads(frame["data"])  # type: ignore[no-any-return]


# -- with the memory store: each step is over when the message that asked for it is handled --


async def test_member_added_reaches_the_others_before_the_joiner_is_answered() -> None:
    world = World()
    alice, bob = world.connect("alice"), world.connect("bob")
    alice.join(ROOM, "alice", {"name": "Alice"})
    bob.join(ROOM, "bob", {"name": "Bob"})  # answered within receive: nothing awaited
    (to_alice, added), (to_bob, answer) = world.wire.log[-2:]
    assert (to_alice, added["event"], added["channel"]) == (
        "alice",
        "pusher_internal:member_added",
        ROOM,
    )
    assert member_data(added) == {"user_id": "bob", "user_info": {"name": "Bob"}}
    assert (to_bob, answer["event"]) == ("bob", "pusher_internal:subscription_succeeded")
    assert member_data(answer) == {
        "presence": {
            "ids": ["alice", "bob"],
            "hash": {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}},
            "count": 2,
        }
    }
    assert alice.frames("pusher_internal:member_added") != []
    assert bob.frames("pusher_internal:member_added") == []  # not told of its own arrival


async def test_a_user_is_added_with_its_first_connection_and_removed_with_its_last() -> None:
    world = World()
    watcher, first, second = world.connect("w"), world.connect("a1"), world.connect("a2")
    watcher.join(ROOM, "w")
    first.join(ROOM, "a", {"n": 1})
    second.join(ROOM, "a", {"n": 2})
    assert world.wire.of("w").count("pusher_internal:member_added") == 1
    second_answer = member_data(second.frames("pusher_internal:subscription_succeeded")[0])
    assert second_answer["presence"] == {
        "ids": ["w", "a"],
        "hash": {"w": None, "a": {"n": 1}},  # the first connection's info
        "count": 2,
    }
    first.send("pusher:unsubscribe", {"channel": ROOM})
    assert "pusher_internal:member_removed" not in world.wire.of("w")
    second.session.disconnected()
    assert world.wire.of("w")[-1] == "pusher_internal:member_removed"
    assert member_data(watcher.frames("pusher_internal:member_removed")[0]) == {"user_id": "a"}
    assert await members_of(world) == {"w": None}
    assert await world.node.channel_info(world.node.apps[0], ROOM) == ChannelInfo(True, 1, 1)
    assert await world.node.presence_users(world.node.apps[0], ROOM) == ["w"]


async def test_a_full_channel_refuses_a_new_user_but_not_a_member_s_other_connection() -> None:
    world = World(max_presence_members=2)
    a, b, a2, c = (world.connect(n) for n in ("a", "b", "a2", "c"))
    a.join(ROOM, "a")
    b.join(ROOM, "b")
    a2.join(ROOM, "a")  # the same user: admitted
    c.join(ROOM, "c")
    assert world.wire.of("a2")[-1] == "pusher_internal:subscription_succeeded"
    assert c.frames("pusher:error")[-1]["data"] == {
        "code": None,
        "message": f"Presence channel {ROOM} is full: 2 members",
    }
    assert world.wire.of("a").count("pusher_internal:member_added") == 1  # b's; none for c
    c.send("client-x", {}, ROOM)  # not subscribed: the refusal forgot the subscription
    assert "not subscribed" in c.frames("pusher:error")[-1]["data"]["message"]
    b.session.disconnected()
    c.join(ROOM, "c")  # room again, and the connection may ask again
    assert world.wire.of("c")[-1] == "pusher_internal:subscription_succeeded"
    assert list(await members_of(world)) == ["a", "c"]


async def test_the_events_of_a_subscribe_and_a_leave_in_order() -> None:
    world = World()
    alice = world.connect("alice")
    alice.join("presence-cache-room", "alice", {"n": 1})
    alice.subscribe("news")
    alice.send("pusher:unsubscribe", {"channel": "presence-cache-room"})
    alice.session.disconnected()
    app, sid = APP.id, alice.socket_id
    assert world.events == [
        ChannelOccupied(app, "presence-cache-room"),
        MemberAdded(app, "presence-cache-room", "alice", {"n": 1}, sid),
        CacheMiss(app, "presence-cache-room", sid),
        SubscriptionCountChanged(app, "presence-cache-room", 1),
        ChannelOccupied(app, "news"),
        SubscriptionCountChanged(app, "news", 1),
        ChannelVacated(app, "presence-cache-room"),
        SubscriptionCountChanged(app, "presence-cache-room", 0),
        MemberRemoved(app, "presence-cache-room", "alice", sid),
        ChannelVacated(app, "news"),
        SubscriptionCountChanged(app, "news", 0),
    ]
    assert world.wire.of("alice") == [
        "pusher:connection_established",
        "pusher_internal:subscription_succeeded",
        "pusher:cache_miss",
        "pusher_internal:subscription_succeeded",
    ]
    counted = world.node.metrics.channel_events
    assert counted[(app, "channel_occupied")] == counted[(app, "channel_vacated")] == 2
    assert counted[(app, "member_added")] == counted[(app, "member_removed")] == 1
    assert counted[(app, "cache_miss")] == 1


async def test_subscription_count_goes_to_every_subscriber_up_to_100_and_not_for_presence() -> None:
    world = World(subscription_count=True)
    a, b = world.connect("a"), world.connect("b")
    a.subscribe("news")
    b.subscribe("news")
    counts = [member_data(f) for f in a.frames("pusher_internal:subscription_count")]
    assert counts == [{"subscription_count": 1}, {"subscription_count": 2}]
    assert [member_data(f) for f in b.frames("pusher_internal:subscription_count")] == [
        {"subscription_count": 2}
    ]
    b.send("pusher:unsubscribe", {"channel": "news"})
    last = a.frames("pusher_internal:subscription_count")[-1]
    assert member_data(last) == {"subscription_count": 1}
    a.join(ROOM, "a")
    assert a.frames("pusher_internal:subscription_count")[-1] is last  # presence: none


async def test_above_100_subscribers_the_count_is_sent_once_per_throttle_period() -> None:
    world = World(subscription_count=True)
    world.node.pusher_frames.count_throttle_s = 0.0  # the period is 5 s: due at once here
    clients = [world.connect(str(i)) for i in range(103)]
    for client in clients:
        client.subscribe("news")
    first = clients[0]
    counts = [member_data(f)["subscription_count"] for f in first.frames(COUNT)]
    assert counts == list(range(1, 101))  # 101 to 103: one count, when it is due
    clients[-1].send("pusher:unsubscribe", {"channel": "news"})  # 102: due already
    for _ in range(10):  # the timer runs in one of the next turns of the loop
        await asyncio.sleep(0)
        if len(first.frames(COUNT)) > 100:
            break
    assert [member_data(f) for f in first.frames(COUNT)[100:]] == [{"subscription_count": 102}]
    assert [member_data(f) for f in clients[101].frames(COUNT)] == [{"subscription_count": 102}]


async def test_watchers_hear_of_a_user_s_first_sign_in_and_last_sign_out() -> None:
    world = World()
    watcher, u1, u2 = world.connect("w"), world.connect("u1"), world.connect("u2")
    watcher.session.conn.identify("w")  # type: ignore[union-attr]
    watcher.session.watchlist = ("u",)
    world.node.hubs[APP.id].sign_in(watcher.session)
    user_data = json.dumps({"id": "u"})
    for client in (u1, u2):
        auth = user_auth(APP.key, APP.secret, client.socket_id, user_data)
        client.send("pusher:signin", {"user_data": user_data, "auth": auth})
    u1.session.disconnected()
    u2.session.disconnected()
    events = [member_data(f)["events"] for f in watcher.frames("pusher_internal:watchlist_events")]
    assert events == [
        [{"name": "online", "user_ids": ["u"]}],
        [{"name": "offline", "user_ids": ["u"]}],
    ]
    assert [type(e) for e in world.events if isinstance(e, UserOnline | UserOffline)] == [
        UserOnline,
        UserOffline,
    ]


async def test_a_client_event_is_emitted_only_when_someone_listens() -> None:
    world = World()
    await started(world.node)
    alice, bob = world.connect("alice"), world.connect("bob")
    for client in (alice, bob):
        client.subscribe("private-chat")
    assert ClientEventSent not in world.node.events.handlers
    alice.send("client-hi", {"n": 1}, "private-chat")
    sent: list[ClientEventSent] = []
    world.node.events.subscribe(ClientEventSent, sent.append)
    alice.send("client-hi", {"n": 2}, "private-chat")
    assert len(sent) == 1 and sent[0].socket_id == alice.socket_id
    publication = sent[0].publication
    assert (publication.channel, publication.event, publication.data) == (
        "private-chat",
        "client-hi",
        {"n": 2},
    )
    assert publication.publisher == Publisher("connection", alice.socket_id)
    await settle()
    assert world.wire.of("bob")[-2:] == ["client-hi", "client-hi"]


async def test_a_failing_event_handler_is_logged_and_the_next_handlers_still_run() -> None:
    world = World()
    seen: list[object] = []

    def broken(event: object) -> None:
        raise RuntimeError("a consumer's bug")

    world.node.events.subscribe(ChannelOccupied, broken)
    world.node.events.subscribe(ChannelOccupied, seen.append)
    alice = world.connect("alice")
    alice.subscribe("news")
    assert seen == [ChannelOccupied(APP.id, "news")]
    assert world.wire.of("alice")[-1] == "pusher_internal:subscription_succeeded"


# -- with a store that suspends: the connection's later messages wait behind the step ---------


async def gated_room(*members: str) -> tuple[World, GatedPresenceStore, list[Client]]:
    """A node on a GatedPresenceStore, started (history, broker), a connection per name, the
    first one a member of ROOM (user: its name), and the gate shut again."""
    store = GatedPresenceStore()
    world = World(presence=store)
    await started(world.node)
    clients = [world.connect(name) for name in members]
    store.open()
    clients[0].join(ROOM, members[0])
    await settle()
    store.shut()
    return world, store, clients


async def test_a_client_event_right_after_a_presence_subscribe_waits_for_it() -> None:
    world, store, (_, alice) = await gated_room("bob", "alice")
    alice.join(ROOM, "alice")
    alice.send("client-hello", {"text": "hi"}, ROOM)
    alice.send("pusher:ping")
    assert world.wire.of("alice") == ["pusher:connection_established"]  # all held
    assert alice.session.held is not None and len(alice.session.held) == 2
    store.open()
    await settle()
    assert world.wire.of("alice") == [
        "pusher:connection_established",
        "pusher_internal:subscription_succeeded",
        "pusher:pong",
    ]
    assert world.wire.of("bob")[-2:] == ["pusher_internal:member_added", "client-hello"]
    assert alice.session.held is None and alice.session.holds == 0


async def test_an_unsubscribe_right_after_a_presence_subscribe_leaves_after_it() -> None:
    world, store, (_, alice) = await gated_room("bob", "alice")
    alice.join(ROOM, "alice")
    alice.send("pusher:unsubscribe", {"channel": ROOM})
    alice.join(ROOM, "alice")  # and again: behind the leave's removal
    store.open()
    await settle()
    assert world.wire.of("bob")[1:] == [
        "pusher_internal:subscription_succeeded",
        "pusher_internal:member_added",
        "pusher_internal:member_removed",
        "pusher_internal:member_added",
    ]
    assert world.wire.of("alice")[1:] == ["pusher_internal:subscription_succeeded"] * 2
    assert store.calls == ["add", "members", "add", "members", "remove", "add", "members"]
    assert list(await members_of(world)) == ["bob", "alice"]


async def test_a_connection_closed_while_its_join_waits_leaves_no_member_behind() -> None:
    world, store, (_, alice) = await gated_room("bob", "alice")
    alice.join(ROOM, "alice")
    alice.session.disconnected()
    store.open()
    await settle()
    assert world.wire.of("bob")[1:] == ["pusher_internal:subscription_succeeded"]
    assert world.wire.of("alice") == ["pusher:connection_established"]
    assert list(await members_of(world)) == ["bob"]
    assert [type(e) for e in world.events].count(MemberAdded) == 1  # bob's only


async def test_the_other_connection_of_a_user_joined_meanwhile_keeps_it_a_member() -> None:
    world, store, (_, first, second) = await gated_room("w", "a1", "a2")
    first.join(ROOM, "a")  # new to the channel, but the answer comes after...
    second.join(ROOM, "a")  # ...this connection's, which is no new member
    first.session.disconnected()  # and the first is gone before its answer
    store.open()
    await settle()
    assert world.wire.of("w").count("pusher_internal:member_added") == 1
    assert list(await members_of(world)) == ["w", "a"]
    assert world.wire.of("a2")[-1] == "pusher_internal:subscription_succeeded"


async def test_a_subscription_revoked_while_its_join_waits_is_never_answered() -> None:
    store = GatedPresenceStore()
    world = World(presence=store)
    alice = world.connect("alice")
    alice.join(ROOM, "alice")
    world.node.revoke(alice.session, ROOM, "grant revoked")
    store.open()
    await settle()
    assert world.wire.of("alice") == ["pusher:connection_established", "parley:revoked"]
    assert await members_of(world) == {}
    assert not any(isinstance(e, MemberAdded | MemberRemoved) for e in world.events)


async def test_other_connections_are_not_held_by_one_that_waits() -> None:
    store = GatedPresenceStore()
    world = World(presence=store)
    alice, bob = world.connect("alice"), world.connect("bob")
    alice.join(ROOM, "alice")
    bob.subscribe("news")  # not presence: answered at once
    bob.send("pusher:ping")
    assert world.wire.of("bob")[1:] == ["pusher_internal:subscription_succeeded", "pusher:pong"]
    assert bob.session.held is None
    store.open()
    await settle()


@pytest.mark.parametrize("away", [False, True])
async def test_a_store_that_fails_closes_the_connection_with_1011(
    away: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that is away (StoreUnavailable) is a warning without a traceback; any other
    failure is an error with one."""
    store = GatedPresenceStore(open_=True)
    store.fail = True
    if away:
        store.failure = StoreUnavailable("presence: Redis: Connection refused")
    world = World(presence=store)
    alice = world.connect("alice")
    with caplog.at_level(logging.WARNING, logger="parley"):
        alice.join(ROOM, "alice")
        alice.send("pusher:ping")
        await settle()
    assert alice.transport.closes == [(CloseCode.INTERNAL_ERROR, "Internal server error")]
    assert world.wire.of("alice") == ["pusher:connection_established"]
    lines = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    if away:  # (at most one a second: an earlier test's may have taken this second's)
        assert set(lines) <= {(logging.WARNING, "step failed: a store is unavailable", False)}
    else:
        assert lines == [(logging.ERROR, "background task failed", True)]


@pytest.mark.parametrize("gated", [False, True])
async def test_the_http_api_counts_members_from_the_store(gated: bool) -> None:
    world = World(presence=GatedPresenceStore(open_=True) if gated else None)
    a, b, a2 = world.connect("a"), world.connect("b"), world.connect("a2")
    for client, user in ((a, "a"), (b, "b"), (a2, "a")):
        client.join(ROOM, user)
    await settle()
    app = world.node.apps[0]
    info = await world.node.channel_info(app, ROOM)
    assert (info.occupied, info.subscription_count, info.user_count) == (True, 3, 2)
    assert await world.node.presence_users(app, ROOM) == ["a", "b"]


class ConfirmingBroker:
    """A memory broker whose subscriptions hold only once the test confirms them, as Redis
    confirms a SUBSCRIBE a round trip later (it wraps one: a compiled class has no
    interpreted subclasses)."""

    engine = "memory"  # one process: no other node, no lease

    def __init__(self) -> None:
        self.inner = MemoryBroker()
        self.unconfirmed: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.start, self.close, self.publish = (
            self.inner.start,
            self.inner.close,
            self.inner.publish,
        )
        self.drain, self.unsubscribe = self.inner.drain, self.inner.unsubscribe
        self.check, self.stats = self.inner.check, self.inner.stats

    def subscribe(self, app_id: str, channel: str) -> asyncio.Future[None] | None:
        self.inner.subscribe(app_id, channel)
        key = (app_id, channel)
        if key not in self.unconfirmed:
            self.unconfirmed[key] = asyncio.get_running_loop().create_future()
        future = self.unconfirmed[key]
        return None if future.done() else future

    def confirm(self, channel: str) -> None:
        self.unconfirmed[(APP.id, channel)].set_result(None)


async def test_a_subscription_is_answered_once_the_broker_confirms_it() -> None:
    """Until the broker delivers a channel here, its first subscribers wait (and so does what
    they send next); then each is answered, in order, and later ones at once."""
    broker = ConfirmingBroker()
    node = await started(make_node(broker))
    first, first_out = connect(node)
    second, second_out = connect(node)
    send(first, "pusher:subscribe", {"channel": "news"})
    send(first, "pusher:unsubscribe", {"channel": "news"})  # held behind the subscribe
    send(second, "pusher:subscribe", {"channel": "news"})
    for _ in range(5):  # the held steps run as far as they can: to the broker's future
        await asyncio.sleep(0)
    assert first_out.events == [] and second_out.events == []
    assert "news" not in node.hubs[APP.id].channels
    broker.confirm("news")
    await settle()  # nothing waits now
    assert first_out.events == ["pusher_internal:subscription_succeeded"]
    assert second_out.events == ["pusher_internal:subscription_succeeded"]
    assert [s.socket_id for s in node.hubs[APP.id].channels["news"].subscribers] == [
        second.socket_id
    ]  # the first's unsubscribe came after its answer
    third, third_out = connect(node)
    send(third, "pusher:subscribe", {"channel": "news"})
    assert third_out.events == ["pusher_internal:subscription_succeeded"]  # confirmed: at once
