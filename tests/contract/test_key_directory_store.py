"""The KeyDirectoryStore contract, on memory, SQLite and PostgreSQL: an append-only log per
app where a seq is taken once (two nodes appending at once: one wins), entries served exactly
as they were encoded, and one server key for every process on the same database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from parley.backends.database import Database
from parley.backends.keys import KeyDirectoryStore
from parley.backends.memory.keys import MemoryKeyDirectoryStore
from parley.backends.sqlite.db import SqliteDb
from parley.backends.sqlite.keys import SqliteKeyDirectoryStore
from parley.protocol import signed
from parley.protocol.directory import KeyEntry, next_entry
from tests.support.databases import open_database
from tests.support.stores import FakeClock, backend_lifecycle

ALL = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DURABLE = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass
class Backend:
    kind: str
    target: str
    app_id: str = field(default_factory=lambda: f"k{uuid.uuid4().hex[:12]}")
    clock: FakeClock = field(default_factory=lambda: FakeClock(time.time()))
    opened: list[Any] = field(default_factory=list)
    memory: MemoryKeyDirectoryStore | None = None

    async def open(self) -> KeyDirectoryStore:
        """A store; a durable one on a database handle of its own, as another process has."""
        store: KeyDirectoryStore
        db: Database | None = None
        if self.kind == "memory":
            store = self.memory = self.memory or MemoryKeyDirectoryStore(clock=self.clock)
        else:
            db = await open_database(self.kind, self.target)
            if isinstance(db, SqliteDb):
                store = SqliteKeyDirectoryStore(db, clock=self.clock)
            else:
                from parley.backends.postgres.db import PostgresDb
                from parley.backends.postgres.keys import PostgresKeyDirectoryStore

                assert isinstance(db, PostgresDb)
                store = PostgresKeyDirectoryStore(db, clock=self.clock)
        await store.start()
        self.opened.append(store)
        if db is not None:
            self.opened.append(db)
        return store


async def _backend(kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    async for backend in backend_lifecycle(kind, tmp_path, Backend, ("parley_key_log",)):
        yield backend


@pytest.fixture(params=ALL)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for b in _backend(request.param, tmp_path):
        yield b


@pytest.fixture(params=DURABLE)
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for b in _backend(request.param, tmp_path):
        yield b


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


@pytest.fixture(params=["memory", "sqlite"])  # the shared PostgreSQL keeps earlier runs' key
async def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for b in _backend(request.param, tmp_path):
        yield b


async def test_a_fresh_store_keeps_the_first_candidate(fresh: Backend) -> None:
    store = await fresh.open()
    assert await store.server_key(b"\x05" * 32) == b"\x05" * 32
    assert await store.server_key(b"\x06" * 32) == b"\x05" * 32


async def test_a_closed_store_refuses(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    with pytest.raises(RuntimeError, match="key directory is not running"):
        await store.last(backend.app_id)
