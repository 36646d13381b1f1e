"""The node's side of the channel counts (`backends.counts`): its own numbers, read off the hubs
(`HubCounts`), and the consumer of the domain events that tells a shared store which of its
channels changed (`follow`).

Only `SubscriptionCountChanged` is followed: it comes with every subscribe and every leave,
with the channel's count on this node (0 once vacated), so it carries what `ChannelOccupied` /
`ChannelVacated` say as well (a count going from 0 to 1, from 1 to 0); those two keep meaning
"on this node". The handler only notes the channel; the store writes its count, read from the
hub at that time, in its next batch. A store of one process (memory) is not followed at all,
so with it the event is not even built (`SubscriptionCountChanged in bus.handlers`).
"""

from __future__ import annotations

from collections.abc import Iterable

from parley.backends.counts import ChannelCounts
from parley.core.events import EventBus, SubscriptionCountChanged
from parley.core.hub import AppHub


class HubCounts:
    """A `backends.counts.LocalCounts` over the node's hubs."""

    def __init__(self, hubs: dict[str, AppHub]) -> None:
        self.hubs = hubs

    def app_ids(self) -> Iterable[str]:
        return list(self.hubs)

    def subscriptions(self, app_id: str, channel: str) -> int:
        hub = self.hubs.get(app_id)
        return hub.subscription_count(channel) if hub is not None else 0

    def occupied_channels(self, app_id: str, prefix: str) -> dict[str, int]:
        hub = self.hubs.get(app_id)
        if hub is None:
            return {}
        return {
            name: len(channel.subscribers)
            for name, channel in hub.channels.items()
            if name.startswith(prefix) and channel.subscribers
        }

    def connections(self, app_id: str) -> int:
        hub = self.hubs.get(app_id)
        return len(hub.sessions) if hub is not None else 0


def follow(events: EventBus, counts: ChannelCounts) -> None:
    """Tell `counts` of every change of a local channel's count, when it wants to be told."""
    if not counts.tracks:
        return

    def changed(event: SubscriptionCountChanged) -> None:
        counts.changed(event.app_id, event.channel)

    events.subscribe(SubscriptionCountChanged, changed)
