"""The WebSocket protocol against a real server process."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from conftest import Client, LiminalProcess, connect

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def pair(server: LiminalProcess, channel: str) -> tuple[Client, Client]:
    alice = await connect(server, server.token("alice"))
    bob = await connect(server, server.token("bob"))
    await alice.subscribe(channel)
    await bob.subscribe(channel)
    return alice, bob


async def test_connection_established_carries_a_unique_id(server: LiminalProcess) -> None:
    first = await connect(server, server.token("alice"))
    second = await connect(server, server.token("alice"))
    assert first.connection_id and second.connection_id
    assert first.connection_id != second.connection_id
    await first.close()
    await second.close()


async def test_token_in_authorization_header_is_accepted(server: LiminalProcess) -> None:
    import websockets

    async with websockets.connect(
        server.ws_url,
        additional_headers={"Authorization": f"Bearer {server.token('bob')}"},
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "connection_established"


async def test_publish_reaches_every_subscriber_with_sender_and_timestamp(
    server: LiminalProcess,
) -> None:
    alice, bob = await pair(server, "room-all")
    carol = await connect(server, server.token("carol"))
    await carol.subscribe("room-all")
    await alice.publish("room-all", {"text": "hi", "n": [1, 2.5, True]})
    for client in (alice, bob, carol):
        event = await client.recv()
        assert event["type"] == "message"
        assert event["channel"] == "room-all"
        assert event["content"] == {"text": "hi", "n": [1, 2.5, True]}
        assert event["sender"] == "alice"
        assert TIMESTAMP.fullmatch(event["timestamp"]), event["timestamp"]
    for client in (alice, bob, carol):
        await client.close()


@pytest.mark.parametrize(
    "content",
    ["plain text", 42, -1.5, True, False, [1, "two"], {"nested": {"deep": [None]}},
     12345678901234567890, "ünïcødé ✓"],
)
async def test_content_of_any_json_type_is_delivered_unchanged(
    server: LiminalProcess, content: object
) -> None:
    alice, bob = await pair(server, "room-types")
    await alice.publish("room-types", content)
    raw = await asyncio.wait_for(bob.ws.recv(), 5)
    assert json.loads(raw)["content"] == content
    if content == 12345678901234567890:
        assert "12345678901234567890" in str(raw)
    await alice.close()
    await bob.close()


async def test_publishing_does_not_require_subscribing(server: LiminalProcess) -> None:
    bob = await connect(server, server.token("bob"))
    await bob.subscribe("room-nosub")
    dave = await connect(server, server.token("dave"))
    await dave.publish("room-nosub", "from outside")
    assert (await bob.recv())["content"] == "from outside"
    assert await dave.nothing()
    await bob.close()
    await dave.close()


async def test_every_reply_echoes_the_event_id(server: LiminalProcess) -> None:
    alice = await connect(server, server.token("alice"))
    assert await alice.request(
        {"type": "subscribe", "channel": "room-id", "id": "s-1"}
    ) == {"type": "subscribe_success", "channel": "room-id", "id": "s-1"}
    await alice.send({"type": "message", "channel": "room-id", "content": 1, "id": 9})
    replies = [await alice.recv(), await alice.recv()]
    assert {"type": "publish_success", "channel": "room-id", "id": 9} in replies
    assert await alice.request(
        {"type": "unsubscribe", "channel": "room-id", "id": 10}
    ) == {"type": "unsubscribe_success", "channel": "room-id", "id": 10}
    error = await alice.request({"type": "teleport", "channel": "room-id", "id": "x"})
    assert error["code"] == 4000 and error["id"] == "x"
    await alice.close()


async def test_unsubscribe_stops_delivery(server: LiminalProcess) -> None:
    alice, bob = await pair(server, "room-unsub")
    assert await bob.request({"type": "unsubscribe", "channel": "room-unsub"}) == {
        "type": "unsubscribe_success",
        "channel": "room-unsub",
    }
    await alice.publish("room-unsub", "after")
    assert (await alice.recv())["content"] == "after"
    assert await bob.nothing()
    await alice.close()
    await bob.close()


async def test_messages_arrive_in_publish_order(server: LiminalProcess) -> None:
    alice, bob = await pair(server, "room-order")
    for i in range(50):
        await alice.publish("room-order", i)
    received = [(await bob.recv())["content"] for _ in range(50)]
    assert received == list(range(50))
    await alice.close()
    await bob.close()


async def test_a_disconnect_mid_broadcast_harms_no_one_else(server: LiminalProcess) -> None:
    alice, bob = await pair(server, "room-drop")
    victims = [await connect(server, server.token("carol")) for _ in range(5)]
    for victim in victims:
        await victim.subscribe("room-drop")
    for i in range(60):
        await alice.publish("room-drop", i)
        if i == 20:
            for victim in victims:
                victim.ws.transport.abort()
    received = [(await bob.recv())["content"] for _ in range(60)]
    assert received == list(range(60))
    await asyncio.sleep(0.3)
    assert server.stats()["channel_subscriptions"].get("room-drop") == 2
    await alice.close()
    await bob.close()


MALFORMED = [
    pytest.param(b'{"type":"message","channel":"room-bad","content":"x"}', id="binary"),
    pytest.param(b"\xff\xfe\x00", id="binary-not-utf8"),
    pytest.param("", id="empty"),
    pytest.param("not json", id="not-json"),
    pytest.param("[1,2,3]", id="array"),
    pytest.param('"subscribe"', id="string"),
    pytest.param("null", id="null"),
    pytest.param('{"type":"message","channel":"room-bad"}', id="no-content"),
    pytest.param('{"type":"message","channel":"room-bad","content":null}', id="null-content"),
    pytest.param('{"type":"teleport","channel":"room-bad"}', id="unknown-type"),
    pytest.param('{"channel":"room-bad"}', id="no-type"),
    pytest.param('{"type":"subscribe"}', id="no-channel"),
    pytest.param('{"type":"subscribe","channel":123}', id="channel-not-string"),
    pytest.param('{"type":"subscribe","channel":""}', id="channel-empty"),
    pytest.param('{"type":"subscribe","channel":"a b"}', id="channel-space"),
    pytest.param('{"type":"subscribe","channel":"' + "x" * 129 + '"}', id="channel-long"),
    pytest.param('{"type":"subscribe","channel":"ok","id":[1]}', id="id-not-scalar"),
    pytest.param(
        '{"type":"message","channel":"room-bad","content":1' + "0" * 5000 + "}",
        id="int-5000-digits",
    ),
    pytest.param(
        '{"type":"message","channel":"room-bad","content":1' + "0" * 60000 + "}",
        id="int-60000-digits",
    ),
    pytest.param('{"type":"message","channel":"room-bad","content":1e400}', id="inf"),
    pytest.param('{"type":"message","channel":"room-bad","content":NaN}', id="nan"),
    pytest.param('{"type":"message","channel":"room-bad","content":-Infinity}', id="-inf"),
    pytest.param("[" * 20000 + "]" * 20000, id="deep-nesting"),
]


@pytest.mark.parametrize("frame", MALFORMED)
async def test_malformed_frame_gets_4000_and_the_connection_stays_usable(
    server: LiminalProcess, frame: str | bytes
) -> None:
    alice, bob = await pair(server, "room-bad")
    await alice.send(frame)
    error = await alice.recv()
    assert error["type"] == "error"
    assert error["code"] == 4000
    assert error["message"]
    assert await bob.nothing(0.2)
    await alice.publish("room-bad", "ok")
    assert (await bob.recv())["content"] == "ok"
    assert (await alice.recv())["content"] == "ok"
    await alice.close()
    await bob.close()


async def test_stats_are_exact_after_many_connects_and_disconnects(
    server: LiminalProcess,
) -> None:
    token = server.token("carol")
    before = server.stats()["total_connections"]
    for _ in range(3):
        clients = [await connect(server, token) for _ in range(8)]
        for i, client in enumerate(clients):
            await client.subscribe(f"churn-{i % 3}")
        for client in clients[::2]:
            await client.close()
        for client in clients[1::2]:
            client.ws.transport.abort()  # abrupt drop, no close frame
        await asyncio.sleep(0.3)
    stats = server.stats()
    assert stats["total_connections"] == before
    assert not any(name.startswith("churn-") for name in stats["channel_subscriptions"])


async def test_metrics_parse_and_agree_with_stats(server: LiminalProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    alice, bob = await pair(server, "room-metrics")
    await alice.publish("room-metrics", "m")
    await bob.recv()
    await alice.send("garbage")
    await alice.recv()
    families = {
        family.name: family
        for family in text_string_to_metric_families(server.metrics_text())
    }
    stats = server.stats()

    def value(name: str, **labels: str) -> float:
        for sample in families[name].samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        raise AssertionError(f"no sample {name} {labels}")

    assert value("liminal_connections_open") == stats["total_connections"]
    assert value("liminal_subscriptions_open") == sum(
        stats["channel_subscriptions"].values()
    )
    assert value("liminal_deliveries") >= 2
    assert value("liminal_events_rejected", code="4000") >= 1
    assert value("liminal_events_received", type="message") >= 1
    assert value("liminal_publish_duration_seconds", le="+Inf") >= 1
    assert value("liminal_connections_accepted") >= 2
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"code", "type", "le"}, sample
    await alice.close()
    await bob.close()
