"""The ConversationStore contract, on memory, SQLite and PostgreSQL: a conversation is created
once per id (a second creation gets the first), read back field for field, changed only by a
compare-and-set on its version (of two nodes replacing one version, one wins), found by its
users and bots newest first, and followed by the change feed oldest change first; read and
delivered offsets only rise, and the receipts combine them; annotations make a message's state
as `MessageState.apply` says, atomically (two nodes annotating one message lose nothing); blocks
are kept in the order they were made; a durable store outlives the process.

Time is the store's clock, a FakeClock moved by the tests. PostgreSQL's tables are shared with
whatever else uses the database: the change feed is filtered to the test's apps."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from parley.backends.conversations import (
    Annotation,
    Conversation,
    ConversationStore,
    MessageState,
    Receipt,
)
from parley.backends.memory.conversations import MemoryConversationStore
from parley.backends.sqlite.conversations import SqliteConversationStore
from tests.support.stores import DURABLE_KINDS, StoreBackend, StoreKinds, new_app_id, store_fixture


@dataclass
class Backend(StoreBackend[ConversationStore]):
    stores = StoreKinds(
        MemoryConversationStore,
        SqliteConversationStore,
        "parley.backends.postgres.conversations:PostgresConversationStore",
    )
    tables = (
        "parley_conversations",
        "parley_conversation_members",
        "parley_conversation_reads",
        "parley_blocks",
        "parley_message_states",
    )
    app_id: str = field(default_factory=new_app_id("c"))

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def changed_since(self, store: ConversationStore, since_ms: int) -> list[Conversation]:
        """The feed's changes of this test's apps (a shared PostgreSQL holds others')."""
        mine = {self.app_id, *self.apps}
        return [c for c in await store.changed_since(since_ms) if c.app_id in mine]


backend = store_fixture(Backend)
durable = store_fixture(Backend, DURABLE_KINDS)


def group(
    app_id: str,
    conversation_id: str,
    at_ms: int,
    members: tuple[str, ...] = ("ann", "bob"),
    bots: tuple[str, ...] = (),
) -> Conversation:
    return Conversation(
        app_id=app_id,
        id=conversation_id,
        channel=f"private-conv-{conversation_id}",
        kind="group",
        members=members,
        bots=bots,
        created_by=members[0] if members else None,
        created_at=at_ms,
        state="accepted",
        requested_by=None,
        pending_sent=0,
        blocked_by=(),
        version=1,
        updated_at=at_ms,
    )


def direct(app_id: str, conversation_id: str, at_ms: int) -> Conversation:
    """A pending request with every optional field set, and ids beyond ASCII."""
    return Conversation(
        app_id=app_id,
        id=conversation_id,
        channel=f"private-conv-{conversation_id}",
        kind="direct",
        members=("zoë", "ann"),
        bots=("helper", "söz"),
        created_by="zoë",
        created_at=at_ms,
        state="pending",
        requested_by="zoë",
        pending_sent=3,
        blocked_by=("ann",),
        version=1,
        updated_at=at_ms,
    )


def ids(conversations: list[Conversation]) -> list[str]:
    return [c.id for c in conversations]


async def test_a_created_conversation_is_read_back_field_for_field(backend: Backend) -> None:
    store, app, now = await backend.open(), backend.app_id, backend.now_ms()
    pending = direct(app, "d_1", now)
    bare = Conversation(
        app_id=app,
        id="g_1",
        channel="private-conv-g_1",
        kind="group",
        members=(),
        bots=(),
        created_by=None,
        created_at=now - 5,
        state="declined",
        requested_by=None,
        pending_sent=2**40,
        blocked_by=(),
        version=7,
        updated_at=now + 5,
    )
    assert await store.create(pending) == pending
    assert await store.create(bare) == bare
    for conversation in (pending, bare):
        stored = await store.get(app, conversation.id)
        assert stored == conversation
        assert stored is not None
        assert all(isinstance(v, tuple) for v in (stored.members, stored.bots, stored.blocked_by))
    assert await store.get(app, "unknown") is None
    assert await store.get(backend.other_app(), "d_1") is None


async def test_creating_an_id_again_gets_the_first_unchanged(backend: Backend) -> None:
    store, app, now = await backend.open(), backend.app_id, backend.now_ms()
    first = group(app, "g_1", now, members=("ann", "bob"))
    again = group(app, "g_1", now + 1000, members=("cy",), bots=("helper",))
    assert await store.create(first) == first
    assert await store.create(again) == first
    assert await store.get(app, "g_1") == first
    assert await store.of_user(app, "cy") == []
    assert await store.of_bot(app, "helper") == []
    assert ids(await store.of_user(app, "ann")) == ["g_1"]
    elsewhere = group(backend.other_app(), "g_1", now, members=("cy",))
    assert await store.create(elsewhere) == elsewhere  # the same id in another app is another
    assert await store.get(app, "g_1") == first


async def test_two_processes_creating_one_id_keep_one(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    app, now = durable.app_id, durable.now_ms()
    mine = group(app, "d_1", now, members=("ann", "bob"))
    theirs = group(app, "d_1", now + 1, members=("bob", "ann"))
    results = await asyncio.gather(one.create(mine), two.create(theirs))
    assert results[0] == results[1]
    assert results[0] in (mine, theirs)
    assert await one.get(app, "d_1") == await two.get(app, "d_1") == results[0]
    assert ids(await two.of_user(app, "ann")) == ["d_1"]


async def test_replace_is_a_compare_and_set_on_the_version(backend: Backend) -> None:
    store, app, now = await backend.open(), backend.app_id, backend.now_ms()
    created = group(app, "g_1", now, members=("ann", "bob"), bots=("helper",))
    await store.create(created)
    changed = created.changed(now + 10, members=("bob", "cy"), bots=("other",), pending_sent=1)
    assert await store.replace(created, changed)
    assert await store.get(app, "g_1") == changed
    rival = created.changed(now + 20, members=("mallory",))
    assert not await store.replace(created, rival)  # stale: nothing changes
    assert await store.get(app, "g_1") == changed
    assert await store.of_user(app, "mallory") == []
    assert ids(await store.of_user(app, "cy")) == ["g_1"]
    assert await store.of_user(app, "ann") == []  # removed
    assert ids(await store.of_bot(app, "other")) == ["g_1"]
    assert await store.of_bot(app, "helper") == []
    accepted = changed.changed(now + 30, state="accepted", requested_by=None, blocked_by=("cy",))
    assert await store.replace(changed, accepted)
    assert await store.get(app, "g_1") == accepted
    assert await store.of_user(app, "cy") == [accepted]


async def test_replacing_what_was_never_created_changes_nothing(backend: Backend) -> None:
    store, app, now = await backend.open(), backend.app_id, backend.now_ms()
    ghost = group(app, "g_1", now)
    assert not await store.replace(ghost, ghost.changed(now + 1))
    assert await store.get(app, "g_1") is None
    assert await store.of_user(app, "ann") == []
    await store.create(group(backend.other_app(), "g_1", now))
    assert not await store.replace(ghost, ghost.changed(now + 1))  # another app's is not it
    assert await store.get(app, "g_1") is None


async def test_two_processes_replacing_one_version_one_wins(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    app, now = backend.app_id, backend.now_ms()
    created = group(app, "g_1", now, members=("ann",))
    await one.create(created)
    mine = created.changed(now + 1, members=("ann", "bob"))
    theirs = created.changed(now + 2, members=("ann", "cy"))
    results = await asyncio.gather(one.replace(created, mine), two.replace(created, theirs))
    assert sorted(results) == [False, True]
    winner, loser = (mine, "cy") if results[0] else (theirs, "bob")
    assert await one.get(app, "g_1") == await two.get(app, "g_1") == winner
    assert await two.of_user(app, loser) == []
    assert ids(await one.of_user(app, "ann")) == ["g_1"]
    again = winner.changed(now + 3, members=("ann", "bob", "cy"))
    assert not await two.replace(created, again)
    assert await two.replace(winner, again)
    assert await one.get(app, "g_1") == again


async def test_of_user_and_of_bot_are_newest_first_within_the_app(backend: Backend) -> None:
    store, app, now = await backend.open(), backend.app_id, backend.now_ms()
    other = backend.other_app()
    old = group(app, "g_old", now - 1000, members=("ann", "bob"), bots=("helper",))
    new = group(app, "g_new", now, members=("bob", "ann"), bots=("helper", "other"))
    # created at the same ms: the greater id first, in code point order ("a" > "B" > "A")
    tie_a = group(app, "a", now - 500, members=("ann",))
    tie_upper = group(app, "B", now - 500, members=("ann",), bots=("helper",))
    tie_upper_a = group(app, "A", now - 500, members=("ann",))
    elsewhere = group(other, "g_else", now + 1000, members=("ann",), bots=("helper",))
    for conversation in (tie_upper, old, elsewhere, new, tie_a, tie_upper_a):
        await store.create(conversation)
    assert ids(await store.of_user(app, "ann")) == ["g_new", "a", "B", "A", "g_old"]
    assert await store.of_user(app, "bob") == [new, old]
    assert ids(await store.of_bot(app, "helper")) == ["g_new", "B", "g_old"]
    assert await store.of_bot(app, "other") == [new]
    assert await store.of_user(other, "ann") == [elsewhere]
    assert await store.of_user(app, "helper") == []  # a bot is not a user member
    assert await store.of_bot(app, "ann") == []
    assert await store.of_user(app, "nobody") == []


async def test_the_change_feed_has_creations_and_changes_oldest_first(backend: Backend) -> None:
    store, app, t0 = await backend.open(), backend.app_id, backend.now_ms()
    other = backend.other_app()
    first = group(app, "g_1", t0)
    await store.create(first)
    second = group(other, "g_2", t0 + 1000)
    await store.create(second)
    third = group(app, "g_3", t0 + 2000)
    await store.create(third)
    changed = first.changed(t0 + 3000, members=("ann", "bob", "cy"))
    assert await store.replace(first, changed)
    assert await backend.changed_since(store, t0) == [second, third, changed]
    assert await backend.changed_since(store, t0 + 1000) == [second, third, changed]  # at
    assert await backend.changed_since(store, t0 + 1001) == [third, changed]
    assert await backend.changed_since(store, t0 + 3000) == [changed]
    assert await backend.changed_since(store, t0 + 3001) == []
    again = third.changed(t0 + 4000, state="declined")
    assert await store.replace(third, again)
    assert await backend.changed_since(store, t0 + 1001) == [changed, again]


async def test_a_read_offset_only_rises(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.reads(app, "ann") == {}
    assert await store.set_read(app, "g_1", "ann", 5) == 5
    assert await store.set_read(app, "g_1", "ann", 3) == 5  # never lowered
    assert await store.set_read(app, "g_1", "ann", 5) == 5
    assert await store.set_read(app, "g_1", "ann", 2**40) == 2**40
    assert await store.set_read(app, "g_2", "ann", 0) == 0
    assert await store.set_read(app, "g_1", "bob", 1) == 1
    assert await store.reads(app, "ann") == {"g_1": 2**40, "g_2": 0}
    assert await store.reads(app, "bob") == {"g_1": 1}
    assert await store.reads(app, "cy") == {}
    other = backend.other_app()
    assert await store.set_read(other, "g_1", "ann", 1) == 1  # another app's are its own
    assert await store.reads(other, "ann") == {"g_1": 1}
    assert await store.reads(app, "ann") == {"g_1": 2**40, "g_2": 0}


async def test_a_delivered_offset_only_rises(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.set_delivered(app, "g_1", "ann", 5) == 5
    assert await store.set_delivered(app, "g_1", "ann", 3) == 5  # never lowered
    assert await store.set_delivered(app, "g_1", "ann", 5) == 5
    assert await store.set_delivered(app, "g_1", "ann", 2**40) == 2**40
    assert await store.set_delivered(app, "g_1", "bob", -3) == 0  # at least 0
    assert await store.set_delivered(app, "g_2", "ann", 1) == 1
    other = backend.other_app()
    assert await store.set_delivered(other, "g_1", "ann", 1) == 1  # another app's: its own
    assert await store.receipts(app, "g_1") == {
        "ann": Receipt(2**40, 0),
        "bob": Receipt(0, 0),
    }
    assert await store.receipts(other, "g_1") == {"ann": Receipt(1, 0)}
    # a delivery is not a read
    assert await store.reads(app, "ann") == {}
    assert await store.reads(app, "bob") == {}


async def test_receipts_combine_delivered_and_read_by_user(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.receipts(app, "g_1") == {}
    await store.set_read(app, "g_1", "zoë", 4)  # read, never delivered
    await store.set_delivered(app, "g_1", "bob", 9)  # delivered, never read
    await store.set_delivered(app, "g_1", "ann", 7)
    await store.set_read(app, "g_1", "ann", 3)  # both, read after delivered
    await store.set_read(app, "g_1", "Cy", 2)
    await store.set_delivered(app, "g_1", "Cy", 6)  # both, delivered after read
    await store.set_read(app, "g_2", "bob", 1)  # another conversation's
    await store.set_delivered(backend.other_app(), "g_1", "dan", 1)  # another app's
    receipts = await store.receipts(app, "g_1")
    assert receipts == {
        "Cy": Receipt(6, 2),
        "ann": Receipt(7, 3),
        "bob": Receipt(9, 0),
        "zoë": Receipt(0, 4),
    }
    assert list(receipts) == ["Cy", "ann", "bob", "zoë"]  # by user id, in code point order
    assert await store.receipts(app, "g_2") == {"bob": Receipt(0, 1)}
    # reads are what was read: the delivery made no read of bob's in g_1
    assert await store.reads(app, "bob") == {"g_2": 1}
    assert await store.reads(app, "ann") == {"g_1": 3}
    assert await store.set_read(app, "g_1", "bob", 0) == 0  # a read at 0 is a read
    assert await store.reads(app, "bob") == {"g_1": 0, "g_2": 1}
    assert (await store.receipts(app, "g_1"))["bob"] == Receipt(9, 0)
    assert await store.set_read(app, "g_1", "bob", 5) == 5
    assert await store.set_delivered(app, "g_1", "bob", 8) == 9  # reading kept the delivered
    assert (await store.receipts(app, "g_1"))["bob"] == Receipt(9, 5)


def react(user: str, reaction: str, at: int) -> Annotation:
    return Annotation("react", user, at, reaction=reaction)


def unreact(user: str, reaction: str, at: int) -> Annotation:
    return Annotation("unreact", user, at, reaction=reaction)


def edit(data: object, at: int) -> Annotation:
    return Annotation("edit", "ann", at, data=data)


async def test_annotations_make_the_state_apply_says(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.states(app, "g_1", [3]) == {}
    first = await store.annotate(app, "g_1", 3, edit({"text": "hi", "n": [1, 2]}, 5))
    assert first == MessageState(3, {"text": "hi", "n": [1, 2]}, edited_at=5)
    assert await store.states(app, "g_1", [3]) == {3: first}
    state = first
    for annotation in (
        react("bob", "👍", 6),
        react("ann", "👍", 7),
        react("bob", "❤", 8),
        unreact("bob", "👍", 9),
        unreact("cy", "👍", 10),  # never reacted: nothing changes
        edit("later", 11),
    ):
        state = state.apply(annotation)
        assert await store.annotate(app, "g_1", 3, annotation) == state
    assert state == MessageState(3, "later", 11, 0, (("👍", ("ann",)), ("❤", ("bob",))))
    assert await store.states(app, "g_1", [3]) == {3: state}
    unreacted = await store.annotate(app, "g_1", 3, unreact("bob", "❤", 12))
    assert unreacted.reactions == (("👍", ("ann",)),)  # a reaction nobody has is gone
    deleted = await store.annotate(app, "g_1", 3, Annotation("delete", "ann", 13))
    assert deleted == MessageState(3, None, 11, 13, (("👍", ("ann",)),))
    assert await store.annotate(app, "g_1", 3, edit("after", 14)) == deleted  # deleted stays
    assert await store.annotate(app, "g_1", 3, Annotation("delete", "ann", 15)) == deleted
    assert await store.states(app, "g_1", [3]) == {3: deleted}


async def test_edits_in_any_order_keep_the_highest_and_repeats_change_nothing(
    backend: Backend,
) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.annotate(app, "g_1", 1, edit("second", 20)) == MessageState(1, "second", 20)
    assert await store.annotate(app, "g_1", 1, edit("first", 10)) == MessageState(1, "second", 20)
    assert await store.annotate(app, "g_1", 1, edit("third", 30)) == MessageState(1, "third", 30)
    assert await store.annotate(app, "g_1", 1, edit("again", 30)) == MessageState(1, "third", 30)
    once = await store.annotate(app, "g_1", 1, react("bob", "x", 31))
    assert await store.annotate(app, "g_1", 1, react("bob", "x", 31)) == once
    assert once.reactions == (("x", ("bob",)),)
    assert await store.states(app, "g_1", [1]) == {1: once}
    # an unreact with no state yet stores an empty state, as a react then unreact leaves
    empty = await store.annotate(app, "g_1", 2, unreact("bob", "x", 32))
    assert empty == MessageState(2)
    assert await store.states(app, "g_1", [2]) == {2: empty}


async def test_states_are_those_of_the_offsets_asked_in_that_conversation(
    backend: Backend,
) -> None:
    store, app = await backend.open(), backend.app_id
    other = backend.other_app()
    mine = {
        o: await store.annotate(app, "g_1", o, react("ann", "x", o + 100)) for o in (1, 5, 2**40)
    }
    await store.annotate(app, "g_2", 2, react("ann", "y", 200))
    await store.annotate(other, "g_1", 3, react("ann", "z", 300))
    assert await store.states(app, "g_1", []) == {}
    assert await store.states(app, "g_1", [1, 2, 3, 4, 5, 2**40]) == mine
    assert list(await store.states(app, "g_1", [2**40, 5, 1])) == [2**40, 5, 1]
    assert await store.states(app, "g_1", [5, 5]) == {5: mine[5]}
    assert await store.states(app, "g_1", [2, 3]) == {}  # other conversation's, other app's
    assert await store.states(app, "g_2", [1, 2]) == {
        2: MessageState(2, reactions=(("y", ("ann",)),))
    }
    assert await store.states(other, "g_1", [1, 3]) == {
        3: MessageState(3, reactions=(("z", ("ann",)),))
    }
    many = list(range(1, 5001))  # more offsets than SQLite binds at once
    assert await store.states(app, "g_1", many) == {1: mine[1], 5: mine[5]}


async def test_two_processes_annotating_one_message_lose_nothing(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    app = durable.app_id
    users = [f"user{i:02}" for i in range(20)]
    await asyncio.gather(
        *(
            (one if i % 2 else two).annotate(app, "g_1", 7, react(user, "👍", 100 + i))
            for i, user in enumerate(users)
        )
    )
    states = await one.states(app, "g_1", [7])
    assert states == await two.states(app, "g_1", [7])
    reactions = dict(states[7].reactions)
    assert sorted(reactions["👍"]) == users
    # an edit and reactions at once: every one applied
    await asyncio.gather(
        one.annotate(app, "g_1", 7, edit("edited", 200)),
        two.annotate(app, "g_1", 7, react("ann", "❤", 201)),
        one.annotate(app, "g_1", 7, unreact("user00", "👍", 202)),
        two.annotate(app, "g_1", 7, react("bob", "❤", 203)),
    )
    state = (await two.states(app, "g_1", [7]))[7]
    assert (state.data, state.edited_at) == ("edited", 200)
    reactions = dict(state.reactions)
    assert sorted(reactions["👍"]) == users[1:]
    assert sorted(reactions["❤"]) == ["ann", "bob"]


async def test_two_processes_raising_delivered_offsets_keep_the_highest(
    durable: Backend,
) -> None:
    one, two = await durable.open(), await durable.open()
    app = durable.app_id
    offsets = list(range(1, 41))
    await asyncio.gather(
        *((one if o % 2 else two).set_delivered(app, "g_1", "ann", o) for o in reversed(offsets)),
        *((two if o % 2 else one).set_read(app, "g_1", "ann", o) for o in offsets),
    )
    assert await one.receipts(app, "g_1") == {"ann": Receipt(40, 40)}
    assert await two.reads(app, "ann") == {"g_1": 40}


async def test_blocks_are_kept_oldest_first_once_each(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.blocks(app, "ann") == []
    await store.block(app, "ann", "zed")
    backend.clock.advance(1)
    await store.block(app, "ann", "bob")
    await store.block(app, "ann", "zed")  # again: nothing changes
    await store.block(app, "bob", "ann")
    assert await store.blocks(app, "ann") == ["zed", "bob"]
    assert await store.blocks(app, "bob") == ["ann"]
    assert await store.is_blocked(app, "ann", "zed")
    assert await store.is_blocked(app, "bob", "ann")
    assert not await store.is_blocked(app, "zed", "ann")  # one way
    assert not await store.is_blocked(app, "ann", "cy")
    assert await store.unblock(app, "ann", "zed")
    assert not await store.unblock(app, "ann", "zed")  # no such block any more
    assert not await store.unblock(app, "cy", "ann")
    assert not await store.is_blocked(app, "ann", "zed")
    assert await store.blocks(app, "ann") == ["bob"]
    await store.block(app, "ann", "zed")  # blocked again: the newest block
    assert await store.blocks(app, "ann") == ["bob", "zed"]
    other = backend.other_app()
    assert await store.blocks(other, "ann") == []
    assert not await store.is_blocked(other, "ann", "bob")
    await store.block(other, "ann", "cy")
    assert await store.blocks(app, "ann") == ["bob", "zed"]


async def test_a_durable_store_outlives_the_process(durable: Backend) -> None:
    store, app, now = await durable.open(), durable.app_id, durable.now_ms()
    pending = direct(app, "d_1", now)
    created = group(app, "g_1", now + 1, members=("ann", "zoë"), bots=("helper",))
    await store.create(pending)
    await store.create(created)
    changed = created.changed(now + 2, members=("zoë", "cy"))
    assert await store.replace(created, changed)
    await store.set_read(app, "g_1", "zoë", 7)
    await store.block(app, "ann", "zoë")
    await store.block(app, "ann", "bob")
    await store.set_delivered(app, "g_1", "zoë", 9)
    await store.set_delivered(app, "g_1", "cy", 8)
    edited = await store.annotate(app, "g_1", 3, edit({"text": "again"}, 5))
    reacted = await store.annotate(app, "g_1", 4, react("zoë", "👍", 6))
    await store.close()
    await store.db.close()  # type: ignore[attr-defined]
    again = await durable.open()
    assert await again.get(app, "d_1") == pending
    assert await again.get(app, "g_1") == changed
    assert await again.of_user(app, "zoë") == [changed, pending]
    assert await again.of_user(app, "ann") == [pending]
    assert await again.of_bot(app, "helper") == [changed, pending]
    assert await durable.changed_since(again, now) == [pending, changed]
    assert await again.reads(app, "zoë") == {"g_1": 7}
    assert await again.set_read(app, "g_1", "zoë", 6) == 7
    assert await again.reads(app, "cy") == {}
    assert await again.receipts(app, "g_1") == {"cy": Receipt(8, 0), "zoë": Receipt(9, 7)}
    assert await again.set_delivered(app, "g_1", "zoë", 1) == 9
    assert await again.states(app, "g_1", [3, 4, 5]) == {3: edited, 4: reacted}
    assert await again.annotate(app, "g_1", 4, react("cy", "👍", 7)) == MessageState(
        4, reactions=(("👍", ("zoë", "cy")),)
    )
    assert await again.blocks(app, "ann") == ["zoë", "bob"]
    assert not await again.replace(created, created.changed(now + 3))  # the version was kept
    assert await again.create(group(app, "g_1", now + 4)) == changed


async def test_a_closed_store_refuses(backend: Backend) -> None:
    store, app, now = await backend.open(), backend.app_id, backend.now_ms()
    created = group(app, "g_1", now)
    await store.create(created)
    await store.close()
    calls = [
        store.create(created),
        store.get(app, "g_1"),
        store.replace(created, created.changed(now + 1)),
        store.of_user(app, "ann"),
        store.of_bot(app, "helper"),
        store.changed_since(now),
        store.set_read(app, "g_1", "ann", 1),
        store.reads(app, "ann"),
        store.block(app, "ann", "bob"),
        store.unblock(app, "ann", "bob"),
        store.blocks(app, "ann"),
        store.is_blocked(app, "ann", "bob"),
        store.set_delivered(app, "g_1", "ann", 1),
        store.receipts(app, "g_1"),
        store.annotate(app, "g_1", 1, react("ann", "x", 2)),
        store.states(app, "g_1", [1]),
        store.states(app, "g_1", []),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="conversation store is not running"):
            await call
