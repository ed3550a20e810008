"""Metrics stay bounded under churn and agree with the stats (field case 14)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from conftest import LiminalProcess, connect
from test_limits import gauge, wait_for_stats


async def test_metrics_do_not_grow_with_channels_paths_or_connections(
    start_server: Any,
) -> None:
    server = start_server()
    lines_before = len(server.metrics_text().splitlines())
    token = server.token("alice")
    channels: list[str] = []
    for _ in range(10):
        client = await connect(server, token)
        names = [f"c-{uuid.uuid4()}" for _ in range(100)]
        channels += names
        for name in names:
            await client.subscribe(name)
        for name in names[:5]:
            await client.publish(name, "x")
            await client.recv()
        for name in names:
            await client.request({"type": "unsubscribe", "channel": name})
        await client.close()
    for _ in range(50):
        server.request("GET", f"/no-such-path-{uuid.uuid4()}")
    kept = [await connect(server, server.token(user)) for user in ("bob", "carol", "dave")]
    for _ in range(20):
        (await connect(server, token)).ws.transport.abort()
    await wait_for_stats(server, 3)

    text = server.metrics_text()
    families = list(text_string_to_metric_families(text))  # valid exposition format
    assert families
    assert len(text.splitlines()) - lines_before < 40
    assert "c-" not in text and "127.0.0.1" not in text and "no-such-path" not in text
    stats = server.stats()
    assert stats["channel_subscriptions"] == {}
    for _ in range(10):
        assert gauge(server, "liminal_connections_open") == 3 == (
            server.stats()["total_connections"]
        )
    await asyncio.gather(*(client.close() for client in kept))


async def test_connect_churn_releases_every_slot(server: LiminalProcess) -> None:
    token = server.token("bob")
    for _ in range(200):
        client = await connect(server, token)
        await client.close()
    stats = await wait_for_stats(server, 0)
    assert stats["connections_by_ip"] == {}
    assert gauge(server, "liminal_connections_open") == 0
