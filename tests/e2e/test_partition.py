"""A node cut off from Redis by the network (issue 13, "optional but valued"): node 2 runs in a
network namespace of the test's own, reaching Redis over one veth pair and its clients and
PostgreSQL over another. The Redis link goes down: packets are dropped, nothing is reset, as a
partition does. Node 1 keeps serving and announces node 2's members gone once its lease lapsed;
node 2 keeps its own clients, says so in /readyz and answers publishes as documented; once the
link is back node 2 registers again (its members come back) and what it accepted meanwhile
reaches node 1's subscribers."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from parley.backends.redis.broker import BACKOFF_MAX_S, PING_EVERY_S, PONG_TIMEOUT_S
from tests.conftest import require
from tests.support.netns import Forwarder, Namespace, netns_problem
from tests.support.nodes import cluster_env, drop_database, fresh_database, wait_for_status
from tests.support.pusher_raw import RawClient, presence_data, signed_request, unique
from tests.support.redis import OwnRedis, unique_prefix
from tests.support.server import ParleyServer
from tests.support.stores import postgres_problem

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

LEASE_BOUND_S = 2 + 3 * 0.5 + 5  # cluster_env's lease and refresh, and some slack


def publish(node: ParleyServer, channel: str, data: str) -> int:
    body = {"name": "e", "channels": [channel], "data": data}
    return signed_request(node, "POST", f"/apps/{node.app_id}/events", body=body).status


def test_a_node_cut_off_from_redis_keeps_its_clients_and_comes_back(tmp_path: Path) -> None:
    require(netns_problem() is None, netns_problem() or "")
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    require(asyncio.run(postgres_problem()) is None, "PostgreSQL is not reachable")
    ns: Namespace | None = None
    own: OwnRedis | None = None
    forwarder: Forwarder | None = None
    nodes: list[ParleyServer] = []
    clients: list[RawClient] = []
    url, name = fresh_database()
    try:
        ns = Namespace.make()
        own = OwnRedis(
            tmp_path, "--bind", "127.0.0.1", ns.redis_root, "--protected-mode", "no"
        ).start()
        forwarder = Forwarder(ns.main_root, ("127.0.0.1", 5432))
        inside_url = url.replace("127.0.0.1:5432", f"{forwarder.host}:{forwarder.port}")
        prefix = unique_prefix("partition")
        one = ParleyServer(env=cluster_env(url, prefix, 1, own.url)).start()
        nodes.append(one)
        two = ParleyServer(
            env=cluster_env(inside_url, prefix, 2, f"redis://{ns.redis_root}:{own.port}/0"),
            wrapper=ns.wrap(),
            host=ns.main_ns,
            args=["--host", ns.main_ns],
        ).start()
        nodes.append(two)
        news, room = unique("news-"), unique("presence-")
        near, far = RawClient(one.ws_url), RawClient(two.ws_url)
        watcher, member = RawClient(one.ws_url), RawClient(two.ws_url)
        clients += [near, far, watcher, member]
        near.subscribe(news)
        far.subscribe(news)
        watcher.subscribe(room, key=one.key, secret=one.secret, channel_data=presence_data("wat"))
        member.subscribe(room, key=two.key, secret=two.secret, channel_data=presence_data("bob"))
        watcher.expect("pusher_internal:member_added", room)
        assert publish(two, news, "0") == 200
        near.expect("e", news, where=lambda f: f["data"] == "0")
        far.expect("e", news, where=lambda f: f["data"] == "0")

        ns.cut()
        cut_at = time.monotonic()
        # node 1: node 2's member goes once its lease lapsed; node 1 serves on
        watcher.expect("pusher_internal:member_removed", room, timeout=LEASE_BOUND_S)
        assert time.monotonic() - cut_at < LEASE_BOUND_S
        assert publish(one, news, "from-1") == 200
        near.expect("e", news, where=lambda f: f["data"] == "from-1")
        # node 2 finds the link lost by itself, says so, and keeps its own clients: what it
        # accepts (200: stored) its subscribers hear at once, after what node 1 published
        # meanwhile (its offset comes first: a gap filled from the shared history)
        ready = wait_for_status(two, "/readyz", 503, within=PING_EVERY_S + PONG_TIMEOUT_S + 5)
        assert ready.json()["failing"] == ["broker"], ready.json()
        assert signed_request(two, "GET", "/healthz").status == 200
        for i in range(3):
            assert publish(two, news, f"cut-{i}") == 200
        heard = [far.expect("e", news) for _ in range(4)]
        assert [f["data"] for f in heard] == ["from-1", "cut-0", "cut-1", "cut-2"]
        assert [f["parley"]["offset"] for f in heard] == [2, 3, 4, 5]

        ns.heal()
        wait_for_status(two, "/readyz", 200, within=BACKOFF_MAX_S + 5)
        # node 2 registers again (its member is back) and sends what it accepted meanwhile,
        # in order, once
        watcher.expect("pusher_internal:member_added", room, timeout=LEASE_BOUND_S)
        got = [near.expect("e", news)["data"] for _ in range(3)]
        assert got == ["cut-0", "cut-1", "cut-2"], got
        assert publish(one, news, "after") == 200
        assert near.expect("e", news)["data"] == "after"  # nothing twice before it
        assert far.expect("e", news)["data"] == "after"
        for node in nodes:
            assert node.process is not None and node.process.poll() is None  # no crash
        lines = "".join(two.stderr_lines)
        assert lines.count('"broker disconnected"') == 1, lines[-3000:]
        assert '"broker connected"' in lines and "Traceback" not in lines
    finally:
        for client in clients:
            client.close()
        for node in nodes:
            node.cleanup()
        if forwarder is not None:
            forwarder.close()
        if own is not None:
            own.stop()
        drop_database(name)
        if ns is not None:
            ns.remove()
