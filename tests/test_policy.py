"""Graph-native channels, against real servers on both stores.

Each scenario uses channel and node ids of its own, so the servers (and the
FalkorDB shared by the session) can be reused across tests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conftest import Client, LiminalProcess, connect
from servers import RedisServer
from test_graph import Graph


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=["sqlite", "neo4j"])
def graph_server(
    request: pytest.FixtureRequest, start_module_server: Any
) -> LiminalProcess:
    env = {"LIMINAL_CHANNEL_POLICY": "graph"}
    if request.param == "neo4j":
        env["LIMINAL_GRAPH_URL"] = request.getfixturevalue("falkordb").bolt_url
    return start_module_server(f"graph-{request.param}", **env)  # type: ignore[no-any-return]


@pytest.fixture
def graph(graph_server: LiminalProcess) -> Graph:
    return Graph(graph_server)


def channel_with(graph: Graph, *members: tuple[str, str]) -> str:
    """A new channel node and the given (user, relationship type) edges."""
    channel = uid("team")
    assert graph.put("channel", channel)[0] == 201
    for user, rel_type in members:
        assert graph.relate(user, channel, rel_type)[0] == 201
    return channel


async def user_client(server: LiminalProcess, name: str) -> Client:
    return await connect(server, server.token(name))


async def test_missing_channel_node_gives_4004(graph_server: LiminalProcess) -> None:
    alice = await user_client(graph_server, "alice")
    reply = await alice.request({"type": "subscribe", "channel": uid("nowhere")})
    assert reply["type"] == "error" and reply["code"] == 4004
    await alice.close()


async def test_missing_relationship_gives_4003_naming_it(graph: Graph) -> None:
    channel = channel_with(graph)
    alice = await user_client(graph.proc, "alice")
    reply = await alice.request({"type": "subscribe", "channel": channel, "id": 1})
    assert reply == {
        "type": "error",
        "code": 4003,
        "message": f"no MEMBER_OF or CAN_READ relationship from user alice to "
        f"channel {channel}",
        "channel": channel,
        "id": 1,
    }
    await alice.close()


async def test_subscribe_is_allowed_once_the_relationship_exists(graph: Graph) -> None:
    channel = channel_with(graph)
    alice = await user_client(graph.proc, "alice")
    assert (await alice.request({"type": "subscribe", "channel": channel}))["code"] == 4003
    assert graph.relate("alice", channel, "MEMBER_OF")[0] == 201
    await alice.subscribe(channel)
    await alice.publish(channel, "hello team")
    assert (await alice.recv())["content"] == "hello team"
    await alice.close()


async def test_read_only_member_may_subscribe_but_not_publish(graph: Graph) -> None:
    channel = channel_with(graph, ("bob", "CAN_READ"), ("alice", "MEMBER_OF"))
    bob = await user_client(graph.proc, "bob")
    await bob.subscribe(channel)
    reply = await bob.request({"type": "message", "channel": channel, "content": "x"})
    assert reply["code"] == 4003
    assert reply["message"] == (
        f"no MEMBER_OF or CAN_WRITE relationship from user bob to channel {channel}"
    )
    alice = await user_client(graph.proc, "alice")
    await alice.publish(channel, "from a member")
    assert (await bob.recv())["content"] == "from a member"
    await alice.close()
    await bob.close()


async def test_write_only_member_may_publish_but_not_subscribe(graph: Graph) -> None:
    channel = channel_with(graph, ("carol", "CAN_WRITE"), ("bob", "CAN_READ"))
    bob = await user_client(graph.proc, "bob")
    await bob.subscribe(channel)
    carol = await user_client(graph.proc, "carol")
    assert (await carol.request({"type": "subscribe", "channel": channel}))["code"] == 4003
    await carol.publish(channel, "announcement")
    assert (await bob.recv())["content"] == "announcement"
    await bob.close()
    await carol.close()


async def test_group_membership_grants_access_one_level_deep(graph: Graph) -> None:
    channel = channel_with(graph)
    group = uid("group")
    assert graph.put("group", group)[0] == 201
    assert graph.relate(group, channel, "CAN_READ")[0] == 201
    dave = await user_client(graph.proc, "dave")
    assert (await dave.request({"type": "subscribe", "channel": channel}))["code"] == 4003
    status, membership = graph.relate("dave", group, "MEMBER_OF")
    assert status == 201
    await dave.subscribe(channel)
    # Leaving the group revokes the subscription it granted.
    assert graph.delete(f"relationship/{membership['id']}") == 204
    event = await dave.recv()
    assert event["type"] == "unsubscribed" and event["channel"] == channel
    await dave.close()


async def test_admin_may_use_any_existing_channel(graph: Graph) -> None:
    channel = channel_with(graph)
    root = await user_client(graph.proc, "root")
    await root.subscribe(channel)
    await root.publish(channel, "admin here")
    assert (await root.recv())["content"] == "admin here"
    reply = await root.request({"type": "subscribe", "channel": uid("absent")})
    assert reply["code"] == 4004
    await root.close()


async def test_revocation_reaches_the_client_within_100_ms_and_stops_delivery(
    graph: Graph,
) -> None:
    channel = channel_with(graph, ("alice", "MEMBER_OF"))
    status, edge = graph.relate("bob", channel, "MEMBER_OF")
    assert status == 201
    alice = await user_client(graph.proc, "alice")
    bob = await user_client(graph.proc, "bob")
    await alice.subscribe(channel)
    await bob.subscribe(channel)
    token = graph.admin

    def delete() -> float:
        graph.proc.request("DELETE", f"/api/graph/relationship/{edge['id']}", token=token)
        return time.monotonic()

    deleted_at = await asyncio.to_thread(delete)
    event = await bob.recv(timeout=2)
    elapsed = time.monotonic() - deleted_at
    assert event == {
        "type": "unsubscribed",
        "channel": channel,
        "code": 4003,
        "reason": f"no MEMBER_OF or CAN_READ relationship from user bob to "
        f"channel {channel}",
    }
    assert elapsed < 0.1, elapsed
    await alice.publish(channel, "after revocation")
    assert (await alice.recv())["content"] == "after revocation"
    assert await bob.nothing(0.5)
    assert (await bob.request({"type": "subscribe", "channel": channel}))["code"] == 4003
    await alice.close()
    await bob.close()


async def test_deleting_the_channel_node_unsubscribes_everyone(graph: Graph) -> None:
    channel = channel_with(graph, ("alice", "MEMBER_OF"))
    alice = await user_client(graph.proc, "alice")
    await alice.subscribe(channel)
    assert graph.delete(f"channel/{channel}") == 204
    event = await alice.recv()
    assert event["type"] == "unsubscribed" and event["channel"] == channel
    assert event["code"] == 4004
    await alice.close()


async def test_feed_events_for_create_and_delete_reach_both_ends(graph: Graph) -> None:
    alice = await user_client(graph.proc, "alice")
    bob = await user_client(graph.proc, "bob")
    await alice.subscribe("graph:user:alice")
    await bob.subscribe("graph:user:bob")
    status, edge = graph.relate("alice", "bob", "KNOWS", {"since": 2024})
    assert status == 201
    for client, channel in ((alice, "graph:user:alice"), (bob, "graph:user:bob")):
        event = await client.recv()
        assert event["channel"] == channel and event["sender"] == "liminal"
        assert event["content"]["event"] == "relationship_created"
        relationship = event["content"]["relationship"]
        assert relationship["id"] == edge["id"] and relationship["type"] == "KNOWS"
        assert relationship["source"] == {"type": "user", "id": "alice"}
        assert relationship["target"] == {"type": "user", "id": "bob"}
        assert relationship["properties"]["since"] == 2024
    assert graph.delete(f"relationship/{edge['id']}") == 204
    for client in (alice, bob):
        event = await client.recv()
        assert event["content"]["event"] == "relationship_deleted"
        assert event["content"]["relationship"]["id"] == edge["id"]
    await alice.close()
    await bob.close()


async def test_feed_access_is_denied_to_strangers_and_publishing_to_feeds(
    graph: Graph,
) -> None:
    carol = await user_client(graph.proc, "carol")
    reply = await carol.request({"type": "subscribe", "channel": "graph:user:alice"})
    assert reply["code"] == 4003
    assert "from user carol to user alice" in reply["message"]
    reply = await carol.request(
        {"type": "message", "channel": "graph:user:carol", "content": "forged"}
    )
    assert reply["code"] == 4003
    root = await user_client(graph.proc, "root")
    await root.subscribe("graph:user:alice")  # admins may watch any node
    reply = await root.request(
        {"type": "message", "channel": "graph:user:alice", "content": "forged"}
    )
    assert reply["code"] == 4003  # not even admins write feeds
    await carol.close()
    await root.close()


async def test_feed_read_relationship_opens_a_node_feed(graph: Graph) -> None:
    device = uid("device")
    assert graph.put("device", device)[0] == 201
    carol = await user_client(graph.proc, "carol")
    feed = f"graph:device:{device}"
    assert (await carol.request({"type": "subscribe", "channel": feed}))["code"] == 4003
    assert graph.relate("carol", device, "CAN_READ")[0] == 201
    await carol.subscribe(feed)
    assert graph.put("device", device, {"firmware": "2.1"})[0] == 200
    event = await carol.recv()
    assert event["channel"] == feed
    assert event["content"] == {
        "event": "node_updated", "node": {"type": "device", "id": device},
    }
    await carol.close()


async def test_denials_are_counted_by_code(graph: Graph) -> None:
    def denials(code: str) -> float:
        for line in graph.proc.metrics_text().splitlines():
            if line.startswith(f'liminal_channel_denials_total{{code="{code}"}}'):
                return float(line.split()[-1])
        return 0.0

    before = denials("4003"), denials("4004")
    alice = await user_client(graph.proc, "alice")
    await alice.request({"type": "subscribe", "channel": channel_with(graph)})
    await alice.request({"type": "subscribe", "channel": uid("absent")})
    assert (denials("4003"), denials("4004")) == (before[0] + 1, before[1] + 1)
    await alice.close()


async def test_open_mode_keeps_every_channel_open_and_still_guards_feeds(
    server: LiminalProcess,
) -> None:
    alice = await user_client(server, "alice")
    await alice.subscribe(uid("any-channel"))
    await alice.subscribe("graph:user:alice")
    reply = await alice.request({"type": "subscribe", "channel": "graph:user:bob"})
    assert reply["code"] == 4003
    reply = await alice.request(
        {"type": "message", "channel": "graph:user:alice", "content": "x"}
    )
    assert reply["code"] == 4003
    await alice.close()


async def test_revocation_and_feeds_cross_instances_through_redis(
    start_server: Any, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        shared = tmp_path / "shared"
        a, b = (
            start_server(name, data_dir=shared, LIMINAL_CHANNEL_POLICY="graph",
                         LIMINAL_BROKER_URL=redis_server.url)
            for name in ("a", "b")
        )
        graph = Graph(a)
        channel = channel_with(graph, ("alice", "MEMBER_OF"))
        status, edge = graph.relate("bob", channel, "MEMBER_OF")
        assert status == 201
        alice = await user_client(a, "alice")
        bob = await user_client(b, "bob")
        await alice.subscribe(channel)
        await bob.subscribe(channel)
        await bob.subscribe("graph:user:bob")
        await alice.publish(channel, "before")
        assert (await bob.recv())["content"] == "before"
        assert (await alice.recv())["content"] == "before"

        token = graph.admin

        def delete() -> float:
            a.request("DELETE", f"/api/graph/relationship/{edge['id']}", token=token)
            return time.monotonic()

        deleted_at = await asyncio.to_thread(delete)
        events = [await bob.recv(timeout=2), await bob.recv(timeout=2)]
        kinds = {event["type"] for event in events}
        assert kinds == {"unsubscribed", "message"}  # the revocation and bob's feed
        unsubscribed = next(e for e in events if e["type"] == "unsubscribed")
        assert unsubscribed["channel"] == channel and unsubscribed["code"] == 4003
        assert time.monotonic() - deleted_at < 0.1
        feed = next(e for e in events if e["type"] == "message")
        assert feed["channel"] == "graph:user:bob"
        assert feed["content"]["event"] == "relationship_deleted"

        await alice.publish(channel, "after")
        assert (await alice.recv())["content"] == "after"
        assert await bob.nothing(0.5)
        await alice.close()
        await bob.close()
    finally:
        redis_server.stop()


async def test_a_non_user_node_with_a_username_as_id_grants_nothing(graph: Graph) -> None:
    name = uid("eve")
    graph.proc.cli("users", "add", name, "--password-stdin", stdin=b"eve-pw\n")
    await asyncio.sleep(0.2)
    # The id is free in the graph: take it for a group before any user node.
    graph.delete(f"user/{name}")
    assert graph.put("group", name)[0] == 201
    channel = channel_with(graph, (name, "MEMBER_OF"))
    eve = await connect(graph.proc, graph.proc.token(name, "eve-pw"))
    reply = await eve.request({"type": "subscribe", "channel": channel})
    assert reply["code"] == 4003 and reply["message"] == f"no user node {name}"
    await eve.close()


async def test_a_grant_made_during_a_check_is_not_hidden_by_a_stale_verdict(
    graph: Graph,
) -> None:
    channel = channel_with(graph)
    alice = await user_client(graph.proc, "alice")

    async def keep_trying() -> dict[str, Any]:
        while True:
            reply = await alice.request({"type": "subscribe", "channel": channel})
            if reply["type"] == "subscribe_success":
                return reply
            await asyncio.sleep(0.01)

    trying = asyncio.create_task(keep_trying())
    await asyncio.sleep(0.1)
    assert (await asyncio.to_thread(graph.relate, "alice", channel, "MEMBER_OF"))[0] == 201
    granted_at = time.monotonic()
    await asyncio.wait_for(trying, 5)
    assert time.monotonic() - granted_at < 2  # not the 30 s cache lifetime
    await alice.close()


def test_unreadable_graph_bodies_get_400_without_a_traceback(graph: Graph) -> None:
    json_type = {"Content-Type": "application/json"}
    for raw in (b'{"properties": {"n": 1' + b"0" * 5000 + b"}}", b"[" * 100_000,
                b'{"properties": {"s": "\xff\xfe"}}'):
        status, body, _ = graph.proc.request(
            "PUT", f"/api/graph/device/{uid('d')}", raw=raw, headers=json_type
        )
        assert status == 400, (status, body)
    status, body = graph.put("device", uid("d"), {"s": "\ud800"})
    assert status == 422
    assert "Traceback" not in graph.proc.log_text()


def test_paging_cursor_is_checked_like_an_id(graph: Graph) -> None:
    status, _ = graph.get("user", "alice", "?after=" + "z" * 6000)
    assert status == 422


def test_quotes_never_reach_a_database_that_splices_parameters(graph: Graph) -> None:
    hostile = "x' MATCH (n) DETACH DELETE n //"
    status, _ = graph.get("device", hostile)
    if graph.backend == "neo4j":  # FalkorDB's Bolt endpoint splices them
        assert status == 422
        assert graph.put("device", uid("d"), {"note": "it's"})[0] == 422
    else:
        assert status == 404
    assert graph.get("user", "alice")[0] == 200  # the graph is intact
