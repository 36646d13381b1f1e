"""Two in-process nodes of one cluster on the machine's Redis and PostgreSQL, for integration
tests: short leases (a node silent for LEASE_S is dead), an app of the test's own."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from parley.settings import AppConfig, Settings
from tests.conftest import require
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.pusher_async import AsyncApi
from tests.support.redis import CLUSTER_SECRET, REDIS_URL, redis_problem, unique_prefix
from tests.support.stores import PG_URL, postgres_problem

REFRESH_S = 0.2  # short leases: a node silent for LEASE_S is dead
LEASE_S = 0.8


def an_app(**options: Any) -> AppConfig:
    return AppConfig(
        id=str(secrets.randbelow(10**9) + 10**9),  # an app of its own in the shared engines
        key=f"key-{secrets.token_hex(4)}",
        secret="test-secret",
        **options,
    )


@asynccontextmanager
async def two_nodes(
    tmp_path: Path,
    app: AppConfig,
    *,
    short_leases: bool = True,
    broker: str = REDIS_URL,
    **server: Any,
) -> AsyncIterator[list[InProcessApp]]:
    """Nodes "a" and "b" serving `app`, one Redis prefix of their own; with `short_leases` a
    node silent for LEASE_S is dead (else the settings' defaults); `server`: more Settings."""
    for problem in (await redis_problem(), await postgres_problem()):
        require(problem is None, problem or "")
    prefix = unique_prefix("cluster")
    base = app_settings(tmp_path)
    leases = {"presence_refresh_s": REFRESH_S, "node_lease_s": LEASE_S} if short_leases else {}

    def node(name: str) -> Settings:
        return dataclasses.replace(
            base,
            data_dir=tmp_path / name,
            store="postgres",
            postgres_url=PG_URL,
            broker=broker,
            cluster_secret=CLUSTER_SECRET,
            redis_prefix=prefix,
            node_id=f"node-{name}",
            apps=(app,),
            **{**leases, **server},
        )

    async with serving(node("a")) as one, serving(node("b")) as two:
        yield [one, two]


@asynccontextmanager
async def apis(nodes: list[InProcessApp]) -> AsyncIterator[list[AsyncApi]]:
    made = [AsyncApi(n.http_url, n.app.id, n.app.key, n.app.secret) for n in nodes]
    try:
        yield made
    finally:
        for api in made:
            await api.close()
