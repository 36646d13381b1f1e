"""The Pusher frames that follow from domain events (`core.events`), written to this node's
connections: one consumer of the events among others (metrics, and webhooks to come).

- `MemberAdded` / `MemberRemoved`: `pusher_internal:member_added` / `member_removed` to the
  channel's subscribers that are other users, at once (not behind a resume's replay).
- `SubscriptionCountChanged`: `pusher_internal:subscription_count` to every subscriber of a
  channel that is not presence, when the app counts subscriptions; at once up to 100
  subscribers, above that at most once per 5 s, with the count at that time.
- `CacheMiss`: `pusher:cache_miss` to the connection that subscribed.
- `UserOnline` / `UserOffline`: `pusher_internal:watchlist_events` to the connections
  watching the user.

Handlers run inside the core's `emit`, so each frame keeps its place among the core's own
writes (a member_added before the joiner's subscription_succeeded).
"""

from __future__ import annotations

import asyncio

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


class PusherFrames:
    """Writes the frames of the events it subscribes to (`follow`)."""

    def __init__(self, hubs: dict[str, AppHub]) -> None:
        self.hubs = hubs
        self.count_throttle_s = SUBSCRIPTION_COUNT_THROTTLE_S
        # (app id, channel) -> the channel whose throttled count is due (a channel vacated and
        # made again in the meantime is another Channel, with its own)
        self._counts_due: dict[tuple[str, str], Channel] = {}

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
        data = frames.member_added(event.channel, event.user_id, event.user_info)
        self._tell_members(event.app_id, event.channel, data, event.user_id)

    def member_removed(self, event: MemberRemoved) -> None:
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
        if not hub.app.subscription_count or count == 0:
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
