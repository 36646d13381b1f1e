"""Parley's built-in login, authorizer and grants, through a real server: identity decides,
grants open channels, revocation and TTLs end live subscriptions within a second, read-only
and per-user channels hold, and every spoofing attempt fails visibly."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlencode

import pytest
from itsdangerous import URLSafeTimedSerializer

from tests.support.node_scenarios import run_scenario
from tests.support.pusher_raw import (
    ApiResponse,
    RawClient,
    channel_auth,
    http_request,
    sdk,
    signed_request,
    unique,
)
from tests.support.server import TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e
SECRET = "access-test-secret-0123456789abcdef"
SESSION_SECRET = "cookie-signing-secret"
MASTER_KEY = base64.b64encode(bytes(range(32))).decode()


def add_user(srv: ParleyServer, name: str, password: str, info: dict | None = None) -> None:  # type: ignore[type-arg]
    env = dict(
        os.environ,
        PARLEY_DATA_DIR=str(srv.data_dir),
        PARLEY_APP_ID=srv.app_id,
        PARLEY_APP_KEY=srv.key,
        PARLEY_APP_SECRET=SECRET,
        **srv.env,
    )
    args = [
        sys.executable,
        "-m",
        "parley",
        "users",
        "add",
        name,
        "--app",
        srv.app_id,
        "--password-stdin",
    ]
    if info is not None:
        args += ["--info", json.dumps(info)]
    result = subprocess.run(
        args, input=password + "\n", env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def users_cli(srv: ParleyServer, *args: str) -> subprocess.CompletedProcess[str]:
    return parley_cli(srv, "users", *args)


def parley_cli(srv: ParleyServer, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PARLEY_DATA_DIR=str(srv.data_dir),
        PARLEY_APP_ID=srv.app_id,
        PARLEY_APP_KEY=srv.key,
        PARLEY_APP_SECRET=SECRET,
        **srv.env,
    )
    return subprocess.run(
        [sys.executable, "-m", "parley", command, *args, "--app", srv.app_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def login(
    srv: ParleyServer, name: str, password: str, peer_headers: dict[str, str] | None = None
) -> ApiResponse:
    body = json.dumps({"username": name, "password": password}).encode()
    return http_request(
        srv, "POST", f"/apps/{srv.app_id}/auth/token", body=body, headers=peer_headers
    )


def token_of(srv: ParleyServer, name: str) -> str:
    response = login(srv, name, f"{name}-password")
    assert response.status == 200, response.body
    return response.json()["token"]  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pusher_auth(srv: ParleyServer, token: str, socket_id: str, channel: str) -> ApiResponse:
    body = urlencode({"socket_id": socket_id, "channel_name": channel}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **bearer(token)}
    return http_request(srv, "POST", f"/apps/{srv.app_id}/pusher/auth", body=body, headers=headers)


def grant(
    srv: ParleyServer,
    subject: str,
    resource: str,
    operations: list[str],
    ttl_s: float | None = None,
    token: str | None = None,
) -> ApiResponse:
    body: dict = {"subject": subject, "resource": resource, "operations": operations}  # type: ignore[type-arg]
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    path = f"/apps/{srv.app_id}/grants"
    if token is None:
        return signed_request(srv, "POST", path, body=body, secret=SECRET)
    return http_request(
        srv,
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **bearer(token)},
    )


def connect(srv: ParleyServer, token: str) -> RawClient:
    return RawClient(f"{srv.ws_url}&token={token}")


def subscribe_via_endpoint(srv: ParleyServer, client: RawClient, token: str, channel: str) -> None:
    response = pusher_auth(srv, token, client.socket_id, channel)
    assert response.status == 200, response.body
    reply = response.json()
    client.subscribe(channel, auth=reply["auth"], channel_data=reply.get("channel_data"))


@pytest.fixture(scope="module")
def srv() -> Iterator[ParleyServer]:
    env = {
        "PARLEY_APP_AUTH": "builtin",
        "PARLEY_APP_CLIENT_EVENTS": "true",
        "PARLEY_APP_READ_ONLY_CHANNELS": "private-announce-*",
        "PARLEY_APP_ENCRYPTION_MASTER_KEY_BASE64": MASTER_KEY,
        "PARLEY_APP_SESSION_COOKIE": "app_session",
        "PARLEY_APP_SESSION_SECRET": SESSION_SECRET,
        "PARLEY_APP_ALLOWED_ORIGINS": "http://chat.example",
    }
    with ParleyServer(secret=SECRET, env=env) as server:
        for name in ("alice", "bob", "carol", "dave", "erin", "frank", "gina"):
            add_user(server, name, f"{name}-password", {"name": name.title()})
        yield server


def test_login_issues_a_token_for_the_app_and_throttles_failures(srv: ParleyServer) -> None:
    ok = login(srv, "alice", "alice-password")
    assert ok.status == 200
    body = ok.json()
    assert body["user_id"] == "alice" and body["expires_at"] > time.time() + 60
    assert login(srv, "alice", "nope").status == 401
    assert login(srv, "ghost", "nope").status == 401
    for _ in range(5):
        login(srv, "erin", "wrong")
    locked = login(srv, "erin", "erin-password")  # even the right password waits now
    assert locked.status == 429 and int(locked.headers["retry-after"]) >= 1
    assert "Too many failed logins" in locked.json()["error"]


def test_failed_logins_are_throttled_per_address_too() -> None:
    with ParleyServer(
        secret=SECRET, env={"PARLEY_APP_AUTH": "builtin", "PARLEY_STORE": "memory"}
    ) as server:
        statuses = [login(server, f"nobody{i}", "x").status for i in range(21)]
    assert statuses[:20] == [401] * 20 and statuses[20] == 429


def test_grants_open_channels_and_revocation_ends_the_live_subscription(srv: ParleyServer) -> None:
    channel = unique("private-room-")
    alice_token = token_of(srv, "alice")
    with connect(srv, alice_token) as alice, RawClient(srv.ws_url) as witness:
        refused = pusher_auth(srv, alice_token, alice.socket_id, channel)
        assert refused.status == 403 and "No grant" in refused.json()["error"]
        # Even a valid signature (as if leaked) does not get past the grant check.
        alice.subscribe_frame(channel, auth=channel_auth(srv.key, SECRET, alice.socket_id, channel))
        assert "No grant" in alice.expect_error(None)["message"]

        created = grant(srv, "alice", channel, ["read"])
        assert created.status == 200, created.body
        grant_id = created.json()["id"]
        subscribe_via_endpoint(srv, alice, alice_token, channel)
        sdk(srv, secret=SECRET).trigger(channel, "news", "1")
        assert alice.expect("news", channel=channel)["data"] == "1"

        alice.send({"event": "client-typing", "channel": channel, "data": {}})
        assert "write" in alice.expect_error(None)["message"]

        started = time.monotonic()
        deleted = signed_request(
            srv, "DELETE", f"/apps/{srv.app_id}/grants/{grant_id}", secret=SECRET
        )
        assert deleted.status == 200, deleted.body
        revoked = alice.expect("parley:revoked", channel=channel, timeout=2)
        assert time.monotonic() - started < 1.0
        assert revoked["data"] == {"channel": channel, "reason": "grant revoked"}
        sdk(srv, secret=SECRET).trigger(channel, "news", "2")
        alice.ping()
        assert not [f for f in alice.seen if f.get("event") == "news" and f.get("data") == "2"]
        alice.send({"event": "client-typing", "channel": channel, "data": {}})
        assert "not subscribed" in alice.expect_error(None)["message"]
        witness.ping()


def test_grants_from_the_command_line_reach_the_running_server(srv: ParleyServer) -> None:
    channel = unique("private-cli-")
    token = token_of(srv, "carol")
    added = parley_cli(srv, "grants", "add", "carol", channel, "read", "--ttl", "3600")
    assert added.returncode == 0, added.stderr
    made = json.loads(added.stdout)
    assert (made["subject"], made["resource"], made["operations"]) == ("carol", channel, ["read"])
    assert abs(made["expires_at"] - (time.time() + 3600)) < 60  # seconds, as tokens have
    listed = parley_cli(srv, "grants", "list", "--subject", "carol")
    assert made["id"] in listed.stdout and channel in listed.stdout
    with connect(srv, token) as carol:
        # The server follows the store (it polls it twice a second): the grant opens the
        # channel within a second, bounded here by TIMEOUT.
        deadline = time.monotonic() + TIMEOUT
        while pusher_auth(srv, token, carol.socket_id, channel).status != 200:
            assert time.monotonic() < deadline, "the CLI's grant never reached the server"
            time.sleep(0.05)
        subscribe_via_endpoint(srv, carol, token, channel)
        revoked = parley_cli(srv, "grants", "revoke", made["id"])
        assert revoked.returncode == 0, revoked.stderr
        assert carol.expect("parley:revoked", channel=channel, timeout=3)["data"] == {
            "channel": channel,
            "reason": "grant revoked",
        }
    again = parley_cli(srv, "grants", "revoke", made["id"])
    assert again.returncode == 1 and "no grant" in again.stderr
    bad = parley_cli(srv, "grants", "add", "carol", channel, "fly")
    assert bad.returncode == 1 and "fly" in bad.stderr and "Traceback" not in bad.stderr


def test_a_grant_ttl_ends_the_subscription_by_itself(srv: ParleyServer) -> None:
    channel = unique("private-brief-")
    token = token_of(srv, "bob")
    assert grant(srv, "bob", channel, ["read"], ttl_s=2).status == 200
    with connect(srv, token) as bob:
        subscribe_via_endpoint(srv, bob, token, channel)
        started = time.monotonic()
        revoked = bob.expect("parley:revoked", channel=channel, timeout=5)
        assert revoked["data"]["reason"] == "grant expired"
        assert time.monotonic() - started < 3.2


def test_write_grants_let_identified_users_talk_with_stamped_senders(srv: ParleyServer) -> None:
    channel = unique("private-team-")
    assert grant(srv, "*", channel, ["read", "write"]).status == 200
    alice_token, bob_token = token_of(srv, "alice"), token_of(srv, "bob")
    with (
        connect(srv, alice_token) as alice,
        connect(srv, bob_token) as bob,
        RawClient(srv.ws_url) as anonymous,
    ):
        subscribe_via_endpoint(srv, alice, alice_token, channel)
        subscribe_via_endpoint(srv, bob, bob_token, channel)
        alice.send(
            {
                "event": "client-msg",
                "channel": channel,
                "data": {"user_id": "bob", "text": "hi"},
                "user_id": "bob",
            }
        )
        got = bob.expect("client-msg", channel=channel)
        assert got["user_id"] == "alice" and got["parley"]["publisher"] == {
            "type": "user",
            "id": "alice",
        }
        # an anonymous connection cannot even subscribe to a private channel of a builtin app
        anonymous.subscribe_frame(
            channel, auth=channel_auth(srv.key, SECRET, anonymous.socket_id, channel)
        )
        assert "identified" in anonymous.expect_error(None)["message"]


def test_manage_lets_a_user_grant_others_only_on_that_resource(srv: ParleyServer) -> None:
    mine, other = unique("private-club-"), unique("private-club-")
    assert grant(srv, "carol", mine, ["read", "manage"]).status == 200
    carol = token_of(srv, "carol")
    given = grant(srv, "dave", mine, ["read"], token=carol)
    assert given.status == 200 and given.json()["granted_by"] == "carol"
    denied = grant(srv, "dave", other, ["read"], token=carol)
    assert denied.status == 403 and "manage" in denied.json()["error"]
    listed = http_request(srv, "GET", f"/apps/{srv.app_id}/grants", headers=bearer(carol))
    assert {g["resource"] for g in listed.json()["grants"]} == {mine}
    assert grant(srv, "dave", mine, ["read"], token=token_of(srv, "dave")).status == 403
    assert http_request(srv, "GET", f"/apps/{srv.app_id}/grants").status == 401


def test_per_user_notification_channels_and_read_only_channels(srv: ParleyServer) -> None:
    alice_token, bob_token = token_of(srv, "alice"), token_of(srv, "bob")
    assert grant(srv, "*", "private-announce-*", ["read", "write"]).status == 200
    with connect(srv, alice_token) as alice, connect(srv, bob_token) as bob:
        subscribe_via_endpoint(srv, alice, alice_token, "private-user-alice")
        assert pusher_auth(srv, bob_token, bob.socket_id, "private-user-alice").status == 403
        bob.subscribe_frame(
            "private-user-alice",
            auth=channel_auth(srv.key, SECRET, bob.socket_id, "private-user-alice"),
        )
        assert "another user's notification channel" in bob.expect_error(None)["message"]
        sdk(srv, secret=SECRET).trigger("private-user-alice", "chat-request", "from the server")
        assert (
            alice.expect("chat-request", channel="private-user-alice")["parley"]["publisher"][
                "type"
            ]
            == "server"
        )
        alice.send({"event": "client-x", "channel": "private-user-alice", "data": {}})
        assert "read-only" in alice.expect_error(None)["message"]
        subscribe_via_endpoint(srv, alice, alice_token, "private-announce-all")
        alice.send({"event": "client-x", "channel": "private-announce-all", "data": {}})
        assert "read-only" in alice.expect_error(None)["message"]


def test_signature_for_another_socket_and_a_socket_of_another_user_are_refused(
    srv: ParleyServer,
) -> None:
    channel = unique("private-pair-")
    assert grant(srv, "*", channel, ["read"]).status == 200
    alice_token, bob_token = token_of(srv, "alice"), token_of(srv, "bob")
    with connect(srv, alice_token) as alice, connect(srv, bob_token) as bob:
        stolen = pusher_auth(srv, alice_token, alice.socket_id, channel).json()["auth"]
        bob.subscribe_frame(channel, auth=stolen)
        assert "Invalid signature" in bob.expect_error(None)["message"]
        mismatch = pusher_auth(srv, alice_token, bob.socket_id, channel)
        assert mismatch.status == 403 and "another user" in mismatch.json()["error"]


def test_presence_and_encrypted_channels_through_the_builtin_endpoints(srv: ParleyServer) -> None:
    room, secret_room = unique("presence-room-"), unique("private-encrypted-room-")
    assert grant(srv, "*", room, ["presence"]).status == 200
    assert grant(srv, "*", secret_room, ["read"]).status == 200
    token = token_of(srv, "alice")
    with connect(srv, token) as alice:
        reply = pusher_auth(srv, token, alice.socket_id, room).json()
        assert json.loads(reply["channel_data"]) == {
            "user_id": "alice",
            "user_info": {"name": "Alice"},
        }
        frame = alice.subscribe(room, auth=reply["auth"], channel_data=reply["channel_data"])
        assert json.loads(frame["data"])["presence"]["ids"] == ["alice"]
        enc = pusher_auth(srv, token, alice.socket_id, secret_room).json()
        assert len(base64.b64decode(enc["shared_secret"])) == 32
        alice.subscribe(secret_room, auth=enc["auth"])


def test_disabling_a_user_ends_their_live_connections(srv: ParleyServer) -> None:
    token = token_of(srv, "dave")
    with connect(srv, token) as dave:
        result = users_cli(srv, "disable", "dave")
        assert result.returncode == 0, result.stderr
        error = dave.expect_error(4009, timeout=3)
        assert "disabled" in error["message"]
        assert dave.expect_close()[0] == 4009
    assert login(srv, "dave", "dave-password").status == 401
    # the token issued before the disable no longer opens a connection either
    with RawClient(f"{srv.ws_url}&token={token}", established=False) as again:
        assert again.expect_error(4009)["message"] == "user disabled"


@pytest.mark.parametrize("trusted", [True, False])
def test_the_address_throttle_believes_x_forwarded_for_only_from_trusted_proxies(
    trusted: bool,
) -> None:
    env = {"PARLEY_APP_AUTH": "builtin", "PARLEY_STORE": "memory"}
    if trusted:
        env["PARLEY_TRUSTED_PROXIES"] = "127.0.0.1"
    with ParleyServer(secret=SECRET, env=env) as server:
        hidden = [
            login(server, f"nobody{i}", "x", {"X-Forwarded-For": "198.51.100.7"}).status
            for i in range(21)
        ]
        other = login(server, "nobody", "x", {"X-Forwarded-For": "198.51.100.8"}).status
    assert hidden[:20] == [401] * 20 and hidden[20] == 429
    # Behind a trusted proxy another client is another address; otherwise the header is
    # anyone's to write, and the socket's address (the same for all) is what counts.
    assert other == (401 if trusted else 429)


def test_a_disabled_users_token_is_refused_at_every_entry_point(srv: ParleyServer) -> None:
    room = unique("private-frank-")
    assert grant(srv, "frank", room, ["read", "manage"]).status == 200
    token = token_of(srv, "frank")
    with RawClient(srv.ws_url) as anonymous:  # a connection that would sign in as frank
        assert pusher_auth(srv, token, anonymous.socket_id, room).status == 200
        assert users_cli(srv, "disable", "frank").returncode == 0
        path = f"/apps/{srv.app_id}"
        form = {"Content-Type": "application/x-www-form-urlencoded", **bearer(token)}
        refused = [
            pusher_auth(srv, token, anonymous.socket_id, room),
            http_request(
                srv,
                "POST",
                f"{path}/pusher/user-auth",
                body=urlencode({"socket_id": anonymous.socket_id}).encode(),
                headers=form,
            ),
            grant(srv, "alice", room, ["read"], token=token),
            http_request(srv, "GET", f"{path}/grants", headers=bearer(token)),
        ]
    for response in refused:
        assert response.status == 401, response.body
        assert response.json()["error"] == "Bearer token refused: user disabled"
    with RawClient(f"{srv.ws_url}&token={token}", established=False) as handshake:
        assert handshake.expect_error(4009)["message"] == "user disabled"
    assert users_cli(srv, "enable", "frank").returncode == 0
    assert pusher_auth(srv, token, "1.2", room).status == 200  # the same token works again


def test_concurrent_password_guesses_are_counted_before_they_are_checked(
    srv: ParleyServer,
) -> None:
    guesses = [("gina", f"wrong-{i}") for i in range(30)] + [("gina", "gina-password")]
    barrier = threading.Barrier(len(guesses))

    def guess(password: str) -> int:
        barrier.wait(timeout=TIMEOUT)
        return login(srv, "gina", password).status

    with ThreadPoolExecutor(len(guesses)) as pool:
        statuses = list(pool.map(guess, [p for _, p in guesses]))
    checked = [s for s in statuses if s != 429]
    assert len(checked) <= 5, statuses  # the limit: five failures a minute, however raced
    assert statuses.count(429) >= len(guesses) - 5
    if statuses[-1] == 429:  # the right password came too late: locked, even for it
        assert login(srv, "gina", "gina-password").status == 429
    else:  # it was among the five checked: it succeeded and forgave the user's failures
        assert statuses[-1] == 200 and statuses.count(401) <= 4


def test_a_user_reads_history_with_a_bearer_token_where_they_may_subscribe(
    srv: ParleyServer,
) -> None:
    room, public = unique("private-history-"), unique("history-")
    assert grant(srv, "alice", room, ["read"]).status == 200
    for channel in (room, public):
        sdk(srv, secret=SECRET).trigger(channel, "said", {"n": 1})
    alice, bob = token_of(srv, "alice"), token_of(srv, "bob")

    def read(channel: str, token: str | None) -> ApiResponse:
        headers = bearer(token) if token else {}
        return http_request(
            srv, "GET", f"/apps/{srv.app_id}/channels/{channel}/history", headers=headers
        )

    mine = read(room, alice)
    assert mine.status == 200, mine.body
    assert [e["event"] for e in mine.json()["events"]] == ["said"]
    assert read(public, bob).status == 200
    assert read("private-user-alice", alice).status == 200
    refused = read(room, bob)
    assert refused.status == 403 and "No grant allows 'bob' to read" in refused.json()["error"]
    assert read("private-user-alice", bob).status == 403
    assert read(room, None).status == 401


def test_signed_session_cookie_with_origin_allow_list(srv: ParleyServer) -> None:
    cookie = URLSafeTimedSerializer(SESSION_SECRET, salt="parley-session").dumps(
        {"user_id": "carol"}
    )
    headers = {"Cookie": f"app_session={cookie}", "Origin": "http://chat.example"}
    with RawClient(srv.ws_url, additional_headers=headers) as carol:
        data = json.loads(
            next(f for f in carol.seen if f["event"] == "pusher:connection_established")["data"]
        )
        assert data["user_id"] == "carol"
    for bad, reason in [
        ({"Cookie": f"app_session={cookie}", "Origin": "http://evil.example"}, "not allowed"),
        ({"Cookie": "app_session=forged.value.here", "Origin": "http://chat.example"}, "signature"),
    ]:
        with RawClient(srv.ws_url, established=False, additional_headers=bad) as client:
            assert reason in client.expect_error(4009)["message"]


class _Introspection(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        known = {"good-session": {"user_id": "erin", "info": {"name": "Erin"}}}
        reply = known.get(body.get("cookie"))
        self.send_response(200 if reply else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(reply or {"error": "unknown"}).encode())

    def log_message(self, *args: object) -> None:
        pass


def test_session_cookie_checked_by_the_apps_introspection_url() -> None:
    introspection = HTTPServer(("127.0.0.1", 0), _Introspection)
    thread = threading.Thread(target=introspection.serve_forever, daemon=True)
    thread.start()
    env = {
        "PARLEY_APP_SESSION_COOKIE": "sid",
        "PARLEY_APP_SESSION_INTROSPECTION_URL": f"http://127.0.0.1:{introspection.server_port}/introspect",
        "PARLEY_APP_ALLOWED_ORIGINS": "http://app.example",
    }
    try:
        with ParleyServer(secret=SECRET, env=env) as server:
            ok = {"Cookie": "sid=good-session", "Origin": "http://app.example"}
            with RawClient(server.ws_url, additional_headers=ok) as erin:
                data = json.loads(
                    next(f for f in erin.seen if f["event"] == "pusher:connection_established")[
                        "data"
                    ]
                )
                assert data["user_id"] == "erin"
            bad = {"Cookie": "sid=stolen", "Origin": "http://app.example"}
            with RawClient(server.ws_url, established=False, additional_headers=bad) as client:
                assert "not recognized" in client.expect_error(4009, timeout=TIMEOUT)["message"]
    finally:
        introspection.shutdown()
        introspection.server_close()


@pytest.mark.node
def test_browser_flow_with_pusher_js_and_token_refusals(
    srv: ParleyServer, node_modules: object
) -> None:
    import jwt as pyjwt

    room, team = unique("presence-lobby-"), unique("private-crew-")
    assert grant(srv, "*", room, ["presence"]).status == 200
    assert grant(srv, "*", team, ["read", "write"]).status == 200
    now = int(time.time())

    def sign(claims: dict, key: str = SECRET, alg: str = "HS256") -> str:  # type: ignore[type-arg]
        return pyjwt.encode(
            {"sub": "alice", "aud": srv.key, "exp": now + 60, **claims}, key, algorithm=alg
        )

    bad = [
        ["expired", sign({"exp": now - 10}), "expired"],
        ["not-yet-valid", sign({"nbf": now + 600}), "not valid yet"],
        ["wrong-signature", sign({}, key="some-other-secret-0123456789abcdef"), "signature"],
        [
            "alg-none",
            pyjwt.encode({"sub": "alice", "aud": srv.key, "exp": now + 60}, None, algorithm="none"),
            "not accepted",
        ],
        ["wrong-audience", sign({"aud": "another-app"}), "audience"],
    ]
    os.environ["PARLEY_E2E_ROOM"], os.environ["PARLEY_E2E_TEAM"] = room, team
    os.environ["PARLEY_E2E_BAD_TOKENS"] = json.dumps(bad)
    try:
        run_scenario(srv, "builtin_flow.mjs")
    finally:
        for name in ("PARLEY_E2E_ROOM", "PARLEY_E2E_TEAM", "PARLEY_E2E_BAD_TOKENS"):
            os.environ.pop(name, None)
