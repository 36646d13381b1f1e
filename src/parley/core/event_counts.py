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
from parley.core.hub import AppHub
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
            if not getattr(event, "remote", False):  # counted by the node it happened on
                counts[(event.app_id, name)] += 1

        return count

    for kind, name in NAMES.items():
        events.subscribe(kind, counter(name))


def hub_counters(hubs: dict[str, AppHub]) -> dict[str, dict[str, int]]:
    """The hubs' message counters, by app (parley_messages_in/out_total)."""
    return {
        "messages_in": {app_id: hub.messages_in for app_id, hub in hubs.items()},
        "messages_out": {app_id: hub.messages_out for app_id, hub in hubs.items()},
    }


def hub_gauges(hubs: dict[str, AppHub]) -> dict[str, dict[str, int]]:
    """Connections, channels, subscriptions and signed-in users now, by app."""
    out: dict[str, dict[str, int]] = {
        "connections": {},
        "channels": {},
        "subscriptions": {},
        "users": {},
    }
    for app_id, hub in hubs.items():
        out["connections"][app_id] = len(hub.sessions)
        out["channels"][app_id] = len(hub.channels)
        out["subscriptions"][app_id] = sum(len(c.subscribers) for c in hub.channels.values())
        out["users"][app_id] = len(hub.users)
    return out
