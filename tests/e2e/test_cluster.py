"""Several `parley serve` nodes on one Redis and one PostgreSQL behave as one server (issue
13): real processes, unmodified pusher-js and the npm SDK spread over them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.support.node_scenarios import run_scenario
from tests.support.nodes import cluster_env, drop_database, fresh_database, wait_for_status
from tests.support.pusher_raw import (
    RawClient,
    presence_data,
    sdk,
    signed_request,
    unique,
    user_auth,
)
from tests.support.redis import (
    REDIS_URL,
    OwnRedis,
    free_port,
    redis_problem,
    unique_prefix,
)
from tests.support.server import TIMEOUT, ParleyServer
from tests.support.stores import postgres_problem

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


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


@pytest.mark.node
def test_pusher_js_hears_the_clusters_subscription_count(node_modules: Path) -> None:
    """subscription_count.mjs with its three clients on three nodes: every
    pusher:subscription_count is the count over the cluster."""
    require(asyncio.run(redis_problem()) is None, "Redis is not reachable")
    require(asyncio.run(postgres_problem()) is None, "PostgreSQL is not reachable")
    url, name = fresh_database()
    prefix = unique_prefix("counted")
    nodes: list[ParleyServer] = []
    try:
        for i in range(1, 4):
            env = {**cluster_env(url, prefix, i), "PARLEY_APP_SUBSCRIPTION_COUNT": "true"}
            nodes.append(ParleyServer(env=env).start())
        ports = ",".join(str(n.port) for n in nodes)
        run_scenario(nodes[0], "subscription_count.mjs", env={"PARLEY_E2E_PORTS": ports})
    finally:
        for node in nodes:
            node.cleanup()
        drop_database(name)


def members(frame: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(frame["data"])["presence"]["hash"])


def test_presence_is_one_list_on_every_node_and_a_killed_nodes_members_go(
    cluster: list[ParleyServer],
) -> None:
    channel = unique("presence-room-")
    clients: list[RawClient] = []

    def join(node: ParleyServer, user: str) -> tuple[RawClient, dict[str, Any]]:
        client = RawClient(node.ws_url)
        clients.append(client)
        data = presence_data(user, {"name": user.title()})
        frame = client.subscribe(channel, key=node.key, secret=node.secret, channel_data=data)
        return client, members(frame)

    try:
        ann, seen = join(cluster[0], "ann")
        assert seen == {"ann": {"name": "Ann"}}
        bob, seen = join(cluster[1], "bob")
        assert seen == {"ann": {"name": "Ann"}, "bob": {"name": "Bob"}}
        added = ann.expect("pusher_internal:member_added", channel)  # from another node
        assert json.loads(added["data"]) == {"user_id": "bob", "user_info": {"name": "Bob"}}
        # ann again, on the third node: one member, so nobody is told
        ann2, seen = join(cluster[2], "ann")
        assert list(seen) == ["ann", "bob"]
        cyd, seen = join(cluster[2], "cyd")
        for watcher in (ann, bob, ann2):
            watcher.expect(
                "pusher_internal:member_added", channel, where=lambda f: "cyd" in f["data"]
            )
        # the HTTP API of every node agrees
        for node in cluster:
            users = signed_request(node, "GET", f"/apps/{node.app_id}/channels/{channel}/users")
            assert sorted(u["id"] for u in users.json()["users"]) == ["ann", "bob", "cyd"]
        # ann leaves node 1: still a member (her connection on node 3)
        ann.close()
        bob.send_event("pusher:ping", {})
        bob.expect("pusher:pong")
        # node 2 dies: bob (only there) is removed for everyone left, within the lease
        cluster[1].kill()
        began = time.monotonic()
        for watcher in (ann2, cyd):
            removed = watcher.expect("pusher_internal:member_removed", channel, timeout=TIMEOUT + 5)
            assert json.loads(removed["data"]) == {"user_id": "bob"}
        took = time.monotonic() - began
        assert took < 2 + 0.5 + 3, f"member_removed took {took:.1f} s"
        for watcher in (ann2, cyd):  # and nothing was said of ann
            assert not [
                f
                for f in watcher.seen
                if f.get("event") == "pusher_internal:member_removed" and "ann" in f["data"]
            ]
        users = signed_request(
            cluster[0], "GET", f"/apps/{cluster[0].app_id}/channels/{channel}/users"
        )
        assert sorted(u["id"] for u in users.json()["users"]) == ["ann", "cyd"]
        assert any(
            '"node reaped"' in line
            for node in (cluster[0], cluster[2])
            for line in node.stderr_lines
        )
    finally:
        for client in clients:
            client.close()


def channel_counts(node: ParleyServer, prefix: str) -> dict[str, Any]:
    """GET channels on `node`: name -> {subscription_count}."""
    path = f"/apps/{node.app_id}/channels"
    params = {"filter_by_prefix": prefix, "info": "subscription_count"}
    answer = signed_request(node, "GET", path, params=params)
    assert answer.status == 200, answer.body
    return dict(answer.json()["channels"])


def until_every_node_says(
    nodes: list[ParleyServer], prefix: str, expected: dict[str, Any], within: float
) -> float:
    """Poll GET channels on every node until each answers `expected`; the seconds it took."""
    began = time.monotonic()
    while True:
        answers = [channel_counts(node, prefix) for node in nodes]
        if all(answer == expected for answer in answers):
            return time.monotonic() - began
        assert time.monotonic() - began < within, answers
        time.sleep(0.05)  # polling the HTTP API, bounded by `within`


def test_channel_counts_agree_on_every_node_and_a_killed_nodes_go(
    cluster: list[ParleyServer],
) -> None:
    prefix = unique("counted-")
    shared, alone = f"{prefix}-shared", f"{prefix}-on-2"
    clients: list[RawClient] = []
    try:
        for node, count in zip(cluster, (1, 2, 3), strict=True):
            for _ in range(count):
                client = RawClient(node.ws_url)
                clients.append(client)
                client.subscribe(shared)
        client = RawClient(cluster[1].ws_url)
        clients.append(client)
        client.subscribe(alone)
        until_every_node_says(
            cluster,
            prefix,
            {shared: {"subscription_count": 6}, alone: {"subscription_count": 1}},
            within=2,
        )
        for node in cluster:
            path = f"/apps/{node.app_id}/channels/{shared}"
            info = signed_request(node, "GET", path, params={"info": "subscription_count"})
            assert info.json() == {"occupied": True, "subscription_count": 6}
        cluster[1].kill()  # its counts go with its lease (2 s here), reaped by a survivor
        took = until_every_node_says(
            [cluster[0], cluster[2]], prefix, {shared: {"subscription_count": 4}}, within=10
        )
        assert took < 2 + 0.5 + 3, f"the killed node's counts took {took:.1f} s to go"
    finally:
        for client in clients:
            client.close()


def signed_in(node: ParleyServer, user_id: str) -> RawClient:
    client = RawClient(node.ws_url)
    user_data = json.dumps({"id": user_id})
    auth = user_auth(node.key, node.secret, client.socket_id, user_data)
    client.send_event("pusher:signin", {"auth": auth, "user_data": user_data})
    client.expect("pusher:signin_success")
    return client


def test_send_to_user_and_terminate_reach_the_users_connections_on_every_node(
    cluster: list[ParleyServer],
) -> None:
    user = unique("user-")
    clients = [signed_in(node, user) for node in cluster[1:]]  # on nodes 2 and 3
    bystander = signed_in(cluster[2], unique("other-"))
    try:
        body = {"name": "note", "channels": [f"#server-to-user-{user}"], "data": '{"hi":1}'}
        sent = signed_request(cluster[0], "POST", f"/apps/{cluster[0].app_id}/events", body=body)
        assert sent.status == 200
        for client in clients:
            frame = client.expect("note", f"#server-to-user-{user}")
            assert frame["data"] == '{"hi":1}'
        path = f"/apps/{cluster[0].app_id}/users/{user}/terminate_connections"
        assert signed_request(cluster[0], "POST", path, body={}).status == 200
        for client in clients:
            client.expect_error(4009)
            assert client.expect_close()[0] == 4009
        bystander.ping()  # another user's connection stays
    finally:
        for client in (*clients, bystander):
            client.close()


def test_redis_stopped_and_started_nodes_keep_serving_and_deliver_what_was_accepted(
    tmp_path: Path,
) -> None:
    """A Redis of the test's own is stopped under two nodes: neither crashes, /healthz stays
    200 and /readyz says 503 naming the broker, a node's own subscribers keep getting its
    events, events accepted (200) meanwhile reach the other node's subscribers once Redis is
    back (in order, once), and a subscriber that missed some resumes on the other node."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    require(asyncio.run(postgres_problem()) is None, "PostgreSQL is not reachable")
    own = OwnRedis(tmp_path).start()
    url, name = fresh_database()
    nodes: list[ParleyServer] = []
    clients: list[RawClient] = []
    try:
        prefix = unique_prefix("outage")
        nodes = [ParleyServer(env=cluster_env(url, prefix, i, own.url)).start() for i in (1, 2)]
        channel = unique("news-")
        near, far = RawClient(nodes[0].ws_url), RawClient(nodes[1].ws_url)
        clients += [near, far]
        near.subscribe(channel)
        far.subscribe(channel)
        api = sdk(nodes[0])
        api.trigger(channel, "e", "0")
        last = far.expect("e", channel)["parley"]
        near.expect("e", channel)
        own.stop()
        ready = wait_for_status(nodes[0], "/readyz", 503)
        assert "broker" in ready.json()["checks"] and ready.json()["checks"]["broker"] != "ok"
        assert signed_request(nodes[0], "GET", "/healthz").status == 200
        for i in range(1, 6):
            api.trigger(channel, "e", str(i))  # 200: stored, delivered here, queued for Redis
        assert [near.expect("e", channel)["data"] for _ in range(5)] == [
            str(i) for i in range(1, 6)
        ]
        own.start()
        wait_for_status(nodes[0], "/readyz", 200)
        wait_for_status(nodes[1], "/readyz", 200)
        got = [far.expect("e", channel) for _ in range(5)]
        assert [f["data"] for f in got] == [str(i) for i in range(1, 6)]
        api.trigger(channel, "e", "6")
        assert far.expect("e", channel)["data"] == "6"  # and nothing twice before it
        # a subscriber of node 2 that saw only event 0 resumes on node 1
        again = RawClient(nodes[0].ws_url)
        clients.append(again)
        again.subscribe(channel)
        again.send_event("parley:resume", {"channel": channel, "since": last})
        replay = [again.expect("e", channel)["data"] for _ in range(6)]
        assert replay == [str(i) for i in range(1, 7)]
        assert again.expect("parley:resumed", channel)["data"]["recovered"] is True
        for node in nodes:
            assert node.process is not None and node.process.poll() is None  # nobody crashed
            lines = "".join(node.stderr_lines)
            assert lines.count('"broker disconnected"') == 1 and '"broker connected"' in lines
    finally:
        for client in clients:
            client.close()
        for node in nodes:
            node.cleanup()
        own.stop()
        drop_database(name)


def test_workers_share_one_port_and_deliver_to_each_others_subscribers() -> None:
    require(asyncio.run(redis_problem()) is None, "Redis is not reachable")
    require(asyncio.run(postgres_problem()) is None, "PostgreSQL is not reachable")
    url, name = fresh_database()
    env = cluster_env(url, unique_prefix("workers"), 1)
    del env["PARLEY_NODE_ID"]
    server = ParleyServer(env=env, args=["--workers", "2"], port=free_port())
    clients: list[RawClient] = []
    try:
        server.start()
        deadline = time.monotonic() + TIMEOUT
        while sum("listening on" in line for line in server.stdout_lines) < 2:
            assert time.monotonic() < deadline, server.stdout_lines
            time.sleep(0.05)  # the second worker's start line, bounded by the deadline
        assert any("supervising 2 workers" in line for line in server.stdout_lines)
        channel = unique("spread-")
        for _ in range(16):  # the kernel spreads them over the two workers
            client = RawClient(server.ws_url)
            client.subscribe(channel)
            clients.append(client)
        sdk(server).trigger(channel, "e", "to all")
        for client in clients:
            assert client.expect("e", channel)["data"] == "to all"
        started = [line for line in server.stderr_lines if '"event":"listening"' in line]
        assert sorted(json.loads(line)["node_id"][-3:] for line in started) == ["-w1", "-w2"]
    finally:
        for client in clients:
            client.close()
        assert server.stop() == 0
        drop_database(name)


def test_workers_without_redis_and_postgresql_are_refused_saying_what_is_needed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "parley", "serve", "--workers", "2", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")},
    )
    assert done.returncode == 2
    assert "--workers 2 needs what several nodes need: PARLEY_BROKER=redis://" in done.stderr
