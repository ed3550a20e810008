"""Regression tests for what a break-it session found, against a real server."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import struct
from typing import Any

import websockets

from conftest import LiminalProcess, connect, refused_code


async def test_a_reset_subscriber_harms_neither_publisher_nor_other_subscribers(
    server: LiminalProcess,
) -> None:
    keeper = await connect(server, server.token("bob"))
    await keeper.subscribe("room-rst")
    publisher = await connect(server, server.token("alice"))
    for round_ in range(4):  # 81 messages in all: within the rate limit
        victims = [await connect(server, server.token("carol")) for _ in range(8)]
        for victim in victims:
            await victim.subscribe("room-rst")
        for victim in victims:
            sock = victim.ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            victim.ws.transport.abort()  # RST, no close frame
        for i in range(20):
            await publisher.publish("room-rst", [round_, i])
        got = [(await keeper.recv())["content"] for _ in range(20)]
        assert got == [[round_, i] for i in range(20)]
    assert await publisher.nothing(0.2)  # still open, no error
    await publisher.publish("room-rst", "end")
    assert (await keeper.recv())["content"] == "end"
    assert "Traceback" not in server.log_text()


async def test_deeply_nested_content_gets_4000_and_keeps_the_connection(
    server: LiminalProcess,
) -> None:
    alice = await connect(server, server.token("alice"))
    await alice.subscribe("room-deep")
    for depth in (975, 2000):  # parses, then fails to encode / fails to parse
        content = "[" * depth + "]" * depth
        await alice.send('{"type":"message","channel":"room-deep","content":' + content + "}")
        reply = await alice.recv()
        assert reply["type"] == "error" and reply["code"] == 4000, reply
    await alice.publish("room-deep", [[[["fine"]]]])
    assert (await alice.recv())["content"] == [[[["fine"]]]]
    await alice.close()


def post_token(server: LiminalProcess, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/token", body, headers)
    status = conn.getresponse().status
    conn.close()
    return status


def test_unreadable_token_bodies_get_400_not_500(server: LiminalProcess) -> None:
    json_type = {"Content-Type": "application/json"}
    assert post_token(server, b"[" * 200_000, json_type) == 400
    assert post_token(server, b'{"a":' * 100_000, json_type) == 400
    assert post_token(server, b"{}", {"Content-Type": "application/json; charset=nope-42"}) == 400
    assert post_token(
        server, b"username=a&password=b",
        {"Content-Type": "application/x-www-form-urlencoded; charset=nope-42"},
    ) == 400
    assert post_token(
        server, b"not gzip at all", {**json_type, "Content-Encoding": "gzip"}
    ) == 400
    # (aiohttp itself logs the broken gzip stream once, without the body.)
    assert "liminal.api: request failed" not in server.log_text()


async def test_simultaneous_login_guesses_are_locked_out_like_a_sequence(
    start_server: Any,
) -> None:
    server = start_server()

    def attempt(password: str) -> int:
        return post_token(
            server,
            json.dumps({"username": "carol", "password": password}).encode(),
            {"Content-Type": "application/json"},
        )

    passwords = [f"wrong-{n}" for n in range(39)] + ["carol-pw-3"]
    statuses = await asyncio.gather(*(asyncio.to_thread(attempt, p) for p in passwords))
    assert sum(1 for status in statuses if status != 429) <= 5
    assert attempt("carol-pw-3") == 429


async def test_tokens_and_passwords_stay_out_of_logs_however_they_are_sent(
    start_server: Any,
) -> None:
    server = start_server()
    token = server.token("alice")
    client = await connect(server, token)
    await client.close()
    async with websockets.connect(f"{server.ws_url}?%74oken={token}") as ws:
        assert json.loads(await ws.recv())["type"] == "connection_established"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("POST", "/token?username=alice&password=query-secret-pw")
    conn.getresponse().read()
    conn.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /ws?token={token} HTTP/9.9\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await reader.read()
    writer.close()
    server.stop()
    log = server.log_text()
    for secret in (token, token.split(".")[2], "query-secret-pw"):
        assert secret not in log


async def test_removing_and_adding_a_user_again_does_not_revive_old_tokens(
    start_server: Any,
) -> None:
    server = start_server()
    old_token = server.token("dave")
    await asyncio.sleep(1.1)  # revocation has whole-second resolution
    server.cli("users", "remove", "dave")
    server.cli("users", "add", "dave", "--password-stdin", stdin=b"new-pw\n")
    assert await refused_code(server, old_token) == 4001
    fresh = await connect(server, server.token("dave", "new-pw"))
    await fresh.close()


async def test_reset_handshakes_do_not_flood_the_log_with_errors(start_server: Any) -> None:
    server = start_server()
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.close()
    await asyncio.sleep(0.5)
    assert server.log_text().count("ERROR") == 0
    assert server.stats()["total_connections"] == 0
