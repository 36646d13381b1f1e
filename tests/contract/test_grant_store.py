"""The GrantStore contract: one suite, run against memory, SQLite and PostgreSQL.

PostgreSQL cases skip loudly when the server is unreachable, and fail under CI=true. The fake
clocks start at the real time (or a month before it, for the sweep), so that servers sharing the
test database, which sweep with real clocks, never remove a row a test still needs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from parley.auth.grants import Grant
from parley.backends.grants import GrantChange, GrantStore
from parley.backends.memory.grants import MemoryGrantStore
from parley.backends.sqlite.grants import SqliteGrantStore
from tests.support.stores import DURABLE_KINDS, FakeClock, StoreBackend, StoreKinds, store_fixture

HOUR_S = 3600.0


def _now_s() -> float:
    return float(int(time.time()))


@dataclass
class Backend(StoreBackend[GrantStore]):
    stores = StoreKinds(
        MemoryGrantStore, SqliteGrantStore, "parley.backends.postgres.grants:PostgresGrantStore"
    )
    tables = ("parley_grants",)
    clock: FakeClock = field(default_factory=lambda: FakeClock(_now_s()))

    @property
    def now_ms(self) -> int:
        return int(self.clock.now * 1000)

    def other_app(self, suffix: str = "x") -> str:
        app = f"{self.app_id}-{suffix}"
        self.apps.append(app)
        return app


backend = store_fixture(Backend)
durable = store_fixture(Backend, DURABLE_KINDS)


@pytest.fixture
async def store(backend: Backend) -> GrantStore:
    return await backend.open()


def ours(changes: list[GrantChange], app_id: str) -> list[tuple[str, str]]:
    """(kind, grant id) of one app's changes: a shared database holds other tests' too."""
    return [(c.kind, c.grant.id) for c in changes if c.grant.app_id == app_id]


# -- creating and reading ----------------------------------------------------------------------


async def test_create_then_get(store: GrantStore, backend: Backend) -> None:
    app = backend.app_id
    grant = await store.create(
        app, "ann", "private-team-*", ["write", "read", "read"], granted_by="admin"
    )
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,}", grant.id)
    assert (grant.app_id, grant.subject, grant.resource) == (app, "ann", "private-team-*")
    assert grant.operations == ("read", "write")
    assert (grant.created_at, grant.expires_at, grant.granted_by) == (backend.now_ms, None, "admin")
    assert await store.get(app, grant.id) == grant
    assert await store.get(app, "no-such-id") is None
    assert await store.get(app + "-other", grant.id) is None
    anyone = await store.create(app, "*", "chat", ("presence", "manage", "read", "write"))
    assert anyone.operations == ("manage", "presence", "read", "write")
    assert anyone.granted_by is None and anyone.id != grant.id
    assert await store.get(app, anyone.id) == anyone


async def test_list_filters_by_exact_subject_and_resource(
    store: GrantStore, backend: Backend
) -> None:
    app, clock = backend.app_id, backend.clock
    other = backend.other_app()
    made: list[Grant] = []
    for subject, resource in [
        ("ann", "room-1"),
        ("bob", "room-1"),
        ("ann", "room-*"),
        ("*", "room-1"),
        ("ann", "room-2"),
    ]:
        made.append(await store.create(app, subject, resource, ["read"]))
        clock.advance(0.01)
    elsewhere = await store.create(other, "ann", "room-1", ["read"])
    assert await store.list(app) == made
    assert await store.active(app) == made
    assert await store.list(app, subject="ann") == [made[0], made[2], made[4]]
    assert await store.list(app, subject="*") == [made[3]]
    assert await store.list(app, resource="room-1") == [made[0], made[1], made[3]]
    assert await store.list(app, resource="room-*") == [made[2]]  # a pattern is a string here
    assert await store.list(app, subject="ann", resource="room-1") == [made[0]]
    assert await store.list(app, subject="carol") == []
    assert await store.list(other) == [elsewhere]


async def test_delete(store: GrantStore, backend: Backend) -> None:
    app = backend.app_id
    keep = await store.create(app, "ann", "a", ["read"])
    gone = await store.create(app, "ann", "b", ["read"])
    assert await store.delete(app + "-other", gone.id) is None
    assert await store.delete(app, gone.id) == gone
    assert await store.get(app, gone.id) is None
    assert await store.list(app) == [keep]
    assert await store.active(app) == [keep]
    assert await store.delete(app, gone.id) is None  # already deleted
    assert await store.delete(app, "no-such-id") is None


async def test_ttl_expiry(store: GrantStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    short = await store.create(app, "ann", "x", ["read"], ttl_s=10)
    fraction = await store.create(app, "ann", "y", ["read"], ttl_s=0.0001)
    forever = await store.create(app, "ann", "z", ["read"])
    assert short.expires_at == short.created_at + 10_000
    assert fraction.expires_at == fraction.created_at + 1  # never expired at birth
    # Half-millisecond margins: the stores floor the clock to whole milliseconds.
    clock.advance(0.0015)
    assert await store.get(app, fraction.id) is None
    clock.advance(9.998)  # 9999.5 ms after creation: just before expiry
    assert set(await store.list(app)) == {short, forever}
    assert await store.get(app, short.id) == short
    clock.advance(0.001)  # expired from expires_at on
    assert await store.get(app, short.id) is None
    assert await store.list(app) == [forever]
    assert await store.active(app) == [forever]
    assert await store.list(app, resource="x") == []
    assert await store.delete(app, short.id) is None


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"subject": ""}, "subject"),
        ({"subject": "a b"}, "subject"),
        ({"subject": "ann*"}, "subject"),
        ({"subject": "x" * 129}, "subject"),
        ({"resource": ""}, "resource"),
        ({"resource": "room 1"}, "resource"),
        ({"resource": "room/1"}, "resource"),
        ({"resource": "room?"}, "resource"),
        ({"resource": "room[1]"}, "resource"),
        ({"resource": "x" * 201}, "resource"),
        ({"operations": []}, "operations"),
        ({"operations": ["read", "fly"]}, "operations"),
        ({"operations": ["READ"]}, "operations"),
        ({"operations": "read"}, "operations"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": -5}, "ttl_s"),
        ({"ttl_s": True}, "ttl_s"),
        ({"ttl_s": "60"}, "ttl_s"),
        ({"ttl_s": float("nan")}, "ttl_s"),
        ({"ttl_s": float("inf")}, "ttl_s"),
        ({"granted_by": "x" * 201}, "granted_by"),
    ],
)
async def test_invalid_grants_are_refused(
    store: GrantStore, backend: Backend, args: dict[str, Any], match: str
) -> None:
    full: dict[str, Any] = {"subject": "ann", "resource": "room", "operations": ["read"]}
    full.update(args)
    with pytest.raises(ValueError, match=match):
        await store.create(backend.app_id, **full)
    assert await store.list(backend.app_id) == []


async def test_every_allowed_resource_character(store: GrantStore, backend: Backend) -> None:
    for resource in ["Az09_-=@,.;", "#server-to-user-ann", "*", "x" * 200, "presence-*-team-*"]:
        grant = await store.create(backend.app_id, "ann", resource, ["read"])
        assert grant.resource == resource


# -- the change feed ---------------------------------------------------------------------------


async def test_changes_since_across_two_stores(durable: Backend) -> None:
    """Two servers on one database follow each other's grants."""
    app, clock = durable.app_id, durable.clock
    other = durable.other_app()
    a, b = await durable.open(), await durable.open()
    start = durable.now_ms
    g1 = await a.create(app, "ann", "room-1", ["read"])
    clock.advance(1)
    g2 = await a.create(app, "*", "room-*", ["read", "write"], ttl_s=60)
    g3 = await b.create(other, "bob", "room-1", ["read"])
    assert ours(await b.changes_since(app, start), app) == [("created", g1.id), ("created", g2.id)]
    seen = await b.changes_since(app, start)
    assert [c.grant for c in seen] == [g1, g2]
    assert [c.at for c in seen] == [g1.created_at, g2.created_at]
    assert ours(await b.changes_since(app, g2.created_at), app) == [("created", g2.id)]
    assert ours(await b.changes_since(app, g2.created_at + 1), app) == []
    everywhere = await b.changes_since(None, start)
    assert ours(everywhere, other) == [("created", g3.id)]
    assert ours(everywhere, app) == [("created", g1.id), ("created", g2.id)]

    clock.advance(1)
    deleted_at = durable.now_ms
    assert await b.delete(app, g1.id) == g1
    changes = await a.changes_since(app, start)
    assert ours(changes, app) == [("created", g1.id), ("created", g2.id), ("deleted", g1.id)]
    assert changes[-1].grant == g1 and changes[-1].at == deleted_at
    assert ours(await a.changes_since(app, deleted_at), app) == [("deleted", g1.id)]
    assert await a.get(app, g1.id) is None
    assert await a.active(app) == [g2]


async def test_changes_since_in_one_store(store: GrantStore, backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    start = backend.now_ms
    g = await store.create(app, "ann", "r", ["read"])
    await store.delete(app, g.id)  # in the same millisecond: creation still comes first
    changes = await store.changes_since(app, start)
    assert [(c.kind, c.grant, c.at) for c in changes] == [
        ("created", g, start),
        ("deleted", g, start),
    ]
    clock.advance(1)
    assert await store.changes_since(app, backend.now_ms) == []


async def test_tombstones_and_long_expired_grants_are_swept_after_an_hour(
    backend: Backend,
) -> None:
    # Run a month in the past, so that on a shared database this sweep takes only rows that
    # every other user of it has long stopped needing.
    app, clock = backend.app_id, backend.clock
    clock.advance(-30 * 86400)
    store = await backend.open()
    start = backend.now_ms
    revoked = await store.create(app, "ann", "a", ["read"])
    expiring = await store.create(app, "ann", "b", ["read"], ttl_s=1)
    kept = await store.create(app, "ann", "c", ["read"])
    await store.delete(app, revoked.id)
    clock.advance(HOUR_S - 2)
    await store.sweep()
    assert ours(await store.changes_since(app, start), app)[-1] == ("deleted", revoked.id)
    clock.advance(6)  # the tombstone is over an hour old, and so is the grant's expiry
    assert await store.sweep() >= 2
    assert ours(await store.changes_since(app, start), app) == [("created", kept.id)]
    assert await store.active(app) == [kept]
    assert expiring.id not in {c.grant.id for c in await store.changes_since(None, start)}


# -- persistence -------------------------------------------------------------------------------


async def test_grants_survive_close_and_reopen(backend: Backend) -> None:
    app, clock = backend.app_id, backend.clock
    store = await backend.open()
    start = backend.now_ms
    a = await store.create(app, "ann", "room-*", ["read", "presence"], ttl_s=600, granted_by="x")
    clock.advance(0.01)
    b = await store.create(app, "*", "lobby", ["read"])
    clock.advance(0.01)
    c = await store.create(app, "bob", "lobby", ["write"])
    await store.delete(app, c.id)
    await store.close()
    with pytest.raises(RuntimeError, match="not running"):
        await store.list(app)
    clock.advance(1)
    again = await backend.open()
    assert await again.active(app) == [a, b]
    assert await again.get(app, a.id) == a
    assert ours(await again.changes_since(app, start), app) == [
        ("created", a.id),
        ("created", b.id),
        ("created", c.id),
        ("deleted", c.id),
    ]
