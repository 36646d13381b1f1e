"""Several `parley serve` nodes on one Redis and one PostgreSQL behave as one server (issue
13): real processes, unmodified pusher-js and the npm SDK spread over them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.conftest import require
from tests.support.node_scenarios import run_scenario
from tests.support.redis import CLUSTER_SECRET, REDIS_URL, redis_problem, unique_prefix
from tests.support.server import ParleyServer
from tests.support.stores import PG_URL, postgres_problem

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


def fresh_database() -> tuple[str, str]:
    """A PostgreSQL database of the test's own: (its URL, its name)."""
    name = f"parley_cluster_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return PG_URL.rsplit("/", 1)[0] + "/" + name, name


def drop_database(name: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


def cluster_env(
    database_url: str, prefix: str, node: int, redis_url: str = REDIS_URL
) -> dict[str, str]:
    return {
        "PARLEY_BROKER": redis_url,
        "PARLEY_CLUSTER_SECRET": CLUSTER_SECRET,
        "PARLEY_REDIS_PREFIX": prefix,
        "PARLEY_NODE_ID": f"node-{node}",
        "PARLEY_STORE": "postgres",
        "PARLEY_POSTGRES_URL": database_url,
        "PARLEY_APP_CLIENT_EVENTS": "true",
        "PARLEY_APP_CLIENT_EVENT_RATE": "0",
    }


@pytest.fixture
def cluster() -> Iterator[list[ParleyServer]]:
    require(asyncio.run(redis_problem()) is None, "Redis is not reachable")
    require(asyncio.run(postgres_problem()) is None, "PostgreSQL is not reachable")
    url, name = fresh_database()
    prefix = unique_prefix("cluster")
    nodes: list[ParleyServer] = []
    try:
        for i in range(1, 4):
            nodes.append(ParleyServer(env=cluster_env(url, prefix, i)).start())
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()
        drop_database(name)


@pytest.mark.node
def test_pusher_js_over_three_nodes_gets_every_event_once_in_one_order(
    cluster: list[ParleyServer], node_modules: Path
) -> None:
    ports = ",".join(str(n.port) for n in cluster)
    run_scenario(cluster[0], "cluster.mjs", env={"PARLEY_E2E_PORTS": ports})
    for i, node in enumerate(cluster, start=1):
        assert any(f"node-{i} of the cluster on {REDIS_URL}" in line for line in node.stdout_lines)
