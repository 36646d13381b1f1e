"""Prometheus counts of the domain events (`core.events`): a consumer, as the Pusher frames are.

`parley_channel_events_total{app_id, event}` counts channels occupied and vacated, presence
members added and removed, and cache misses, under the names Pusher's webhooks give them.
Client events are not counted here: they are per message, and `parley_messages_in_total`
counts them already without an event being built for each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from parley.core.events import (
    CacheMiss,
    ChannelOccupied,
    ChannelVacated,
    EventBus,
    MemberAdded,
    MemberRemoved,
)
from parley.metrics import Metrics

NAMES: dict[type, str] = {
    ChannelOccupied: "channel_occupied",
    ChannelVacated: "channel_vacated",
    MemberAdded: "member_added",
    MemberRemoved: "member_removed",
    CacheMiss: "cache_miss",
}


def count_events(events: EventBus, metrics: Metrics) -> None:
    """Count every event of the types in NAMES into `metrics.channel_events`."""
    counts = metrics.channel_events

    def counter(name: str) -> Callable[[Any], None]:
        def count(event: Any) -> None:
            counts[(event.app_id, name)] += 1

        return count

    for kind, name in NAMES.items():
        events.subscribe(kind, counter(name))
