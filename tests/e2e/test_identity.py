"""Identity at the handshake: a JWT in the query, a Bearer header or the /token/ path prefix
makes the connection that user from its first frame; bad and expired tokens end it with 4009."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import jwt
import pytest

from tests.support.pusher_raw import RawClient, sdk, unique
from tests.support.server import ParleyServer

pytestmark = pytest.mark.e2e
SECRET = "identity-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def srv() -> Iterator[ParleyServer]:
    with ParleyServer(secret=SECRET, env={"PARLEY_APP_CLIENT_EVENTS": "true"}) as server:
        yield server


def token(srv: ParleyServer, sub: str = "alice", ttl: float = 60, **claims: object) -> str:
    body = {"sub": sub, "aud": srv.key, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def established_user(client: RawClient) -> str | None:
    frame = next(f for f in client.seen if f["event"] == "pusher:connection_established")
    return json.loads(frame["data"]).get("user_id")  # type: ignore[no-any-return]


def test_token_in_query_header_or_path_identifies_the_connection(srv: ParleyServer) -> None:
    base = f"ws://{srv.host}:{srv.port}"
    with RawClient(f"{srv.ws_url}&token={token(srv, 'q-user')}") as by_query:
        assert established_user(by_query) == "q-user"
    with RawClient(
        srv.ws_url, additional_headers={"Authorization": f"Bearer {token(srv, 'h-user')}"}
    ) as by_header:
        assert established_user(by_header) == "h-user"
    with RawClient(f"{base}/token/{token(srv, 'p-user')}/app/{srv.key}?protocol=7") as by_path:
        assert established_user(by_path) == "p-user"
    with RawClient(srv.ws_url) as anonymous:
        assert established_user(anonymous) is None


def test_identified_connection_is_stamped_and_reachable_as_that_user(srv: ParleyServer) -> None:
    channel = unique("private-room-")
    with (
        RawClient(f"{srv.ws_url}&token={token(srv, 'alice', info={'name': 'Alice'})}") as alice,
        RawClient(srv.ws_url) as bob,
    ):
        alice.subscribe(channel, key=srv.key, secret=SECRET)
        bob.subscribe(channel, key=srv.key, secret=SECRET)
        alice.send(
            {
                "event": "client-hi",
                "channel": channel,
                "data": {"user_id": "mallory"},
                "user_id": "mallory",
            }
        )
        got = bob.expect("client-hi", channel=channel)
        assert got["user_id"] == "alice" and got["parley"]["publisher"] == {
            "type": "user",
            "id": "alice",
        }
        sdk(srv).send_to_user("alice", "notice", {"n": 1})
        assert alice.expect("notice")["channel"] == "#server-to-user-alice"
        # presence by identity, without channel_data: the member is the token's user
        presence = unique("presence-")
        frame = alice.subscribe(presence, key=srv.key, secret=SECRET)
        assert json.loads(frame["data"])["presence"]["hash"] == {"alice": {"name": "Alice"}}


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: token(s, ttl=-5), "expired"),
        (lambda s: token(s, nbf=int(time.time()) + 600), "not valid yet"),
        (lambda s: token(s, aud="someone-else"), "audience"),
        (
            lambda s: jwt.encode(
                {"sub": "a", "aud": s.key, "exp": int(time.time()) + 60},
                "another-secret-0123456789abcdef-xyz",
                algorithm="HS256",
            ),
            "signature",
        ),
        (
            lambda s: jwt.encode(
                {"sub": "a", "aud": s.key, "exp": int(time.time()) + 60}, None, algorithm="none"
            ),
            "not accepted",
        ),
        (lambda s: token(s, sub="has space"), "'sub'"),
    ],
)
def test_bad_tokens_are_refused_with_4009_and_a_reason(
    srv: ParleyServer, make, reason: str
) -> None:  # type: ignore[no-untyped-def]
    bad = make(srv)
    base = f"ws://{srv.host}:{srv.port}"
    forms = [
        (f"{srv.ws_url}&token={bad}", {}),
        (f"{base}/token/{bad}/app/{srv.key}?protocol=7", {}),
        (srv.ws_url, {"additional_headers": {"Authorization": f"Bearer {bad}"}}),
    ]
    for url, extra in forms:
        with RawClient(url, established=False, **extra) as client:
            error = client.expect_error(4009)
            assert reason in error["message"]
            code, close_reason = client.expect_close()
            assert code == 4009 and reason in close_reason
    assert not [line for line in srv.stderr_lines if bad in line], "a token reached the log"


def test_token_expiring_while_connected_ends_the_connection_unless_refreshed(
    srv: ParleyServer,
) -> None:
    with (
        RawClient(f"{srv.ws_url}&token={token(srv, 'carol', ttl=2)}") as refreshed,
        RawClient(f"{srv.ws_url}&token={token(srv, 'dave', ttl=2)}") as lapsed,
    ):
        refreshed.send_event("parley:refresh", {"token": token(srv, "mallory", ttl=60)})
        assert "another user" in refreshed.expect_error(None)["message"]
        refreshed.send_event("parley:refresh", {"token": token(srv, "carol", ttl=60)})
        assert refreshed.expect("parley:refresh_succeeded")["data"]["expires_at"] > time.time() + 30
        error = lapsed.expect_error(4009, timeout=6)
        assert error["message"] == "token expired"
        assert lapsed.expect_close()[0] == 4009
        refreshed.ping()  # still connected after the other one's token ran out


def _hs256_with(claims: dict, secret: str) -> str:  # type: ignore[type-arg]
    """An HS256 token keyed with `secret` by hand (PyJWT refuses key material that looks
    public, which is exactly the algorithm-confusion attack)."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _ec_jwks(kid: str) -> tuple[object, str]:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, use="sig", alg="ES256")
    return key, json.dumps({"keys": [jwk]})


@pytest.mark.parametrize("source", ["file", "url"])
def test_asymmetric_tokens_verified_with_a_jwks(source: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    key, jwks = _ec_jwks("k1")

    class Serve(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks.encode())

        def log_message(self, *args: object) -> None:
            pass

    http = HTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    path = tmp_path / "jwks.json"
    path.write_text(jwks)
    where = str(path) if source == "file" else f"http://127.0.0.1:{http.server_port}/jwks.json"
    try:
        with ParleyServer(secret=SECRET, env={"PARLEY_APP_JWT_JWKS": where}) as server:
            claims = {"sub": "erin", "aud": server.key, "exp": int(time.time()) + 60}
            good = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
            with RawClient(f"{server.ws_url}&token={good}") as client:
                assert established_user(client) == "erin"
            other, _ = _ec_jwks("k1")
            forged = jwt.encode(claims, other, algorithm="ES256", headers={"kid": "k1"})
            unknown = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k9"})
            confused = _hs256_with(claims, jwks)  # the published key used as an HMAC secret
            for bad, reason in [
                (forged, "signature"),
                (unknown, "key id"),
                (confused, "signature"),
            ]:
                with RawClient(f"{server.ws_url}&token={bad}", established=False) as refused:
                    assert reason in refused.expect_error(4009)["message"]
    finally:
        http.shutdown()
        http.server_close()
