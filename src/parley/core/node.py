"""The node: owns the apps' hubs and the engines, and carries out what sessions and the
HTTP API ask for: subscribe, publish, sign in, terminate, shut down.

It knows sessions only through their small surface (send, close, the protocol machine) and
the wire only through `protocol.frames`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from parley import logs
from parley.core.hub import AppHub, CachedEvent, Channel, PresenceFull
from parley.core.session import Session
from parley.errors import ConnectionRefused
from parley.metrics import Metrics
from parley.protocol import frames
from parley.protocol.channels import Kind, channel_type, server_to_user_id
from parley.protocol.codes import CloseCode
from parley.protocol.connection import (
    ClientEvent,
    Close,
    Command,
    Extension,
    PusherConnection,
    Reply,
    Signin,
    Subscribe,
    Unsubscribe,
)
from parley.settings import AppConfig, Settings

SUPPORTED_PROTOCOLS = range(5, 8)
SUBSCRIPTION_COUNT_THROTTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class PublishResult:
    channels: dict[str, dict[str, int]]


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hubs: dict[str, AppHub] = {app.id: AppHub(app) for app in settings.apps}
        self.apps_by_key: dict[str, AppConfig] = {app.key: app for app in settings.apps}
        self.max_outbound_bytes = settings.max_outbound_bytes
        self.metrics = Metrics()
        self.metrics.gauges = self._gauges
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def app(self, app_id: str) -> AppConfig | None:
        hub = self.hubs.get(app_id)
        return hub.app if hub else None

    # -- connections -------------------------------------------------------------------------

    def open_session(self, session: Session) -> None:
        """Validate the handshake, register the session and send connection_established."""
        if self.draining:
            raise ConnectionRefused(CloseCode.RECONNECT, "Server is shutting down, reconnect")
        parts = session.path.split("/")
        if len(parts) != 3 or parts[1] != "app" or not parts[2]:
            raise ConnectionRefused(CloseCode.PATH_NOT_FOUND, f"Path not found: {session.path}")
        app = self.apps_by_key.get(parts[2])
        if app is None:
            raise ConnectionRefused(CloseCode.APP_NOT_FOUND, "Application does not exist")
        raw_protocol = session.query.get("protocol")
        if raw_protocol is None:
            raise ConnectionRefused(CloseCode.NO_PROTOCOL, "No protocol version supplied")
        if not raw_protocol.isdigit() or int(raw_protocol) not in SUPPORTED_PROTOCOLS:
            raise ConnectionRefused(
                CloseCode.UNSUPPORTED_PROTOCOL,
                f"Unsupported protocol version {raw_protocol!r}: use 5, 6 or 7",
            )
        if not app.enabled:
            raise ConnectionRefused(CloseCode.APP_DISABLED, "Application is disabled")
        hub = self.hubs[app.id]
        if app.max_connections and len(hub.sessions) >= app.max_connections:
            raise ConnectionRefused(
                CloseCode.OVER_CONNECTION_QUOTA,
                f"Application is over its connection quota of {app.max_connections}",
            )
        socket_id = f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}"
        while socket_id in hub.sessions:
            socket_id = f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}"
        session.socket_id = socket_id
        session.hub = hub
        session.conn = PusherConnection(app, socket_id, max_frame_bytes=self.settings.max_frame_bytes)
        hub.sessions[socket_id] = session
        self.metrics.connections_total[app.id] += 1
        session.send(session.conn.establish(self.settings.activity_timeout_s))
        logs.info(
            "connection opened",
            app_id=app.id,
            socket_id=socket_id,
            client=session.query.get("client"),
            protocol=raw_protocol,
        )

    def close_session(self, session: Session) -> None:
        hub, conn = session.hub, session.conn
        if hub is None or conn is None or hub.sessions.get(session.socket_id) is not session:
            return
        del hub.sessions[session.socket_id]
        for command in conn.close():
            assert isinstance(command, Unsubscribe)
            self._unsubscribe(session, hub, command)
        if hub.sign_out(session):
            hub.notify_watchers(conn.user_id or "", online=False)
        logs.info("connection closed", app_id=hub.app.id, socket_id=session.socket_id)

    def receive(self, session: Session, text: bytes, now: float) -> None:
        hub, conn = session.hub, session.conn
        assert hub is not None and conn is not None
        self.metrics.messages_in[hub.app.id] += 1
        for command in conn.receive(text, now):
            if type(command) is Reply:
                if command.frame.startswith(b'{"event":"pusher:error"'):
                    self._count_error_frame(session, command.frame)
                session.send(command.frame)
            elif type(command) is ClientEvent:
                self._client_event(session, hub, command)
            elif type(command) is Subscribe:
                self._subscribe(session, hub, conn, command)
            elif type(command) is Unsubscribe:
                self._unsubscribe(session, hub, command)
            elif type(command) is Signin:
                self._signin(session, hub, command)
            elif type(command) is Close:
                logs.info(
                    "connection refused",
                    app_id=hub.app.id,
                    socket_id=session.socket_id,
                    code=command.code,
                    reason=command.reason,
                )
                session.close(command.code, command.reason)
            elif type(command) is Extension:
                session.send(
                    frames.error_frame(None, f"Unsupported event {command.event!r}")
                )

    # -- commands ----------------------------------------------------------------------------

    def _subscribe(
        self, session: Session, hub: AppHub, conn: PusherConnection, command: Subscribe
    ) -> None:
        name = command.channel
        if command.type.kind is Kind.SERVER_TO_USER:
            session.send(frames.subscription_succeeded(name))
            return
        try:
            channel = hub.join(session, name, command.type, command.member)
        except PresenceFull as exc:
            conn.forget(name)
            session.send(frames.error_frame(None, str(exc)))
            return
        if command.type.kind is Kind.PRESENCE:
            session.send(frames.subscription_succeeded(name, hub.presence_data(channel)))
        else:
            session.send(frames.subscription_succeeded(name))
        if command.type.cache:
            cached = hub.cache.get(name)
            if cached is not None and cached.expires_at > time.monotonic():
                session.send(cached.frame)
            else:
                session.send(frames.frame("pusher:cache_miss", channel=name))
        self._count_changed(hub, channel)
        logs.debug("subscribed", app_id=hub.app.id, socket_id=session.socket_id, channel=name)

    def _unsubscribe(self, session: Session, hub: AppHub, command: Unsubscribe) -> None:
        channel = hub.leave(session, command.channel, command.member)
        if channel is not None:
            self._count_changed(hub, channel)

    def _count_changed(self, hub: AppHub, channel: Channel) -> None:
        if not hub.app.subscription_count or channel.type.kind is Kind.PRESENCE:
            return
        count = len(channel.subscribers)
        if count == 0:
            return
        if count <= 100:
            hub.broadcast(channel.name, frames.subscription_count(channel.name, count))
        elif not channel.count_pending:
            channel.count_pending = True
            self.loop.call_later(SUBSCRIPTION_COUNT_THROTTLE_S, self._flush_count, hub, channel)

    def _flush_count(self, hub: AppHub, channel: Channel) -> None:
        channel.count_pending = False
        if hub.channels.get(channel.name) is channel and channel.subscribers:
            count = len(channel.subscribers)
            hub.broadcast(channel.name, frames.subscription_count(channel.name, count))

    def _client_event(self, session: Session, hub: AppHub, command: ClientEvent) -> None:
        publisher = (
            {"type": "user", "id": command.user_id}
            if command.user_id is not None
            else {"type": "connection", "socket_id": session.socket_id}
        )
        data = frames.frame(
            command.event,
            command.data,
            command.channel,
            user_id=command.user_id,
            parley={"publisher": publisher},
        )
        self.metrics.messages_out[hub.app.id] += hub.broadcast(command.channel, data, session)

    def _signin(self, session: Session, hub: AppHub, command: Signin) -> None:
        session.watchlist = command.watchlist
        first = hub.sign_in(session)
        session.send(frames.frame("pusher:signin_success", {"user_data": command.user_data}))
        if command.watchlist:
            online = [uid for uid in command.watchlist if uid in hub.users]
            offline = [uid for uid in command.watchlist if uid not in hub.users]
            session.send(frames.watchlist_events(online, offline))
        if first:
            hub.notify_watchers(command.user_id, online=True)
        logs.info(
            "signed in", app_id=hub.app.id, socket_id=session.socket_id, user_id=command.user_id
        )

    # -- the HTTP API's operations -----------------------------------------------------------

    def publish(
        self,
        app: AppConfig,
        event: str,
        data: str,
        channels: list[str],
        socket_id: str | None = None,
    ) -> None:
        """Deliver an API event to each channel: encoded once per channel, cached if asked."""
        hub = self.hubs[app.id]
        exclude = hub.sessions.get(socket_id) if socket_id else None
        parley = {"publisher": {"type": "server", "app_id": app.id}}
        delivered = 0
        for name in channels:
            encoded = frames.frame(event, data, name, parley=parley)
            user_id = server_to_user_id(name)
            if user_id is not None:
                delivered += hub.send_to_user(user_id, encoded, exclude)
                continue
            if channel_type(name).cache:
                hub.cache[name] = CachedEvent(
                    encoded, event, data, time.monotonic() + app.cache_ttl_s
                )
            delivered += hub.broadcast(name, encoded, exclude)
        self.metrics.api_events[app.id] += 1
        self.metrics.messages_out[app.id] += delivered

    @staticmethod
    def cache_ttl(cached: CachedEvent) -> int:
        return max(0, int(cached.expires_at - time.monotonic()))

    def cached(self, app: AppConfig, name: str) -> CachedEvent | None:
        cached = self.hubs[app.id].cache.get(name)
        if cached is None or cached.expires_at <= time.monotonic():
            return None
        return cached

    def terminate_user(self, app: AppConfig, user_id: str) -> int:
        hub = self.hubs[app.id]
        peers = list(hub.users.get(user_id, {}))
        for session in peers:
            session.send(frames.error_frame(CloseCode.UNAUTHORIZED, "Connection terminated by the server"))
            session.close(CloseCode.UNAUTHORIZED, "Connection terminated by the server")
        logs.info("user terminated", app_id=app.id, user_id=user_id, connections=len(peers))
        return len(peers)

    # -- liveness, errors, shutdown ----------------------------------------------------------

    def start(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep_idle())
        for hub in self.hubs.values():
            self.loop.call_later(60, self._expire_cache, hub)

    def _expire_cache(self, hub: AppHub) -> None:
        now = time.monotonic()
        for name in [n for n, c in hub.cache.items() if c.expires_at <= now]:
            del hub.cache[name]
        if not self.draining:
            self.loop.call_later(60, self._expire_cache, hub)

    async def _sweep_idle(self) -> None:
        """Ping connections silent for activity_timeout; close those silent 30 s more (4201)."""
        idle_after = self.settings.activity_timeout_s
        dead_after = idle_after + self.settings.pong_timeout_s
        interval = max(0.2, min(idle_after, self.settings.pong_timeout_s) / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for hub in self.hubs.values():
                for session in list(hub.sessions.values()):
                    silent = now - session.last_seen
                    if silent > dead_after:
                        logs.info("pong not received", app_id=hub.app.id, socket_id=session.socket_id)
                        self.count_error(session, CloseCode.PONG_NOT_RECEIVED)
                        session.send(frames.error_frame(CloseCode.PONG_NOT_RECEIVED, "Pong reply not received"))
                        session.close(CloseCode.PONG_NOT_RECEIVED, "Pong reply not received")
                    elif silent > idle_after and not session.pinged:
                        session.pinged = True
                        session.send(frames.PING)

    def count_error(self, session: Session, code: int | None) -> None:
        app_id = session.hub.app.id if session.hub else "unknown"
        self.metrics.errors[(app_id, str(code))] += 1

    def _count_error_frame(self, session: Session, frame: bytes) -> None:
        code = frames.decode(frame)["data"]["code"]
        self.count_error(session, code)

    async def shutdown(self) -> None:
        """Drain: every connection is closed with 4200 so clients reconnect elsewhere at once."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        sessions = [s for hub in self.hubs.values() for s in hub.sessions.values()]
        for session in sessions:
            session.send(frames.error_frame(CloseCode.RECONNECT, "Server is shutting down, reconnect"))
            session.close(CloseCode.RECONNECT, "Server is shutting down")
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while any(hub.sessions for hub in self.hubs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        logs.info("drained", connections=len(sessions))

    def _gauges(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"connections": {}, "channels": {}, "subscriptions": {}, "users": {}}
        for app_id, hub in self.hubs.items():
            out["connections"][app_id] = len(hub.sessions)
            out["channels"][app_id] = len(hub.channels)
            out["subscriptions"][app_id] = sum(len(c.subscribers) for c in hub.channels.values())
            out["users"][app_id] = len(hub.users)
        return out
