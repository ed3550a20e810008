"""Several instances sharing channels through a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import Client, LiminalProcess, connect
from servers import RedisServer

PASSWORD = "redis-pass-7f3a9c"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(start_server: Any, redis_server: RedisServer, tmp_path: Path) -> list[LiminalProcess]:
    """Three instances, one data dir, one secret, one Redis."""
    shared = tmp_path / "shared-data"
    return [
        start_server(name, data_dir=shared, LIMINAL_BROKER_URL=redis_server.url,
                     LIMINAL_INSTANCE_ID=name)
        for name in ("a", "b", "c")
    ]


async def collect(client: Client, seconds: float = 0.6) -> list[dict[str, Any]]:
    """Every event that arrives within ``seconds`` of quiet."""
    events = []
    while True:
        try:
            events.append(await client.recv(timeout=seconds))
        except TimeoutError:
            return events


def contents(events: list[dict[str, Any]]) -> list[Any]:
    return [e["content"] for e in events if e["type"] == "message"]


def redis_numsub(server: RedisServer, channel: str) -> int:
    client = redis.Redis(port=server.port, password=PASSWORD)
    try:
        return int(dict(client.pubsub_numsub(f"liminal:ch:{channel}"))[
            f"liminal:ch:{channel}".encode()])
    finally:
        client.close()


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_each_subscriber_gets_each_message_exactly_once_on_any_instance(
    cluster: list[LiminalProcess],
) -> None:
    a, b, c = cluster
    alice = await connect(a, a.token("alice"))
    carol = await connect(a, a.token("carol"))
    bob = await connect(b, b.token("bob"))
    dave = await connect(b, b.token("dave"))
    alice2 = await connect(b, b.token("alice"))
    erin = await connect(c, c.token("carol"))
    everyone = [alice, carol, bob, dave, alice2, erin]
    for client in everyone:
        await client.subscribe("room1")

    for i in range(20):
        await alice.publish("room1", f"n-{i}")
    await bob.publish("room1", "from-b")
    batches = await asyncio.gather(*(collect(client) for client in everyone))
    received = {id(client): batch for client, batch in zip(everyone, batches)}
    expected = [f"n-{i}" for i in range(20)]
    for client in everyone:
        got = contents(received[id(client)])
        assert [x for x in got if x != "from-b"] == expected  # once each, in order
        assert Counter(got)["from-b"] == 1
    copies = [e for events in received.values() for e in events if e["content"] == "n-5"]
    assert len({(e["sender"], e["timestamp"]) for e in copies}) == 1

    assert await carol.request({"type": "unsubscribe", "channel": "room1"}) == {
        "type": "unsubscribe_success", "channel": "room1",
    }
    await alice.publish("room1", "after-unsub")
    batches = await asyncio.gather(*(collect(client) for client in everyone))
    for client, batch in zip(everyone, batches):
        assert contents(batch) == ([] if client is carol else ["after-unsub"])
    assert a.stats()["instance_id"] == "a" and b.stats()["instance_id"] == "b"


async def test_unsubscribe_on_one_instance_stops_delivery_there_only(
    cluster: list[LiminalProcess], redis_server: RedisServer,
) -> None:
    a, b, _ = cluster
    alice = await connect(a, a.token("alice"))
    bob = await connect(b, b.token("bob"))
    await alice.subscribe("room2")
    await bob.subscribe("room2")
    assert redis_numsub(redis_server, "room2") == 2
    await bob.request({"type": "unsubscribe", "channel": "room2"})
    await eventually(lambda: redis_numsub(redis_server, "room2") == 1)
    await alice.publish("room2", "only a")
    assert contents(await collect(alice, 0.5)) == ["only a"]
    assert await bob.nothing(0.5)


async def test_order_per_publisher_holds_across_instances(
    cluster: list[LiminalProcess],
) -> None:
    a, b, c = cluster
    listeners = [await connect(node, node.token("bob")) for node in (a, b, c)]
    for listener in listeners:
        await listener.subscribe("room-order")
    publishers = [await connect(node, node.token("alice")) for node in (a, b)]
    for i in range(60):
        for n, publisher in enumerate(publishers):
            await publisher.publish("room-order", [n, i])
    for batch in await asyncio.gather(*(collect(listener) for listener in listeners)):
        got = contents(batch)
        assert len(got) == 120
        for n in range(2):
            assert [i for p, i in got if p == n] == list(range(60))


async def test_redis_outage_keeps_local_delivery_and_recovers_without_clients_acting(
    cluster: list[LiminalProcess], redis_server: RedisServer,
) -> None:
    a, b, _ = cluster
    alice = await connect(a, a.token("alice"))
    alice_local = await connect(a, a.token("carol"))
    bob = await connect(b, b.token("bob"))
    for client in (alice, alice_local, bob):
        await client.subscribe("room1")
    await alice.publish("room1", "before")
    for client in (alice, alice_local, bob):
        assert contents(await collect(client, 0.5)) == ["before"]

    redis_server.stop()
    await alice.publish("room1", "during")
    assert contents(await collect(alice_local, 0.5)) == ["during"]
    assert contents(await collect(alice, 0.1)) == ["during"]
    late = await connect(b, b.token("dave"))  # new connections still work
    await late.subscribe("room2")  # and so do subscriptions

    redis_server.start()  # same port
    await eventually(lambda: redis_numsub(redis_server, "room1") == 2, timeout=15)
    await eventually(lambda: redis_numsub(redis_server, "room2") == 1, timeout=15)
    await alice.subscribe("room2")
    await alice.publish("room1", "after-1")
    await bob.publish("room1", "after-2")
    await asyncio.sleep(0.3)
    await alice.publish("room2", "after-3")
    # "during" is not replayed: Redis pub/sub is at-most-once across an outage.
    # (Order is only kept per publisher, so compare as sets of single copies.)
    assert sorted(contents(await collect(bob))) == ["after-1", "after-2"]
    assert sorted(contents(await collect(alice))) == ["after-1", "after-2", "after-3"]
    assert contents(await collect(late)) == ["after-3"]
    metrics = a.metrics_text()
    assert "liminal_broker_up 1.0" in metrics
    log = a.log_text()
    assert log.count("broker unreachable") == 1 and "broker reconnected" in log


async def test_redis_that_never_returns_blocks_and_crashes_nothing(
    cluster: list[LiminalProcess], redis_server: RedisServer,
) -> None:
    a, _, _ = cluster
    redis_server.stop()
    await asyncio.sleep(1.0)
    started = time.monotonic()
    alice = await connect(a, a.token("alice"))
    bob = await connect(a, a.token("bob"))
    await bob.subscribe("room-down")
    await alice.publish("room-down", "local only")
    assert (await bob.recv())["content"] == "local only"
    assert time.monotonic() - started < 3
    assert "liminal_broker_up 0.0" in a.metrics_text()
    await asyncio.sleep(3)
    assert a.proc is not None and a.proc.poll() is None
    assert a.log_text().count("broker unreachable") == 1


async def test_killed_listener_connection_is_rebuilt_and_counted(
    cluster: list[LiminalProcess], redis_server: RedisServer,
) -> None:
    a, b, _ = cluster
    alice = await connect(a, a.token("alice"))
    bob = await connect(b, b.token("bob"))
    await bob.subscribe("room-kill")
    admin = redis.Redis(port=redis_server.port, password=PASSWORD)
    assert admin.client_kill_filter(_type="pubsub") >= 2
    admin.close()
    await eventually(lambda: redis_numsub(redis_server, "room-kill") == 1)
    await asyncio.sleep(0.3)
    await alice.publish("room-kill", "heard")
    assert contents(await collect(bob)) == ["heard"]
    metrics = b.metrics_text()
    restarts = [line for line in metrics.splitlines()
                if line.startswith("liminal_broker_listener_restarts_total ")]
    assert restarts and float(restarts[0].split()[1]) >= 1


async def test_redis_password_never_appears_in_logs(
    cluster: list[LiminalProcess], redis_server: RedisServer,
) -> None:
    redis_server.stop()
    await asyncio.sleep(1.0)
    redis_server.start()
    await asyncio.sleep(2.0)
    for node in cluster:
        node.stop()
        log = node.log_text()
        assert "broker connected to redis://:***@127.0.0.1" in log
        assert PASSWORD not in log
