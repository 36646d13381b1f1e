"""The core's door to auth.identity: who a handshake says it is, a refusal being a
ConnectionRefused (4009) that the session sends before it closes."""

from __future__ import annotations

from parley.auth.identity import Identities
from parley.auth.tokens import Identity, TokenRejected
from parley.errors import ConnectionRefused
from parley.protocol.codes import CloseCode
from parley.protocol.handshake import Handshake
from parley.settings import AppConfig


class Authenticator:
    def __init__(self, identities: Identities) -> None:
        self.identities = identities

    def handshake(self, app: AppConfig, handshake: Handshake) -> tuple[Identity | None, str | None]:
        """The identity the handshake proves (its JWT first, else a signed session cookie);
        or, second, a session cookie that the app's introspection URL must judge
        (`introspect`); or neither: an anonymous connection."""
        try:
            if handshake.token:
                return self.identities.verify_token(app, handshake.token), None
            cookie = self.identities.session_cookie(app, handshake.cookie, handshake.origin)
            if cookie is None:
                return None, None
            if app.session_secret:
                return self.identities.signed_session(app, cookie), None
            return None, cookie
        except TokenRejected as exc:
            raise ConnectionRefused(CloseCode.UNAUTHORIZED, str(exc)) from None

    async def introspect(self, app: AppConfig, cookie: str) -> Identity:
        try:
            return await self.identities.introspect(app, cookie)
        except TokenRejected as exc:
            raise ConnectionRefused(CloseCode.UNAUTHORIZED, str(exc)) from None
