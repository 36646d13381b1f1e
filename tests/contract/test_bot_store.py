"""The BotStore contract, on memory, SQLite and PostgreSQL: a bot's id and name are taken once
per app (BotExists, even for two nodes adding at once), bots are listed oldest first and
disabled or enabled in place; a reference is kept per (bot, user, conversation), its offset
never lowered, the most recently updated first; a durable store outlives the process.

Time is the store's clock, a FakeClock moved by the tests."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from dataclasses import dataclass, field

import pytest

from parley.backends.bots import Bot, BotExists, BotStore, Reference
from parley.backends.memory.bots import MemoryBotStore
from parley.backends.sqlite.bots import SqliteBotStore
from tests.support.stores import DURABLE_KINDS, StoreBackend, StoreKinds, new_app_id, store_fixture


@dataclass
class Backend(StoreBackend[BotStore]):
    stores = StoreKinds(
        MemoryBotStore, SqliteBotStore, "parley.backends.postgres.bots:PostgresBotStore"
    )
    tables = ("parley_bots", "parley_bot_references")
    app_id: str = field(default_factory=new_app_id("b"))

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


backend = store_fixture(Backend)
durable = store_fixture(Backend, DURABLE_KINDS)


def make_bot(
    backend: Backend,
    bot_id: str,
    name: str,
    *,
    app_id: str | None = None,
    webhook_url: str | None = "https://bots.example/hook",
    disabled: bool = False,
) -> Bot:
    return Bot(
        app_id=app_id or backend.app_id,
        id=bot_id,
        name=name,
        webhook_url=webhook_url,
        secret_hash=hashlib.sha256(bot_id.encode()).hexdigest(),
        created_at=backend.now_ms(),
        disabled=disabled,
    )


def reference(
    backend: Backend, bot_id: str, user_id: str, conversation_id: str, offset: int
) -> Reference:
    return Reference(
        app_id=backend.app_id,
        bot_id=bot_id,
        user_id=user_id,
        conversation_id=conversation_id,
        channel=f"private-conv-{conversation_id}",
        last_offset=offset,
        updated_at=backend.now_ms(),
    )


async def test_a_bot_is_read_back_field_for_field(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    hooked = make_bot(backend, "bot_1", "Helper")
    silent = make_bot(backend, "bot_2", "Ünïcode bot", webhook_url=None, disabled=True)
    await store.add(hooked)
    await store.add(silent)
    assert await store.get(app, "bot_1") == hooked
    assert await store.get(app, "bot_2") == silent
    stored = await store.get(app, "bot_2")
    assert stored is not None and stored.disabled is True and stored.webhook_url is None
    assert await store.get(app, "unknown") is None
    assert await store.get(backend.other_app(), "bot_1") is None


async def test_an_id_or_a_name_is_taken_once_per_app(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    first = make_bot(backend, "bot_1", "Helper")
    await store.add(first)
    with pytest.raises(BotExists):
        await store.add(make_bot(backend, "bot_1", "Another name"))
    with pytest.raises(BotExists):
        await store.add(make_bot(backend, "bot_2", "Helper"))
    assert await store.list(app) == [first]
    assert await store.get(app, "bot_2") is None
    other = backend.other_app()
    elsewhere = make_bot(backend, "bot_1", "Helper", app_id=other)
    await store.add(elsewhere)  # another app's names and ids are its own
    assert await store.list(other) == [elsewhere]
    assert await store.list(app) == [first]


async def test_two_processes_adding_one_name_at_once_keep_one(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    app = durable.app_id
    mine, theirs = make_bot(durable, "bot_1", "Helper"), make_bot(durable, "bot_2", "Helper")
    results = await asyncio.gather(one.add(mine), two.add(theirs), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["BotExists", "NoneType"]
    kept = mine if results[0] is None else theirs
    assert await one.list(app) == await two.list(app) == [kept]


async def test_bots_are_listed_oldest_first(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.list(app) == []
    added = []
    for n, name in enumerate(["zeta", "alpha", "Mid"]):
        added.append(make_bot(backend, f"bot_{9 - n}", name))
        await store.add(added[-1])
        backend.clock.advance(1)
    assert await store.list(app) == added


async def test_a_bot_is_disabled_and_enabled_in_place(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    first, second = make_bot(backend, "bot_1", "one"), make_bot(backend, "bot_2", "two")
    await store.add(first)
    await store.add(second)
    disabled = dataclasses.replace(first, disabled=True)
    assert await store.set_disabled(app, "bot_1", True) == disabled
    assert await store.get(app, "bot_1") == disabled
    assert await store.set_disabled(app, "bot_1", True) == disabled  # again: the same
    assert await store.list(app) == [disabled, second]  # its place kept
    assert await store.set_disabled(app, "bot_1", False) == first
    assert await store.get(app, "bot_1") == first
    assert await store.set_disabled(app, "unknown", True) is None
    assert await store.set_disabled(backend.other_app(), "bot_1", True) is None
    assert await store.get(app, "bot_1") == first


async def test_a_reference_is_kept_and_its_offset_never_lowered(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.references(app, "bot_1") == []
    first = reference(backend, "bot_1", "ann", "d_1", 5)
    await store.remember(first)
    assert await store.references(app, "bot_1") == [first]
    backend.clock.advance(1)
    raised = reference(backend, "bot_1", "ann", "d_1", 2**40)
    await store.remember(raised)
    assert await store.references(app, "bot_1") == [raised]
    backend.clock.advance(1)
    older = dataclasses.replace(
        reference(backend, "bot_1", "ann", "d_1", 3), channel="private-conv-moved"
    )
    await store.remember(older)  # an older offset: the rest is taken, the offset kept
    assert await store.references(app, "bot_1") == [dataclasses.replace(older, last_offset=2**40)]


async def test_references_are_the_most_recently_updated_first(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    ann = reference(backend, "bot_1", "ann", "d_1", 1)
    await store.remember(ann)
    backend.clock.advance(1)
    bob = reference(backend, "bot_1", "bob", "d_2", 4)
    await store.remember(bob)
    backend.clock.advance(1)
    group = reference(backend, "bot_1", "ann", "g_1", 9)  # the same user elsewhere: another
    await store.remember(group)
    backend.clock.advance(1)
    other_bot = reference(backend, "bot_2", "ann", "d_1", 2)
    await store.remember(other_bot)
    elsewhere = dataclasses.replace(ann, app_id=backend.other_app())
    await store.remember(elsewhere)
    assert await store.references(app, "bot_1") == [group, bob, ann]
    backend.clock.advance(1)
    ann_again = reference(backend, "bot_1", "ann", "d_1", 2)
    await store.remember(ann_again)  # updated now: first
    assert await store.references(app, "bot_1") == [ann_again, group, bob]
    assert await store.references(app, "bot_2") == [other_bot]
    assert await store.references(elsewhere.app_id, "bot_1") == [elsewhere]
    assert await store.references(app, "bot_3") == []


async def test_a_durable_store_outlives_the_process(durable: Backend) -> None:
    store, app = await durable.open(), durable.app_id
    first = make_bot(durable, "bot_1", "Helper")
    durable.clock.advance(1)
    second = make_bot(durable, "bot_2", "Other", webhook_url=None)
    await store.add(first)
    await store.add(second)
    await store.set_disabled(app, "bot_1", True)
    kept = reference(durable, "bot_1", "ann", "d_1", 7)
    await store.remember(kept)
    await store.close()
    await store.db.close()  # type: ignore[attr-defined]
    again = await durable.open()
    disabled = dataclasses.replace(first, disabled=True)
    assert await again.list(app) == [disabled, second]
    assert await again.get(app, "bot_1") == disabled
    assert await again.references(app, "bot_1") == [kept]
    await again.remember(dataclasses.replace(kept, last_offset=3))
    assert await again.references(app, "bot_1") == [kept]
    with pytest.raises(BotExists):
        await again.add(make_bot(durable, "bot_3", "Helper"))


async def test_a_closed_store_refuses(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    bot = make_bot(backend, "bot_1", "Helper")
    await store.add(bot)
    await store.close()
    calls = [
        store.add(make_bot(backend, "bot_2", "Other")),
        store.get(app, "bot_1"),
        store.list(app),
        store.set_disabled(app, "bot_1", True),
        store.remember(reference(backend, "bot_1", "ann", "d_1", 1)),
        store.references(app, "bot_1"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="bot store is not running"):
            await call
