"""Real `parley serve` node processes of one cluster, for end-to-end tests: a PostgreSQL
database of the test's own, the nodes' environment on Redis, and waiting for a node's
answer to change."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from tests.support.pusher_raw import signed_request
from tests.support.redis import CLUSTER_SECRET, REDIS_URL
from tests.support.server import TIMEOUT, ParleyServer
from tests.support.stores import PG_URL


def admin(sql: str) -> None:
    """One statement on the test database server, as its administrator."""

    async def run() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def fresh_database() -> tuple[str, str]:
    """A PostgreSQL database of the test's own: (its URL, its name)."""
    name = f"parley_cluster_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    return PG_URL.rsplit("/", 1)[0] + "/" + name, name


def drop_database(name: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cluster_env(
    database_url: str, prefix: str, node: int, redis_url: str = REDIS_URL
) -> dict[str, str]:
    return {
        # a short lease, so that a dead node's members go within this test's patience (the
        # defaults, 5 s and 10 s, removed them 14 s after a SIGKILL here)
        "PARLEY_PRESENCE_REFRESH_S": "0.5",
        "PARLEY_NODE_LEASE_S": "2",
        "PARLEY_BROKER": redis_url,
        "PARLEY_CLUSTER_SECRET": CLUSTER_SECRET,
        "PARLEY_REDIS_PREFIX": prefix,
        "PARLEY_NODE_ID": f"node-{node}",
        "PARLEY_STORE": "postgres",
        "PARLEY_POSTGRES_URL": database_url,
        "PARLEY_APP_CLIENT_EVENTS": "true",
        "PARLEY_APP_CLIENT_EVENT_RATE": "0",
    }


def wait_for_status(node: ParleyServer, path: str, status: int, within: float = TIMEOUT) -> Any:
    """The node's answer to GET `path` once it is `status` (bounded by `within` seconds)."""
    deadline = time.monotonic() + within
    while True:
        answer = signed_request(node, "GET", path)
        if answer.status == status or time.monotonic() > deadline:
            assert answer.status == status, (path, answer.status, answer.body)
            return answer
        time.sleep(0.05)  # polling an HTTP endpoint, bounded by the deadline
