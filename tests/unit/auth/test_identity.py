"""auth.identity: JWTs verified with an app's secret, PEM keys and JWKS; session cookies
signed with itsdangerous; the app's introspection URL. Every refusal says why."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from parley.auth.identity import Identities, SessionRejected, session_identity
from parley.auth.tokens import Identity, TokenRejected
from parley.errors import CannotStart
from parley.settings import AppConfig

NOW = 1_800_000_000.0
SECRET = "app-secret-long-enough-for-hs256-0123456789"
SESSION_SECRET = "session-secret"
APP = AppConfig(id="1", key="app-key", secret=SECRET)


def app(**fields: Any) -> AppConfig:
    return dataclasses.replace(APP, **fields)


def identities(*apps: AppConfig) -> Identities:
    return Identities(apps or (APP,), clock=lambda: NOW)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "aud": "app-key", "exp": NOW + 60, **extra}


def pem(public_key: Any) -> str:
    return public_key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


# -- JWTs ------------------------------------------------------------------------------------


def test_hs256_with_the_app_secret() -> None:
    token = jwt.encode(claims(info={"name": "Alice"}), SECRET, algorithm="HS256")
    assert identities().verify_token(APP, token) == Identity("alice", {"name": "Alice"}, NOW + 60)


def test_the_clock_decides_expiry() -> None:
    token = jwt.encode(claims(exp=NOW - 1), SECRET, algorithm="HS256")
    with pytest.raises(TokenRejected, match="token expired"):
        identities().verify_token(APP, token)
    assert Identities([APP], clock=lambda: NOW - 10).verify_token(APP, token).user_id == "alice"


def test_audience_and_issuer_come_from_the_app() -> None:
    custom = app(jwt_audience="chat", jwt_issuer="https://id.example")
    token = jwt.encode(claims(aud="chat", iss="https://id.example"), SECRET, algorithm="HS256")
    assert identities(custom).verify_token(custom, token).user_id == "alice"
    with pytest.raises(TokenRejected, match="audience"):
        identities().verify_token(APP, token)  # the default audience is the app key
    wrong_issuer = jwt.encode(claims(aud="chat", iss="https://evil"), SECRET, algorithm="HS256")
    with pytest.raises(TokenRejected, match="issuer"):
        identities(custom).verify_token(custom, wrong_issuer)


def new_key(kind: str) -> Any:
    if kind == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("kind", ["EdDSA", "RS256"])
def test_asymmetric_tokens_with_the_apps_pem_keys(kind: str, tmp_path: Path) -> None:
    key, other = new_key(kind), new_key(kind)
    (tmp_path / "a.pem").write_text(pem(other.public_key()))  # not the signer: tried, skipped
    (tmp_path / "b.pem").write_text(pem(key.public_key()))
    keyed = app(jwt_public_keys=f"{tmp_path / 'a.pem'}, {tmp_path / 'b.pem'}")
    ids = identities(keyed)
    assert ids.verify_token(keyed, jwt.encode(claims(), key, algorithm=kind)).user_id == "alice"
    forged = jwt.encode(claims(), new_key(kind), algorithm=kind)
    with pytest.raises(TokenRejected, match="signature"):
        ids.verify_token(keyed, forged)
    # an app without public keys takes no asymmetric token at all
    with pytest.raises(TokenRejected, match="not accepted"):
        identities().verify_token(APP, jwt.encode(claims(), key, algorithm=kind))


def test_pem_files_are_read_once(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "k.pem"
    path.write_text(pem(key.public_key()))
    keyed = app(jwt_public_keys=str(path))
    ids = identities(keyed)
    assert ids.verify_token(keyed, jwt.encode(claims(), key, algorithm="EdDSA"))
    path.unlink()  # cached: a key rotation is a restart (or a JWKS)
    assert ids.verify_token(keyed, jwt.encode(claims(), key, algorithm="EdDSA"))


def jwks(key: Any, kid: str) -> str:
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, use="sig", alg="EdDSA")
    return json.dumps({"keys": [jwk]})


async def test_jwks_from_a_file_is_loaded_and_reloaded(tmp_path: Path) -> None:
    first, second = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "jwks.json"
    path.write_text(jwks(first, "k1"))
    keyed = app(jwt_jwks=str(path))
    ids = identities(keyed)
    token = jwt.encode(claims(), first, algorithm="EdDSA", headers={"kid": "k1"})
    with pytest.raises(TokenRejected, match="not accepted"):
        ids.verify_token(keyed, token)  # not loaded yet
    await ids.load_jwks()
    assert ids.verify_token(keyed, token).user_id == "alice"
    unknown = jwt.encode(claims(), first, algorithm="EdDSA", headers={"kid": "k9"})
    with pytest.raises(TokenRejected, match="key id 'k9'"):
        ids.verify_token(keyed, unknown)
    path.write_text(jwks(second, "k2"))  # rotated
    await ids.load_jwks()
    rotated = jwt.encode(claims(), second, algorithm="EdDSA", headers={"kid": "k2"})
    assert ids.verify_token(keyed, rotated).user_id == "alice"
    with pytest.raises(TokenRejected):
        ids.verify_token(keyed, token)


async def test_a_broken_jwks_keeps_the_keys_already_loaded(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "jwks.json"
    path.write_text(jwks(key, "k1"))
    keyed = app(jwt_jwks=str(path))
    ids = identities(keyed)
    await ids.load_jwks()
    path.write_text("{not json")
    await ids.load_jwks()
    path.unlink()
    await ids.load_jwks()
    token = jwt.encode(claims(), key, algorithm="EdDSA", headers={"kid": "k1"})
    assert ids.verify_token(keyed, token).user_id == "alice"


def test_start_refreshes_only_jwks_fetched_from_urls(tmp_path: Path) -> None:
    ids = identities(app(jwt_jwks=str(tmp_path / "jwks.json")))
    ids.start()  # a file: read at start only, no task (and no running loop needed)
    assert ids._refresher is None


async def test_start_and_stop_the_refresh_of_a_jwks_url() -> None:
    ids = identities(app(jwt_jwks="https://id.example/jwks.json"))
    ids.start()
    refresher = ids._refresher
    assert refresher is not None and not refresher.done()
    ids.stop()
    with pytest.raises(asyncio.CancelledError):
        await refresher
    assert refresher.cancelled()


# -- session cookies -------------------------------------------------------------------------

COOKIE_APP = app(
    session_cookie="sid",
    session_secret=SESSION_SECRET,
    allowed_origins="https://chat.example, https://m.chat.example",
)


def signed(payload: Any, *, age_s: float = 0, secret: str = SESSION_SECRET) -> str:
    class Aged(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age_s)

    serializer = URLSafeTimedSerializer(secret, salt="parley-session", signer=Aged)
    return serializer.dumps(payload)


def test_the_session_cookie_is_read_once_the_origin_is_allowed() -> None:
    ids = identities(COOKIE_APP)
    header = "theme=dark; sid=the-value"
    assert ids.session_cookie(COOKIE_APP, header, "https://m.chat.example") == "the-value"
    for origin in ["https://evil.example", ""]:
        with pytest.raises(SessionRejected) as refused:
            ids.session_cookie(COOKIE_APP, header, origin)
        assert str(refused.value) == (
            f"Origin {origin or '(none)'} is not allowed for cookie sessions"
        )


@pytest.mark.parametrize("header", [None, "", "theme=dark", 'sid="unterminated'])
def test_no_session_cookie_is_no_identity_and_no_refusal(header: str | None) -> None:
    assert identities(COOKIE_APP).session_cookie(COOKIE_APP, header, "https://evil") is None


def test_an_app_without_session_cookies_ignores_the_header() -> None:
    assert identities().session_cookie(APP, "sid=x", "https://evil") is None


def test_a_signed_session_cookie() -> None:
    ids = identities(COOKIE_APP)
    cookie = signed({"user_id": "carol", "info": {"name": "Carol"}})
    assert ids.signed_session(COOKIE_APP, cookie) == Identity("carol", {"name": "Carol"}, None)


@pytest.mark.parametrize(
    ("cookie", "reason"),
    [
        (signed({"user_id": "carol"}, age_s=86400 + 60), "session expired"),
        (signed({"user_id": "carol"}, secret="another-secret"), "signature is invalid"),
        ("forged.value.here", "signature is invalid"),
        (signed({"user_id": "not a user id"}), "session holds no valid user id"),
    ],
)
def test_a_session_cookie_refused_says_why(cookie: str, reason: str) -> None:
    with pytest.raises(SessionRejected, match=reason):
        identities(COOKIE_APP).signed_session(COOKIE_APP, cookie)


def test_session_max_age_comes_from_the_app() -> None:
    short = dataclasses.replace(COOKIE_APP, session_max_age_s=30)
    cookie = signed({"user_id": "carol"}, age_s=120)
    assert identities(COOKIE_APP).signed_session(COOKIE_APP, cookie).user_id == "carol"
    with pytest.raises(SessionRejected, match="session expired"):
        identities(short).signed_session(short, cookie)


@pytest.mark.parametrize(
    ("payload", "identity"),
    [
        ("dave", Identity("dave", None, None)),
        (42, Identity("42", None, None)),
        ({"user_id": "erin", "info": [1]}, Identity("erin", [1], None)),
        ({"id": 7}, Identity("7", None, None)),
    ],
)
def test_session_payload_forms(payload: Any, identity: Identity) -> None:
    assert session_identity(payload) == identity


@pytest.mark.parametrize("payload", [None, True, "", "a b", {"name": "x"}, ["x"], 1.5])
def test_session_payload_without_a_user_id(payload: Any) -> None:
    with pytest.raises(SessionRejected, match="session holds no valid user id"):
        session_identity(payload)


# -- introspection ---------------------------------------------------------------------------


@pytest.fixture
async def introspection() -> AsyncIterator[str]:
    async def introspect(request: web.Request) -> web.Response:
        cookie = (await request.json())["cookie"]
        if cookie == "good":
            return web.json_response({"user_id": "erin", "info": {"name": "Erin"}})
        if cookie == "garbled":
            return web.Response(text="<html>", content_type="text/html")
        return web.json_response({"error": "unknown"}, status=401)

    server = web.Application()
    server.router.add_post("/introspect", introspect)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/introspect"
    await runner.cleanup()


async def test_introspection_asks_the_app(introspection: str) -> None:
    asking = app(session_cookie="sid", session_introspection_url=introspection)
    ids = identities(asking)
    assert await ids.introspect(asking, "good") == Identity("erin", {"name": "Erin"}, None)
    with pytest.raises(SessionRejected, match="session not recognized"):
        await ids.introspect(asking, "stolen")
    with pytest.raises(SessionRejected, match="session introspection failed"):
        await ids.introspect(asking, "garbled")


async def test_introspection_that_cannot_connect_fails(unused_tcp_port: int) -> None:
    asking = app(session_introspection_url=f"http://127.0.0.1:{unused_tcp_port}/introspect")
    with pytest.raises(SessionRejected, match="session introspection failed"):
        await identities(asking).introspect(asking, "good")


def test_a_pem_file_that_is_missing_or_unusable_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(CannotStart, match=r"jwt_public_keys .*missing\.pem"):
        identities(app(jwt_public_keys=str(tmp_path / "missing.pem")))
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(CannotStart, match=r"bad\.pem"):
        identities(app(jwt_public_keys=str(tmp_path / "bad.pem")))
