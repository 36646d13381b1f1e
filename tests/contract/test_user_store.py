"""The UserStore contract: one suite, run against memory, SQLite and PostgreSQL.

PostgreSQL cases skip loudly when the server is unreachable, and fail under CI=true. argon2
runs with cheap parameters here; `test_default_hasher_is_argon2_cffis_defaults` checks the
real ones once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher

from parley.backends.memory.users import MemoryUserStore
from parley.backends.sqlite.users import SqliteUserStore
from parley.backends.users import User, UserStore
from tests.support.stores import (
    DURABLE_KINDS,
    FakeClock,
    StoreBackend,
    StoreKinds,
    delete_app_rows,
    store_fixture,
)

T0 = 1_700_000_000.0
T0_MS = int(T0 * 1000)


class CountingHasher(PasswordHasher):
    """Cheap argon2id that counts verifications, to show `verify` does the same work always."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8192, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


@dataclass
class Backend(StoreBackend[UserStore]):
    stores = StoreKinds(
        MemoryUserStore, SqliteUserStore, "parley.backends.postgres.users:PostgresUserStore"
    )
    tables = ("parley_users",)
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    hasher: CountingHasher = field(default_factory=CountingHasher)

    async def open(self, hasher: PasswordHasher | None = None) -> UserStore:
        """A store hashing with `hasher`, the backend's CountingHasher unless given (a memory
        store keeps the hasher it was first made with)."""
        return await self.open_store(hasher=hasher or self.hasher)


backend = store_fixture(Backend)
durable = store_fixture(Backend, DURABLE_KINDS)


@pytest.fixture
async def store(backend: Backend) -> UserStore:
    return await backend.open()


# -- adding and verifying ----------------------------------------------------------------------


async def test_add_then_verify(store: UserStore, backend: Backend) -> None:
    app = backend.app_id
    info: dict[str, Any] = {"name": "Ann", "tags": ["a", 1, None]}
    added = await store.add(app, "ann", "correct horse", info)
    assert (added.app_id, added.name, added.info) == (app, "ann", info)
    assert (added.created_at, added.updated_at, added.disabled_at) == (T0_MS, T0_MS, None)
    assert not added.disabled
    assert await store.get(app, "ann") == added
    assert await store.verify(app, "ann", "correct horse") == added
    assert await store.verify(app, "ann", "wrong horse") is None
    assert await store.verify(app, "ann", "") is None
    assert await store.verify(app, "nobody", "correct horse") is None
    assert await store.verify(app + "-other", "ann", "correct horse") is None
    assert await store.get(app, "nobody") is None


async def test_info_is_optional(store: UserStore, backend: Backend) -> None:
    user = await store.add(backend.app_id, "plain", "pw")
    assert user.info is None
    assert (await store.get(backend.app_id, "plain")) == user


async def test_adding_an_existing_user_is_refused(store: UserStore, backend: Backend) -> None:
    app = backend.app_id
    first = await store.add(app, "dup", "one")
    with pytest.raises(ValueError, match="already exists"):
        await store.add(app, "dup", "two")
    assert await store.get(app, "dup") == first
    assert await store.verify(app, "dup", "one") is not None


@pytest.mark.parametrize("name", ["", "a b", "x" * 129, "é", "a/b", "a*", "a:b", "#x", None, 7])
async def test_names_are_validated(store: UserStore, backend: Backend, name: Any) -> None:
    with pytest.raises(ValueError, match="user name must be 1 to 128 characters"):
        await store.add(backend.app_id, name, "pw")
    assert await store.list(backend.app_id) == []


@pytest.mark.parametrize("name", ["a", "x" * 128, "Az09_-=@,.;", "ann@example.com"])
async def test_every_allowed_name(store: UserStore, backend: Backend, name: str) -> None:
    await store.add(backend.app_id, name, "pw")
    assert (await store.verify(backend.app_id, name, "pw")) is not None


@pytest.mark.parametrize(
    ("password", "info", "match"),
    [
        ("", None, "password must be a non-empty string"),
        ("x" * 4097, None, "at most 4096"),
        ("pw", ["not", "an", "object"], "JSON object"),
        ("pw", "text", "JSON object"),
        ("pw", {"bad": {1, 2}}, "not JSON"),
    ],
)
async def test_passwords_and_info_are_validated(
    store: UserStore, backend: Backend, password: str, info: Any, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await store.add(backend.app_id, "val", password, info)
    assert await store.get(backend.app_id, "val") is None


# -- hashes ------------------------------------------------------------------------------------


async def test_hashes_are_argon2id_salted_and_never_shown(
    store: UserStore, backend: Backend
) -> None:
    app = backend.app_id
    a = await store.add(app, "a", "same password")
    b = await store.add(app, "b", "same password")
    for user in (a, b):
        assert user.password_hash.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
        assert "same password" not in user.password_hash
        assert user.password_hash not in repr(user) and "same password" not in repr(user)
    assert a.password_hash != b.password_hash


async def test_verify_costs_one_verification_whatever_the_outcome(
    store: UserStore, backend: Backend
) -> None:
    app, hasher = backend.app_id, backend.hasher
    await store.add(app, "known", "pw")
    await store.add(app, "off", "pw")
    await store.disable(app, "off")
    for name, password in [
        ("known", "pw"),
        ("known", "wrong"),
        ("unknown", "pw"),
        ("off", "pw"),
        ("off", "wrong"),
    ]:
        before = hasher.verifications
        await store.verify(app, name, password)
        assert hasher.verifications - before == 1, (name, password)


async def test_set_password(store: UserStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    old = await store.add(app, "sp", "old")
    clock.advance(5)
    assert await store.set_password(app, "sp", "new") is True
    assert await store.verify(app, "sp", "old") is None
    now = await store.verify(app, "sp", "new")
    assert now is not None and now.password_hash != old.password_hash
    assert (now.created_at, now.updated_at) == (T0_MS, T0_MS + 5000)
    assert await store.set_password(app, "nobody", "new") is False
    with pytest.raises(ValueError, match="password"):
        await store.set_password(app, "sp", "")


async def test_default_hasher_is_argon2_cffis_defaults(tmp_path: Path) -> None:
    defaults = PasswordHasher()
    store = MemoryUserStore()
    await store.start()
    try:
        user = await store.add("app", "u", "pw")
    finally:
        await store.close()
    expected = (
        f"$argon2id$v=19$m={defaults.memory_cost},t={defaults.time_cost},p={defaults.parallelism}$"
    )
    assert user.password_hash.startswith(expected)


async def test_verify_rehashes_with_the_stores_parameters(durable: Backend) -> None:
    app = durable.app_id
    cheap = await durable.open()
    made = await cheap.add(app, "re", "pw")
    stronger = await durable.open(CountingHasher(time_cost=2))
    user = await stronger.verify(app, "re", "pw")
    assert user is not None and user.password_hash.startswith("$argon2id$v=19$m=8192,t=2,p=1$")
    assert user.password_hash != made.password_hash
    assert await cheap.verify(app, "re", "pw") is not None  # the new hash still verifies


# -- disabling ---------------------------------------------------------------------------------


async def test_disable_and_enable(store: UserStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    await store.add(app, "d", "pw")
    clock.advance(1)
    assert await store.disable(app, "d") is True
    user = await store.get(app, "d")
    assert user is not None and user.disabled and user.disabled_at == T0_MS + 1000
    assert user.updated_at == T0_MS + 1000
    assert await store.verify(app, "d", "pw") is None
    clock.advance(1)
    assert await store.enable(app, "d") is True
    user = await store.get(app, "d")
    assert user is not None and not user.disabled and user.disabled_at is None
    assert await store.verify(app, "d", "pw") == user
    clock.advance(1)
    assert await store.enable(app, "d") is True  # already enabled: nothing changes
    assert await store.get(app, "d") == user
    assert await store.disable(app, "nobody") is False
    assert await store.enable(app, "nobody") is False


async def test_disabled_since(store: UserStore, backend: Backend) -> None:
    app, other, clock = backend.app_id, backend.app_id + "-x", backend.clock
    try:
        for name in ("a", "b", "c"):
            await store.add(app, name, "pw")
        await store.add(other, "a", "pw")
        assert await store.disabled_since(app, 0) == []
        clock.advance(1)
        await store.disable(app, "b")
        t1 = int(clock.now * 1000)
        clock.advance(1)
        await store.disable(app, "a")
        await store.disable(other, "a")
        t2 = int(clock.now * 1000)
        assert await store.disabled_since(app, t1) == [(app, "b"), (app, "a")]
        assert await store.disabled_since(app, t1 + 1) == [(app, "a")]
        assert await store.disabled_since(app, t2 + 1) == []
        everywhere = await store.disabled_since(None, t1)
        assert [x for x in everywhere if x[0] in (app, other)] == [
            (app, "b"),
            (app, "a"),
            (other, "a"),
        ]
        await store.enable(app, "b")
        assert await store.disabled_since(app, 0) == [(app, "a")]
        clock.advance(1)
        await store.disable(app, "b")
        await store.disable(app, "a")  # again: stamped anew, so servers act once more
        assert await store.disabled_since(app, t2 + 1) == [(app, "a"), (app, "b")]
    finally:
        if backend.kind == "postgres":
            await delete_app_rows("parley_users", other)


# -- listing, apps, persistence ----------------------------------------------------------------


async def test_list_is_sorted_and_per_app(store: UserStore, backend: Backend) -> None:
    app, other = backend.app_id, backend.app_id + "-x"
    try:
        for name in ("carol", "Bob", "alice", "_x", "a.b"):
            await store.add(app, name, "pw")
        await store.add(other, "zed", "pw")
        await store.disable(app, "carol")
        listed = await store.list(app)
        assert [u.name for u in listed] == sorted(["carol", "Bob", "alice", "_x", "a.b"])
        assert [u.name for u in listed if u.disabled] == ["carol"]
        assert all(isinstance(u, User) and u.app_id == app for u in listed)
        assert [u.name for u in await store.list(other)] == ["zed"]
        assert await store.list(app + "-empty") == []
    finally:
        if backend.kind == "postgres":
            await delete_app_rows("parley_users", other)


async def test_users_survive_close_and_reopen(backend: Backend) -> None:
    app = backend.app_id
    store = await backend.open()
    await store.add(app, "p", "pw", {"k": "v"})
    await store.add(app, "q", "pw")
    await store.disable(app, "q")
    before = await store.list(app)
    await store.close()
    with pytest.raises(RuntimeError, match="not running"):
        await store.get(app, "p")
    again = await backend.open()
    assert await again.list(app) == before
    assert await again.verify(app, "p", "pw") == before[0]
    assert await again.verify(app, "q", "pw") is None


async def test_two_stores_on_one_database_see_each_other(durable: Backend) -> None:
    """The server and `parley users` are separate processes on one database."""
    app = durable.app_id
    server, cli = await durable.open(), await durable.open()
    await cli.add(app, "ann", "pw")
    assert await server.verify(app, "ann", "pw") is not None
    since = int(durable.clock.now * 1000)
    assert await cli.disable(app, "ann") is True
    assert await server.disabled_since(app, since) == [(app, "ann")]
    assert await server.verify(app, "ann", "pw") is None
