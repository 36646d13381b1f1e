"""Admission: a WebSocket connection from its handshake to `pusher:connection_established`.

It refuses what the handshake cannot have (an unknown or disabled app, a bad protocol, a node
shutting down, an app over its connection quota, counted over the cluster's nodes, a page from
an origin the app does not allow), identifies the connection from its token or session
cookie (`core.authenticate`), asks the user store or the app's introspection URL when one must
have the last word, and then registers the session with its app's hub and sends
`connection_established`. A connection that leaves while a check is pending is not admitted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parley import logs
from parley.auth.origins import origin_problem
from parley.auth.tokens import Identity
from parley.core.events import UserOnline
from parley.core.hub import AppHub
from parley.core.ids import new_socket_id
from parley.core.session import Session
from parley.errors import ConnectionRefused
from parley.protocol import frames
from parley.protocol.codes import CloseCode
from parley.protocol.connection import PusherConnection, Signin
from parley.protocol.handshake import Handshake, parse_handshake

if TYPE_CHECKING:
    from parley.core.node import Node


class Admission:
    """The node's door: `open` is called once per WebSocket connection."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def open(self, session: Session) -> None:
        """Validate the handshake, register the session and send connection_established
        (at once, or once the identity checks that must ask a store or the app are done)."""
        node = self.node
        if node.draining:
            raise ConnectionRefused(CloseCode.RECONNECT, "Server is shutting down, reconnect")
        handshake = parse_handshake(session.path, session.query, session.headers)
        app = node.apps_by_key.get(handshake.app_key)
        if app is None:
            raise ConnectionRefused(CloseCode.APP_NOT_FOUND, "Application does not exist")
        if handshake.refusal is not None:
            raise handshake.refusal
        if not app.enabled:
            raise ConnectionRefused(CloseCode.APP_DISABLED, "Application is disabled")
        origin_refused = origin_problem(app, handshake.origin)
        if origin_refused is not None:
            raise ConnectionRefused(CloseCode.UNAUTHORIZED, origin_refused)
        hub = node.hubs[app.id]
        # the quota counts the cluster: the other nodes' connections as last read (a batch
        # interval old at most; 0 with one node), never waited for
        if (
            app.max_connections
            and len(hub.sessions) + node.counts.remote_connections(app.id) >= app.max_connections
        ):
            raise ConnectionRefused(
                CloseCode.OVER_CONNECTION_QUOTA,
                f"Application is over its connection quota of {app.max_connections}",
            )
        identity: Identity | None = None
        cookie: str | None = None
        if handshake.token or handshake.cookie:  # most connections carry neither
            identity, cookie = node.authenticator.handshake(app, handshake)
        socket_id = new_socket_id()
        while socket_id in hub.sessions:
            socket_id = new_socket_id()
        session.socket_id = socket_id
        session.hub = hub
        session.conn = PusherConnection(
            app, socket_id, max_frame_bytes=node.settings.max_frame_bytes
        )
        hub.sessions[socket_id] = session
        node.metrics.connections_total[app.id] += 1
        if cookie is not None:
            # The app's introspection URL decides; connection_established waits for it.
            node.spawn(self._introspect_then_admit(session, hub, cookie, handshake))
            return
        if identity is not None and app.auth == "builtin" and node.access is not None:
            # A token outlives a `parley users disable`: the user store has the last word.
            node.spawn(self._check_user_then_admit(session, hub, identity, handshake))
            return
        self._admit(session, hub, identity, handshake)

    async def _check_user_then_admit(
        self, session: Session, hub: AppHub, identity: Identity, handshake: Handshake
    ) -> None:
        node = self.node
        assert node.access is not None
        problem = await node.access.identity_problem(hub.app, identity.user_id)
        if session.closing or hub.sessions.get(session.socket_id) is not session:
            return
        if problem is not None:
            node.count_error(session, CloseCode.UNAUTHORIZED)
            logs.info("connection refused", app_id=hub.app.id, code=4009, reason=problem)
            session.disconnect(CloseCode.UNAUTHORIZED, problem)
            return
        self._admit(session, hub, identity, handshake)

    def _admit(
        self, session: Session, hub: AppHub, identity: Identity | None, handshake: Handshake
    ) -> None:
        node = self.node
        assert session.conn is not None
        extra: dict[str, Any] = {}
        if identity is not None:
            session.conn.identify(identity.user_id, identity.info)
            session.token_expires_at = identity.expires_at
            if hub.sign_in(session):
                node.events.emit(UserOnline(hub.app.id, identity.user_id))
            extra["user_id"] = identity.user_id
        session.send(session.conn.establish(node.settings.activity_timeout_s, **extra))
        # Per-connection lines are debug: at thousands of connections a second they would be
        # the server's main work. Refusals, sign-ins and errors stay at info and above.
        if logs.LEVEL.debug:
            logs.debug(
                "connection opened",
                app_id=hub.app.id,
                socket_id=session.socket_id,
                user_id=identity.user_id if identity else None,
                client=handshake.client,
                protocol=str(handshake.protocol),
            )

    async def _introspect_then_admit(
        self, session: Session, hub: AppHub, cookie: str, handshake: Handshake
    ) -> None:
        node = self.node
        try:
            identity = await node.authenticator.introspect(hub.app, cookie)
        except ConnectionRefused as exc:
            if not session.closing:
                node.count_error(session, exc.code)
                logs.info(
                    "connection refused", app_id=hub.app.id, code=exc.code, reason=exc.message
                )
                session.disconnect(exc.code or CloseCode.UNAUTHORIZED, exc.message)
            return
        if not session.closing and hub.sessions.get(session.socket_id) is session:
            self._admit(session, hub, identity, handshake)

    def sign_in(self, session: Session, hub: AppHub, command: Signin) -> None:
        """A verified `pusher:signin`: the connection is that user from now on; its
        watchlist is answered with who is online."""
        session.watchlist = command.watchlist
        first = hub.sign_in(session)
        session.send(frames.frame("pusher:signin_success", {"user_data": command.user_data}))
        if command.watchlist:
            online = [uid for uid in command.watchlist if uid in hub.users]
            offline = [uid for uid in command.watchlist if uid not in hub.users]
            session.send(frames.watchlist_events(online, offline))
        if first:
            self.node.events.emit(UserOnline(hub.app.id, command.user_id))
        logs.info(
            "signed in", app_id=hub.app.id, socket_id=session.socket_id, user_id=command.user_id
        )
