"""The hub: this instance's registry of connections and subscriptions.

The hub admits connections against the server-wide and per-IP caps, tracks
which connection is subscribed to which channel, and fans out published
frames to local subscribers. Fan-out never awaits: each subscriber gets the
same pre-encoded bytes written to its own bounded outbound queue.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable

from .broker import Broker
from .broker.memory import MemoryBroker
from .connection import Connection, coalescer
from .metrics import Metrics
from .protocol import CloseCode

__all__ = ["Hub"]

logger = logging.getLogger(__name__)


class _Channel:
    """Members of one channel, plus an immutable snapshot for fan-out.

    Iterating the snapshot tuple is faster than iterating the set, and stays
    safe when a subscriber is removed during fan-out (queue overflow).
    """

    __slots__ = ("members", "snapshot")

    def __init__(self) -> None:
        self.members: set[Connection] = set()
        self.snapshot: tuple[Connection, ...] | None = None

    def subscribers(self) -> tuple[Connection, ...]:
        snapshot = self.snapshot
        if snapshot is None:
            snapshot = self.snapshot = tuple(self.members)
        return snapshot


class Hub:
    """Connections and subscriptions of this instance.

    Args:
        metrics: where counts and timings are recorded.
        broker: carries published frames to other instances, and is told
            which channels have local subscribers.
        max_connections: server-wide cap (4005 beyond).
        max_connections_per_ip: per-address cap (4006 beyond).
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        broker: Broker | None = None,
        max_connections: int,
        max_connections_per_ip: int,
    ) -> None:
        self.metrics = metrics
        self.broker: Broker = broker or MemoryBroker()
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self._connections: dict[str, Connection] = {}
        self._per_ip: Counter[str] = Counter()
        self._channels: dict[str, _Channel] = {}
        metrics.bind_hub(self)

    # Admission.

    def register(self, conn: Connection) -> CloseCode | None:
        """Admit ``conn``, or say which cap refuses it.

        The check and the reservation of the slot are one synchronous step,
        so simultaneous handshakes cannot overshoot a cap.
        """
        if len(self._connections) >= self.max_connections:
            return CloseCode.SERVER_FULL
        if self._per_ip[conn.ip] >= self.max_connections_per_ip:
            return CloseCode.TOO_MANY_FROM_IP
        self._connections[conn.conn_id] = conn
        self._per_ip[conn.ip] += 1
        return None

    def unregister(self, conn: Connection) -> bool:
        """Release every slot and subscription of ``conn``; idempotent."""
        if self._connections.pop(conn.conn_id, None) is None:
            return False
        remaining = self._per_ip[conn.ip] - 1
        if remaining > 0:
            self._per_ip[conn.ip] = remaining
        else:
            del self._per_ip[conn.ip]
        for channel in tuple(conn.channels):
            self.unsubscribe(conn, channel)
        return True

    def disconnect(self, conn: Connection, code: int, reason: str) -> None:
        """Remove ``conn`` at once and close it with ``code`` in the background."""
        self.unregister(conn)
        conn.close(code, reason)

    def connections(self) -> Iterable[Connection]:
        return self._connections.values()

    def connections_of(self, usernames: set[str]) -> list[Connection]:
        return [c for c in self._connections.values() if c.username in usernames]

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def subscription_count(self) -> int:
        return sum(len(entry.members) for entry in self._channels.values())

    # Subscriptions.

    def subscribe(self, conn: Connection, channel: str) -> bool:
        """Subscribe ``conn``; False if it already was or is no longer here."""
        if channel in conn.channels or self._connections.get(conn.conn_id) is not conn:
            return False
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
            self.broker.channel_added(channel)
        entry.members.add(conn)
        entry.snapshot = None
        conn.channels.add(channel)
        return True

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Unsubscribe ``conn``; False if it was not subscribed."""
        if channel not in conn.channels:
            return False
        conn.channels.discard(channel)
        entry = self._channels[channel]
        entry.members.discard(conn)
        entry.snapshot = None
        if not entry.members:
            # Empty channels are forgotten, so the map cannot grow with churn.
            del self._channels[channel]
            self.broker.channel_removed(channel)
        return True

    # Fan-out.

    def deliver(self, channel: str, frame: bytes) -> int:
        """Write ``frame`` to every local subscriber of ``channel``.

        Returns the number of deliveries. A subscriber whose queue is full is
        closed with 4008 and skipped; the others are not affected.
        """
        entry = self._channels.get(channel)
        if entry is None:
            return 0
        coalescer.begin()
        delivered = 0
        for conn in entry.subscribers():
            if conn.send(frame):
                delivered += 1
            elif conn.closing:
                self.unregister(conn)
        self.metrics.deliveries.inc(delivered)
        return delivered

    def publish(self, channel: str, frame: bytes, received_at: float) -> int:
        """Deliver a client's message here and through the broker elsewhere.

        Local subscribers get the frame at once, whatever the broker's state;
        the hand-off time to them is recorded.
        """
        delivered = self.deliver(channel, frame)
        self.metrics.publish_seconds.observe(time.perf_counter() - received_at)
        self.broker.publish(channel, frame)
        return delivered

    # Introspection.

    def stats(self) -> dict[str, object]:
        """The shape of ``GET /debug/connections/stats``."""
        return {
            "total_connections": len(self._connections),
            "connections_by_ip": dict(self._per_ip),
            "channel_subscriptions": {
                name: len(entry.members) for name, entry in self._channels.items()
            },
        }

    def close_all(self, code: int, reason: str) -> list[Connection]:
        """Start closing every connection (server shutdown)."""
        closing = list(self._connections.values())
        for conn in closing:
            self.disconnect(conn, code, reason)
        return closing
