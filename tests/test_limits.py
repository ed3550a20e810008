"""Admission limits and abuse protection, against a real server process.

Distinct client IP addresses are distinct loopback source addresses
(127.0.0.2, 127.0.0.3, ...), which Linux lets any process bind.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from typing import Any

import pytest
import websockets

from conftest import Client, LiminalProcess, connect, refused_code
from test_tokens import signed


def ip(n: int) -> tuple[str, int]:
    return (f"127.0.0.{n}", 0)


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


async def wait_for_stats(server: LiminalProcess, total: int, timeout: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = server.stats()
        if stats["total_connections"] == total or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


def gauge(server: LiminalProcess, name: str) -> float:
    for line in server.metrics_text().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


# Connection caps.


async def test_eleventh_connection_from_one_ip_gets_4006_while_another_ip_connects(
    server: LiminalProcess,
) -> None:
    token = server.token("alice")
    clients = [await connect(server, token, local_addr=ip(2)) for _ in range(10)]
    assert server.stats()["connections_by_ip"]["127.0.0.2"] == 10
    assert await refused_code(server, token, local_addr=ip(2)) == 4006
    assert server.stats()["connections_by_ip"]["127.0.0.2"] == 10
    other = await connect(server, token, local_addr=ip(3))
    await close_all([*clients, other])
    stats = await wait_for_stats(server, 0)
    assert stats["connections_by_ip"] == {}


async def test_connection_over_the_server_cap_gets_4005_until_a_slot_frees(
    server: LiminalProcess,
) -> None:
    token = server.token("bob")
    by_ip = {
        n: [await connect(server, token, local_addr=ip(n)) for _ in range(10)]
        for n in range(10, 20)
    }
    assert server.stats()["total_connections"] == 100
    assert await refused_code(server, token, local_addr=ip(30)) == 4005
    assert server.stats()["total_connections"] == 100
    await by_ip[13].pop().close()
    await wait_for_stats(server, 99)
    late = await connect(server, token, local_addr=ip(30))
    await close_all([late, *(c for clients in by_ip.values() for c in clients)])
    stats = await wait_for_stats(server, 0)
    assert stats["connections_by_ip"] == {}
    assert gauge(server, "liminal_connections_open") == 0


async def test_burst_of_50_simultaneous_handshakes_admits_exactly_10(
    server: LiminalProcess,
) -> None:
    token = server.token("carol")

    async def attempt() -> Client | int | None:
        try:
            return await connect(server, token, local_addr=ip(40))
        except AssertionError:
            raise
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    accepted = [r for r in results if isinstance(r, Client)]
    assert len(accepted) == 10
    assert sorted(r for r in results if not isinstance(r, Client)) == [4006] * 40
    assert server.stats()["connections_by_ip"]["127.0.0.40"] == 10
    await close_all(accepted)
    await wait_for_stats(server, 0)


async def test_failed_refused_aborted_and_plain_attempts_never_hold_a_slot(
    server: LiminalProcess,
) -> None:
    token = server.token("dave")
    expired = signed({"sub": "dave", "exp": int(time.time()) - 10})
    for _ in range(30):
        assert await refused_code(server, "bad", local_addr=ip(50)) == 4001
        assert await refused_code(server, expired, local_addr=ip(50)) == 4002
    for _ in range(30):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, source_address=ip(50))
        conn.request("GET", f"/ws?token={token}")
        assert conn.getresponse().status == 426
        conn.close()
    for _ in range(30):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, local_addr=ip(50)
        )
        writer.write(b"GET /ws?token=x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        await writer.drain()
        writer.close()
    for _ in range(10):  # accepted, then reset without a close frame
        client = await connect(server, token, local_addr=ip(50))
        client.ws.transport.abort()
    stats = await wait_for_stats(server, 0)
    assert "127.0.0.50" not in stats["connections_by_ip"]
    clients = [await connect(server, token, local_addr=ip(50)) for _ in range(10)]
    assert await refused_code(server, token, local_addr=ip(50)) == 4006
    await close_all(clients)
    assert (await wait_for_stats(server, 0))["connections_by_ip"] == {}
    assert gauge(server, "liminal_connections_open") == 0


async def test_forged_forwarding_headers_from_an_untrusted_peer_are_ignored(
    server: LiminalProcess,
) -> None:
    token = server.token("alice")
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8",
               "Forwarded": "for=203.0.113.9"}
    clients = [
        await connect(server, token, local_addr=ip(60), additional_headers=headers)
        for _ in range(10)
    ]
    stats = server.stats()["connections_by_ip"]
    assert stats["127.0.0.60"] == 10
    assert not any(address.startswith("203.") for address in stats)
    assert await refused_code(
        server, token, local_addr=ip(60),
        additional_headers={"X-Forwarded-For": "198.51.100.1"},
    ) == 4006
    await close_all(clients)


async def test_trusted_proxy_counts_the_rightmost_untrusted_forwarded_address(
    start_server: Any,
) -> None:
    server = start_server(LIMINAL_TRUSTED_PROXIES="127.0.0.70, 10.0.0.0/8")
    token = server.token("alice")
    chain = {"X-Forwarded-For": "6.6.6.6, 198.51.100.23, 10.1.2.3"}
    clients = [
        await connect(server, token, local_addr=ip(70), additional_headers=chain)
        for _ in range(10)
    ]
    assert server.stats()["connections_by_ip"] == {"198.51.100.23": 10}
    assert await refused_code(
        server, token, local_addr=ip(70), additional_headers=chain
    ) == 4006
    # Another client behind the same proxy is counted on its own.
    other = await connect(
        server, token, local_addr=ip(70),
        additional_headers={"X-Forwarded-For": "198.51.100.24"},
    )
    # A peer that is not a trusted proxy is counted by its own address.
    direct = await connect(server, token, local_addr=ip(71), additional_headers=chain)
    assert server.stats()["connections_by_ip"] == {
        "198.51.100.23": 10, "198.51.100.24": 1, "127.0.0.71": 1,
    }
    await close_all([*clients, other, direct])


# Message size.


def frame_of(size: int, channel: str) -> str:
    base = json.dumps({"type": "message", "channel": channel, "content": ""})
    text = base[:-2] + "x" * (size - len(base)) + '"}'
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize(
    "payload",
    [frame_of(65537, "room-size"), frame_of(2 * 1024 * 1024, "room-size"), b"x" * 70000],
    ids=["65537", "2MiB", "binary-70000"],
)
async def test_oversized_message_closes_the_sender_with_1009_and_reaches_no_one(
    server: LiminalProcess, payload: str | bytes
) -> None:
    bob = await connect(server, server.token("bob"))
    await bob.subscribe("room-size")
    alice = await connect(server, server.token("alice"))
    before = server.stats()["total_connections"]
    await alice.send(payload)
    assert await alice.close_code() == 1009
    assert await bob.nothing(0.5)
    assert (await wait_for_stats(server, before - 1))["total_connections"] == before - 1
    await bob.publish("room-size", "still here")
    assert (await bob.recv())["content"] == "still here"
    await bob.close()


async def test_message_of_exactly_65536_bytes_is_delivered(server: LiminalProcess) -> None:
    bob = await connect(server, server.token("bob"))
    await bob.subscribe("room-size-ok")
    alice = await connect(server, server.token("alice"))
    await alice.send(frame_of(65536, "room-size-ok"))
    event = await bob.recv()
    assert event["sender"] == "alice" and len(event["content"]) > 65000
    await alice.close()
    await bob.close()


# Rate limits.


async def test_101st_message_gets_4029_and_is_not_delivered_until_the_bucket_refills(
    start_server: Any,
) -> None:
    server = start_server()
    alice = await connect(server, server.token("alice"))
    bob = await connect(server, server.token("bob"))
    await bob.subscribe("room-rate")
    for i in range(101):
        await alice.send({"type": "message", "channel": "room-rate", "content": i, "id": i})
    replies = [await alice.recv() for _ in range(101)]
    errors = [r for r in replies if r["type"] == "error"]
    assert len(errors) == 1
    assert errors[0]["code"] == 4029 and errors[0]["id"] == 100
    assert 0 < errors[0]["retry_after"] <= 0.61
    received = [(await bob.recv())["content"] for _ in range(100)]
    assert received == list(range(100))
    assert await bob.nothing(0.2)
    assert gauge(server, "liminal_connections_rate_limited") == 1

    await asyncio.sleep(0.7)  # 100 per minute refills one token every 0.6 s
    await alice.publish("room-rate", "refilled")
    assert (await bob.recv())["content"] == "refilled"
    await alice.close()
    await bob.close()


async def test_flooding_while_limited_closes_with_1008_and_spares_others(
    start_server: Any,
) -> None:
    server = start_server()
    alice = await connect(server, server.token("alice"))
    bob = await connect(server, server.token("bob"))
    await bob.subscribe("room-flood")
    sent = 0
    try:
        for i in range(1000):
            await alice.publish("room-flood", i)
            sent += 1
    except websockets.ConnectionClosed:
        pass
    assert await alice.close_code() == 1008
    received = [(await bob.recv())["content"] for _ in range(100)]
    assert received == list(range(100))
    assert await bob.nothing(0.3)
    await bob.publish("room-flood", "bob is fine")
    assert (await bob.recv())["content"] == "bob is fine"
    await bob.close()


async def test_subscribe_flood_is_bounded_by_its_own_bucket(start_server: Any) -> None:
    server = start_server()
    alice = await connect(server, server.token("alice"))
    for _ in range(400):
        await alice.send({"type": "subscribe", "channel": "room-sub-flood"})
    replies = [await alice.recv() for _ in range(400)]
    kinds = [r["type"] if r["type"] != "error" else r["code"] for r in replies]
    assert kinds.count("subscribe_success") == 300
    assert kinds.count(4029) == 100
    # The message budget is separate: publishing still works.
    await alice.publish("room-sub-flood", "hello")
    assert (await alice.recv())["content"] == "hello"
    await alice.close()


async def test_subscription_cap_per_connection_gives_4030(start_server: Any) -> None:
    server = start_server(LIMINAL_MAX_SUBSCRIPTIONS_PER_CONNECTION="5")
    alice = await connect(server, server.token("alice"))
    for n in range(5):
        await alice.subscribe(f"cap-{n}")
    error = await alice.request({"type": "subscribe", "channel": "cap-5", "id": "s"})
    assert error["code"] == 4030 and error["channel"] == "cap-5" and error["id"] == "s"
    await alice.subscribe("cap-0")  # already subscribed: still fine
    assert (await alice.request({"type": "unsubscribe", "channel": "cap-1"}))["type"] == (
        "unsubscribe_success"
    )
    await alice.subscribe("cap-5")
    await alice.close()


# Login lock-out.


def login(server: LiminalProcess, user: str, password: str, source: int = 1) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, source_address=ip(source))
    conn.request(
        "POST", "/token", json.dumps({"username": user, "password": password}),
        {"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_login_lockout_after_five_failures_and_its_expiry(start_server: Any) -> None:
    server = start_server(LIMINAL_LOGIN_WINDOW_SECONDS="3")
    for _ in range(5):
        assert login(server, "alice", "wrong", source=80).status == 401
    locked = login(server, "alice", "alice-pw-1", source=80)
    assert locked.status == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 3
    assert login(server, "bob", "bob-pw-2", source=80).status == 200
    assert login(server, "alice", "alice-pw-1", source=81).status == 200
    time.sleep(3.1)
    assert login(server, "alice", "alice-pw-1", source=80).status == 200


# Slow consumers.


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_never_reading_subscriber_is_closed_with_4008_and_delays_no_one(
    start_server: Any,
) -> None:
    server = start_server(LIMINAL_RATE_LIMIT_PER_MINUTE="100000")
    assert server.proc is not None
    token = server.token("carol")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    slow = await websockets.connect(
        f"{server.ws_url}?token={token}", sock=raw, max_queue=1, max_size=None
    )
    await slow.recv()
    await slow.send(json.dumps({"type": "subscribe", "channel": "room-slow"}))
    await slow.recv()
    readers = [await connect(server, token) for _ in range(3)]
    for reader in readers:
        await reader.subscribe("room-slow")
    publisher = await connect(server, server.token("alice"))
    # The publisher reads its own copy of each message before sending the next,
    # so the readers (in this same process) are never the ones falling behind.
    await publisher.subscribe("room-slow")
    rss_before = rss_kib(server.proc.pid)

    chunk = "y" * 50_000
    count = 400  # 20 MB to each subscriber, far past the slow one's 1 MiB queue

    async def drain(reader: Client) -> list[int]:
        return [(await reader.recv(timeout=15))["content"]["n"] for _ in range(count)]

    draining = [asyncio.create_task(drain(reader)) for reader in readers]
    for n in range(count):
        await publisher.publish("room-slow", {"n": n, "pad": chunk})
        assert (await publisher.recv())["content"]["n"] == n
    results = await asyncio.gather(*draining)
    assert all(result == list(range(count)) for result in results)
    rss_growth_mib = (rss_kib(server.proc.pid) - rss_before) / 1024
    assert rss_growth_mib < 64, rss_growth_mib

    code = None
    try:
        async with asyncio.timeout(10):
            while True:
                await slow.recv()
    except websockets.ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    assert code == 4008
    stats = server.stats()
    assert stats["channel_subscriptions"]["room-slow"] == 4
    await close_all([*readers, publisher])
