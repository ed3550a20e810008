"""Unit tests of the hub: admission, subscriptions and fan-out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from liminal.accounts import User
from liminal.broker.memory import MemoryBroker
from liminal.connection import Connection
from liminal.hub import Hub
from liminal.limits import ConnectionRates
from liminal.metrics import Metrics
from liminal.protocol import CloseCode


class RecordingTransport:
    """Stands in for a socket transport: records writes, reports a buffer size."""

    def __init__(self, buffered: int = 0) -> None:
        self.buffered = buffered
        self.written: list[bytes] = []
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


class ClosingSocket:
    """Stands in for the aiohttp WebSocket: records the close code."""

    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def close(self, *, code: int, message: bytes) -> bool:
        self.closed_with = code
        return True


def make_conn(name: str, ip: str = "10.0.0.1", queued: int = 1000,
              buffered: int = 0) -> tuple[Connection, RecordingTransport, ClosingSocket]:
    transport = RecordingTransport(buffered)
    socket = ClosingSocket()
    conn = Connection(
        name, User(name, (), ""), ip, socket, transport, queued,  # type: ignore[arg-type]
        ConnectionRates(100, 300),
    )
    return conn, transport, socket


def make_hub(**limits: Any) -> Hub:
    return Hub(Metrics(), max_connections=limits.get("total", 100),
               max_connections_per_ip=limits.get("per_ip", 10))


async def test_register_enforces_both_caps_and_frees_slots() -> None:
    hub = make_hub(total=3, per_ip=2)
    a, b, c, d = (make_conn(n, ip)[0] for n, ip in
                  [("a", "1.1.1.1"), ("b", "1.1.1.1"), ("c", "1.1.1.1"), ("d", "2.2.2.2")])
    assert hub.register(a) is None and hub.register(b) is None
    assert hub.register(c) == CloseCode.TOO_MANY_FROM_IP
    assert hub.register(d) is None
    assert hub.register(make_conn("e", "3.3.3.3")[0]) == CloseCode.SERVER_FULL
    assert hub.unregister(a) and not hub.unregister(a)
    assert hub.register(c) is None
    for conn in (b, c, d):
        hub.unregister(conn)
    assert hub.stats() == {"total_connections": 0, "connections_by_ip": {},
                           "channel_subscriptions": {}}


async def test_deliver_writes_the_same_bytes_to_every_subscriber() -> None:
    hub = make_hub()
    conns = [make_conn(f"c{i}") for i in range(3)]
    for conn, _, _ in conns:
        hub.register(conn)
        hub.subscribe(conn, "room")
    assert hub.deliver("room", b"frame") == 3
    written = [transport.written[0] for _, transport, _ in conns]
    assert all(item is written[0] for item in written)
    assert hub.deliver("elsewhere", b"frame") == 0


class RecordingBroker(MemoryBroker):
    def __init__(self) -> None:
        self.changes: list[tuple[str, bool]] = []
        self.published: list[tuple[str, bytes]] = []

    def channel_added(self, channel: str) -> None:
        self.changes.append((channel, True))

    def channel_removed(self, channel: str) -> None:
        self.changes.append((channel, False))

    def publish(self, channel: str, frame: bytes) -> None:
        self.published.append((channel, frame))


async def test_publish_delivers_locally_and_hands_the_frame_to_the_broker() -> None:
    broker = RecordingBroker()
    hub = Hub(Metrics(), broker=broker, max_connections=10, max_connections_per_ip=10)
    conn, transport, _ = make_conn("a")
    hub.register(conn)
    hub.subscribe(conn, "room")
    assert hub.publish("room", b"frame", 0.0) == 1
    assert transport.written == [b"frame"]
    assert broker.published == [("room", b"frame")]


async def test_unsubscribe_and_unregister_forget_empty_channels() -> None:
    broker = RecordingBroker()
    hub = Hub(Metrics(), broker=broker, max_connections=10, max_connections_per_ip=10)
    a, _, _ = make_conn("a")
    b, _, _ = make_conn("b")
    hub.register(a)
    hub.register(b)
    assert hub.subscribe(a, "room") and not hub.subscribe(a, "room")
    hub.subscribe(b, "room")
    assert hub.unsubscribe(a, "room") and not hub.unsubscribe(a, "room")
    hub.unregister(b)
    assert hub.stats()["channel_subscriptions"] == {}
    assert hub.subscription_count == 0
    assert broker.changes == [("room", True), ("room", False)]


async def test_full_queue_closes_only_that_subscriber_with_4008() -> None:
    hub = make_hub()
    slow, slow_transport, slow_socket = make_conn("slow", queued=100, buffered=95)
    fast, fast_transport, _ = make_conn("fast", queued=100)
    for conn in (slow, fast):
        hub.register(conn)
        hub.subscribe(conn, "room")
    assert hub.deliver("room", b"0123456789") == 1
    await slow.wait_closed()
    assert slow_socket.closed_with == CloseCode.SLOW_CONSUMER
    assert slow_transport.written == []
    assert fast_transport.written == [b"0123456789"]
    assert hub.stats()["total_connections"] == 1
    assert hub.deliver("room", b"again") == 1


async def test_close_all_closes_every_connection_with_the_code() -> None:
    hub = make_hub()
    sockets = []
    for i in range(3):
        conn, _, socket = make_conn(f"c{i}")
        hub.register(conn)
        sockets.append(socket)
    closing = hub.close_all(CloseCode.GOING_AWAY, "bye")
    await asyncio.gather(*(conn.wait_closed() for conn in closing))
    assert [s.closed_with for s in sockets] == [CloseCode.GOING_AWAY] * 3
    assert hub.connection_count == 0


@pytest.mark.parametrize("code", [CloseCode.SLOW_CONSUMER, CloseCode.TOKEN_EXPIRED])
async def test_disconnect_is_idempotent(code: CloseCode) -> None:
    hub = make_hub()
    conn, _, socket = make_conn("a")
    hub.register(conn)
    hub.subscribe(conn, "room")
    hub.disconnect(conn, code, "x")
    hub.disconnect(conn, CloseCode.NORMAL, "again")
    await conn.wait_closed()
    assert socket.closed_with == code
    assert hub.subscription_count == 0 and hub.connection_count == 0


async def test_a_vanished_peer_is_skipped_and_removed_during_fan_out() -> None:
    hub = make_hub()
    gone, gone_transport, _ = make_conn("gone")
    alive, alive_transport, _ = make_conn("alive")
    for conn in (gone, alive):
        hub.register(conn)
        hub.subscribe(conn, "room")
    gone_transport.aborted = True  # reset by the peer, read loop not done yet
    assert hub.deliver("room", b"frame") == 1
    assert alive_transport.written == [b"frame"] and gone_transport.written == []
    assert hub.stats()["channel_subscriptions"] == {"room": 1}


async def test_a_connection_removed_by_the_server_cannot_subscribe_again() -> None:
    hub = make_hub()
    conn, _, _ = make_conn("a")
    hub.register(conn)
    hub.disconnect(conn, CloseCode.SLOW_CONSUMER, "slow")
    assert not hub.subscribe(conn, "late")
    assert hub.stats()["channel_subscriptions"] == {} and hub.subscription_count == 0


async def test_fan_outs_in_one_loop_pass_are_written_together_in_order() -> None:
    hub = make_hub()
    conn, transport, _ = make_conn("a", queued=10_000)
    hub.register(conn)
    hub.subscribe(conn, "room")
    for n in range(4):
        hub.deliver("room", b"frame-%d;" % n)
    # The first fan-out of the pass is written at once, the rest gathered.
    assert transport.written == [b"frame-0;"]
    await asyncio.sleep(0)
    assert transport.written == [b"frame-0;", b"frame-1;frame-2;frame-3;"]


async def test_gathered_frames_count_against_the_queue_bound() -> None:
    hub = make_hub()
    conn, transport, socket = make_conn("a", queued=25)
    hub.register(conn)
    hub.subscribe(conn, "room")
    for n in range(4):
        hub.deliver("room", b"0123456789")
    await conn.wait_closed()
    assert socket.closed_with == CloseCode.SLOW_CONSUMER
    await asyncio.sleep(0)
    assert transport.written == [b"0123456789"]  # nothing gathered is written
