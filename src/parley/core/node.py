"""The node: owns the apps' hubs and the engines, and carries out what sessions and the
HTTP API ask for: subscribe, publish, sign in, terminate, shut down.

It knows sessions only through their small surface (send, close, the protocol machine) and
the wire only through `protocol.frames`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import time
import urllib.request
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from parley import logs
from parley.auth.tokens import USER_ID_RE, Identity, TokenRejected, verify_token
from parley.backends.history import Entry, HistoryStore, NewEntry, Retention
from parley.core.hub import AppHub, CachedEvent, Channel, PresenceFull
from parley.core.session import Session
from parley.errors import BadRequest, ConnectionRefused, ParleyError
from parley.metrics import Metrics
from parley.protocol import frames
from parley.protocol.channels import channel_type, server_to_user_id
from parley.protocol.codes import CloseCode
from parley.protocol.connection import (
    ClientEvent,
    Close,
    Extension,
    PusherConnection,
    Reply,
    Signin,
    Subscribe,
    Unsubscribe,
)
from parley.settings import AppConfig, Settings

if TYPE_CHECKING:
    from parley.core.access import Access

SUPPORTED_PROTOCOLS = range(5, 8)
JWKS_REFRESH_S = 300.0


class _Entropy:
    """Bytes of the OS's CSPRNG, fetched 4 KiB at a time: one system call per ~400 socket
    ids instead of one each (a connection storm makes thousands a second)."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.pool):
            self.pool, self.at = os.urandom(4096), 0
        self.at += n
        return self.pool[self.at - n : self.at]


_ENTROPY = _Entropy()


def new_socket_id() -> str:
    """Two CSPRNG integers below 10^10 joined by a dot."""
    raw = int.from_bytes(_ENTROPY.take(10), "big")
    return f"{(raw >> 40) % 10**10}.{(raw & (2**40 - 1)) % 10**10}"


def _read_jwks(source: str) -> str:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as reply:
            return reply.read().decode()  # type: ignore[no-any-return]
    return Path(source).read_text()


SUBSCRIPTION_COUNT_THROTTLE_S = 5.0


def parley_of(entry: Entry) -> dict[str, Any]:
    """The `parley` object of a delivered event: who sent it and where it stands."""
    return {
        "publisher": entry.publisher,
        "offset": entry.offset,
        "epoch": entry.epoch,
        "ts": entry.ts,
        "id": entry.id,
    }


def entry_frame(channel: str, entry: Entry, new: NewEntry | None = None) -> bytes:
    """The frame of a stored event; given the NewEntry it came from, its data and publisher
    go in as the JSON already encoded for the store."""
    data = new.data_bytes() if new is not None else orjson.dumps(entry.data)
    publisher = new.publisher_bytes() if new is not None else orjson.dumps(entry.publisher)
    return frames.stored_event(
        entry.event,
        channel,
        data,
        entry.user_id,
        publisher,
        entry.offset,
        entry.epoch,
        entry.ts,
        entry.id,
    )


class Node:
    def __init__(self, settings: Settings, history: HistoryStore) -> None:
        self.settings = settings
        self.history = history
        self.retention = lru_cache(maxsize=4096)(self._retention)
        self.hubs: dict[str, AppHub] = {app.id: AppHub(app) for app in settings.apps}
        self.apps_by_key: dict[str, AppConfig] = {app.key: app for app in settings.apps}
        self.max_outbound_bytes = settings.max_outbound_bytes
        self.max_message_bytes = max(1024 * 1024, settings.max_frame_bytes * 4)
        self.metrics = Metrics()
        self.metrics.gauges = self._gauges
        self.metrics.hub_counters = self._hub_counters
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outbox: list[tuple[Any, ...]] = []
        self._pump: asyncio.Task[None] | None = None
        self._key_cache: dict[str, tuple[str, ...]] = {}
        self._jwks: dict[str, tuple[Any, ...]] = {}
        self._jwks_task: asyncio.Task[None] | None = None
        self.access: Access | None = None  # set by the composition root

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
        path, token = session.path, session.query.get("token")
        if path.startswith("/token/"):
            _, _, token, rest = path.split("/", 3)
            path = "/" + rest
        authorization = session.headers.get("authorization", "") if session.headers else ""
        if token is None and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        parts = path.split("/")
        if len(parts) != 3 or parts[1] != "app" or not parts[2]:
            raise ConnectionRefused(CloseCode.PATH_NOT_FOUND, f"Path not found: {path}")
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
        identity = self._verify_token(app, token) if token else None
        cookie = None if identity is not None else self._session_cookie(app, session)
        if cookie is not None and app.session_secret:
            identity = self._signed_session(app, cookie)
        socket_id = new_socket_id()
        while socket_id in hub.sessions:
            socket_id = new_socket_id()
        session.socket_id = socket_id
        session.hub = hub
        session.conn = PusherConnection(
            app, socket_id, max_frame_bytes=self.settings.max_frame_bytes
        )
        hub.sessions[socket_id] = session
        self.metrics.connections_total[app.id] += 1
        if cookie is not None and identity is None:
            # The app's introspection URL decides; connection_established waits for it.
            self._spawn(self._introspect_then_admit(session, hub, cookie, raw_protocol))
            return
        if identity is not None and app.auth == "builtin" and self.access is not None:
            # A token outlives a `parley users disable`: the user store has the last word.
            self._spawn(self._check_user_then_admit(session, hub, identity, raw_protocol))
            return
        self._admit(session, hub, identity, raw_protocol)

    async def _check_user_then_admit(
        self, session: Session, hub: AppHub, identity: Identity, protocol: str
    ) -> None:
        assert self.access is not None
        user = await self.access.users.get(hub.app.id, identity.user_id)
        if session.closing or hub.sessions.get(session.socket_id) is not session:
            return
        if user is not None and user.disabled:
            self.count_error(session, CloseCode.UNAUTHORIZED)
            logs.info("connection refused", app_id=hub.app.id, code=4009, reason="user disabled")
            session.disconnect(CloseCode.UNAUTHORIZED, "user disabled")
            return
        self._admit(session, hub, identity, protocol)

    def _admit(
        self, session: Session, hub: AppHub, identity: Identity | None, protocol: str
    ) -> None:
        assert session.conn is not None
        extra: dict[str, Any] = {}
        if identity is not None:
            session.conn.identify(identity.user_id, identity.info)
            session.token_expires_at = identity.expires_at
            if hub.sign_in(session):
                hub.notify_watchers(identity.user_id, online=True)
            extra["user_id"] = identity.user_id
        session.send(session.conn.establish(self.settings.activity_timeout_s, **extra))
        # Per-connection lines are debug: at thousands of connections a second they would be
        # the server's main work. Refusals, sign-ins and errors stay at info and above.
        if logs.LEVEL.debug:
            logs.debug(
                "connection opened",
                app_id=hub.app.id,
                socket_id=session.socket_id,
                user_id=identity.user_id if identity else None,
                client=session.query.get("client"),
                protocol=protocol,
            )

    def _session_cookie(self, app: AppConfig, session: Session) -> str | None:
        """The app's session cookie from the handshake, once the Origin is allowed."""
        if not app.session_cookie or not session.headers:
            return None
        raw = session.headers.get("cookie")
        if not raw:
            return None
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(app.session_cookie)
        if morsel is None:
            return None
        origin = session.headers.get("origin", "")
        allowed = [o.strip() for o in app.allowed_origins.split(",") if o.strip()]
        if origin not in allowed:
            raise ConnectionRefused(
                CloseCode.UNAUTHORIZED,
                f"Origin {origin or '(none)'} is not allowed for cookie sessions",
            )
        return morsel.value

    def _signed_session(self, app: AppConfig, cookie: str) -> Identity:
        serializer = URLSafeTimedSerializer(app.session_secret, salt=app.session_salt)
        try:
            payload = serializer.loads(cookie, max_age=int(app.session_max_age_s))
        except SignatureExpired:
            raise ConnectionRefused(CloseCode.UNAUTHORIZED, "session expired") from None
        except BadSignature:
            raise ConnectionRefused(
                CloseCode.UNAUTHORIZED, "session cookie signature is invalid"
            ) from None
        return self._session_identity(payload)

    @staticmethod
    def _session_identity(payload: Any) -> Identity:
        info = None
        if isinstance(payload, dict):
            info = payload.get("info")
            payload = payload.get("user_id", payload.get("id"))
        if isinstance(payload, int) and not isinstance(payload, bool):
            payload = str(payload)
        if not isinstance(payload, str) or not USER_ID_RE.fullmatch(payload):
            raise ConnectionRefused(CloseCode.UNAUTHORIZED, "session holds no valid user id")
        return Identity(payload, info, None)

    async def _introspect_then_admit(
        self, session: Session, hub: AppHub, cookie: str, protocol: str
    ) -> None:
        try:
            identity = await self._introspect(hub.app, cookie)
        except ConnectionRefused as exc:
            if not session.closing:
                self.count_error(session, exc.code)
                logs.info(
                    "connection refused", app_id=hub.app.id, code=exc.code, reason=exc.message
                )
                session.disconnect(exc.code or CloseCode.UNAUTHORIZED, exc.message)
            return
        if not session.closing and hub.sessions.get(session.socket_id) is session:
            self._admit(session, hub, identity, protocol)

    async def _introspect(self, app: AppConfig, cookie: str) -> Identity:
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with (
                aiohttp.ClientSession(timeout=timeout) as client,
                client.post(app.session_introspection_url, json={"cookie": cookie}) as reply,
            ):
                if reply.status != 200:
                    raise ConnectionRefused(CloseCode.UNAUTHORIZED, "session not recognized")
                payload = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise ConnectionRefused(
                CloseCode.UNAUTHORIZED, "session introspection failed"
            ) from None
        return self._session_identity(payload)

    def verify_token(self, app: AppConfig, token: str) -> Identity:
        """The identity a JWT gives in `app`; TokenRejected says why not."""
        return verify_token(
            token,
            secret=app.secret,
            audience=app.jwt_audience or app.key,
            public_keys=self._public_keys(app),
            issuer=app.jwt_issuer or None,
            now=time.time(),
        )

    def _verify_token(self, app: AppConfig, token: str) -> Identity:
        try:
            return self.verify_token(app, token)
        except TokenRejected as exc:
            raise ConnectionRefused(CloseCode.UNAUTHORIZED, str(exc)) from None

    def _public_keys(self, app: AppConfig) -> tuple[Any, ...]:
        cached = self._key_cache.get(app.id)
        if cached is None:
            paths = [p.strip() for p in app.jwt_public_keys.split(",") if p.strip()]
            cached = tuple(Path(p).read_text() for p in paths)
            self._key_cache[app.id] = cached
        return cached + self._jwks.get(app.id, ())

    async def load_jwks(self) -> None:
        """Read every app's JWKS (file or URL); a failure keeps the keys already known."""
        for hub in self.hubs.values():
            source = hub.app.jwt_jwks
            if not source:
                continue
            try:
                text = await asyncio.to_thread(_read_jwks, source)
                keys = tuple(jwt.PyJWKSet.from_json(text).keys)
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                logs.warning("jwks not loaded", app_id=hub.app.id, source=source, error=str(exc))
                continue
            self._jwks[hub.app.id] = keys
            logs.info("jwks loaded", app_id=hub.app.id, keys=len(keys))

    async def _refresh_jwks(self) -> None:
        while True:
            await asyncio.sleep(JWKS_REFRESH_S)
            await self.load_jwks()

    def _refresh(
        self, session: Session, hub: AppHub, conn: PusherConnection, data: dict[str, Any]
    ) -> None:
        token = data.get("token")
        try:
            if not isinstance(token, str) or not token:
                raise TokenRejected("parley:refresh needs a token")
            identity = self.verify_token(hub.app, token)
            if identity.user_id != conn.user_id:
                raise TokenRejected("the refreshed token is for another user")
        except TokenRejected as exc:
            session.send(frames.error_frame(None, f"Refresh refused: {exc}"))
            return
        session.token_expires_at = identity.expires_at
        session.send(frames.frame("parley:refresh_succeeded", {"expires_at": identity.expires_at}))

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
        if logs.LEVEL.debug:
            logs.debug("connection closed", app_id=hub.app.id, socket_id=session.socket_id)

    def receive(self, session: Session, text: bytes, now: float) -> None:
        hub, conn = session.hub, session.conn
        assert hub is not None and conn is not None
        hub.messages_in += 1
        for command in conn.receive(text, now):
            if type(command) is ClientEvent:
                self._client_event(session, hub, command)
            elif type(command) is Reply:
                if command.error:
                    self.count_error(session, command.code)
                session.send(command.frame)
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
                self._extension(session, hub, conn, command)

    # -- commands ----------------------------------------------------------------------------

    def _subscribe(
        self, session: Session, hub: AppHub, conn: PusherConnection, command: Subscribe
    ) -> None:
        name = command.channel
        if command.type.is_server_to_user:
            session.send(frames.subscription_succeeded(name))
            return
        problem = (
            self.access.subscribe_problem(hub.app, conn.user_id, name, command.type)
            if self.access is not None
            else None
        )
        if problem is not None:
            conn.forget(name)
            self.count_error(session, None)
            logs.info(
                "subscription refused",
                app_id=hub.app.id,
                socket_id=session.socket_id,
                channel=name,
                reason=problem,
            )
            session.send(frames.error_frame(None, problem, name))
            return
        try:
            channel = hub.join(session, name, command.type, command.member)
        except PresenceFull as exc:
            conn.forget(name)
            session.send(frames.error_frame(None, str(exc)))
            return
        if command.type.is_presence:
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
        if logs.LEVEL.debug:
            logs.debug("subscribed", app_id=hub.app.id, socket_id=session.socket_id, channel=name)

    def _unsubscribe(self, session: Session, hub: AppHub, command: Unsubscribe) -> None:
        self.leave(session, hub, command.channel, command.member)

    def leave(self, session: Session, hub: AppHub, name: str, member: Any) -> None:
        channel = hub.leave(session, name, member)
        if channel is not None:
            self._count_changed(hub, channel)

    def _count_changed(self, hub: AppHub, channel: Channel) -> None:
        if not hub.app.subscription_count or channel.type.is_presence:
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

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logs.logger.error("background task failed", exc_info=exc)

    def _client_event(self, session: Session, hub: AppHub, command: ClientEvent) -> None:
        if self.access is not None:
            problem = self.access.write_problem(hub.app, session.user_id, command.channel)
            if problem is not None:
                self.count_error(session, None)
                session.send(frames.error_frame(None, problem, command.channel))
                return
        user_id = command.user_id
        publisher = session.publisher
        if publisher is None or publisher[0] != user_id:  # made once per sender, not per event
            stamp = (
                {"type": "user", "id": user_id}
                if user_id is not None
                else {"type": "connection", "socket_id": session.socket_id}
            )
            publisher = session.publisher = (user_id, stamp, orjson.dumps(stamp))
        new = NewEntry(
            command.event,
            command.data,
            publisher[1],
            user_id,
            None,
            command.data_json,
            publisher[2],
        )
        self._fan_out(hub, command.channel, new, session)

    def _fan_out(
        self,
        hub: AppHub,
        name: str,
        new: NewEntry,
        exclude: Any = None,
        cache: bool = False,
        done: asyncio.Future[None] | None = None,
    ) -> None:
        """Queue an event for `name`: it is appended to the channel's history (when it keeps
        one) and then the same bytes go to every subscriber, so nothing is delivered that is
        not durable. One pump serves the queue in order, a batch per commit; `done` resolves
        once this event is delivered."""
        self._outbox.append((hub, name, new, exclude, cache, self.retention(name), done))
        if self._pump is None:
            self._pump = self.loop.create_task(self._pump_outbox())

    async def _pump_outbox(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                appends = [
                    (hub.app.id, name, new, retention)
                    for hub, name, new, _, _, retention, _ in batch
                    if retention is not None
                ]
                try:
                    stored = iter(await self.history.append_many(appends) if appends else ())
                except Exception as exc:
                    logs.error("history append failed: events not delivered", events=len(batch))
                    for *_, done in batch:
                        if done is not None and not done.done():
                            done.set_exception(exc)
                    continue
                for hub, name, new, exclude, cache, retention, done in batch:
                    if retention is None:
                        data = frames.frame(
                            new.event,
                            new.data,
                            name,
                            user_id=new.user_id,
                            parley={"publisher": new.publisher},
                        )
                        offset = 0
                    else:
                        entry = next(stored)
                        if entry.duplicate:
                            data = b""
                        else:
                            data, offset = entry_frame(name, entry, new), entry.offset
                    if data:
                        if cache:
                            hub.cache[name] = CachedEvent(
                                data, new.event, new.data, time.monotonic() + hub.app.cache_ttl_s
                            )
                        hub.messages_out += hub.broadcast(name, data, exclude, offset)
                    if done is not None and not done.done():
                        done.set_result(None)
        finally:
            self._pump = None

    def _retention(self, name: str) -> Retention | None:
        """How long `name` keeps history, or None when it keeps none."""
        if server_to_user_id(name) is not None:
            return None
        for rule in self.settings.history:
            if fnmatch.fnmatchcase(name, rule.pattern):
                if not rule.enabled:
                    return None
                return Retention(rule.max_count, rule.max_age_s)
        return Retention(self.settings.history_max_count, self.settings.history_max_age_s)

    # -- parley:* extensions -----------------------------------------------------------------

    def _extension(
        self, session: Session, hub: AppHub, conn: PusherConnection, command: Extension
    ) -> None:
        if command.event == "parley:refresh":
            self._refresh(session, hub, conn, command.data)
            return
        channel = command.data.get("channel")
        if command.event not in ("parley:resume", "parley:history"):
            session.send(frames.error_frame(None, f"Unsupported event {command.event!r}"))
            return
        if not isinstance(channel, str) or channel not in conn.subscriptions:
            session.send(
                frames.error_frame(
                    None, f"{command.event} needs a channel this connection is subscribed to"
                )
            )
            return
        if self.retention(channel) is None:
            session.send(frames.error_frame(None, f"Channel {channel} keeps no history"))
            return
        if command.event == "parley:resume":
            since = command.data.get("since")
            if (
                not isinstance(since, dict)
                or not isinstance(since.get("offset"), int)
                or isinstance(since.get("offset"), bool)
                or not isinstance(since.get("epoch"), str)
            ):
                session.send(
                    frames.error_frame(None, "parley:resume needs since: {offset: int, epoch: str}")
                )
                return
            self._spawn(self._resume(session, hub, channel, since["offset"], since["epoch"]))
        else:
            self._spawn(self._history_page(session, hub, channel, command.data))

    async def _resume(
        self, session: Session, hub: AppHub, name: str, offset: int, epoch: str
    ) -> None:
        channel = hub.channels.get(name)
        if channel is None or session not in channel.subscribers:
            return
        held: list[tuple[int, bytes]] = []
        channel.subscribers[session] = held
        try:
            entries = await self.history.since(
                hub.app.id, name, offset, epoch, self.settings.recovery_limit
            )
        finally:
            still_here = (
                channel.subscribers.get(session, None) is held and session in channel.subscribers
            )
            if still_here:
                channel.subscribers[session] = None
        if not still_here:
            return
        last = offset
        if entries is not None:
            for entry in entries:
                session.send(entry_frame(name, entry))
            if entries:
                last = entries[-1].offset
        recovered = entries is not None
        session.send(
            frames.frame("parley:resumed", {"channel": name, "recovered": recovered}, name)
        )
        for held_offset, data in held:
            if not recovered or held_offset > last:
                session.send(data)
        logs.debug(
            "resumed",
            app_id=hub.app.id,
            socket_id=session.socket_id,
            channel=name,
            recovered=recovered,
            replayed=len(entries or ()),
        )

    async def _history_page(
        self, session: Session, hub: AppHub, name: str, data: dict[str, Any]
    ) -> None:
        try:
            page = await self.read_history(hub.app, name, data)
        except ParleyError as exc:
            session.send(frames.error_frame(None, exc.message, name))
            return
        session.send(frames.frame("parley:history_page", page, name))

    async def read_history(self, app: AppConfig, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """A page of history as the API and `parley:history` answer it."""

        def number(key: str, default: int | None) -> int | None:
            value = args.get(key)
            if value in (None, ""):
                return default
            try:
                parsed = int(value)
            except (TypeError, ValueError):
                raise BadRequest(f"{key!r} must be an integer") from None
            if parsed < 0:
                raise BadRequest(f"{key!r} must not be negative")
            return parsed

        limit = number("limit", 100) or 0
        if not 1 <= limit <= 1000:
            raise BadRequest("'limit' must be between 1 and 1000")
        direction = args.get("direction") or "forward"
        if direction not in ("forward", "backward"):
            raise BadRequest("'direction' must be forward or backward")
        page = await self.history.read(
            app.id,
            name,
            after=number("after", None),
            before=number("before", None),
            limit=limit,
            direction="backward" if direction == "backward" else "forward",
        )
        events = []
        for entry in page.entries:
            item: dict[str, Any] = {
                "event": entry.event,
                "data": entry.data,
                "parley": parley_of(entry),
            }
            if entry.user_id is not None:
                item["user_id"] = entry.user_id
            events.append(item)
        return {"channel": name, "epoch": page.epoch, "events": events, "next": page.next}

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

    async def publish(
        self,
        app: AppConfig,
        event: str,
        data: str,
        channels: list[str],
        socket_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Store, then deliver an API event to each channel: encoded once per channel, cached
        on cache channels; a repeated idempotency key stores and delivers nothing."""
        hub = self.hubs[app.id]
        exclude = hub.sessions.get(socket_id) if socket_id else None
        publisher = {"type": "server", "app_id": app.id}
        new = NewEntry(event, data, publisher, None, idempotency_key)
        queued = []
        for name in channels:
            user_id = server_to_user_id(name)
            if user_id is not None:
                encoded = frames.frame(event, data, name, parley={"publisher": publisher})
                hub.messages_out += hub.send_to_user(user_id, encoded, exclude)
            else:
                queued.append(name)
        self.metrics.api_events[app.id] += 1
        if not queued:
            return
        # All of one publish join the same batch (nothing yields in between), which is served
        # in order: once the last is delivered, all are; a failed batch fails the last.
        last: asyncio.Future[None] = self.loop.create_future()
        for name in queued:
            done = last if name is queued[-1] else None
            self._fan_out(hub, name, new, exclude, channel_type(name).cache, done)
        await last

    async def delete_history(self, app: AppConfig, name: str) -> str:
        epoch = await self.history.delete(app.id, name)
        logs.info("history deleted", app_id=app.id, channel=name)
        return epoch

    @staticmethod
    def cache_ttl(cached: CachedEvent) -> int:
        return max(0, int(cached.expires_at - time.monotonic()))

    def cached(self, app: AppConfig, name: str) -> CachedEvent | None:
        cached = self.hubs[app.id].cache.get(name)
        if cached is None or cached.expires_at <= time.monotonic():
            return None
        return cached

    def terminate_user(
        self, app: AppConfig, user_id: str, reason: str = "Connection terminated by the server"
    ) -> int:
        hub = self.hubs[app.id]
        peers = list(hub.users.get(user_id, {}))
        for session in peers:
            session.disconnect(CloseCode.UNAUTHORIZED, reason)
        logs.info(
            "user terminated", app_id=app.id, user_id=user_id, connections=len(peers), reason=reason
        )
        return len(peers)

    # -- liveness, errors, shutdown ----------------------------------------------------------

    def start(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep_idle())
        if any(hub.app.jwt_jwks.startswith(("http://", "https://")) for hub in self.hubs.values()):
            self._jwks_task = self.loop.create_task(self._refresh_jwks())
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
        interval = max(0.2, min(1.0, idle_after / 4, self.settings.pong_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for hub in self.hubs.values():
                wall = time.time()
                for session in list(hub.sessions.values()):
                    expires = session.token_expires_at
                    if expires is not None and wall > expires and not session.closing:
                        logs.info("token expired", app_id=hub.app.id, socket_id=session.socket_id)
                        self.count_error(session, CloseCode.UNAUTHORIZED)
                        session.disconnect(CloseCode.UNAUTHORIZED, "token expired")
                        continue
                    silent = now - session.last_seen
                    if silent > dead_after:
                        logs.info(
                            "pong not received", app_id=hub.app.id, socket_id=session.socket_id
                        )
                        self.count_error(session, CloseCode.PONG_NOT_RECEIVED)
                        session.disconnect(CloseCode.PONG_NOT_RECEIVED, "Pong reply not received")
                    elif silent > idle_after and not session.pinged:
                        session.pinged = True
                        session.send(frames.PING)

    def count_error(self, session: Session, code: int | None) -> None:
        app_id = session.hub.app.id if session.hub else "unknown"
        self.metrics.errors[(app_id, "none" if code is None else str(code))] += 1

    async def shutdown(self) -> None:
        """Drain: every connection is closed with 4200 so clients reconnect elsewhere at once."""
        self.draining = True
        for background in (self._sweeper, self._jwks_task):
            if background is not None:
                background.cancel()
        sessions = [s for hub in self.hubs.values() for s in hub.sessions.values()]
        for session in sessions:
            session.disconnect(
                CloseCode.RECONNECT, "Server is shutting down, reconnect", "Server is shutting down"
            )
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while any(hub.sessions for hub in self.hubs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        pending = [t for t in (*self._tasks, self._pump) if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.shutdown_grace_s)
        await self.history.close()
        logs.info("drained", connections=len(sessions))

    def _hub_counters(self) -> dict[str, dict[str, int]]:
        return {
            "messages_in": {app_id: hub.messages_in for app_id, hub in self.hubs.items()},
            "messages_out": {app_id: hub.messages_out for app_id, hub in self.hubs.items()},
        }

    def _gauges(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {
            "connections": {},
            "channels": {},
            "subscriptions": {},
            "users": {},
        }
        for app_id, hub in self.hubs.items():
            out["connections"][app_id] = len(hub.sessions)
            out["channels"][app_id] = len(hub.channels)
            out["subscriptions"][app_id] = sum(len(c.subscribers) for c in hub.channels.values())
            out["users"][app_id] = len(hub.users)
        return out
