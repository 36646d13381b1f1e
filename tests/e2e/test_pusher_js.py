"""Parley driven by unmodified pusher-js 8.6.0, laravel-echo 2.5.0 and the npm `pusher` 5.3.4
server SDK, as a Node app would use them (package.json / package-lock.json at the repo root).

Each test starts a server and runs one scenario script from tests/e2e/js/ with `node`; the
script asserts, prints what it saw, and exits 0 or 1. A script that needs the test to act on
the server (drain and restart) prints `@@step NAME` and waits for `@@go NAME` on stdin.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import ROOT, ParleyServer

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.usefixtures("node_modules")]

JS = Path(__file__).parent / "js"
NODE_TIMEOUT_S = 70.0


def run_scenario(
    server: ParleyServer,
    script: str,
    *args: str,
    steps: dict[str, Callable[[], None]] | None = None,
    timeout: float = NODE_TIMEOUT_S,
) -> list[str]:
    """Run `node tests/e2e/js/SCRIPT ARGS` against `server`; fail with its output unless exit 0."""
    env = dict(
        os.environ,
        PARLEY_E2E_HOST=server.host,
        PARLEY_E2E_PORT=str(server.port),
        PARLEY_E2E_APP_ID=server.app_id,
        PARLEY_E2E_KEY=server.key,
        PARLEY_E2E_SECRET=server.secret,
    )
    lines: list[str] = []
    problem = ""
    with subprocess.Popen(
        ["node", str(JS / script), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        output: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.put(line)
            output.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        finished = False
        try:
            while True:
                try:
                    line = output.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    problem = f"node {script} did not finish within {timeout:.0f} s"
                    break
                if line is None:
                    finished = True
                    break
                lines.append(line)
                if line.startswith("@@step "):
                    name = line.split()[1]
                    action = (steps or {}).get(name)
                    if action is None:
                        problem = f"node {script} asked for unknown step {name!r}"
                        break
                    action()
                    proc.stdin.write(f"@@go {name}\n")
                    proc.stdin.flush()
        finally:
            if not finished and proc.poll() is None:
                proc.kill()
            code = proc.wait(timeout=10)
            reader.join(5)
    if problem or code != 0:
        pytest.fail(
            f"{problem or f'node {script} exited {code}'}\n"
            f"--- node output ---\n{''.join(lines)}"
            f"--- parley log (last 40 lines) ---\n{''.join(server.stderr_lines[-40:])}",
            pytrace=False,
        )
    return lines


@pytest.fixture
def counting_server() -> Iterator[ParleyServer]:
    with ParleyServer(
        env={"PARLEY_APP_CLIENT_EVENTS": "true", "PARLEY_APP_SUBSCRIPTION_COUNT": "true"}
    ) as srv:
        yield srv


def test_public_channel_trigger_info_and_batch(server: ParleyServer) -> None:
    run_scenario(server, "public_events.mjs")


def test_private_channel_via_http_auth_endpoint_and_bad_signature(server: ParleyServer) -> None:
    run_scenario(server, "private_auth.mjs")


def test_presence_members_and_one_user_on_two_connections(server: ParleyServer) -> None:
    run_scenario(server, "presence.mjs")


def test_client_events_carry_real_user_id_and_are_not_echoed(server: ParleyServer) -> None:
    run_scenario(server, "client_events.mjs")


def test_client_events_from_one_connection_keep_their_order() -> None:
    with ParleyServer(
        env={"PARLEY_APP_CLIENT_EVENTS": "true", "PARLEY_APP_CLIENT_EVENT_RATE": "0"}
    ) as srv:
        run_scenario(srv, "client_event_order.mjs")


def test_encrypted_channel_decrypted_by_pusher_js(server: ParleyServer) -> None:
    run_scenario(server, "encrypted.mjs")


def test_signin_send_to_user_and_watchlist(server: ParleyServer) -> None:
    run_scenario(server, "signin_user.mjs")


def test_presence_authorized_by_signin_without_channel_data(server: ParleyServer) -> None:
    run_scenario(server, "presence_signin.mjs")


def test_cache_channel_miss_then_replay(server: ParleyServer) -> None:
    run_scenario(server, "cache_channel.mjs")


def test_terminate_user_connections_closes_with_4009_for_good(server: ParleyServer) -> None:
    run_scenario(server, "terminate.mjs")


def test_pusher_js_reconnects_and_resubscribes_after_drain(server: ParleyServer) -> None:
    port = server.port
    exit_codes: list[int] = []

    def drain_and_restart() -> None:
        assert server.process is not None
        process = server.process
        server.restart()
        exit_codes.append(process.returncode)

    run_scenario(server, "reconnect_drain.mjs", steps={"drain": drain_and_restart})
    assert exit_codes == [0], "the drained server should exit cleanly"
    assert server.port == port


@pytest.mark.parametrize(
    "law",
    [
        "sub-sub",
        "sub-wait-sub",
        "sub-unsub",
        "sub-wait-unsub",
        "sub-unsub-sub",
        "sub-unsub-wait-sub",
        "sub-unsub-unsub",
    ],
)
def test_subscription_sequencing_law(server: ParleyServer, law: str) -> None:
    run_scenario(server, "sequencing.mjs", law)


def test_subscription_count_events(counting_server: ParleyServer) -> None:
    run_scenario(counting_server, "subscription_count.mjs")


def test_laravel_echo_pusher_broadcaster(server: ParleyServer) -> None:
    run_scenario(server, "laravel_echo.mjs")
