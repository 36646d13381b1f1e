"""History and recovery through real server processes: the HTTP history API, idempotent
publishing, resume over the socket, durability across SIGKILL (SQLite and PostgreSQL), and
pusher-js recovering with Parley's helper after its socket is cut."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.pusher_raw import RawClient, all_history, history, sdk, signed_request, unique
from tests.support.server import ROOT, TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e

POSTGRES_URL = os.environ.get(
    "PARLEY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="module")
def shared() -> Iterator[ParleyServer]:
    with ParleyServer(env={"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        yield srv


def test_every_delivered_event_carries_its_position_and_is_in_history(shared: ParleyServer) -> None:
    channel = unique("feed-")
    with RawClient(shared.ws_url) as reader:
        reader.subscribe(channel)
        client = sdk(shared)
        for i in range(5):
            client.trigger(channel, "tick", {"i": i})
        delivered = [reader.expect("tick", channel=channel) for _ in range(5)]
    offsets = [f["parley"]["offset"] for f in delivered]
    assert offsets == [1, 2, 3, 4, 5]
    assert {f["parley"]["epoch"] for f in delivered} == {delivered[0]["parley"]["epoch"]}
    page = history(shared, channel)
    assert [e["parley"]["offset"] for e in page["events"]] == offsets
    assert [json.loads(e["data"])["i"] for e in page["events"]] == [0, 1, 2, 3, 4]
    assert page["epoch"] == delivered[0]["parley"]["epoch"] and page["next"] is None
    assert page["events"][0]["parley"]["publisher"] == {"type": "server", "app_id": shared.app_id}


def test_history_paging_both_directions_and_bad_arguments(shared: ParleyServer) -> None:
    channel = unique("paged-")
    client = sdk(shared)
    for i in range(7):
        client.trigger(channel, "n", str(i))
    first = history(shared, channel, limit="3")
    assert [e["parley"]["offset"] for e in first["events"]] == [1, 2, 3] and first["next"] == 3
    second = history(shared, channel, limit="3", after=str(first["next"]))
    assert [e["parley"]["offset"] for e in second["events"]] == [4, 5, 6]
    back = history(shared, channel, limit="2", direction="backward")
    assert [e["parley"]["offset"] for e in back["events"]] == [7, 6] and back["next"] == 6
    more = history(shared, channel, limit="10", direction="backward", before="6")
    assert [e["parley"]["offset"] for e in more["events"]] == [5, 4, 3, 2, 1] and more[
        "next"
    ] is None
    for params, problem in [
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"direction": "up"}, "direction"),
    ]:
        response = signed_request(
            shared, "GET", f"/apps/{shared.app_id}/channels/{channel}/history", params=params
        )
        assert response.status == 400 and problem in response.json()["error"]


def test_client_events_are_stored_with_their_stamped_sender(shared: ParleyServer) -> None:
    from tests.support.pusher_raw import user_auth

    channel = unique("private-chat-")
    with RawClient(shared.ws_url) as alice, RawClient(shared.ws_url) as bob:
        user_data = json.dumps({"id": "alice"})
        alice.send_event(
            "pusher:signin",
            {
                "auth": user_auth(shared.key, shared.secret, alice.socket_id, user_data),
                "user_data": user_data,
            },
        )
        alice.expect("pusher:signin_success")
        alice.subscribe(channel, secret=shared.secret, key=shared.key)
        bob.subscribe(channel, secret=shared.secret, key=shared.key)
        alice.send(
            {
                "event": "client-msg",
                "channel": channel,
                "data": {"text": "hi"},
                "user_id": "mallory",
            }
        )
        got = bob.expect("client-msg", channel=channel)
    assert got["user_id"] == "alice" and got["parley"]["publisher"] == {
        "type": "user",
        "id": "alice",
    }
    (stored,) = history(shared, channel)["events"]
    assert stored["user_id"] == "alice" and stored["data"] == {"text": "hi"}


def test_resume_replays_what_was_missed_then_answers_resumed(shared: ParleyServer) -> None:
    channel = unique("resume-")
    client = sdk(shared)
    with RawClient(shared.ws_url) as first:
        first.subscribe(channel)
        client.trigger(channel, "e", "0")
        seen = first.expect("e", channel=channel)["parley"]
    for i in range(1, 31):
        client.trigger(channel, "e", str(i))
    with RawClient(shared.ws_url) as again:
        again.subscribe(channel)
        again.send_event(
            "parley:resume",
            {"channel": channel, "since": {"offset": seen["offset"], "epoch": seen["epoch"]}},
        )
        replay = [again.expect("e", channel=channel) for _ in range(30)]
        resumed = again.expect("parley:resumed", channel=channel)
        client.trigger(channel, "e", "31")
        live = again.expect("e", channel=channel)
    assert [f["data"] for f in replay] == [str(i) for i in range(1, 31)]
    assert resumed["data"] == {"channel": channel, "recovered": True}
    assert live["parley"]["offset"] == 32
    with RawClient(shared.ws_url) as stale:
        stale.subscribe(channel)
        stale.send_event(
            "parley:resume", {"channel": channel, "since": {"offset": 1, "epoch": "not-the-epoch"}}
        )
        assert stale.expect("parley:resumed", channel=channel)["data"]["recovered"] is False
        stale.send_event(
            "parley:resume", {"channel": unique("never-"), "since": {"offset": 1, "epoch": "x"}}
        )
        assert "subscribed" in stale.expect("pusher:error")["data"]["message"]


def test_history_over_the_socket_needs_a_subscription(shared: ParleyServer) -> None:
    channel = unique("private-secret-")
    sdk(shared).trigger(channel, "e", "classified")
    with RawClient(shared.ws_url) as outsider:
        outsider.send_event("parley:history", {"channel": channel})
        assert "subscribed" in outsider.expect("pusher:error")["data"]["message"]
        outsider.subscribe(channel, secret=shared.secret, key=shared.key)
        outsider.send_event("parley:history", {"channel": channel, "limit": 10})
        page = outsider.expect("parley:history_page", channel=channel)["data"]
    assert [e["data"] for e in page["events"]] == ["classified"]


def test_same_idempotency_key_stores_and_delivers_once(shared: ParleyServer) -> None:
    channel = unique("orders-")
    body = {
        "name": "placed",
        "channels": [channel],
        "data": '{"id":1}',
        "idempotency_key": "order-1",
    }
    with RawClient(shared.ws_url) as reader:
        reader.subscribe(channel)
        for _ in range(2):
            response = signed_request(shared, "POST", f"/apps/{shared.app_id}/events", body=body)
            assert response.status == 200, response.body
        batch = {
            "batch": [
                {"name": "placed", "channel": channel, "data": "2", "idempotency_key": "order-2"}
            ]
            * 2
        }
        assert (
            signed_request(shared, "POST", f"/apps/{shared.app_id}/batch_events", body=batch).status
            == 200
        )
        sdk(shared).trigger(channel, "barrier", "")
        names = []
        while not names or names[-1] != "barrier":
            frame = reader.recv()
            if frame.get("channel") == channel:
                names.append(frame["event"])
    assert names == ["placed", "placed", "barrier"]
    assert [e["data"] for e in history(shared, channel)["events"]] == ['{"id":1}', "2", ""]


def test_delete_changes_the_epoch(shared: ParleyServer) -> None:
    channel = unique("gdpr-")
    sdk(shared).trigger(channel, "e", "x")
    old = history(shared, channel)["epoch"]
    response = signed_request(shared, "DELETE", f"/apps/{shared.app_id}/channels/{channel}/history")
    assert response.status == 200 and response.json()["epoch"] != old
    after = history(shared, channel)
    assert after["events"] == [] and after["epoch"] == response.json()["epoch"]


def _postgres_ready() -> bool:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return False
    probe = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False)
    return probe.returncode == 0


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_acknowledged_events_survive_sigkill(store: str, tmp_path: Path) -> None:
    env = {"PARLEY_STORE": store}
    if store == "postgres":
        require(_postgres_ready(), "PostgreSQL is not reachable on 127.0.0.1:5432")
        env["PARLEY_POSTGRES_URL"] = POSTGRES_URL
    channel = unique("durable-")
    server = ParleyServer(env=env, data_dir=tmp_path).start()
    acknowledged: list[int] = []
    stop = threading.Event()
    enough = threading.Event()

    def publish() -> None:
        client = sdk(server)
        i = 0
        while not stop.is_set():
            try:
                client.trigger(channel, "e", str(i))
            except Exception:
                return  # the server died under us: this one was not acknowledged
            acknowledged.append(i)
            if len(acknowledged) >= 200:
                enough.set()
            i += 1

    threads = [threading.Thread(target=publish) for _ in range(1)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(TIMEOUT * 3), "the publisher did not get 200 acknowledgements"
        server.kill()  # SIGKILL mid-stream
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    restarted = ParleyServer(env=env, data_dir=tmp_path).start()
    try:
        stored = all_history(restarted, channel)
        missing = [i for i in acknowledged if str(i) not in stored]
        assert not missing, f"{len(missing)} acknowledged events lost: {missing[:10]}"
        assert stored == [str(i) for i in range(len(stored))]  # in order, no gaps
    finally:
        restarted.cleanup()


@pytest.mark.node
def test_pusher_js_recovers_500_missed_events_after_its_socket_is_cut(node_modules: Path) -> None:
    with ParleyServer() as srv:
        env = dict(
            os.environ,
            PARLEY_E2E_HOST=srv.host,
            PARLEY_E2E_PORT=str(srv.port),
            PARLEY_E2E_APP_ID=srv.app_id,
            PARLEY_E2E_KEY=srv.key,
            PARLEY_E2E_SECRET=srv.secret,
        )
        result = subprocess.run(
            [shutil.which("node") or "node", str(ROOT / "tests/e2e/js/recovery.mjs")],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
        )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_second_server_on_the_same_data_dir_is_refused_clearly(tmp_path: Path) -> None:
    with ParleyServer(data_dir=tmp_path) as first:
        env = dict(os.environ, PARLEY_DATA_DIR=str(tmp_path))
        second = subprocess.run(
            [sys.executable, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )
        assert second.returncode == 1
        assert "cannot start" in second.stderr and "in use by another Parley process" in (
            second.stderr
        )
        assert "Traceback" not in second.stderr
        assert history(first, unique("still-"))["events"] == []  # the first one is unharmed
