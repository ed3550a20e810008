"""The graph API contract, run over HTTP against both stores.

Every test taking ``graph`` runs twice: against a server on the embedded
SQLite store and against one on a real Bolt server (FalkorDB). Ids carry a
random suffix, so tests share the two servers without seeing each other.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from conftest import PASSWORDS, SECRET, LiminalProcess, connect, create_users
from liminal.config import Settings
from liminal.server import Server, build_app
from liminal.store import ChangeKind, GraphChange, NodeRef
from servers import RedisServer

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
INJECTIONS = [
    "KNOWS]->(x) DETACH DELETE x //",
    "KNOWS`]->() MATCH (n) DETACH DELETE n //",
    "knows",
    "K NOWS",
    "",
    "A" * 65,
]


# Found while writing these tests; the Neo4j store sends every value as a
# Bolt parameter, which real Neo4j keeps apart from the query text.
FALKORDB_QUOTE_BUG = pytest.mark.xfail(
    reason="FalkorDB's Bolt endpoint splices string parameters into the query "
    "text unescaped, so liminal refuses ' and backslashes there (422) and such "
    "values cannot round-trip",
    strict=True,
)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def path(*segments: str) -> str:
    return "/".join(quote(segment, safe="") for segment in segments)


def cli(
    data_dir: Path, *args: str, graph_url: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``liminal`` with the data dir and graph store of a test server."""
    env = {
        key: value for key, value in os.environ.items() if key != "LIMINAL_GRAPH_URL"
    }
    env["LIMINAL_DATA_DIR"] = str(data_dir)
    if graph_url:
        env["LIMINAL_GRAPH_URL"] = graph_url
    return subprocess.run(
        [sys.executable, "-m", "liminal", *args],
        env=env,
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Graph:
    """HTTP helpers for one server's graph API, as the admin ``root``."""

    def __init__(self, proc: LiminalProcess) -> None:
        self.proc = proc
        self.graph_url = proc.env.get("LIMINAL_GRAPH_URL")
        self.backend = "neo4j" if self.graph_url else "sqlite"

    def expect_falkordb_quote_bug(self, request: pytest.FixtureRequest) -> None:
        if self.backend == "neo4j":
            request.node.add_marker(FALKORDB_QUOTE_BUG)

    @property
    def admin(self) -> str:
        return self.proc.token("root")

    def get(self, node_type: str, node_id: str, query: str = "") -> tuple[int, Any]:
        status, body, _ = self.proc.request(
            "GET", f"/api/graph/{path(node_type, node_id)}{query}", token=self.admin
        )
        return status, body

    def put(
        self, node_type: str, node_id: str, properties: Any = None
    ) -> tuple[int, Any]:
        status, body, _ = self.proc.request(
            "PUT",
            f"/api/graph/{path(node_type, node_id)}",
            {"properties": properties or {}},
            token=self.admin,
        )
        return status, body

    def relate(
        self, source: str, target: str, rel_type: str, properties: Any = None
    ) -> tuple[int, Any]:
        body = {"source_id": source, "target_id": target, "type": rel_type}
        if properties is not None:
            body["properties"] = properties
        status, reply, _ = self.proc.request(
            "POST", "/api/graph/relationship", body, token=self.admin
        )
        return status, reply

    def delete(self, path: str) -> int:
        status, _, _ = self.proc.request(
            "DELETE", f"/api/graph/{path}", token=self.admin
        )
        return status

    def snapshot(self, *refs: tuple[str, str]) -> list[tuple[int, Any]]:
        return [self.get(node_type, node_id) for node_type, node_id in refs]


@pytest.fixture(scope="module")
def sqlite_server(start_module_server: Callable[..., LiminalProcess]) -> LiminalProcess:
    return start_module_server("sqlite")


@pytest.fixture(scope="module")
def neo4j_server(
    start_module_server: Callable[..., LiminalProcess], falkordb: RedisServer
) -> LiminalProcess:
    return start_module_server("neo4j", LIMINAL_GRAPH_URL=falkordb.bolt_url)


@pytest.fixture(scope="module", params=["sqlite", "neo4j"])
def graph(request: pytest.FixtureRequest) -> Graph:
    return Graph(request.getfixturevalue(f"{request.param}_server"))


# Nodes.


def test_existing_users_have_user_nodes(graph: Graph) -> None:
    status, body = graph.get("user", "alice")
    assert status == 200, body
    assert body["id"] == "alice" and body["type"] == "user"
    assert TIMESTAMP.fullmatch(body["properties"]["created_at"])


def test_put_creates_with_201_and_replaces_with_200(graph: Graph) -> None:
    node_id = uid("lamp")
    status, created = graph.put("device", node_id, {"name": "lamp", "watts": 60})
    assert status == 201, created
    assert created["id"] == node_id and created["type"] == "device"
    props = created["properties"]
    assert props["name"] == "lamp"
    assert props["created_at"] == props["updated_at"]
    assert TIMESTAMP.fullmatch(props["created_at"])

    time.sleep(0.01)
    status, replaced = graph.put("device", node_id, {"room": "hall"})
    assert status == 200, replaced
    assert set(replaced["properties"]) == {"room", "created_at", "updated_at"}
    assert replaced["properties"]["created_at"] == props["created_at"]
    assert replaced["properties"]["updated_at"] > props["updated_at"]

    status, fetched = graph.get("device", node_id)
    assert status == 200
    assert fetched["properties"] == replaced["properties"]
    assert fetched["relationships"] == []


def test_properties_keep_their_types(graph: Graph) -> None:
    node_id = uid("typed")
    properties = {
        "text": "héllo ✓",
        "empty_text": "",
        "count": 3,
        "negative": -(2**63),
        "ratio": 0.5,
        "whole_float": 2.0,
        "on": True,
        "off": False,
        "names": ["a", "b"],
        "numbers": [1, 2, 3],
        "floats": [1.5, 2.0],
        "flags": [True, False],
        "nothing": [],
    }
    graph.put("device", node_id, properties)
    status, body = graph.get("device", node_id)
    assert status == 200
    stored = {k: v for k, v in body["properties"].items() if not k.endswith("_at")}
    assert stored == properties
    for key, value in properties.items():
        assert type(stored[key]) is type(value), key
        if isinstance(value, list):
            assert [type(item) for item in stored[key]] == [type(i) for i in value]


def test_quotes_and_backslashes_round_trip(
    graph: Graph, request: pytest.FixtureRequest
) -> None:
    graph.expect_falkordb_quote_bug(request)
    node_id = uid("quoted")
    properties = {"name": "O'Brien", "path": "C:\\temp\\new", "both": ["'", "\\"]}
    status, body = graph.put("device", node_id, properties)
    assert status == 201, body
    stored = graph.get("device", node_id)[1]["properties"]
    assert {key: stored[key] for key in properties} == properties


def test_managed_timestamps_cannot_be_overwritten(graph: Graph) -> None:
    node_id = uid("clock")
    _, first = graph.put("device", node_id)
    status, second = graph.put(
        "device", node_id, {"created_at": "1999-01-01T00:00:00Z", "updated_at": "x"}
    )
    assert status == 200
    assert second["properties"]["created_at"] == first["properties"]["created_at"]
    assert TIMESTAMP.fullmatch(second["properties"]["updated_at"])


def test_unknown_node_is_404(graph: Graph) -> None:
    status, body = graph.get("device", uid("ghost"))
    assert status == 404
    assert "detail" in body


def test_node_of_another_type_is_404(graph: Graph) -> None:
    node_id = uid("cam")
    graph.put("device", node_id)
    assert graph.get("sensor", node_id)[0] == 404
    assert graph.delete(f"sensor/{node_id}") == 404
    assert graph.get("device", node_id)[0] == 200


def test_id_used_by_another_type_is_409(graph: Graph) -> None:
    node_id = uid("dup")
    graph.put("device", node_id, {"a": 1})
    status, body = graph.put("sensor", node_id, {"b": 2})
    assert status == 409
    assert "device" in body["detail"]
    assert graph.get("device", node_id)[1]["properties"]["a"] == 1


def test_delete_node_is_204_and_removes_its_relationships(graph: Graph) -> None:
    hub, spoke = uid("hub"), uid("spoke")
    graph.put("device", hub)
    graph.put("device", spoke)
    graph.relate(hub, spoke, "LINKS")
    graph.relate(spoke, hub, "LINKS")
    graph.relate("alice", hub, "OWNS")

    assert graph.delete(f"device/{hub}") == 204
    assert graph.get("device", hub)[0] == 404
    assert graph.get("device", spoke)[1]["relationships"] == []
    alice = graph.get("user", "alice")[1]
    assert all(rel["target_id"] != hub for rel in alice["relationships"])
    assert graph.delete(f"device/{hub}") == 404


# Relationships.


def test_relationship_is_listed_in_both_directions(graph: Graph) -> None:
    phone = uid("phone")
    graph.put("device", phone)
    status, created = graph.relate(
        "bob", phone, "CONNECTED_TO", {"since": "2025-06-01T10:30:00Z", "hops": 2}
    )
    assert status == 201, created
    assert set(created) == {"id", "source_id", "target_id", "type", "created_at"}
    assert created["source_id"] == "bob" and created["target_id"] == phone
    assert created["type"] == "CONNECTED_TO"
    assert isinstance(created["id"], str) and created["id"]
    assert TIMESTAMP.fullmatch(created["created_at"])

    expected_props = {"since": "2025-06-01T10:30:00Z", "hops": 2}
    _, device = graph.get("device", phone)
    [incoming] = device["relationships"]
    assert incoming["direction"] == "incoming"
    assert incoming["target_id"] == "bob" and incoming["target_type"] == "user"
    assert incoming["type"] == "CONNECTED_TO" and incoming["id"] == created["id"]
    assert incoming["properties"] == {
        **expected_props,
        "created_at": created["created_at"],
    }

    _, bob = graph.get("user", "bob")
    [outgoing] = [rel for rel in bob["relationships"] if rel["id"] == created["id"]]
    assert outgoing["direction"] == "outgoing"
    assert outgoing["target_id"] == phone and outgoing["target_type"] == "device"


def test_self_relationship_is_listed_once(graph: Graph) -> None:
    node_id = uid("loop")
    graph.put("device", node_id)
    _, created = graph.relate(node_id, node_id, "WATCHES")
    _, body = graph.get("device", node_id)
    assert [(r["id"], r["direction"]) for r in body["relationships"]] == [
        (created["id"], "outgoing")
    ]


def test_relationship_ids_are_unique(graph: Graph) -> None:
    a, b = uid("a"), uid("b")
    graph.put("device", a)
    graph.put("device", b)
    ids = {graph.relate(a, b, "PAIRS")[1]["id"] for _ in range(5)}
    assert len(ids) == 5


def test_relationship_to_a_missing_node_is_404(graph: Graph) -> None:
    node_id, ghost = uid("real"), uid("ghost")
    graph.put("device", node_id)
    status, body = graph.relate(node_id, ghost, "KNOWS")
    assert status == 404 and ghost in body["detail"]
    status, body = graph.relate(ghost, node_id, "KNOWS")
    assert status == 404 and ghost in body["detail"]
    assert graph.get("device", node_id)[1]["relationships"] == []


def test_delete_relationship_is_204_then_404(graph: Graph) -> None:
    a, b = uid("a"), uid("b")
    graph.put("device", a)
    graph.put("device", b)
    _, created = graph.relate(a, b, "PAIRS")
    assert graph.delete(f"relationship/{created['id']}") == 204
    assert graph.get("device", a)[1]["relationships"] == []
    assert graph.get("device", b)[1]["relationships"] == []
    assert graph.delete(f"relationship/{created['id']}") == 404
    assert graph.delete(f"relationship/{uid('never')}") == 404


def test_relationships_come_in_pages(graph: Graph) -> None:
    center = uid("center")
    graph.put("device", center)
    ids = set()
    for n in range(5):
        leaf = uid(f"leaf{n}")
        graph.put("device", leaf)
        direction = (center, leaf) if n % 2 else (leaf, center)
        ids.add(graph.relate(*direction, "LINKS")[1]["id"])

    seen: list[str] = []
    query = "?limit=2"
    while True:
        status, body = graph.get("device", center, query)
        assert status == 200, body
        assert len(body["relationships"]) <= 2
        seen += [rel["id"] for rel in body["relationships"]]
        if body["next_after"] is None:
            break
        query = f"?limit=2&after={body['next_after']}"
    assert seen == sorted(ids)

    for bad in ("?limit=0", "?limit=1001", "?limit=x"):
        status, body = graph.get("device", center, bad)
        assert status == 422, bad
        assert body["detail"][0]["loc"][-1] == "limit"


# Authorization.


def test_reads_need_a_valid_token(graph: Graph) -> None:
    for token in (None, "not-a-token"):
        status, body, headers = graph.proc.request(
            "GET", "/api/graph/user/alice", token=token
        )
        assert status == 401, body
        assert headers.get("WWW-Authenticate") == "Bearer"
    status, _, _ = graph.proc.request(
        "GET", "/api/graph/user/alice", token=graph.proc.token("alice")
    )
    assert status == 200


def test_writes_need_the_admin_role(graph: Graph) -> None:
    node_id = uid("guarded")
    graph.put("device", node_id)
    _, rel = graph.relate("alice", node_id, "OWNS")
    writes: list[tuple[str, str, Any]] = [
        ("PUT", f"/api/graph/device/{uid('new')}", {"properties": {}}),
        ("PUT", f"/api/graph/device/{node_id}", {"properties": {"x": 1}}),
        ("DELETE", f"/api/graph/device/{node_id}", None),
        (
            "POST",
            "/api/graph/relationship",
            {"source_id": "alice", "target_id": node_id, "type": "OWNS"},
        ),
        ("DELETE", f"/api/graph/relationship/{rel['id']}", None),
    ]
    before = graph.snapshot(("device", node_id))
    for method, path, body in writes:
        assert graph.proc.request(method, path, body)[0] == 401, (method, path)
        alice = graph.proc.token("alice")
        assert graph.proc.request(method, path, body, token=alice)[0] == 403, path
    assert graph.snapshot(("device", node_id)) == before


def test_credentials_are_checked_before_input(graph: Graph) -> None:
    bad = {"source_id": "a", "target_id": "b", "type": "KNOWS]->(x) //"}
    assert graph.proc.request("POST", "/api/graph/relationship", bad)[0] == 401
    alice = graph.proc.token("alice")
    status, _, _ = graph.proc.request(
        "POST", "/api/graph/relationship", bad, token=alice
    )
    assert status == 403
    assert graph.proc.request("GET", "/api/graph/User/x")[0] == 401


# Validation and injection.


@pytest.mark.parametrize("rel_type", INJECTIONS)
def test_bad_relationship_type_is_422_and_changes_nothing(
    graph: Graph, rel_type: str
) -> None:
    a, b = uid("a"), uid("b")
    graph.put("device", a)
    graph.put("device", b)
    before = graph.snapshot(("device", a), ("device", b), ("user", "alice"))
    status, body = graph.relate(a, b, rel_type)
    assert status == 422, body
    assert body["detail"][0]["loc"] == ["body", "type"]
    assert graph.snapshot(("device", a), ("device", b), ("user", "alice")) == before


@pytest.mark.parametrize(
    "node_type",
    ["user) DETACH DELETE (n", "Device", "dev-ice", "9lives", "a" * 65, "relationship"],
)
def test_bad_node_type_is_422(graph: Graph, node_type: str) -> None:
    before = graph.snapshot(("user", "alice"))
    status, body, _ = graph.proc.request(
        "PUT",
        f"/api/graph/{path(node_type, uid('x'))}",
        {"properties": {}},
        token=graph.admin,
    )
    # "relationship/<id>" is the relationship's own address, which has no PUT.
    assert status == (405 if node_type == "relationship" else 422), body
    if status == 422:
        assert body["detail"][0]["loc"] == ["path", "node_type"]
    assert graph.snapshot(("user", "alice")) == before


@pytest.mark.parametrize("node_id", ["x" * 129, "tab\tin", "new\nline", "nul\x00"])
def test_bad_node_id_is_422(graph: Graph, node_id: str) -> None:
    status, body = graph.put("device", node_id)
    assert status == 422, body
    assert body["detail"][0]["loc"] == ["path", "node_id"]


@pytest.mark.parametrize(
    "text", ["x'}) DETACH DELETE n //", "a/b", "{curly}", "ünï 🙂", "x" * 128]
)
def test_odd_printable_ids_are_plain_text(
    graph: Graph, text: str, request: pytest.FixtureRequest
) -> None:
    if "'" in text:
        graph.expect_falkordb_quote_bug(request)
    node_id = f"{text[:100]}{uuid.uuid4().hex[:8]}"
    status, body = graph.put("device", node_id)
    assert status == 201, body
    assert body["id"] == node_id
    status, created = graph.relate(node_id, "alice", "KNOWS")
    assert status == 201, created
    status, body = graph.get("device", node_id)
    assert status == 200 and body["id"] == node_id
    assert body["relationships"][0]["target_id"] == "alice"
    assert graph.get("user", "alice")[0] == 200


@pytest.mark.parametrize(
    ("properties", "naming"),
    [
        ({"bad key": 1}, "bad key"),
        ({"x`}) DETACH DELETE n //": 1}, "DETACH"),
        ({"n.name": "x"}, "n.name"),
        ({"1st": "x"}, "1st"),
        ({"id": "other"}, "id"),
        ({"nothing": None}, "nothing"),
        ({"nested": {"a": 1}}, "nested"),
        ({"deep": [[1]]}, "deep"),
        ({"mixed": [1, "a"]}, "mixed"),
        ({"numbers": [1, 2.5]}, "numbers"),
        ({"huge": 2**63}, "huge"),
        ({"nul": "a\x00b"}, "nul"),
    ],
)
def test_bad_properties_are_422_naming_the_field(
    graph: Graph, properties: dict[str, Any], naming: str
) -> None:
    node_id = uid("p")
    graph.put("device", node_id, {"kept": True})
    before = graph.snapshot(("device", node_id))

    status, body = graph.put("device", node_id, properties)
    assert status == 422, body
    assert body["detail"][0]["loc"] == ["body", "properties"]
    assert naming in body["detail"][0]["msg"]

    status, body = graph.relate(node_id, node_id, "SELF", properties)
    assert status == 422, body
    assert graph.snapshot(("device", node_id)) == before


def test_non_finite_numbers_are_422(graph: Graph) -> None:
    raw = b'{"properties": {"x": NaN}}'
    status, body, _ = graph.proc.request(
        "PUT",
        f"/api/graph/device/{uid('nan')}",
        raw=raw,
        token=graph.admin,
        headers={"Content-Type": "application/json"},
    )
    assert status == 422, body


def test_openapi_describes_every_graph_endpoint(graph: Graph) -> None:
    status, spec, _ = graph.proc.request("GET", "/openapi.json")
    assert status == 200
    paths = spec["paths"]
    assert set(paths["/api/graph/{node_type}/{node_id}"]) == {"get", "put", "delete"}
    assert set(paths["/api/graph/relationship"]) == {"post"}
    assert set(paths["/api/graph/relationship/{relationship_id}"]) == {"delete"}
    put = paths["/api/graph/{node_type}/{node_id}"]["put"]
    assert {"200", "201", "401", "403", "409", "422", "503"} <= set(put["responses"])
    assert {"NodeWithRelationships", "RelationshipBody", "RelationshipCreated"} <= set(
        spec["components"]["schemas"]
    )


async def test_every_write_reaches_the_graph_listeners(tmp_path: Path) -> None:
    create_users(tmp_path)
    server = Server.from_settings(Settings(data_dir=tmp_path, jwt_secret=SECRET))
    seen: list[GraphChange] = []

    async def broken(change: GraphChange) -> None:
        raise RuntimeError("a listener bug")

    async def record(change: GraphChange) -> None:
        seen.append(change)

    server.graph_listeners += [broken, record]
    app = build_app(server)
    async with (
        TestServer(app, host="127.0.0.1") as http,
        aiohttp.ClientSession(base_url=http.make_url("/")) as session,
    ):
        login = {"username": "root", "password": PASSWORDS["root"]}
        async with session.post("/token", json=login) as reply:
            token = (await reply.json())["access_token"]
        session.headers["Authorization"] = f"Bearer {token}"

        async def call(method: str, path: str, body: Any = None) -> Any:
            async with session.request(method, path, json=body) as reply:
                assert reply.status < 300, await reply.text()
                return await reply.json() if reply.status != 204 else None

        await call("PUT", "/api/graph/device/d1", {"properties": {}})
        await call("PUT", "/api/graph/device/d1", {"properties": {"a": 1}})
        rel = {"source_id": "alice", "target_id": "d1", "type": "OWNS"}
        first = await call("POST", "/api/graph/relationship", rel)
        await call("DELETE", f"/api/graph/relationship/{first['id']}")
        second = await call("POST", "/api/graph/relationship", rel)
        await call("DELETE", "/api/graph/device/d1")
        async with session.delete("/api/graph/device/d1") as reply:
            assert reply.status == 404

    assert [change.kind for change in seen] == [
        ChangeKind.NODE_CREATED,
        ChangeKind.NODE_UPDATED,
        ChangeKind.RELATIONSHIP_CREATED,
        ChangeKind.RELATIONSHIP_DELETED,
        ChangeKind.RELATIONSHIP_CREATED,
        ChangeKind.RELATIONSHIP_DELETED,
        ChangeKind.NODE_DELETED,
    ]
    device = NodeRef("device", "d1")
    assert seen[0].node == device and seen[-1].node == device
    for change, created in ((seen[3], first), (seen[5], second)):
        assert change.relationship is not None
        assert change.relationship.id == created["id"]
        assert change.relationship.type == "OWNS"
        assert change.relationship.source == NodeRef("user", "alice")
        assert change.relationship.target == device


# Users, persistence, failures and moving graphs.


def test_users_add_and_remove_keep_user_nodes(graph: Graph) -> None:
    name = uid("erin")
    added = cli(
        graph.proc.data_dir,
        "users",
        "add",
        name,
        "--password-stdin",
        graph_url=graph.graph_url,
        stdin="erin-pw\n",
    )
    assert added.returncode == 0, added.stderr
    assert "warning" not in added.stderr
    status, body = graph.get("user", name)
    assert status == 200, body
    graph.relate(name, "alice", "KNOWS")

    removed = cli(
        graph.proc.data_dir, "users", "remove", name, graph_url=graph.graph_url
    )
    assert removed.returncode == 0, removed.stderr
    assert graph.get("user", name)[0] == 404
    alice = graph.get("user", "alice")[1]
    assert all(rel["target_id"] != name for rel in alice["relationships"])


def test_embedded_graph_survives_a_restart(
    start_server: Callable[..., LiminalProcess],
) -> None:
    graph = Graph(start_server("restart"))
    graph.put("device", "kettle", {"litres": 1.5})
    _, rel = graph.relate("carol", "kettle", "OWNS", {"since": 2020})
    before = graph.snapshot(("device", "kettle"), ("user", "carol"))

    graph.proc.restart()
    assert graph.snapshot(("device", "kettle"), ("user", "carol")) == before
    assert before[0][1]["relationships"][0]["id"] == rel["id"]


async def test_unreachable_bolt_server_is_503_and_recovers(
    tmp_path: Path, start_server: Callable[..., LiminalProcess]
) -> None:
    bolt = RedisServer(tmp_path / "bolt", bolt=True).start()
    try:
        graph = Graph(start_server("outage", LIMINAL_GRAPH_URL=bolt.bolt_url))
        assert graph.put("device", "before")[0] == 201
        token = graph.proc.token("dave")

        bolt.stop()
        status, body, headers = await asyncio.to_thread(
            graph.proc.request,
            "PUT",
            "/api/graph/device/during",
            {"properties": {}},
            token=graph.admin,
        )
        assert status == 503, body
        assert headers["Retry-After"] == "5"
        assert "graph" in body["detail"] and "unreachable" in body["detail"]

        # The real-time side does not need the graph.
        client = await connect(graph.proc, token)
        await client.subscribe("news")
        await client.publish("news", "still here")
        assert (await client.recv())["content"] == "still here"
        await client.close()

        bolt.start()
        deadline = time.monotonic() + 20
        status = 0
        while status != 201 and time.monotonic() < deadline:
            status, body = await asyncio.to_thread(graph.put, "device", "after")
        assert status == 201, body
        assert graph.get("device", "after")[0] == 200
    finally:
        bolt.stop()


def test_server_starts_without_the_bolt_server_and_catches_up(
    tmp_path: Path, start_server: Callable[..., LiminalProcess]
) -> None:
    bolt = RedisServer(tmp_path / "bolt", bolt=True)  # not started yet
    try:
        graph = Graph(start_server("late", LIMINAL_GRAPH_URL=bolt.bolt_url))
        bolt.start()
        # The user nodes the server could not create at start come by themselves.
        deadline = time.monotonic() + 20
        status = 0
        while status != 200 and time.monotonic() < deadline:
            status, body = graph.get("user", "carol")
            time.sleep(0.2)
        assert status == 200, body
        assert graph.put("device", "late")[0] == 201
    finally:
        bolt.stop()


def test_export_and_import_move_a_graph_between_stores(
    sqlite_server: LiminalProcess, neo4j_server: LiminalProcess, tmp_path: Path
) -> None:
    source, target = Graph(sqlite_server), Graph(neo4j_server)
    tag = uid("move")
    source.put("device", f"{tag}-tv", {"inches": 55, "smart": True, "apps": ["a"]})
    source.put("room", f"{tag}-den", {"floor": 1.5, "size": [3, 4]})
    source.relate(f"{tag}-tv", f"{tag}-den", "IN", {"since": "2024"})
    source.relate("alice", f"{tag}-tv", "OWNS")

    def ours(path: Path) -> list[str]:
        """This test's records (and alice's node) from an export."""
        lines = path.read_text().splitlines()
        return [
            line
            for line in lines
            if tag in line or '"type":"user","id":"alice"' in line
        ]

    def run(*args: str, graph_url: str | None = None) -> None:
        done = cli(tmp_path, *args, graph_url=graph_url)
        assert done.returncode == 0, done.stderr

    exported = tmp_path / "all.jsonl"
    run("graph", "export", str(exported), "--data-dir", str(sqlite_server.data_dir))
    first = tmp_path / "from-sqlite.jsonl"
    first.write_text("\n".join(ours(exported)) + "\n")
    assert len(ours(first)) == 5

    # Into the Bolt store, where the other server serves it at once...
    run("graph", "import", str(first), graph_url=target.graph_url)
    for node_type, node_id in (("device", f"{tag}-tv"), ("room", f"{tag}-den")):
        assert target.get(node_type, node_id) == source.get(node_type, node_id)

    # ...out again unchanged, and into a fresh embedded store.
    second = tmp_path / "from-neo4j.jsonl"
    run("graph", "export", str(second), graph_url=target.graph_url)
    assert ours(second) == ours(first)
    run("graph", "import", str(second), "--data-dir", str(tmp_path / "fresh"))
    third = tmp_path / "back-in-sqlite.jsonl"
    run("graph", "export", str(third), "--data-dir", str(tmp_path / "fresh"))
    assert ours(third) == ours(first)


def test_import_reports_the_bad_line(tmp_path: Path) -> None:
    lines = tmp_path / "bad.jsonl"
    lines.write_text(
        '{"kind": "node", "type": "device", "id": "ok", "properties": {}}\n'
        '{"kind": "node", "type": "Bad Type", "id": "x", "properties": {}}\n'
    )
    done = cli(tmp_path, "graph", "import", str(lines))
    assert done.returncode != 0
    assert "line 2" in done.stderr and "node type" in done.stderr
    exported = cli(tmp_path, "graph", "export", "-")
    assert exported.stdout == ""
