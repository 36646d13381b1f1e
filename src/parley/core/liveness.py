"""Liveness: connections that went quiet (pinged after `activity_timeout`, closed with 4201
when no pong follows within `pong_timeout`), tokens that expire (closed with 4009, or
extended by `parley:refresh`), cached events past their TTL; and readiness, the checks of the
engines the node runs on (/readyz).

The idle sweep runs every `interval` seconds (a quarter of the shorter timeout, between 0.2
and 1 s); `sweep` is one pass of it. Cached events are dropped once a minute per app (a read
never shows an expired one: `Node.cached` checks the time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from parley import logs
from parley.auth.identity import Identities
from parley.auth.tokens import TokenRejected
from parley.core.hub import AppHub
from parley.core.session import Session
from parley.protocol import frames
from parley.protocol.codes import CloseCode
from parley.protocol.connection import PusherConnection, Refresh
from parley.settings import Settings

CACHE_EXPIRY_INTERVAL_S = 60.0
READY_TIMEOUT_S = 2.0


class Liveness:
    def __init__(
        self,
        settings: Settings,
        hubs: dict[str, AppHub],
        identities: Identities,
        count_error: Callable[[Session, int | None], None],
    ) -> None:
        self.settings = settings
        self.hubs = hubs
        self.identities = identities
        self.count_error = count_error
        idle_after = settings.activity_timeout_s
        self.idle_after = idle_after
        self.dead_after = idle_after + settings.pong_timeout_s
        self.interval = max(0.2, min(1.0, idle_after / 4, settings.pong_timeout_s / 4))
        self._sweeper: asyncio.Task[None] | None = None
        self._running = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = True
        self._sweeper = loop.create_task(self._sweep_loop())
        for hub in self.hubs.values():
            loop.call_later(CACHE_EXPIRY_INTERVAL_S, self.expire_cache, hub)

    def stop(self) -> None:
        self._running = False
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sweep(time.monotonic(), time.time())

    def sweep(self, now: float, wall: float) -> None:
        """One pass over every connection: close it when its token expired (4009, at Unix
        time `wall`) or it stayed silent `dead_after` seconds (4201); ping it when it has been
        silent `idle_after` seconds (monotonic `now`) and was not pinged since."""
        for hub in self.hubs.values():
            for session in list(hub.sessions.values()):
                expires = session.token_expires_at
                if expires is not None and wall > expires and not session.closing:
                    logs.info("token expired", app_id=hub.app.id, socket_id=session.socket_id)
                    self.count_error(session, CloseCode.UNAUTHORIZED)
                    session.disconnect(CloseCode.UNAUTHORIZED, "token expired")
                    continue
                silent = now - session.last_seen
                if silent > self.dead_after:
                    logs.info("pong not received", app_id=hub.app.id, socket_id=session.socket_id)
                    self.count_error(session, CloseCode.PONG_NOT_RECEIVED)
                    session.disconnect(CloseCode.PONG_NOT_RECEIVED, "Pong reply not received")
                elif silent > self.idle_after and not session.pinged:
                    session.pinged = True
                    session.send(frames.PING)

    def expire_cache(self, hub: AppHub) -> None:
        """Drop the app's cached events past their TTL; again in a minute while running."""
        now = time.monotonic()
        for name in [n for n, c in hub.cache.items() if c.expires_at <= now]:
            del hub.cache[name]
        if self._running:
            asyncio.get_running_loop().call_later(CACHE_EXPIRY_INTERVAL_S, self.expire_cache, hub)

    def refresh(
        self, session: Session, hub: AppHub, conn: PusherConnection, command: Refresh
    ) -> None:
        """`parley:refresh`: a new token for the same user moves the connection's expiry."""
        try:
            identity = self.identities.verify_token(hub.app, command.token)
            if identity.user_id != conn.user_id:
                raise TokenRejected("the refreshed token is for another user")
        except TokenRejected as exc:
            session.send(frames.error_frame(None, f"Refresh refused: {exc}"))
            return
        session.token_expires_at = identity.expires_at
        session.send(frames.frame("parley:refresh_succeeded", {"expires_at": identity.expires_at}))


class Engine(Protocol):
    """What readiness asks of an engine: the broker and the history store."""

    @property
    def engine(self) -> str: ...

    async def check(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Readiness:
    """The answer of every check, by role: "memory: ok", or the engine and why it failed."""

    checks: dict[str, str]
    failing: list[str]  # the roles whose check failed, in order

    @property
    def ready(self) -> bool:
        return not self.failing


async def readiness(engines: dict[str, Engine], timeout_s: float = READY_TIMEOUT_S) -> Readiness:
    """Ask every engine at once; one that raises or takes longer than `timeout_s` fails."""

    async def check(engine: Engine) -> str | None:
        try:
            await asyncio.wait_for(engine.check(), timeout_s)
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return None

    problems = await asyncio.gather(*(check(e) for e in engines.values()))
    checks: dict[str, str] = {}
    failing: list[str] = []
    for (role, engine), problem in zip(engines.items(), problems, strict=True):
        checks[role] = f"{engine.engine}: {problem or 'ok'}"
        if problem is not None:
            failing.append(role)
    return Readiness(checks, failing)
