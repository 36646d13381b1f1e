"""core.liveness: one pass of the idle sweep over sessions on recording transports, cache
expiry, and readiness over engines that answer, fail or hang."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from parley.core.hub import CachedEvent
from parley.core.liveness import readiness
from tests.support.transport import APP, RecordingTransport, connect, make_node, started


def error_then_close(transport: RecordingTransport) -> tuple[Any, tuple[int, str]]:
    """The pusher:error's data and the close, the only two calls made."""
    assert [call[0] for call in transport.calls] == ["write", "close"]
    return transport.written[0]["data"], transport.closes[0]


def test_a_silent_connection_is_pinged_once_then_closed_with_4201() -> None:
    node = make_node(activity_timeout_s=10, pong_timeout_s=5)
    session, transport = connect(node)
    sweep = node.liveness.sweep
    now = session.last_seen
    sweep(now + 9, time.time())
    assert transport.calls == []
    sweep(now + 11, time.time())
    sweep(now + 12, time.time())
    assert transport.events == ["pusher:ping"]  # once
    transport.calls.clear()
    sweep(now + 16, time.time())
    assert error_then_close(transport) == (
        {"code": 4201, "message": "Pong reply not received"},
        (4201, "Pong reply not received"),
    )
    assert node.metrics.errors[(APP.id, "4201")] == 1


def test_a_connection_heard_from_is_not_pinged() -> None:
    node = make_node(activity_timeout_s=10, pong_timeout_s=5)
    session, transport = connect(node)
    start = session.last_seen
    node.liveness.sweep(start + 11, time.time())
    assert transport.events == ["pusher:ping"]
    session.activity()  # the pong
    node.liveness.sweep(session.last_seen + 9, time.time())
    assert transport.events == ["pusher:ping"]
    assert transport.closes == []


def test_a_connection_whose_token_expired_is_closed_with_4009() -> None:
    node = make_node()
    session, transport = connect(node)
    session.token_expires_at = time.time() + 60
    node.liveness.sweep(time.monotonic(), time.time())
    assert transport.calls == []
    node.liveness.sweep(time.monotonic(), time.time() + 61)
    assert error_then_close(transport) == (
        {"code": 4009, "message": "token expired"},
        (4009, "token expired"),
    )


def test_cached_events_past_their_ttl_are_dropped() -> None:
    node = make_node()
    hub = node.hubs[APP.id]
    now = time.monotonic()
    hub.cache["cache-old"] = CachedEvent(b"{}", "e", "old", now - 1)
    hub.cache["cache-new"] = CachedEvent(b"{}", "e", "new", now + 60)
    node.liveness.expire_cache(hub)
    assert list(hub.cache) == ["cache-new"]


class Engine:
    def __init__(self, engine: str, problem: Exception | None = None, hang: bool = False) -> None:
        self.engine = engine
        self.problem = problem
        self.hang = hang

    async def check(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.problem is not None:
            raise self.problem


async def test_readiness_names_each_engine_and_the_checks_that_fail() -> None:
    ok = await readiness({"broker": Engine("memory"), "store": Engine("sqlite")})
    assert ok.ready
    assert (ok.checks, ok.failing) == ({"broker": "memory: ok", "store": "sqlite: ok"}, [])
    failing = await readiness(
        {
            "broker": Engine("redis", hang=True),
            "store": Engine("postgres", ConnectionRefusedError("connection refused")),
        },
        timeout_s=0.05,
    )
    assert not failing.ready
    assert failing.checks == {
        "broker": "redis: no answer within 0.05 s",
        "store": "postgres: connection refused",
    }
    assert failing.failing == ["broker", "store"]


async def test_a_node_is_ready_when_its_broker_and_store_answer() -> None:
    node = await started(make_node())
    ready = await node.readiness()
    assert (ready.checks, ready.failing) == ({"broker": "memory: ok", "store": "memory: ok"}, [])
    await node.history.close()
    assert (await node.readiness()).failing == ["store"]
