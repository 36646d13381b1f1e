"""The Pusher frames that follow from domain events (`core.events`), written to this node's
connections: one consumer of the events among others (metrics, and webhooks to come).

- `MemberAdded` / `MemberRemoved`: `pusher_internal:member_added` / `member_removed` to the
  channel's subscribers that are other users, at once (not behind a resume's replay). On a
  channel whose member events are off (the app's `presence_events_off` patterns), none:
  `parley:member_count` {"count": N} to every subscriber instead, N read from the presence
  store (so the cluster's members, remote events included) once the join's answer is out; at
  once up to 100 members, above that at most once per 5 s with the count at that time.
- `SubscriptionCountChanged`: `pusher_internal:subscription_count` to every subscriber of a
  channel that is not presence, when the app counts subscriptions; at once up to 100
  subscribers, above that at most once per 5 s, with the count at that time. In a cluster
  (shared channel counts) the count is the cluster's, read from the counts (one read at a
  time per channel, as for member counts), and the other nodes are told of this node's
  change once it is written (`tell_others`: core.cluster broadcasts it), so that their
  subscribers hear the new total too.
- `CacheMiss`: `pusher:cache_miss` to the connection that subscribed.
- `UserOnline` / `UserOffline`: `pusher_internal:watchlist_events` to the connections
  watching the user.

Handlers run inside the core's `emit`, so each frame keeps its place among the core's own
writes (a member_added before the joiner's subscription_succeeded).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from parley import logs
from parley.backends.counts import ChannelCounts
from parley.backends.presence import PresenceStore
from parley.core import eager
from parley.core.events import (
    CacheMiss,
    EventBus,
    MemberAdded,
    MemberRemoved,
    SubscriptionCountChanged,
    UserOffline,
    UserOnline,
)
from parley.core.hub import AppHub, Channel
from parley.protocol import frames

SUBSCRIPTION_COUNT_THROTTLE_S = 5.0
SUBSCRIPTION_COUNT_AT_ONCE = 100  # up to this many subscribers, every change is sent at once
MEMBER_COUNT = "parley:member_count"
FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)


class _CountDue:
    """A channel whose member count (`members`), or cluster-wide subscription count, is being
    told: its read from the store is under way, or the throttle's window is open. `again`:
    the count changed since it was read."""

    __slots__ = ("again", "channel", "members")

    def __init__(self, channel: Channel, members: bool) -> None:
        self.channel = channel
        self.members = members
        self.again = False


class PusherFrames:
    """Writes the frames of the events it subscribes to (`follow`)."""

    def __init__(
        self,
        hubs: dict[str, AppHub],
        presence: PresenceStore | None = None,
        track: Callable[[asyncio.Task[None]], None] | None = None,
        counts: ChannelCounts | None = None,
    ) -> None:
        self.hubs = hubs
        self.presence = presence  # member counts, on channels whose member events are off
        self.track = track  # keeps the tasks that read them (the node's)
        # a cluster's counts (shared): subscription counts are read from them, and the other
        # nodes are told of this node's changes (`tell_others`, set by the node: core.cluster)
        self.counts = counts if counts is not None and counts.shared else None
        self.tell_others: Callable[[str, str], None] | None = None
        self._to_tell: set[tuple[str, str]] = set()
        self._telling: asyncio.Task[None] | None = None
        self._cluster_counts: dict[tuple[str, str], _CountDue] = {}
        self.count_throttle_s = SUBSCRIPTION_COUNT_THROTTLE_S
        # (app id, channel) -> the channel whose throttled count is due (a channel vacated and
        # made again in the meantime is another Channel, with its own)
        self._counts_due: dict[tuple[str, str], Channel] = {}
        self._member_counts: dict[tuple[str, str], _CountDue] = {}

    def follow(self, events: EventBus) -> None:
        """Subscribe to the events it writes frames for (subscription counts only when an
        app counts them: the event is then not even built on a subscribe)."""
        events.subscribe(MemberAdded, self.member_added)
        events.subscribe(MemberRemoved, self.member_removed)
        if any(hub.app.subscription_count for hub in self.hubs.values()):
            events.subscribe(SubscriptionCountChanged, self.subscription_count)
        events.subscribe(CacheMiss, self.cache_miss)
        events.subscribe(UserOnline, self.user_online)
        events.subscribe(UserOffline, self.user_offline)

    def member_added(self, event: MemberAdded) -> None:
        hub = self.hubs[event.app_id]
        if hub.app.presence_events_off and hub.app.member_events_off(event.channel):
            self._member_count_changed(hub, event.channel)
            return
        data = frames.member_added(event.channel, event.user_id, event.user_info)
        self._tell_members(event.app_id, event.channel, data, event.user_id)

    def member_removed(self, event: MemberRemoved) -> None:
        hub = self.hubs[event.app_id]
        if hub.app.presence_events_off and hub.app.member_events_off(event.channel):
            self._member_count_changed(hub, event.channel)
            return
        data = frames.member_removed(event.channel, event.user_id)
        self._tell_members(event.app_id, event.channel, data, event.user_id)

    def _tell_members(self, app_id: str, name: str, data: bytes, user_id: str) -> None:
        """`data` to the channel's subscribers but those that are `user_id` in it (the joiner,
        and its other connections that joined while the store answered): through `send`, at
        once, also to a subscriber whose resume is replaying (as a notice, not an event)."""
        channel = self.hubs[app_id].channels.get(name)
        if channel is None:
            return
        for peer in channel.subscribers:
            member = peer.conn.subscriptions.get(name)
            if member is None or member.user_id != user_id:
                peer.send(data)

    def subscription_count(self, event: SubscriptionCountChanged) -> None:
        hub = self.hubs[event.app_id]
        count = event.count
        if not hub.app.subscription_count:
            return
        if self.counts is not None:  # the cluster's count: read, and the others told
            if not event.channel.startswith("presence-"):
                self._tell_soon(event.app_id, event.channel)
                self.count_changed_elsewhere(event.app_id, event.channel)
            return
        if count == 0:
            return
        channel = hub.channels.get(event.channel)
        if channel is None or channel.type.is_presence:
            return
        if count <= SUBSCRIPTION_COUNT_AT_ONCE:
            hub.broadcast(channel.name, frames.subscription_count(channel.name, count))
            return
        key = (event.app_id, event.channel)
        if self._counts_due.get(key) is not channel:
            self._counts_due[key] = channel
            asyncio.get_running_loop().call_later(
                self.count_throttle_s, self._send_count, hub, channel
            )

    def _send_count(self, hub: AppHub, channel: Channel) -> None:
        key = (hub.app.id, channel.name)
        if self._counts_due.get(key) is channel:
            del self._counts_due[key]
        if hub.channels.get(channel.name) is channel and channel.subscribers:
            count = len(channel.subscribers)
            hub.broadcast(channel.name, frames.subscription_count(channel.name, count))

    def count_changed_elsewhere(self, app_id: str, name: str) -> None:
        """The cluster's subscription count of `name` changed (on another node, or here):
        tell this node's subscribers the count, read from the counts."""
        hub = self.hubs.get(app_id)
        if hub is not None and hub.app.subscription_count:
            self._count_changed(hub, name, members=False)

    def _tell_soon(self, app_id: str, name: str) -> None:
        """Tell the other nodes that this node's count of `name` changed, once it is written
        to the counts (one flush for all the channels that changed meanwhile)."""
        self._to_tell.add((app_id, name))
        if self._telling is None and self.tell_others is not None:
            self._telling = asyncio.get_running_loop().create_task(self._tell_others())
            if self.track is not None:
                self.track(self._telling)

    async def _tell_others(self) -> None:
        counts, tell = self.counts, self.tell_others
        assert counts is not None and tell is not None
        while self._to_tell:
            changed, self._to_tell = self._to_tell, set()
            problem: Exception | None = None
            try:
                await counts.flush()
            except Exception as exc:  # their next batch writes it: the others read it then
                problem = exc
            if problem is not None:
                FAULTS.log("subscription counts not written", reason=str(problem))
            for app_id, name in changed:
                tell(app_id, name)
        self._telling = None

    # -- counts read from a store: members where member events are off, subscriptions in a
    # -- cluster

    def _member_count_changed(self, hub: AppHub, name: str) -> None:
        if self.presence is not None:
            self._count_changed(hub, name, members=True)

    def _count_changed(self, hub: AppHub, name: str, *, members: bool) -> None:
        """The members (or subscriptions) of `name` changed: tell its subscribers here the
        count, unless a count is being told already (it is then read again once that one is
        out)."""
        channel = hub.channels.get(name)
        if channel is None or (not members and channel.type.is_presence):
            return  # nobody here to tell
        key = (hub.app.id, name)
        dues = self._member_counts if members else self._cluster_counts
        due = dues.get(key)
        if due is not None and due.channel is channel:
            due.again = True
            return
        due = dues[key] = _CountDue(channel, members)
        # after the frames of the step that emitted the event (a joiner's answer first)
        asyncio.get_running_loop().call_soon(self._read_count, hub, due)

    def _read_count(self, hub: AppHub, due: _CountDue) -> None:
        step = self._tell_count(hub, due)
        presence = self.presence
        eager_store = due.members and presence is not None and presence.eager
        task = eager.start(step) if eager_store else asyncio.get_running_loop().create_task(step)
        if task is not None and self.track is not None:
            self.track(task)

    async def _read(self, hub: AppHub, due: _CountDue) -> int:
        if due.members:
            assert self.presence is not None
            return await self.presence.count(hub.app.id, due.channel.name)
        assert self.counts is not None
        return await self.counts.subscriptions(hub.app.id, due.channel.name)

    async def _tell_count(self, hub: AppHub, due: _CountDue) -> None:
        due.again = False
        channel = due.channel
        name = channel.name
        problem: Exception | None = None
        count = 0
        try:
            count = await self._read(hub, due)
        except Exception as exc:  # the store failed: this count is not told
            problem = exc
        if problem is not None:
            what = "member count not read" if due.members else "subscription count not read"
            FAULTS.log(what, app_id=hub.app.id, channel=name, reason=str(problem))
            self._count_told(hub, due)
            return
        if hub.channels.get(name) is not channel or not channel.subscribers:
            self._count_told(hub, due)  # vacated here meanwhile
            return
        if due.members:
            hub.broadcast(name, frames.frame(MEMBER_COUNT, {"count": count}, name))
        else:
            hub.broadcast(name, frames.subscription_count(name, count))
        loop = asyncio.get_running_loop()
        if count > SUBSCRIPTION_COUNT_AT_ONCE:  # the next one after the window, if any
            loop.call_later(self.count_throttle_s, self._window_over, hub, due)
        elif due.again:
            loop.call_soon(self._read_count, hub, due)
        else:
            self._count_told(hub, due)

    def _window_over(self, hub: AppHub, due: _CountDue) -> None:
        dues = self._member_counts if due.members else self._cluster_counts
        if due.again and dues.get((hub.app.id, due.channel.name)) is due:
            self._read_count(hub, due)
        else:
            self._count_told(hub, due)

    def _count_told(self, hub: AppHub, due: _CountDue) -> None:
        key = (hub.app.id, due.channel.name)
        dues = self._member_counts if due.members else self._cluster_counts
        if dues.get(key) is due:
            del dues[key]

    def cache_miss(self, event: CacheMiss) -> None:
        session = self.hubs[event.app_id].sessions.get(event.socket_id)
        if session is not None:
            session.send(frames.frame("pusher:cache_miss", channel=event.channel))

    def user_online(self, event: UserOnline) -> None:
        self._watchlist(event.app_id, event.user_id, online=True)

    def user_offline(self, event: UserOffline) -> None:
        self._watchlist(event.app_id, event.user_id, online=False)

    def _watchlist(self, app_id: str, user_id: str, online: bool) -> None:
        watching = self.hubs[app_id].watchers.get(user_id)
        if not watching:
            return
        data = (
            frames.watchlist_events([user_id], [])
            if online
            else frames.watchlist_events([], [user_id])
        )
        for peer in list(watching):
            peer.send(data)
