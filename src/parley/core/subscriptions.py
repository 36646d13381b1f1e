"""Subscribing and leaving, presence included: the node's part between a connection's
`Subscribe`/`Unsubscribe` commands and the hub, the presence store and the domain events.

A subscribe that is not presence is synchronous: the hub adds the subscriber and the answer is
written before `subscribe` returns. A presence subscribe asks the presence store first (`add`,
then `members`), which is async; it runs through `core.eager`, so with a store that answers
without suspending (memory) it too is finished before `subscribe` returns. With a store that
suspends (Redis), the session holds every later message it receives (`Session.hold`) until
the store has answered, and then handles them in order: `subscribe presence-x` followed at once
by a client event or an unsubscribe on presence-x behaves as with the memory store. A presence
leave is held the same way, so that a subscribe after it cannot overtake its removal.

A cache channel's last event is the hub's (`AppHub.cache`) with one node. In a cluster
(a shared `backends.last_events.CachedEvents`), a subscribe whose node cannot trust its own
(it has no subscriber of the channel, so it missed what other nodes published, or it has
nothing fresh) asks the shared store once the broker delivers the channel here, before the
answer, and keeps what it found in the hub with its remaining TTL (`_recall`); the session
holds its later messages meanwhile, as for presence. A store that cannot answer is logged,
and the subscribe goes on with what the node has (else `cache_miss`).

What each step emits (`core.events`), in order:
- subscribe: `ChannelOccupied` (first local subscriber), `MemberAdded` (presence, the user's
  first connection), then the `subscription_succeeded` answer and the cached event or
  `CacheMiss` (cache channels), then `SubscriptionCountChanged`. When the app has webhooks,
  the joiner's output is corked meanwhile (`Session.cork`), and if those events made any, it
  stays corked until the webhook queue has stored them: the client is told it is subscribed
  only once the subscription's webhooks would survive a crash.
- leave: `ChannelVacated` (last local subscriber), `SubscriptionCountChanged`, then
  `MemberRemoved` once the store says it was the user's last connection. A leaving connection
  stops receiving at once; a joining one starts once the store has admitted it.

A presence join the connection no longer wants when the store answers (it closed, or its
subscription was revoked meanwhile) is undone: its entry removed, and only what changed for
the other members emitted. The store's `add` enforces the app's `max_presence_members`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from parley import logs
from parley.backends.last_events import LastEvent
from parley.backends.presence import PresenceFull
from parley.core import eager
from parley.core.conversations import is_conversation_channel, member_problem
from parley.core.events import (
    CacheMiss,
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    SubscriptionCountChanged,
)
from parley.core.hub import AppHub, CachedEvent, Channel
from parley.protocol import frames
from parley.protocol.codes import CloseCode
from parley.protocol.connection import Member, PusherConnection, Subscribe

if TYPE_CHECKING:
    from parley.core.node import Node
    from parley.core.session import Session
    from parley.core.webhooks import Webhooks

# A shared store that cannot answer: a line a second (its subscribes get cache_miss).
RECALL_FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)
# How long a subscription's answer waits for its webhooks to be stored (then: closed, 4100).
WEBHOOK_STORE_WAIT_S = 5.0
STORE_FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)


class Subscriptions:
    """Subscribe, leave and revoke for the node's sessions (`Node` composes one)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.events = node.events
        self.presence = node.presence
        # the cluster's last events of cache channels: None with one node (the hub's cache)
        self.last_events = node.delivery.last_events

    def subscribe(
        self, session: Session, hub: AppHub, conn: PusherConnection, command: Subscribe
    ) -> None:
        name = command.channel
        if command.type.is_server_to_user:
            session.send(frames.subscription_succeeded(name))
            return
        if self.node.conversations is not None and is_conversation_channel(name):
            self.hold(session, self._join_conversation(session, hub, conn, command))
            return
        access = self.node.access
        problem = (
            access.subscribe_problem(hub.app, conn.user_id, name, command.type)
            if access is not None
            else None
        )
        if problem is not None:
            self._refuse(session, hub, conn, name, problem)
            return
        member = command.member
        recall = command.type.cache and self.last_events is not None
        if member is not None:
            step = self._join_presence(session, hub, conn, command, member)
            if recall:  # a shared store's client needs a task around it
                self.hold(session, step)
            else:
                self._hold(session, step)
            return
        confirming = self.node.delivery.occupied(hub, name) if name not in hub.channels else None
        if recall and not self._recalls(hub, name):
            recall = False
        if confirming is None and not recall:
            self._joined(session, hub, hub.join(session, name, command.type), None, None)
        elif recall:
            self.hold(session, self._join_confirmed(confirming, session, hub, conn, command))
        else:
            self._hold(session, self._join_confirmed(confirming, session, hub, conn, command))

    def _refuse(
        self, session: Session, hub: AppHub, conn: PusherConnection, name: str, problem: str
    ) -> None:
        conn.forget(name)
        self.node.count_error(session, None)
        logs.info(
            "subscription refused",
            app_id=hub.app.id,
            socket_id=session.socket_id,
            channel=name,
            reason=problem,
        )
        session.send(frames.error_frame(None, problem, name))

    async def _join_conversation(
        self, session: Session, hub: AppHub, conn: PusherConnection, command: Subscribe
    ) -> None:
        """A conversation's channel: its members alone join, and get `parley:welcome` after
        the subscription's answer."""
        conversations = self.node.conversations
        assert conversations is not None
        name = command.channel
        problem, conversation = await conversations.subscribe_problem(hub.app, conn.user_id, name)
        if not _wanted(session, hub, conn, name):
            return
        if problem is not None or conversation is None:
            self._refuse(session, hub, conn, name, problem or "No such conversation")
            return
        if name not in hub.channels:
            confirming = self.node.delivery.occupied(hub, name)
            if confirming is not None:
                await asyncio.shield(confirming)
        welcome = await conversations.welcome(hub.app, conversation)
        if not _wanted(session, hub, conn, name):
            if name not in hub.channels:
                self.node.delivery.vacated(hub, name)
            return
        # the newest version: a change may have come while this join waited
        latest = conversations.cached(hub.app.id, conversation.id) or conversation
        problem = member_problem(latest, conn.user_id)
        if problem is not None:
            self._refuse(session, hub, conn, name, problem)
            if name not in hub.channels:
                self.node.delivery.vacated(hub, name)
            return
        self._joined(session, hub, hub.join(session, name, command.type), None, None)
        session.send(frames.frame("parley:welcome", welcome, name))

    async def _join_confirmed(
        self,
        confirming: Awaitable[None] | None,
        session: Session,
        hub: AppHub,
        conn: PusherConnection,
        command: Subscribe,
    ) -> None:
        """Join once the broker delivers the channel's publications here: a client told it
        is subscribed misses nothing published after that, on any node. A cache channel's
        last event is recalled from the cluster then, when this node has none it can trust."""
        if confirming is not None:
            await asyncio.shield(confirming)  # a future of its own: several joins wait on one
        name = command.channel
        if command.type.cache and self._recalls(hub, name):
            await self._recall(hub, name)
        if _wanted(session, hub, conn, name):
            self._joined(session, hub, hub.join(session, name, command.type), None, None)
        elif name not in hub.channels:
            self.node.delivery.vacated(hub, name)  # nobody here wants it after all

    async def _join_presence(
        self,
        session: Session,
        hub: AppHub,
        conn: PusherConnection,
        command: Subscribe,
        member: Member,
    ) -> None:
        app_id, name, socket_id = hub.app.id, command.channel, session.socket_id
        confirming = self.node.delivery.occupied(hub, name) if name not in hub.channels else None
        if confirming is not None:
            await asyncio.shield(confirming)
        if command.type.cache and self._recalls(hub, name):
            await self._recall(hub, name)
        try:
            new = await self.presence.add(
                app_id,
                name,
                member.user_id,
                member.user_info,
                node_id=self.node.cluster.presence_key,
                connection_id=socket_id,
                limit=hub.app.max_presence_members,
            )
        except PresenceFull as exc:
            if _wanted(session, hub, conn, name):
                conn.forget(name)
                session.send(frames.error_frame(None, str(exc)))
            return
        presence = await self.node.presence_answer(hub.app, name, member)
        if _wanted(session, hub, conn, name):
            channel = hub.join(session, name, command.type)
            self._joined(session, hub, channel, member if new else None, presence)
            return
        last = await self.presence.remove(
            app_id,
            name,
            member.user_id,
            node_id=self.node.cluster.presence_key,
            connection_id=socket_id,
        )
        if new and not last:  # another connection of the user joined meanwhile
            self.events.emit(MemberAdded(app_id, name, member.user_id, member.user_info, socket_id))
        elif last and not new:  # the user's other connections left meanwhile
            self.events.emit(MemberRemoved(app_id, name, member.user_id, socket_id))

    def _joined(
        self,
        session: Session,
        hub: AppHub,
        channel: Channel,
        added: Member | None,
        presence: dict[str, Any] | None,
    ) -> None:
        """`session` is a subscriber of `channel` now: the events and the answer. When the
        events made webhooks, the session's output waits until they are stored (`_stored`):
        no subscription is answered before its webhooks are in the store."""
        events, app_id, name = self.events, hub.app.id, channel.name
        webhooks = self.node.webhooks
        if webhooks is not None and app_id not in webhooks.apps:
            webhooks = None  # the app has none of its own
        handed = 0
        if webhooks is not None:
            handed = webhooks.handed
            session.cork()
        if len(channel.subscribers) == 1:
            self.node.delivery.occupied(hub, name)  # (done already, unless it was vacated)
            events.emit(ChannelOccupied(app_id, name))
        if added is not None:
            events.emit(
                MemberAdded(app_id, name, added.user_id, added.user_info, session.socket_id)
            )
        if presence is None:
            session.send(frames.subscription_succeeded(name))
        else:  # Node.presence_answer: every member, or the count (member events off)
            session.send(frames.subscription_succeeded(name, presence))
        if channel.type.cache:
            cached = hub.cache.get(name)
            if cached is not None and cached.expires_at > time.monotonic():
                session.send(cached.frame)
            else:
                events.emit(CacheMiss(app_id, name, session.socket_id))
        if SubscriptionCountChanged in events.handlers:  # every subscribe: built when wanted
            events.emit(SubscriptionCountChanged(app_id, name, len(channel.subscribers)))
        if webhooks is not None:
            if webhooks.handed > handed:
                task = asyncio.get_running_loop().create_task(self._stored(session, webhooks))
                self.node.track(task)
            else:
                session.uncork()
        if logs.LEVEL.debug:
            logs.debug("subscribed", app_id=app_id, socket_id=session.socket_id, channel=name)

    async def _stored(self, session: Session, webhooks: Webhooks) -> None:
        """The session's output goes on once the webhooks emitted so far are stored; if the
        store cannot take them within WEBHOOK_STORE_WAIT_S, the session is closed with 4100
        (the client reconnects after a backoff): never an answer ahead of its webhooks."""
        stored = await webhooks.stored_within(WEBHOOK_STORE_WAIT_S)
        if stored:
            session.uncork()
            return
        STORE_FAULTS.log(
            "subscription not answered: its webhooks are not stored",
            app_id=session.hub.app.id if session.hub is not None else None,
            socket_id=session.socket_id,
        )
        session.close(CloseCode.OVER_CAPACITY, "Webhook store unavailable: try again later")

    def _recalls(self, hub: AppHub, name: str) -> bool:
        """Must a subscribe to the cache channel `name` ask the cluster for its last event?
        Not with one node (no shared store), nor when this node receives the channel's
        publications (it has subscribers of it) and has a fresh event of it: then that is the
        last. Otherwise what this node has may be stale, or missing (another node took the
        event while nobody here subscribed)."""
        if self.last_events is None:
            return False
        if name not in hub.channels:
            return True
        cached = hub.cache.get(name)
        return cached is None or cached.expires_at <= time.monotonic()

    async def _recall(self, hub: AppHub, name: str) -> None:
        """Ask the cluster for the last event of `name` (this node has its publications from
        now on: the broker confirmed) and keep it in the hub's cache with its remaining TTL,
        unless a publication arrived meanwhile (newer). When the cluster has nothing, or
        cannot answer (logged), what this node has stays, if anything."""
        shared = self.last_events
        assert shared is not None
        before = hub.cache.get(name)
        found: LastEvent | None = None
        failure: Exception | None = None
        try:
            found = await shared.get(hub.app.id, name)
        except Exception as exc:
            failure = exc
        if failure is not None:
            RECALL_FAULTS.log(
                "cached event not recalled from the cluster",
                app_id=hub.app.id,
                channel=name,
                reason=str(failure),
            )
            return
        if found is None or hub.cache.get(name) is not before:
            return
        hub.cache[name] = CachedEvent(
            found.frame, found.event, found.data, time.monotonic() + found.ttl_s
        )

    def leave(self, session: Session, hub: AppHub, name: str, member: Member | None) -> None:
        """`session` no longer subscribes to `name` (an unsubscribe, a close, a revocation)."""
        channel = hub.leave(session, name)
        if channel is None:  # not a subscriber: or its presence join, pending, undoes itself
            return
        app_id = hub.app.id
        count = len(channel.subscribers)
        if count == 0:
            self.node.delivery.vacated(hub, name)
            self.events.emit(ChannelVacated(app_id, name))
        if SubscriptionCountChanged in self.events.handlers:
            self.events.emit(SubscriptionCountChanged(app_id, name, count))
        if member is not None:
            self._hold(session, self._leave_presence(app_id, name, member, session.socket_id))

    async def _leave_presence(self, app_id: str, name: str, member: Member, socket_id: str) -> None:
        last = await self.presence.remove(
            app_id,
            name,
            member.user_id,
            node_id=self.node.cluster.presence_key,
            connection_id=socket_id,
        )
        if last:
            self.events.emit(MemberRemoved(app_id, name, member.user_id, socket_id))

    def revoke(self, session: Session, channel: str, reason: str) -> None:
        """End a subscription that is no longer allowed, with `parley:revoked`."""
        hub, conn = session.hub, session.conn
        assert hub is not None and conn is not None
        member = conn.subscriptions.get(channel)
        conn.forget(channel)
        self.leave(session, hub, channel, member)
        session.send(
            frames.frame("parley:revoked", {"channel": channel, "reason": reason}, channel)
        )
        logs.info(
            "subscription revoked",
            app_id=hub.app.id,
            socket_id=session.socket_id,
            channel=channel,
            reason=reason,
        )

    def _hold(self, session: Session, step: Coroutine[Any, Any, None]) -> None:
        """Run a presence step now; if the store makes it wait, `session` holds what it
        receives until the step is over."""
        if self.presence.eager:
            task = eager.start(step)
        else:  # its client needs a task around it from the first call (redis.asyncio does)
            task = asyncio.get_running_loop().create_task(step)
        if task is not None:
            self._held_by(session, task)

    def hold(self, session: Session, step: Coroutine[Any, Any, None]) -> None:
        """Run `step` (one that asks a store) in a task; `session` holds what it receives
        until the step is over, so its later messages keep their order behind it."""
        self._held_by(session, asyncio.get_running_loop().create_task(step))

    def _held_by(self, session: Session, task: asyncio.Task[None]) -> None:
        session.hold()
        task.add_done_callback(partial(_step_over, session))
        self.node.track(task)


def _wanted(session: Session, hub: AppHub, conn: PusherConnection, name: str) -> bool:
    """Does `session` still want to join `name` (not closed, not revoked meanwhile)?"""
    return (
        not session.closing
        and hub.sessions.get(session.socket_id) is session
        and name in conn.subscriptions
    )


def _step_over(session: Session, task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # the store failed (the node logs it): the client reconnects, and joins anew
        session.close(CloseCode.INTERNAL_ERROR, "Internal server error")
    session.unhold()
