"""Access against the narrow interface it needs of the node (`Connections`), here a fake: a
grant revoked ends the subscriptions it allowed and no other; a disabled user is terminated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from parley.backends.memory.grants import MemoryGrantStore
from parley.backends.memory.users import MemoryUserStore
from parley.core.access import Access, Connections
from parley.protocol.channels import channel_type
from parley.protocol.connection import PusherConnection
from parley.settings import AppConfig

APP = AppConfig(id="1", key="key", secret="secret", auth="builtin")


@dataclass
class FakeConnection:
    conn: PusherConnection | None


@dataclass
class FakeLive:
    """A node with connections and no sockets; records what Access asks of it."""

    apps: tuple[AppConfig, ...] = (APP,)
    live: list[FakeConnection] = field(default_factory=list)
    revoked: list[tuple[FakeConnection, str, str]] = field(default_factory=list)
    terminated: list[tuple[str, str]] = field(default_factory=list)

    def connect(self, user_id: str | None, *channels: str) -> FakeConnection:
        conn = PusherConnection(APP, f"1.{len(self.live)}")
        conn.establish(120)
        if user_id is not None:
            conn.identify(user_id)
        for channel in channels:  # as if the machine had accepted them
            conn.subscriptions[channel] = None
        connection = FakeConnection(conn)
        self.live.append(connection)
        return connection

    def connections(self, app: AppConfig) -> list[FakeConnection]:
        return list(self.live)

    def online(self, app: AppConfig, user_id: str) -> bool:
        return any(c.conn is not None and c.conn.user_id == user_id for c in self.live)

    def revoke(self, session: Any, channel: str, reason: str) -> None:
        self.revoked.append((session, channel, reason))
        session.conn.forget(channel)

    def terminate_user(self, app: AppConfig, user_id: str, reason: str = "") -> int:
        self.terminated.append((user_id, reason))
        return 1


@pytest.fixture
async def access() -> AsyncIterator[tuple[Access, FakeLive]]:
    live = FakeLive()
    host: Connections = live  # the fake satisfies the interface (mypy checks this line)
    grants, users = MemoryGrantStore(), MemoryUserStore()
    await grants.start()
    await users.start()
    access = Access(host, grants, users)  # not started: the test polls the stores itself
    yield access, live
    await access.close()
    await grants.close()
    await users.close()


async def test_revoking_a_grant_ends_only_what_it_alone_allowed(
    access: tuple[Access, FakeLive],
) -> None:
    acl, live = access
    room = await acl.create(APP, "alice", "private-room", ["read"], None, None)
    await acl.create(APP, "*", "private-lobby", ["read"], None, None)
    alice = live.connect("alice", "private-room", "private-lobby")
    bob = live.connect("bob", "private-lobby")
    anonymous = live.connect(None, "public")
    assert acl.subscribe_problem(APP, "alice", "private-room", channel_type("private-room")) is None
    await acl.delete(APP, room.id)
    assert live.revoked == [(alice, "private-room", "grant revoked")]
    assert alice.conn is not None and list(alice.conn.subscriptions) == ["private-lobby"]
    assert bob.conn is not None and list(bob.conn.subscriptions) == ["private-lobby"]
    assert anonymous.conn is not None and list(anonymous.conn.subscriptions) == ["public"]


async def test_a_disabled_user_online_here_is_terminated(access: tuple[Access, FakeLive]) -> None:
    acl, live = access
    await acl.users.add(APP.id, "carol", "carol-password")
    await acl.users.add(APP.id, "dave", "dave-password")
    live.connect("carol")
    await acl.users.disable(APP.id, "carol")
    await acl.users.disable(APP.id, "dave")  # not connected here: nothing to end
    await acl._poll_store()
    assert live.terminated == [("carol", "User disabled")]


async def test_identity_problem_is_the_user_stores_word_on_builtin_apps_only(
    access: tuple[Access, FakeLive],
) -> None:
    acl, _ = access
    await acl.users.add(APP.id, "erin", "erin-password")
    assert await acl.identity_problem(APP, "erin") is None
    assert await acl.identity_problem(APP, "someone-from-another-issuer") is None
    await acl.users.disable(APP.id, "erin")
    assert await acl.identity_problem(APP, "erin") == "user disabled"
    pusher_mode = AppConfig(id=APP.id, key="key", secret="secret")  # its backend decides
    assert await acl.identity_problem(pusher_mode, "erin") is None
    await acl.users.enable(APP.id, "erin")
    assert await acl.identity_problem(APP, "erin") is None
