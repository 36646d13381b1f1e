"""The KeyDirectoryStore contract, on memory, SQLite and PostgreSQL: an append-only log per
app where a seq is taken once (two nodes appending at once: one wins), entries served exactly
as they were encoded, and one server key for every process on the same database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from parley.backends.keys import KeyDirectoryStore
from parley.backends.memory.keys import MemoryKeyDirectoryStore
from parley.backends.sqlite.keys import SqliteKeyDirectoryStore
from parley.protocol import signed
from parley.protocol.directory import KeyEntry, next_entry
from tests.support.stores import DURABLE_KINDS, StoreBackend, StoreKinds, new_app_id, store_fixture


@dataclass
class Backend(StoreBackend[KeyDirectoryStore]):
    stores = StoreKinds(
        MemoryKeyDirectoryStore,
        SqliteKeyDirectoryStore,
        "parley.backends.postgres.keys:PostgresKeyDirectoryStore",
    )
    tables = ("parley_key_log",)
    app_id: str = field(default_factory=new_app_id("k"))


backend = store_fixture(Backend)
durable = store_fixture(Backend, DURABLE_KINDS)


def added(last: KeyEntry | None, user: str, n: int) -> KeyEntry:
    public = signed.b64url(bytes([n] * 32))
    return next_entry(
        last,
        type="added",
        user_id=user,
        device_id=f"device-{n}",
        kid=signed.key_id(bytes([n] * 32)),
        ed25519=public,
        x25519=None,
        ts=1000 + n,
        unendorsed=n % 2 == 0,
    )


async def test_entries_are_kept_in_order_and_read_back_as_appended(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    assert await store.last(app) is None
    first = added(None, "alice", 1)
    second = added(first, "bob", 2)
    third = added(second, "alice", 3)
    for entry in (first, second, third):
        assert await store.append(app, entry)
    assert await store.last(app) == third
    assert await store.log(app, 0, 10) == [first, second, third]
    assert await store.log(app, 1, 1) == [second]
    assert await store.log(app, 3, 10) == []
    assert await store.of_user(app, "alice") == [first, third]
    assert await store.log(f"{app}-other", 0, 10) == []


async def test_a_seq_is_taken_once(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    first = added(None, "alice", 1)
    rival = added(None, "mallory", 9)
    assert await store.append(app, first)
    assert not await store.append(app, rival)
    assert await store.log(app, 0, 10) == [first]


async def test_two_processes_appending_the_same_seq_leave_one(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    app = durable.app_id
    results = await asyncio.gather(
        one.append(app, added(None, "alice", 1)), two.append(app, added(None, "bob", 2))
    )
    assert sorted(results) == [False, True]
    (kept,) = await one.log(app, 0, 10)
    assert await two.log(app, 0, 10) == [kept]


async def test_every_process_on_one_database_gets_the_same_server_key(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    first = await one.server_key(b"\x01" * 32)
    assert len(first) == 32
    assert await two.server_key(b"\x02" * 32) == first
    assert await one.server_key(b"\x03" * 32) == first


# Not PostgreSQL: the shared database keeps earlier runs' key.
fresh = store_fixture(Backend, ["memory", "sqlite"])


async def test_a_fresh_store_keeps_the_first_candidate(fresh: Backend) -> None:
    store = await fresh.open()
    assert await store.server_key(b"\x05" * 32) == b"\x05" * 32
    assert await store.server_key(b"\x06" * 32) == b"\x05" * 32


async def test_a_closed_store_refuses(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    with pytest.raises(RuntimeError, match="key directory is not running"):
        await store.last(backend.app_id)
