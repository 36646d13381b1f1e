"""The node: owns the apps' hubs and the engines, and carries out what sessions and the
HTTP API ask for: subscribe (`core.subscriptions`), publish, sign in, terminate, shut down.
What happens is emitted as domain events (`core.events`) on `events`, which the Pusher frames
(`core.pusher_frames`) and the metrics (`core.event_counts`) follow.

It knows sessions only through their small surface (send, close, the protocol machine), the
wire only through `protocol` (frames, the handshake, the commands of the connection machine),
and identity only through `core.authenticate` (auth.identity behind it). The HTTP API asks it
questions through its query methods (`channel_info`, `channels`, `presence_users`,
`cached_event`, `session`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from parley import logs
from parley.auth.identity import Identities
from parley.backends.broker import Broker
from parley.backends.counts import ChannelCounts
from parley.backends.history import HistoryStore
from parley.backends.last_events import CachedEvents
from parley.backends.presence import MembersPage, PresenceStore
from parley.backends.throttle import LoginAttempts
from parley.core.admission import Admission
from parley.core.authenticate import Authenticator
from parley.core.cluster import Cluster
from parley.core.conversations import ACT_PREFIX
from parley.core.conversations import CHANNEL_PREFIX as CONVERSATION_PREFIX
from parley.core.counts import HubCounts
from parley.core.counts import follow as follow_counts
from parley.core.delivery import Delivery, caches
from parley.core.event_counts import count_events, hub_counters, hub_gauges
from parley.core.events import ClientEventSent, EventBus, UserOffline
from parley.core.hub import AppHub, CachedEvent
from parley.core.ids import new_node_id
from parley.core.liveness import Liveness, Readiness, readiness
from parley.core.pusher_frames import PusherFrames
from parley.core.recovery import Recovery
from parley.core.session import Session
from parley.core.subscriptions import Subscriptions
from parley.errors import StoreUnavailable
from parley.metrics import Metrics
from parley.protocol import frames
from parley.protocol.channels import channel_type, server_to_user_id
from parley.protocol.codes import CloseCode
from parley.protocol.connection import (
    ClientEvent,
    Close,
    HistoryQuery,
    HistoryRequest,
    Member,
    Refresh,
    Reply,
    Resume,
    Signin,
    Subscribe,
    Unsubscribe,
)
from parley.publication import NO_EXTRAS, Publication, Publisher
from parley.settings import AppConfig, Settings

if TYPE_CHECKING:
    from parley.core.access import Access
    from parley.core.bots import Bots
    from parley.core.conversations import Conversations
    from parley.core.keys import KeyDirectory
    from parley.core.webhooks import Webhooks


# A step that failed because a store is away (its client reconnects): a line a second, no
# traceback (a store's outage is not a bug).
STEP_FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)


def refused(session: Session, hub: AppHub, error_frame: bytes) -> None:
    """One line (rate-limited: `logs.refused`) for a message of the client's that the protocol
    machine answered with a pusher:error, naming the reason it was given."""
    data = orjson.loads(error_frame).get("data") or {}
    logs.refused(
        "client message refused",
        app_id=hub.app.id,
        socket_id=session.socket_id,
        code=data.get("code"),
        reason=data.get("message"),
    )


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A channel as the HTTP API reports it: over every live node of the cluster."""

    occupied: bool
    subscription_count: int
    user_count: int  # presence members; 0 for other channels


class Node:
    def __init__(
        self,
        settings: Settings,
        history: HistoryStore,
        broker: Broker,
        presence: PresenceStore,
        node_id: str | None = None,
        counts: ChannelCounts | None = None,
        last_events: CachedEvents | None = None,
    ) -> None:
        self.settings = settings
        self.history = history
        self.broker = broker
        self.presence = presence
        if counts is None:  # this process alone
            from parley.backends.memory.counts import MemoryChannelCounts

            counts = MemoryChannelCounts()
        # subscriptions and connections over the cluster's live nodes (the HTTP API, quotas)
        self.counts = counts
        if last_events is None:  # this process alone: the hubs' caches are the truth
            from parley.backends.memory.last_events import MemoryCachedEvents

            last_events = MemoryCachedEvents()
        # the cache channels' last events over the cluster (used only when shared)
        self.last_events = last_events
        # names this node in the cluster: its presence entries, its broker messages
        self.node_id = node_id or settings.node_id or new_node_id()
        self.hubs: dict[str, AppHub] = {app.id: AppHub(app) for app in settings.apps}
        self.apps: tuple[AppConfig, ...] = tuple(hub.app for hub in self.hubs.values())
        self.apps_by_key: dict[str, AppConfig] = {app.key: app for app in settings.apps}
        self.identities = Identities(self.apps)  # the HTTP API verifies Bearer tokens with it
        self.authenticator = Authenticator(self.identities)
        self.max_outbound_bytes = settings.max_outbound_bytes
        self.max_message_bytes = max(1024 * 1024, settings.max_frame_bytes * 4)
        self.metrics = Metrics()
        self.metrics.gauges = partial(hub_gauges, self.hubs)
        self.metrics.hub_counters = partial(hub_counters, self.hubs)
        self.metrics.broker = broker.stats
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.delivery = Delivery(settings, self.hubs, history, broker, last_events)
        self.retention = self.delivery.retention
        self.recovery = Recovery(history, self.retention, settings.recovery_limit, self.spawn)
        self.liveness = Liveness(settings, self.hubs, self.identities, self.count_error)
        self.access: Access | None = None  # set by the composition root
        self.login_attempts: LoginAttempts | None = None  # set by it too (the built-in login)
        self.keys: KeyDirectory | None = None  # set by it too: the key directory
        self.webhooks: Webhooks | None = None  # and the webhooks
        self.conversations: Conversations | None = None  # and the conversations
        self.bots: Bots | None = None  # and the bots
        self.events = EventBus()
        self.pusher_frames = PusherFrames(self.hubs, presence, self.track, counts)
        self.pusher_frames.follow(self.events)
        count_events(self.events, self.metrics)
        counts.bind(HubCounts(self.hubs))
        follow_counts(self.events, counts)  # a shared store is told of changed channels
        self.cluster = Cluster(self)  # the broker's handler
        self.cluster.follow()
        self.pusher_frames.tell_others = self.cluster.count_changed
        self.subscriptions = Subscriptions(self)
        self.admission = Admission(self)

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
        """Validate the handshake, register the session, and admit it (`core.admission`)."""
        self.admission.open(session)

    def close_session(self, session: Session) -> None:
        hub, conn = session.hub, session.conn
        if hub is None or conn is None or hub.sessions.get(session.socket_id) is not session:
            return
        del hub.sessions[session.socket_id]
        for command in conn.close():
            assert isinstance(command, Unsubscribe)
            self.subscriptions.leave(session, hub, command.channel, command.member)
        if hub.sign_out(session):
            self.events.emit(UserOffline(hub.app.id, conn.user_id or ""))
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
                    refused(session, hub, command.frame)
                session.send(command.frame)
            elif type(command) is Subscribe:
                self.subscriptions.subscribe(session, hub, conn, command)
            elif type(command) is Unsubscribe:
                self.subscriptions.leave(session, hub, command.channel, command.member)
            elif type(command) is Signin:
                self.admission.sign_in(session, hub, command)
            elif type(command) is Close:
                logs.info(
                    "connection refused",
                    app_id=hub.app.id,
                    socket_id=session.socket_id,
                    code=command.code,
                    reason=command.reason,
                )
                session.close(command.code, command.reason)
            elif type(command) is Resume or type(command) is HistoryRequest:
                self.recovery.request(session, hub, command)
            elif type(command) is Refresh:
                self.liveness.refresh(session, hub, conn, command)

    # -- commands ----------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        self.track(self.loop.create_task(coro))

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep `task` until it is done (shutdown waits for it); log it if it fails."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, StoreUnavailable):
                STEP_FAULTS.log("step failed: a store is unavailable", reason=exc.message)
            else:
                logs.logger.error("background task failed", exc_info=exc)

    def _client_event(self, session: Session, hub: AppHub, command: ClientEvent) -> None:
        conversations = self.conversations
        if conversations is not None and command.channel.startswith(CONVERSATION_PREFIX):
            # a conversation's members decide, not grants; the cache answers most at once
            if command.event.startswith(ACT_PREFIX) or not conversations.may_write(
                hub.app, session.user_id, command.channel
            ):
                self.subscriptions.hold(session, self._conversation_event(session, hub, command))
                return
        elif self.access is not None:
            problem = self.access.write_problem(hub.app, session.user_id, command.channel)
            if problem is not None:
                self._refuse(session, hub, problem, command.channel)
                return
        self._send_client_event(session, hub, command)

    async def _conversation_event(
        self, session: Session, hub: AppHub, command: ClientEvent
    ) -> None:
        """A client event on a conversation the cache cannot clear, or an edit, delete,
        reaction or receipt: asked of the stores (a pending request's allowance is counted
        there, an act's target read from history); the session holds what follows."""
        conversations = self.conversations
        assert conversations is not None
        problem = await conversations.write_problem(hub.app, session.user_id, command.channel)
        if problem is None and command.event.startswith(ACT_PREFIX):
            problem = await conversations.act_problem(
                hub.app, session.user_id, command.channel, command.event, command.data
            )
        if session.closing:
            return
        if problem is not None:
            self._refuse(session, hub, problem, command.channel)
        else:
            self._send_client_event(session, hub, command)

    def _send_client_event(self, session: Session, hub: AppHub, command: ClientEvent) -> None:
        """Check the signature (signed channels), stamp the sender, queue the event."""
        user_id = command.user_id
        signature = command.signature
        keys = self.keys
        if keys is not None and keys.requires_signature(hub.app, command.channel):
            problem = keys.signature_problem(
                hub.app, command.channel, command.event, user_id, signature, command.data
            )
            if problem is not None:
                self._refuse(session, hub, problem, command.channel)
                return
        publisher = session.publisher
        if publisher is None or publisher.user_id != user_id:  # once per sender, not per event
            publisher = session.publisher = (
                Publisher("user", user_id)
                if user_id is not None
                else Publisher("connection", session.socket_id)
            )
        publication = Publication(
            command.channel,
            command.event,
            command.data,
            publisher,
            extras=NO_EXTRAS if signature is None else {"sig": signature.wire()},
            data_json=command.data_json,
        )
        self.delivery.fan_out(hub, publication, session.socket_id)
        if ClientEventSent in self.events.handlers:  # built only when someone listens
            self.events.emit(ClientEventSent(hub.app.id, publication, session.socket_id))

    def _refuse(self, session: Session, hub: AppHub, problem: str, channel: str) -> None:
        """A client event refused: a pusher:error (code null) to its sender alone, logged."""
        self.count_error(session, None)
        error = frames.error_frame(None, problem, channel)
        refused(session, hub, error)
        session.send(error)

    # -- the HTTP API's operations -----------------------------------------------------------

    async def publish(
        self,
        app: AppConfig,
        event: str,
        data: str,
        channels: list[str],
        socket_id: str | None = None,
        idempotency_key: str | None = None,
        publisher: Publisher | None = None,
    ) -> list[Publication]:
        """Store, then deliver an API event to each channel: encoded once per channel, cached
        on cache channels; a repeated idempotency key stores and delivers nothing. The
        publisher is the app's server unless given (a bot); the stored publications are
        returned with their positions (not those of `#server-to-user-*` channels)."""
        hub = self.hubs[app.id]
        exclude = hub.sessions.get(socket_id) if socket_id else None
        if publisher is None:
            publisher = Publisher("server", app.id)
        data_json = orjson.dumps(data)  # once for all the channels
        queued = []
        for name in channels:
            publication = Publication(
                name, event, data, publisher, idempotency_key=idempotency_key, data_json=data_json
            )
            user_id = server_to_user_id(name)
            if user_id is not None:
                encoded = frames.unstored_event(publication)
                hub.messages_out += hub.send_to_user(user_id, encoded, exclude)
                self.cluster.send_to_user(app.id, user_id, encoded)
            else:
                queued.append(publication)
        self.metrics.api_events[app.id] += 1
        if not queued:
            return queued
        # All of one publish join the same batch (nothing yields in between), which is served
        # in order: once the last is delivered, all are; a failed batch fails the last.
        last: asyncio.Future[None] = self.loop.create_future()
        for publication in queued:
            done = last if publication is queued[-1] else None
            self.delivery.fan_out(hub, publication, socket_id or None, done, caches(publication))
        await last
        return queued

    async def read_history(self, app: AppConfig, name: str, query: HistoryQuery) -> dict[str, Any]:
        """A page of history as the API and `parley:history` answer it."""
        return await self.recovery.read_history(app, name, query)

    async def delete_history(self, app: AppConfig, name: str) -> str:
        epoch = await self.history.delete(app.id, name)
        logs.info("history deleted", app_id=app.id, channel=name)
        return epoch

    @staticmethod
    def cache_ttl(cached: CachedEvent) -> int:
        return max(0, int(cached.expires_at - time.monotonic()))

    def cached(self, app: AppConfig, name: str) -> CachedEvent | None:
        """The cache channel's last event as this node has it (fresh), or None."""
        cached = self.hubs[app.id].cache.get(name)
        if cached is None or cached.expires_at <= time.monotonic():
            return None
        return cached

    async def cached_event(self, app: AppConfig, name: str) -> CachedEvent | None:
        """The cache channel's last event over the cluster (`info=cache`), or None: this
        node's own while it receives the channel's publications (it has subscribers of it),
        else the shared store's (core.subscriptions' rule), or this node's when the store has
        none. With one node, `cached`. StoreUnavailable when the shared store cannot answer."""
        cached = self.cached(app, name)
        shared = self.delivery.last_events
        if shared is None or (cached is not None and name in self.hubs[app.id].channels):
            return cached
        found = await shared.get(app.id, name)
        if found is None:
            return cached
        return CachedEvent(found.frame, found.event, found.data, time.monotonic() + found.ttl_s)

    async def channel_info(self, app: AppConfig, name: str) -> ChannelInfo:
        """The channel over every live node (`counts`; members from the presence store)."""
        count = await self.counts.subscriptions(app.id, name)
        if count == 0:
            return ChannelInfo(False, 0, 0)
        users = await self.user_count(app, name) if channel_type(name).is_presence else 0
        return ChannelInfo(True, count, users)

    async def channels(self, app: AppConfig, prefix: str = "") -> dict[str, int]:
        """The app's channels with a subscriber on some live node whose name starts with
        `prefix`, sorted by name: channel -> subscriptions on every live node."""
        counts = await self.counts.occupied_channels(app.id, prefix)
        return {name: counts[name] for name in sorted(counts)}

    async def user_count(self, app: AppConfig, name: str) -> int:
        """How many members (users) a presence channel has, over the cluster."""
        return await self.presence.count(app.id, name)

    async def presence_users(self, app: AppConfig, name: str) -> list[str]:
        """The user ids of a presence channel's members, in the order they joined."""
        return list(await self.presence.members(app.id, name))

    async def presence_page(
        self, app: AppConfig, name: str, after: int, limit: int | None
    ) -> MembersPage:
        """A page of a presence channel's members, in the order they joined: at most `limit`
        after the position `after` (the `next` of the page before; 0 from the first)."""
        return await self.presence.members_page(app.id, name, after=after, limit=limit)

    async def presence_answer(self, app: AppConfig, name: str, member: Member) -> dict[str, Any]:
        """The `presence` of the subscription_succeeded answer to `member`'s join (asked once
        the store added it): every member, `{"ids", "hash", "count"}`. Where the channel's
        member events are off (`presence_events_off`) the count of members and `member` alone
        (with its own info): pusher-js then has `members.me` and `members.count`, and no
        list it could not keep up to date."""
        if app.presence_events_off and app.member_events_off(name):
            count = await self.presence.count(app.id, name)
            me = {member.user_id: member.user_info}
            return {"ids": [member.user_id], "hash": me, "count": count}
        members = await self.presence.members(app.id, name)
        return {"ids": list(members), "hash": members, "count": len(members)}

    def session(self, app: AppConfig, socket_id: str) -> Session | None:
        return self.hubs[app.id].sessions.get(socket_id)

    def connections(self, app: AppConfig) -> list[Session]:
        return list(self.hubs[app.id].sessions.values())

    def online(self, app: AppConfig, user_id: str) -> bool:
        """Is `user_id` signed in on a connection to this node?"""
        return user_id in self.hubs[app.id].users

    def revoke(self, session: Session, channel: str, reason: str) -> None:
        """End a subscription that is no longer allowed, with `parley:revoked`."""
        self.subscriptions.revoke(session, channel, reason)

    def terminate_everywhere(self, app: AppConfig, user_id: str) -> int:
        """`terminate_user` on this node and every other node of the cluster; this node's
        count."""
        self.cluster.terminate(app.id, user_id)
        return self.terminate_user(app, user_id)

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
        self.liveness.start()
        self.identities.start()

    async def readiness(self) -> Readiness:
        """The checks of the engines this node runs on: its broker and its history store."""
        return await readiness({"broker": self.broker, "store": self.history})

    def count_error(self, session: Session, code: int | None) -> None:
        app_id = session.hub.app.id if session.hub else "unknown"
        self.metrics.errors[(app_id, "none" if code is None else str(code))] += 1

    async def shutdown(self) -> None:
        """Drain: every connection is closed with 4200 so clients reconnect elsewhere at once."""
        self.draining = True
        await self.cluster.stop()
        self.liveness.stop()
        self.identities.stop()
        sessions = [s for hub in self.hubs.values() for s in hub.sessions.values()]
        for session in sessions:
            session.disconnect(
                CloseCode.RECONNECT, "Server is shutting down, reconnect", "Server is shutting down"
            )
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while any(hub.sessions for hub in self.hubs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        pending = [*self._tasks, *self.delivery.tasks]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.shutdown_grace_s)
        await self.broker.close()
        await self.history.close()
        logs.info("drained", connections=len(sessions))
