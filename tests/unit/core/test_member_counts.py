"""Presence channels whose member events are off (`presence_events_off`): what the node writes
instead of member_added/member_removed (`parley:member_count`, core.pusher_frames) and what
the subscription's answer holds (`Node.presence_answer`), with the memory store and with one
that suspends on every call."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from parley.backends.memory.presence import MemoryPresenceStore
from parley.core.events import MemberAdded, MemberRemoved
from parley.core.node import Node
from parley.core.session import Session
from parley.protocol.connection import Member
from tests.support.presence import GatedPresenceStore, settle
from tests.support.pusher_raw import channel_auth, presence_data
from tests.support.transport import APP, RecordingTransport, make_node, send

QUIET = replace(APP, presence_events_off="presence-big-*", max_presence_members=1000)
ROOM = "presence-big-room"
COUNT = "parley:member_count"


def join(node: Node, user: str, room: str = ROOM) -> tuple[Session, RecordingTransport]:
    session = Session(node, "/app/" + APP.key, "protocol=7", {})
    transport = RecordingTransport()
    session.connected(transport)
    channel_data = presence_data(user, {"name": user.title()})
    auth = channel_auth(APP.key, APP.secret, session.socket_id, room, channel_data)
    send(session, "pusher:subscribe", {"channel": room, "auth": auth, "channel_data": channel_data})
    return session, transport


def counts(transport: RecordingTransport) -> list[int]:
    return [m["data"]["count"] for m in transport.written if m["event"] == COUNT]


async def add_directly(store: MemoryPresenceStore, user: str, room: str = ROOM) -> None:
    """A member on another node, written into the store past any gate."""
    await MemoryPresenceStore.add(
        store, APP.id, room, user, None, node_id="other.1", connection_id=user, limit=1000
    )


async def test_members_get_counts_after_the_answer_and_no_member_frames() -> None:
    node = make_node(app=QUIET)
    _, alice = join(node, "alice")
    assert alice.events == [
        "pusher:connection_established",
        "pusher_internal:subscription_succeeded",
    ]
    await asyncio.sleep(0)  # the count follows the answer
    assert alice.events[-1] == COUNT and counts(alice) == [1]
    bob_session, bob = join(node, "bob")
    answer = json.loads(bob.written[1]["data"])
    assert bob.written[1]["event"] == "pusher_internal:subscription_succeeded"
    assert answer["presence"]["count"] == 2
    await asyncio.sleep(0)
    assert counts(alice) == [1, 2] and counts(bob) == [2]
    node.close_session(bob_session)
    await asyncio.sleep(0)
    assert counts(alice) == [1, 2, 1]
    assert not [e for e in alice.events if e.startswith("pusher_internal:member_")]


async def test_other_presence_channels_keep_their_member_events() -> None:
    node = make_node(app=QUIET)
    _, alice = join(node, "alice", "presence-small")
    join(node, "bob", "presence-small")
    await asyncio.sleep(0)
    assert alice.events[-1] == "pusher_internal:member_added" and counts(alice) == []


async def test_changes_while_a_count_is_read_are_told_once_it_is_out() -> None:
    store = GatedPresenceStore(open_=True)
    node = make_node(app=QUIET, presence=store)
    _, alice = join(node, "alice")
    await settle()
    assert counts(alice) == [1]
    reads = store.calls.count("count")
    store.shut()
    for user in ("b", "c", "d"):  # three members at once: one count read
        await add_directly(store, user)
        node.events.emit(MemberAdded(APP.id, ROOM, user, None, "", remote=True))
    await settle_soon()
    assert store.calls.count("count") == reads + 1  # one read, waiting at the gate
    await add_directly(store, "e")  # one more while it waits: read again after it
    node.events.emit(MemberAdded(APP.id, ROOM, "e", None, "", remote=True))
    store.open()
    await settle()
    assert counts(alice) == [1, 5, 5]
    assert store.calls.count("count") == reads + 2


async def test_a_count_the_store_fails_to_read_is_not_told_and_the_next_one_is() -> None:
    store = GatedPresenceStore(open_=True)
    node = make_node(app=QUIET, presence=store)
    _, alice = join(node, "alice")
    await settle()
    store.fail = True
    await add_directly(store, "b")
    node.events.emit(MemberAdded(APP.id, ROOM, "b", None, "", remote=True))
    await settle()
    assert counts(alice) == [1]
    store.fail = False
    node.events.emit(MemberRemoved(APP.id, ROOM, "b", "", remote=True))
    await settle()
    assert counts(alice) == [1, 2]  # "b" is still in the store: the count read says so


async def test_above_a_hundred_members_one_count_a_window() -> None:
    node = make_node(app=QUIET)
    node.pusher_frames.count_throttle_s = 0.05
    store = node.presence
    assert isinstance(store, MemoryPresenceStore)
    for i in range(150):
        await add_directly(store, f"u{i}")
    _, alice = join(node, "alice")
    await asyncio.sleep(0)
    assert counts(alice) == [151]  # the first: at once
    for user in ("x", "y"):
        await add_directly(store, user)
        node.events.emit(MemberAdded(APP.id, ROOM, user, None, "", remote=True))
    await asyncio.sleep(0)
    assert counts(alice) == [151]  # within the window
    await asyncio.sleep(0.1)
    assert counts(alice) == [151, 153]
    await asyncio.sleep(0.1)  # the window closes with nothing more to tell
    assert counts(alice) == [151, 153] and not node.pusher_frames._member_counts


async def test_the_answer_where_member_events_are_off_is_the_count_and_the_joiner() -> None:
    node = make_node(app=QUIET)
    store = node.presence
    assert isinstance(store, MemoryPresenceStore)
    for user in ("a", "b"):
        await add_directly(store, user)
    me = Member("me", {"name": "Me"})
    await MemoryPresenceStore.add(
        store, APP.id, ROOM, "me", me.user_info, node_id="n", connection_id="1", limit=9
    )
    quiet: dict[str, Any] = await node.presence_answer(QUIET, ROOM, me)
    assert quiet == {"count": 3, "ids": ["me"], "hash": {"me": {"name": "Me"}}}
    await add_directly(store, "a", "presence-other")
    full = await node.presence_answer(QUIET, "presence-other", Member("a", None))
    assert full == {"count": 1, "ids": ["a"], "hash": {"a": None}}


async def settle_soon() -> None:
    """Run what was scheduled with call_soon, and the tasks it started up to their waits."""
    for _ in range(3):
        await asyncio.sleep(0)
