"""Prometheus metrics of one instance.

Every label takes its values from a small fixed set (event type, a close or
error code that liminal itself sends, a result); never from a channel, user,
IP address or anything else a client chooses. Gauges read the hub's own
counts at scrape time, so they cannot drift from ``/debug/connections/stats``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    """The instance's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.connections_open = Gauge(
            "liminal_connections_open",
            "WebSocket connections currently open",
            registry=registry,
        )
        self.subscriptions_open = Gauge(
            "liminal_subscriptions_open",
            "Subscriptions currently open (connection x channel)",
            registry=registry,
        )
        self.connections_rate_limited = Gauge(
            "liminal_connections_rate_limited",
            "Open connections whose message budget is used up right now",
            registry=registry,
        )
        self.connections_accepted = Counter(
            "liminal_connections_accepted_total",
            "WebSocket connections accepted",
            registry=registry,
        )
        self.connections_refused = Counter(
            "liminal_connections_refused_total",
            "WebSocket handshakes refused, by the close code sent",
            ["code"],
            registry=registry,
        )
        self.connections_closed = Counter(
            "liminal_connections_closed_total",
            "Accepted connections closed, by the close code liminal sent "
            "('peer' when the client closed or vanished)",
            ["code"],
            registry=registry,
        )
        self.events_received = Counter(
            "liminal_events_received_total",
            "Client events received, by type ('invalid' when malformed)",
            ["type"],
            registry=registry,
        )
        self.deliveries = Counter(
            "liminal_deliveries_total",
            "Messages handed to local subscribers",
            registry=registry,
        )
        self.events_rejected = Counter(
            "liminal_events_rejected_total",
            "Client events answered with an error event, by error code",
            ["code"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "liminal_publish_duration_seconds",
            "Time from receipt of a message to its hand-off to every local subscriber",
            buckets=(
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                1.0,
            ),
            registry=registry,
        )
        self.channel_denials = Counter(
            "liminal_channel_denials_total",
            "Subscribe and publish attempts refused by the channel policy, by code",
            ["code"],
            registry=registry,
        )
        self.broker_up = Gauge(
            "liminal_broker_up",
            "1 while messages reach the other instances through the broker",
            registry=registry,
        )
        self.broker_reconnects = Counter(
            "liminal_broker_reconnects_total",
            "Attempts to rebuild the broker's listening connection after a failure",
            registry=registry,
        )
        self.broker_listener_restarts = Counter(
            "liminal_broker_listener_restarts_total",
            "Times a working broker listener died and was restarted",
            registry=registry,
        )
        self.broker_dropped = Counter(
            "liminal_broker_dropped_total",
            "Messages not sent to other instances because the broker was down",
            registry=registry,
        )
        self.broker_up.set(1)
        self._received = {
            kind: self.events_received.labels(kind)
            for kind in ("message", "subscribe", "unsubscribe", "invalid")
        }

    def bind_hub(self, hub: Hub) -> None:
        """Make the gauges read the hub's counts at scrape time."""
        self.connections_open.set_function(lambda: hub.connection_count)
        self.subscriptions_open.set_function(lambda: hub.subscription_count)
        self.connections_rate_limited.set_function(
            lambda: sum(1 for conn in hub.connections() if conn.rates.message.empty)
        )

    def received(self, kind: str) -> None:
        self._received.get(kind, self._received["invalid"]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
