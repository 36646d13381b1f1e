"""The LoginAttempts contract (parley.backends.throttle), on one node's memory and on the
cluster's Redis, where two nodes' counters are one: concurrent guesses on both are counted
before any is checked, and the limit holds across them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from parley.backends.memory.throttle import MemoryLoginAttempts
from parley.backends.redis.throttle import RedisLoginAttempts
from parley.backends.throttle import LoginAttempts
from tests.conftest import require
from tests.support.redis import REDIS_URL, redis_problem, unique_prefix

KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=KINDS)
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], LoginAttempts]]:
    """Makes the counters of one more node of the same deployment."""
    made: list[RedisLoginAttempts] = []
    if request.param == "memory":
        shared = MemoryLoginAttempts()  # one process: every "node" is this one
        yield lambda: shared
        return
    require(await redis_problem() is None, f"Redis: {await redis_problem()}")
    prefix = unique_prefix("login")

    def node() -> LoginAttempts:
        made.append(RedisLoginAttempts(REDIS_URL, prefix=prefix))
        return made[-1]

    yield node
    for attempts in made:
        await attempts.close()


def keys(user: str = "gina", address: str = "192.0.2.1") -> list[str]:
    return [f"user:1:{user}-{uuid.uuid4().hex[:6]}", f"addr:{address}-{uuid.uuid4().hex[:6]}"]


async def test_concurrent_guesses_on_two_nodes_pass_five_at_most(
    nodes: Callable[[], LoginAttempts],
) -> None:
    a, b = nodes(), nodes()
    user, address = keys()
    results = await asyncio.gather(
        *((a if i % 2 else b).attempt([user, f"{address}-{i}"]) for i in range(30))
    )
    let_through = [token for wait, token in results if wait == 0]
    assert len(let_through) == 5 and all(let_through)
    waits = [wait for wait, token in results if wait > 0]
    assert len(waits) == 25 and all(0 < w <= 60 for w in waits)
    assert all(token == "" for wait, token in results if wait > 0)


async def test_a_success_forgives_the_user_and_takes_back_only_its_own_address_count(
    nodes: Callable[[], LoginAttempts],
) -> None:
    a, b = nodes(), nodes()
    user, address = keys()
    tokens = [(await a.attempt([user, address]))[1] for _ in range(4)]
    assert (await b.attempt([user, address]))[0] == 0  # the fifth: let through
    await b.succeeded(user, address, tokens[-1])  # one of them was right
    assert (await a.attempt([user, address]))[0] == 0  # the user starts again
    # the address keeps the others: 20 in all lock it, whoever the user
    others = [f"user:1:other-{i}-{uuid.uuid4().hex[:4]}" for i in range(20)]
    results = [await b.attempt([other, address]) for other in others]
    assert sum(1 for wait, _ in results if wait == 0) == 20 - 5  # 5 still counted
    assert (await a.attempt([keys()[0], address]))[0] > 0
