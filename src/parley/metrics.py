"""Counters kept as plain integers on the hot path, exposed to Prometheus by a collector."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry


class Metrics:
    def __init__(self) -> None:
        self.api_events: Counter[str] = Counter()  # by app id: events published over HTTP
        self.errors: Counter[tuple[str, str]] = Counter()  # by (app id, code)
        self.http_requests: Counter[tuple[str, int]] = Counter()  # by (route, status)
        self.connections_total: Counter[str] = Counter()
        # by (app id, event): channel_occupied, channel_vacated, member_added, member_removed,
        # cache_miss, counted from the core's domain events (core.event_counts)
        self.channel_events: Counter[tuple[str, str]] = Counter()
        self.gauges: Callable[[], dict[str, dict[str, int]]] = dict
        # Counted per message by each app's hub, as plain int attributes: (name -> app id -> n)
        self.hub_counters: Callable[[], dict[str, dict[str, int]]] = dict
        self.broker: Callable[[], dict[str, int]] = dict  # the broker's stats()

    def render(self) -> bytes:
        registry = CollectorRegistry()
        registry.register(_Collector(self))
        return generate_latest(registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        gauges = m.gauges()
        for name, help_text in (
            ("connections", "Open WebSocket connections"),
            ("channels", "Occupied channels"),
            ("subscriptions", "Channel subscriptions"),
            ("users", "Signed-in users"),
        ):
            g = GaugeMetricFamily(f"parley_{name}", help_text, labels=["app_id"])
            for app_id, value in gauges.get(name, {}).items():
                g.add_metric([app_id], value)
            yield g
        hub_counters = m.hub_counters()
        for name, counter, help_text in (
            ("connections_opened", m.connections_total, "WebSocket connections accepted"),
            ("messages_in", hub_counters.get("messages_in", {}), "Frames received from clients"),
            ("messages_out", hub_counters.get("messages_out", {}), "Frames delivered to clients"),
            ("api_events", m.api_events, "Events published through the HTTP API"),
        ):
            c = CounterMetricFamily(f"parley_{name}", help_text, labels=["app_id"])
            for app_id, value in counter.items():
                c.add_metric([app_id], value)
            yield c
        c = CounterMetricFamily(
            "parley_errors", "Errors sent to clients", labels=["app_id", "code"]
        )
        for (app_id, code), value in m.errors.items():
            c.add_metric([app_id, code], value)
        yield c
        c = CounterMetricFamily(
            "parley_channel_events",
            "Channels occupied and vacated, presence members added and removed, cache misses",
            labels=["app_id", "event"],
        )
        for (app_id, event), value in m.channel_events.items():
            c.add_metric([app_id, event], value)
        yield c
        broker = m.broker()
        for name, kind, help_text in (
            ("connected", GaugeMetricFamily, "1 while the broker reaches the other nodes"),
            ("waiting", GaugeMetricFamily, "Publications queued for the broker's server"),
            ("reconnects", CounterMetricFamily, "Times the broker's link came back"),
            ("refused", CounterMetricFamily, "Broker messages dropped: no valid HMAC"),
            ("dropped", CounterMetricFamily, "Publications not sent: too many waited"),
        ):
            if name in broker:
                yield kind(f"parley_broker_{name}", help_text, value=broker[name])
        c = CounterMetricFamily("parley_http_requests", "HTTP requests", labels=["route", "status"])
        for (route, status), value in m.http_requests.items():
            c.add_metric([route, str(status)], value)
        yield c
