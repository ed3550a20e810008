"""Both graph stores in-process: what the API does not expose, and the schema.

Each test runs on real SQLite in a temporary directory and on a real Bolt
server (FalkorDB). The HTTP contract is in ``test_graph.py``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from liminal.errors import StoreError
from liminal.store import (
    GraphStore,
    MissingNode,
    Node,
    NodeRef,
    NodeTypeConflict,
    Relationship,
)
from liminal.store.neo4j import Neo4jStore
from liminal.store.sqlite import SCHEMA_VERSION, SqliteStore
from servers import RedisServer

# One event loop for the module, so the Bolt store's connection outlives a test.
pytestmark = pytest.mark.asyncio(loop_scope="module")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def neo4j_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Neo4jStore]:
    # A database of its own: nothing left by other modules, nothing left behind.
    bolt = RedisServer(tmp_path_factory.mktemp("bolt"), bolt=True).start()
    store = Neo4jStore(bolt.bolt_url, None, None)
    try:
        await store.start()
        yield store
        await store.close()
    finally:
        bolt.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sqlite_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path_factory.mktemp("store") / "liminal.db")
    await store.start()
    yield store
    await store.close()


@pytest.fixture(scope="module", params=["sqlite", "neo4j"])
def store(request: pytest.FixtureRequest) -> GraphStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


async def two_nodes(store: GraphStore) -> tuple[str, str]:
    a, b = uid("a"), uid("b")
    await store.put_node("device", a, {})
    await store.put_node("person", b, {})
    return a, b


async def test_has_relationship_follows_direction_and_types(store: GraphStore) -> None:
    a, b = await two_nodes(store)
    await store.create_relationship(a, b, "MEMBER_OF", {})
    assert await store.has_relationship(a, b, ["MEMBER_OF"])
    assert await store.has_relationship(a, b, {"OWNS", "MEMBER_OF"})
    assert not await store.has_relationship(b, a, ["MEMBER_OF"])
    assert not await store.has_relationship(a, b, ["OWNS"])
    assert not await store.has_relationship(a, b, [])
    assert not await store.has_relationship(a, uid("ghost"), ["MEMBER_OF"])


async def test_has_relationship_via_follows_one_hop_through_the_given_type(
    store: GraphStore,
) -> None:
    user, group, other, channel = uid("u"), uid("g"), uid("o"), uid("c")
    await store.put_node("user", user, {})
    await store.put_node("group", group, {})
    await store.put_node("team", other, {})
    await store.put_node("channel", channel, {})
    await store.create_relationship(user, group, "MEMBER_OF", {})
    await store.create_relationship(user, other, "MEMBER_OF", {})
    await store.create_relationship(other, channel, "CAN_READ", {})
    assert not await store.has_relationship_via(
        user, ["MEMBER_OF"], "group", channel, ["CAN_READ"]
    )
    await store.create_relationship(group, channel, "CAN_READ", {})
    assert await store.has_relationship_via(
        user, ["MEMBER_OF"], "group", channel, ["CAN_READ", "MEMBER_OF"]
    )
    assert not await store.has_relationship_via(
        user, ["MEMBER_OF"], "group", channel, ["CAN_WRITE"]
    )
    assert not await store.has_relationship_via(
        user, ["OWNS"], "group", channel, ["CAN_READ"]
    )
    assert not await store.has_relationship_via(
        channel, ["MEMBER_OF"], "group", user, ["CAN_READ"]
    )


async def test_delete_relationship_returns_what_it_deleted(store: GraphStore) -> None:
    a, b = await two_nodes(store)
    created = await store.create_relationship(a, b, "OWNS", {"n": 1})
    removed = await store.delete_relationship(created.id)
    assert removed == created
    assert removed.source == NodeRef("device", a)
    assert removed.target == NodeRef("person", b)
    assert await store.delete_relationship(created.id) is None
    assert not await store.has_relationship(a, b, ["OWNS"])


async def test_delete_node_returns_the_relationships_it_removed(
    store: GraphStore,
) -> None:
    a, b = await two_nodes(store)
    out = await store.create_relationship(a, b, "OWNS", {})
    back = await store.create_relationship(b, a, "USES", {"x": [1]})
    loop = await store.create_relationship(a, a, "SELF", {})
    removed = await store.delete_node("device", a)
    assert sorted(removed or [], key=lambda rel: rel.id) == sorted(
        [out, back, loop], key=lambda rel: rel.id
    )
    assert await store.get_node("device", a) is None
    assert await store.relationships(b, limit=10) == []
    assert await store.delete_node("device", a) is None


async def test_delete_node_of_another_type_deletes_nothing(store: GraphStore) -> None:
    a, b = await two_nodes(store)
    await store.create_relationship(a, b, "OWNS", {})
    assert await store.delete_node("person", a) is None
    assert await store.get_node("device", a) is not None
    assert len(await store.relationships(a, limit=10)) == 1


async def test_create_relationship_names_the_missing_end(store: GraphStore) -> None:
    a, _ = await two_nodes(store)
    ghost = uid("ghost")
    with pytest.raises(MissingNode) as caught:
        await store.create_relationship(a, ghost, "OWNS", {})
    assert caught.value.node_id == ghost


async def test_ensure_nodes_creates_only_missing_ones(store: GraphStore) -> None:
    a, b = await two_nodes(store)
    await store.put_node("person", b, {"kept": True})
    fresh = uid("fresh")
    created = await store.ensure_nodes("person", [a, b, fresh])
    assert created == [fresh]
    assert (await store.get_node("person", b)).properties["kept"] is True  # type: ignore[union-attr]
    assert await store.get_node("device", a) is not None
    assert await store.get_node("person", a) is None


async def test_load_refuses_conflicts_and_dangling_ends(store: GraphStore) -> None:
    a, b = await two_nodes(store)
    with pytest.raises(NodeTypeConflict):
        await store.load([Node("person", a, {})], [])
    dangling = Relationship(
        uid("r"), "OWNS", NodeRef("device", a), NodeRef("device", uid("ghost")), {}
    )
    with pytest.raises(MissingNode):
        await store.load([], [dangling])
    wrong_type = Relationship(
        uid("r"), "OWNS", NodeRef("device", a), NodeRef("device", b), {}
    )
    with pytest.raises(NodeTypeConflict):
        await store.load([], [wrong_type])
    assert await store.relationships(a, limit=10) == []


async def test_load_keeps_timestamps_and_ids(store: GraphStore) -> None:
    node = Node("device", uid("old"), {"created_at": "2020-01-01T00:00:00Z", "n": 1})
    rel = Relationship(
        uid("rel"),
        "SELF",
        node.ref,
        node.ref,
        {"created_at": "2021-01-01T00:00:00Z"},
    )
    await store.load([node], [rel])
    assert await store.get_node("device", node.id) == node
    assert await store.relationships(node.id, limit=10) == [rel]


# The embedded store's schema.


async def test_schema_version_is_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "liminal.db"
    for _ in range(2):
        store = SqliteStore(path)
        await store.start()
        await store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, value FROM graph_meta").fetchall()
    assert rows == [("schema_version", str(SCHEMA_VERSION))]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "liminal.db"
    store = SqliteStore(path)
    await store.start()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE graph_meta SET value = '99'")
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="upgrade liminal"):
        await store.start()
    await store.close()
