"""Parley driven by unmodified pusher-js 8.6.0, laravel-echo 2.5.0 and the npm `pusher` 5.3.4
server SDK, as a Node app would use them (package.json / package-lock.json at the repo root).

Each test starts a server and runs one scenario script from tests/e2e/js/ with `node`; the
script asserts, prints what it saw, and exits 0 or 1. A script that needs the test to act on
the server (drain and restart) prints `@@step NAME` and waits for `@@go NAME` on stdin.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.node_scenarios import run_scenario
from tests.support.server import ParleyServer

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.usefixtures("node_modules")]


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
