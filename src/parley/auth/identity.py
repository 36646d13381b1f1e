"""Who a connection or an API call is: identity in one place.

`Identities` owns what proves it, for every app: JWTs verified with the app's secret (HS256)
or public keys (PEM files, and a JWKS file or URL loaded at start and refreshed every five
minutes), session cookies signed with itsdangerous, and the app's introspection URL (aiohttp)
for cookies only the app can read. Each refusal is a TokenRejected whose message says why;
the core turns it into a 4009 close (core.authenticate) and the HTTP API into a 401.

Not on any per-message path: it stays interpreted (src/parley/speedups.py).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

import jwt
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from parley import logs
from parley.auth.origins import allowed_origins
from parley.auth.tokens import (
    USER_ID_RE,
    Identity,
    PublicKey,
    TokenRejected,
    jwk_key,
    pem_key,
    verify_token,
)
from parley.errors import CannotStart
from parley.settings import AppConfig

JWKS_REFRESH_S = 300.0


class SessionRejected(TokenRejected):
    """A session cookie cannot be used (or may not be used from this Origin)."""


def read_jwks(source: str) -> str:
    """The text of a JWKS: an http(s) URL fetched (10 s timeout), or a file read."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as reply:
            return reply.read().decode()  # type: ignore[no-any-return]
    return Path(source).read_text()


def pem_keys(app: AppConfig) -> tuple[PublicKey, ...]:
    """The keys of the app's `jwt_public_keys` files; CannotStart names a file that is missing
    or holds no RSA, P-256 or Ed25519 public key."""
    keys = []
    for path in (p.strip() for p in app.jwt_public_keys.split(",")):
        if path:
            try:
                keys.append(pem_key(Path(path).read_text()))
            except (OSError, ValueError) as exc:
                raise CannotStart(f"app {app.id}: jwt_public_keys {path}: {exc}") from None
    return tuple(keys)


def session_identity(payload: Any) -> Identity:
    """The identity a session holds: a user id (string or integer), or an object with
    `user_id` (or `id`) and an optional `info`."""
    info = None
    if isinstance(payload, dict):
        info = payload.get("info")
        payload = payload.get("user_id", payload.get("id"))
    if isinstance(payload, int) and not isinstance(payload, bool):
        payload = str(payload)
    if not isinstance(payload, str) or not USER_ID_RE.fullmatch(payload):
        raise SessionRejected("session holds no valid user id")
    return Identity(payload, info, None)


class Identities:
    """The identity checks of every app, with their key caches (PEM files read once, here: a
    file that is missing or holds no usable key stops the start; JWKS loaded by `load_jwks`
    and kept fresh by `start`)."""

    def __init__(self, apps: Iterable[AppConfig], clock: Callable[[], float] = time.time) -> None:
        self.apps = tuple(apps)
        self.clock = clock
        self._pem: dict[str, tuple[PublicKey, ...]] = {app.id: pem_keys(app) for app in self.apps}
        self._jwks: dict[str, tuple[PublicKey, ...]] = {}  # app id -> its JWKS keys
        self._refresher: asyncio.Task[None] | None = None

    # -- JWTs --------------------------------------------------------------------------------

    def verify_token(self, app: AppConfig, token: str) -> Identity:
        """The identity a JWT gives in `app`; TokenRejected says why not."""
        return verify_token(
            token,
            secret=app.secret,
            audience=app.jwt_audience or app.key,
            public_keys=self.public_keys(app),
            issuer=app.jwt_issuer or None,
            now=self.clock(),
        )

    def public_keys(self, app: AppConfig) -> tuple[PublicKey, ...]:
        """The app's PEM keys, then its JWKS's keys."""
        pem = self._pem.get(app.id)
        if pem is None:  # an app this instance was not made with
            pem = self._pem[app.id] = pem_keys(app)
        return pem + self._jwks.get(app.id, ())

    async def load_jwks(self) -> None:
        """Read every app's JWKS (file or URL); a failure keeps the keys already known."""
        for app in self.apps:
            source = app.jwt_jwks
            if not source:
                continue
            try:
                text = await asyncio.to_thread(read_jwks, source)
                keys = tuple(jwk_key(jwk) for jwk in jwt.PyJWKSet.from_json(text).keys)
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                logs.warning("jwks not loaded", app_id=app.id, source=source, error=str(exc))
                continue
            self._jwks[app.id] = keys
            logs.info("jwks loaded", app_id=app.id, keys=len(keys))

    def start(self) -> None:
        """Refresh the JWKS fetched from URLs every JWKS_REFRESH_S (in the running loop)."""
        if any(app.jwt_jwks.startswith(("http://", "https://")) for app in self.apps):
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_jwks())

    def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()

    async def _refresh_jwks(self) -> None:
        while True:
            await asyncio.sleep(JWKS_REFRESH_S)
            await self.load_jwks()

    # -- session cookies ---------------------------------------------------------------------

    def session_cookie(self, app: AppConfig, cookie_header: str | None, origin: str) -> str | None:
        """The value of the app's session cookie in a handshake's Cookie header, or None;
        SessionRejected when there is one but `origin` is not among the app's allowed."""
        if not app.session_cookie or not cookie_header:
            return None
        jar = SimpleCookie()
        try:
            jar.load(cookie_header)
        except CookieError:
            return None
        morsel = jar.get(app.session_cookie)
        if morsel is None:
            return None
        if origin not in allowed_origins(app):
            raise SessionRejected(f"Origin {origin or '(none)'} is not allowed for cookie sessions")
        return morsel.value

    def signed_session(self, app: AppConfig, cookie: str) -> Identity:
        """The identity in a cookie signed with the app's session_secret (itsdangerous)."""
        serializer = URLSafeTimedSerializer(app.session_secret, salt=app.session_salt)
        try:
            payload = serializer.loads(cookie, max_age=int(app.session_max_age_s))
        except SignatureExpired:
            raise SessionRejected("session expired") from None
        except BadSignature:
            raise SessionRejected("session cookie signature is invalid") from None
        return session_identity(payload)

    async def introspect(self, app: AppConfig, cookie: str) -> Identity:
        """The identity the app's introspection URL gives a cookie: POST {"cookie": ...},
        200 with a session payload (see `session_identity`)."""
        import aiohttp  # imported when first needed: it takes a while, and few apps use it

        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with (
                aiohttp.ClientSession(timeout=timeout) as client,
                client.post(app.session_introspection_url, json={"cookie": cookie}) as reply,
            ):
                if reply.status != 200:
                    raise SessionRejected("session not recognized")
                payload = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise SessionRejected("session introspection failed") from None
        return session_identity(payload)
