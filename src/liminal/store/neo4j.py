"""The graph in a database that speaks Bolt: Neo4j 5, or FalkorDB.

Every node carries the label ``Liminal`` next to its type, so one index on
``Liminal.id`` finds any node and liminal's nodes stay apart from other data
in the same database. A relationship keeps its id in the property ``id``.

The Cypher is the subset both servers run. Labels and relationship types are
the only text put into a query, and only after validation (checked again
right here); every value is a query parameter. Where FalkorDB differs from
Neo4j, a one-line note says so at the query.

FalkorDB: BEGIN/ROLLBACK are accepted but ignored, each query commits on its
own. So every write below is one query after reads, except an import, which
writes type by type and can simply be run again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import neo4j
from neo4j import AsyncDriver, AsyncGraphDatabase, AsyncManagedTransaction
from neo4j.exceptions import AuthError, ConstraintError, DriverError, Neo4jError

from ..config import mask_url
from ..errors import ConfigError, StoreError
from . import (
    NODE_TYPE_PATTERN,
    RELATIONSHIP_TYPE_PATTERN,
    GraphStore,
    MissingNode,
    Node,
    NodeRef,
    NodeTypeConflict,
    Properties,
    Relationship,
    UnsafeValue,
)

__all__ = ["BASE_LABEL", "Neo4jStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BASE_LABEL = "Liminal"
UNREACHABLE = "the graph database is unreachable; try again shortly"

# Short timeouts so a request fails with 503 in seconds, not minutes, while
# the database is away; the driver retries a failed transaction meanwhile.
# The acquisition timeout also bounds the Bolt handshake.
# FalkorDB: after a client says GOODBYE, the next new connection's handshake
# goes unanswered; this timeout plus the retry gets past it.
_DRIVER_OPTIONS: dict[str, Any] = {
    "connection_timeout": 3.0,
    "connection_acquisition_timeout": 2.0,
    "max_transaction_retry_time": 2.0,
    "max_connection_pool_size": 50,
}

_NODE_FIELDS = "n.id AS id, labels(n) AS labels, properties(n) AS properties"
_RELATIONSHIP_FIELDS = """
    r.id AS id, type(r) AS type,
    s.id AS source_id, labels(s) AS source_labels,
    e.id AS target_id, labels(e) AS target_labels,
    properties(r) AS properties
"""
# DISTINCT keeps a self-loop, which matches the undirected pattern from both
# of its ends, to one row on either server.
_RELATIONSHIPS_OF_NODE = f"""
    MATCH (n:{BASE_LABEL} {{id: $id}})-[r]-(:{BASE_LABEL})
    WHERE r.id > $after
    WITH DISTINCT r
    WITH r, startNode(r) AS s, endNode(r) AS e
    RETURN {_RELATIONSHIP_FIELDS}
    ORDER BY id
"""


def _label(node_type: str) -> str:
    if not NODE_TYPE_PATTERN.fullmatch(node_type):
        raise ValueError(f"not a node type: {node_type!r}")
    return node_type


def _rel_type(relationship_type: str) -> str:
    if not RELATIONSHIP_TYPE_PATTERN.fullmatch(relationship_type):
        raise ValueError(f"not a relationship type: {relationship_type!r}")
    return relationship_type


def _type_of(labels: Sequence[str]) -> str:
    # FalkorDB lists labels in no fixed order.
    return next((label for label in sorted(labels) if label != BASE_LABEL), "")


def _without_id(properties: dict[str, Any]) -> Properties:
    return {key: value for key, value in properties.items() if key != "id"}


def _node(record: neo4j.Record) -> Node:
    return Node(
        _type_of(record["labels"]), record["id"], _without_id(record["properties"])
    )


def _relationship(record: neo4j.Record) -> Relationship:
    return Relationship(
        record["id"],
        record["type"],
        NodeRef(_type_of(record["source_labels"]), record["source_id"]),
        NodeRef(_type_of(record["target_labels"]), record["target_id"]),
        _without_id(record["properties"]),
    )


async def _records(
    tx: AsyncManagedTransaction, query: str, **parameters: Any
) -> list[neo4j.Record]:
    result = await tx.run(query, parameters)
    return [record async for record in result]


_PROBE = "probe ' \\ end"


def _unsafe(value: object) -> bool:
    if isinstance(value, str):
        return "'" in value or "\\" in value
    if isinstance(value, dict):
        return any(_unsafe(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_unsafe(item) for item in value)
    return False


class _GuardedTransaction:
    """Refuses parameters that a splicing server would turn into query text."""

    def __init__(self, tx: AsyncManagedTransaction) -> None:
        self._tx = tx

    async def run(
        self, query: str, parameters: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        if _unsafe(parameters or {}) or _unsafe(kwargs):
            raise UnsafeValue(
                "this graph database cannot safely store ' or \\ in ids or values"
            )
        return await self._tx.run(query, parameters, **kwargs)


def _guarded(
    work: Callable[[AsyncManagedTransaction], Awaitable[T]],
) -> Callable[[AsyncManagedTransaction], Awaitable[T]]:
    async def guarded(tx: AsyncManagedTransaction) -> T:
        return await work(_GuardedTransaction(tx))  # type: ignore[arg-type]

    return guarded


async def _types_of(
    tx: AsyncManagedTransaction, node_ids: Sequence[str]
) -> dict[str, str]:
    records = await _records(
        tx,
        f"UNWIND $ids AS id MATCH (n:{BASE_LABEL} {{id: id}})"
        " RETURN n.id AS id, labels(n) AS labels",
        ids=list(node_ids),
    )
    return {record["id"]: _type_of(record["labels"]) for record in records}


class Neo4jStore(GraphStore):
    """The graph in Neo4j (or FalkorDB) over Bolt, through one pooled driver.

    When the database is unreachable every operation raises StoreError after
    a few seconds of retrying; the driver reconnects on its own once the
    database is back.

    Args:
        url: ``bolt://``, ``neo4j://`` (cluster routing) or their ``+s`` forms.
        user: user name; no authentication when None.
        password: the user's password.
    """


    def __init__(self, url: str, user: str | None, password: str | None) -> None:
        self._url = url
        self._auth = (user, password or "") if user else None
        self._driver: AsyncDriver | None = None
        self._schema_ready = False
        self._splices_parameters = False

    async def start(self) -> None:
        try:
            self._driver = AsyncGraphDatabase.driver(
                self._url, auth=self._auth, **_DRIVER_OPTIONS
            )
        except (DriverError, ValueError) as exc:
            raise ConfigError(f"bad graph URL {mask_url(self._url)}: {exc}") from None
        logger.info("graph store: %s", mask_url(self._url))
        try:
            await self._ensure_schema()
        except StoreError as exc:
            logger.warning("graph database not ready, will retry on use: %s", exc)

    async def close(self) -> None:
        if self._driver is not None:
            await self._driver.close()
            self._driver = None

    async def _ensure_schema(self) -> None:
        """Create the index on node ids once per process, on first success."""
        if self._schema_ready:
            return
        try:
            # FalkorDB: no Cypher constraints; the plain index below is used.
            await self._run(
                f"CREATE CONSTRAINT liminal_node_id IF NOT EXISTS"
                f" FOR (n:{BASE_LABEL}) REQUIRE n.id IS UNIQUE",
                schema=True,
            )
        except Neo4jError:
            try:
                # FalkorDB: no IF NOT EXISTS; an existing index makes this fail.
                await self._run(
                    f"CREATE INDEX FOR (n:{BASE_LABEL}) ON (n.id)", schema=True
                )
            except Neo4jError as exc:
                # Usually: it exists already. Lookups by id are slow without it.
                logger.info("index on node ids not created: %s", exc.code)
        self._splices_parameters = await self._parameters_spliced()
        if self._splices_parameters:
            logger.warning(
                "this graph database splices parameters into query text; "
                "refusing ' and \\ in values to keep them from becoming queries"
            )
        self._schema_ready = True

    async def _parameters_spliced(self) -> bool:
        """Whether the server pastes parameter values into the query text.

        Neo4j keeps parameters apart from the query; FalkorDB's Bolt endpoint
        does not, so a quote in a value could end the string and run Cypher.
        """

        async def work(tx: AsyncManagedTransaction) -> list[neo4j.Record]:
            return await _records(tx, "RETURN $probe AS probe", probe=_PROBE)

        try:
            records = await self._execute(work, write=False, schema=True)
        except Neo4jError:
            return True
        return not records or records[0]["probe"] != _PROBE

    async def _run(
        self, query: str, *, schema: bool = False, **parameters: Any
    ) -> None:
        """One write query whose records nobody needs."""

        async def work(tx: AsyncManagedTransaction) -> None:
            await (await tx.run(query, parameters)).consume()

        await self._execute(work, write=True, schema=schema)

    async def _execute(
        self,
        work: Callable[[AsyncManagedTransaction], Awaitable[T]],
        *,
        write: bool,
        schema: bool = False,
    ) -> T:
        """Run ``work`` in a managed transaction, translating driver failures.

        Neo4j errors pass through untouched when ``schema`` is set, so the
        schema set-up can tell "unsupported" from "unreachable".
        """
        if self._driver is None:
            raise RuntimeError("the store is not started")
        if not schema:
            await self._ensure_schema()
        if self._splices_parameters:
            work = _guarded(work)
        try:
            async with self._driver.session() as session:
                if write:
                    return await session.execute_write(work)
                return await session.execute_read(work)
        except AuthError as exc:
            raise StoreError(
                "the graph database refused liminal's credentials"
            ) from exc
        except (DriverError, OSError) as exc:
            raise StoreError(UNREACHABLE) from exc
        except ConstraintError:
            raise
        except Neo4jError as exc:
            if schema:
                raise
            logger.exception("graph query failed: %s", exc.message)
            raise StoreError("the graph database failed the query") from exc

    async def _get_node(self, node_id: str) -> Node | None:
        async def work(tx: AsyncManagedTransaction) -> list[neo4j.Record]:
            return await _records(
                tx,
                f"MATCH (n:{BASE_LABEL} {{id: $id}}) RETURN {_NODE_FIELDS}",
                id=node_id,
            )

        records = await self._execute(work, write=False)
        return _node(records[0]) if records else None

    async def _node_types(self, node_ids: Sequence[str]) -> dict[str, str]:
        async def work(tx: AsyncManagedTransaction) -> dict[str, str]:
            return await _types_of(tx, node_ids)

        return await self._execute(work, write=False)

    async def _relationships(
        self, node_id: str, limit: int, after: str
    ) -> list[Relationship]:
        async def work(tx: AsyncManagedTransaction) -> list[neo4j.Record]:
            return await _records(
                tx,
                _RELATIONSHIPS_OF_NODE + " LIMIT $limit",
                id=node_id,
                after=after,
                limit=limit,
            )

        return [_relationship(r) for r in await self._execute(work, write=False)]

    async def _put_node(
        self, node_type: str, node_id: str, properties: Properties, now: str
    ) -> tuple[Node, bool]:
        async def work(tx: AsyncManagedTransaction) -> tuple[Node, bool]:
            records = await _records(
                tx,
                f"MATCH (n:{BASE_LABEL} {{id: $id}}) RETURN {_NODE_FIELDS}",
                id=node_id,
            )
            old = _node(records[0]) if records else None
            if old is not None and old.type != node_type:
                raise NodeTypeConflict(node_id, old.type)
            created_at = old.properties.get("created_at", now) if old else now
            stored = {**properties, "created_at": created_at, "updated_at": now}
            if old is None:
                query = (
                    f"CREATE (n:{BASE_LABEL}:{_label(node_type)} {{id: $id}})"
                    " SET n += $properties"
                )
            else:
                # SET = replaces every property, so the id goes back in too.
                query = f"MATCH (n:{BASE_LABEL} {{id: $id}}) SET n = $properties"
            await (
                await tx.run(query, id=node_id, properties={**stored, "id": node_id})
            ).consume()
            return Node(node_type, node_id, stored), old is None

        try:
            return await self._execute(work, write=True)
        except ConstraintError:
            # Neo4j: a concurrent request created the id first; now it exists.
            return await self._execute(work, write=True)

    async def _delete_node(
        self, node_type: str, node_id: str
    ) -> list[Relationship] | None:
        async def work(tx: AsyncManagedTransaction) -> list[Relationship] | None:
            if (await _types_of(tx, [node_id])).get(node_id) != node_type:
                return None
            records = await _records(tx, _RELATIONSHIPS_OF_NODE, id=node_id, after="")
            await (
                await tx.run(
                    f"MATCH (n:{BASE_LABEL} {{id: $id}}) DETACH DELETE n", id=node_id
                )
            ).consume()
            return [_relationship(record) for record in records]

        return await self._execute(work, write=True)

    async def _create_relationship(self, relationship: Relationship) -> None:
        async def work(tx: AsyncManagedTransaction) -> int:
            records = await _records(
                tx,
                f"MATCH (s:{BASE_LABEL} {{id: $source_id}}),"
                f" (e:{BASE_LABEL} {{id: $target_id}})"
                f" CREATE (s)-[r:{_rel_type(relationship.type)}]->(e)"
                " SET r += $properties RETURN count(r) AS created",
                source_id=relationship.source.id,
                target_id=relationship.target.id,
                properties={**relationship.properties, "id": relationship.id},
            )
            return int(records[0]["created"]) if records else 0

        if not await self._execute(work, write=True):
            # An end was deleted since GraphStore checked both; say which.
            ends = await self._node_types([relationship.source.id])
            missing = relationship.target if ends else relationship.source
            raise MissingNode(missing.id)

    async def _delete_relationship(self, relationship_id: str) -> Relationship | None:
        async def work(tx: AsyncManagedTransaction) -> list[neo4j.Record]:
            # Limit: neither server indexes relationships of any type by a
            # property, so this scans every relationship.
            return await _records(
                tx,
                f"MATCH (s:{BASE_LABEL})-[r]->(e:{BASE_LABEL}) WHERE r.id = $id"
                f" WITH r, s, e, properties(r) AS kept, type(r) AS kept_type"
                f" DELETE r"
                f" RETURN $id AS id, kept_type AS type,"
                " s.id AS source_id, labels(s) AS source_labels,"
                " e.id AS target_id, labels(e) AS target_labels,"
                " kept AS properties",
                id=relationship_id,
            )

        records = await self._execute(work, write=True)
        return _relationship(records[0]) if records else None

    async def _found(self, query: str, **parameters: Any) -> bool:
        """Whether a read query returning ``count(...) AS found`` found any."""

        async def work(tx: AsyncManagedTransaction) -> list[neo4j.Record]:
            return await _records(tx, query, **parameters)

        records = await self._execute(work, write=False)
        return bool(records and records[0]["found"])

    async def _has_relationship(
        self, source_id: str, target_id: str, types: list[str]
    ) -> bool:
        return await self._found(
            f"MATCH (:{BASE_LABEL} {{id: $source_id}})-[r]->"
            f"(:{BASE_LABEL} {{id: $target_id}})"
            " WHERE type(r) IN $types RETURN count(r) AS found",
            source_id=source_id,
            target_id=target_id,
            types=types,
        )

    async def _has_relationship_via(
        self,
        source_id: str,
        via_types: list[str],
        via_node_type: str,
        target_id: str,
        types: list[str],
    ) -> bool:
        return await self._found(
            f"MATCH (:{BASE_LABEL} {{id: $source_id}})-[m]->"
            f"(:{BASE_LABEL}:{_label(via_node_type)})-[r]->"
            f"(:{BASE_LABEL} {{id: $target_id}})"
            " WHERE type(m) IN $via_types AND type(r) IN $types"
            " RETURN count(r) AS found",
            source_id=source_id,
            target_id=target_id,
            via_types=via_types,
            types=types,
        )

    async def _nodes_page(self, offset: int, limit: int) -> list[Node]:
        async def work(tx: AsyncManagedTransaction) -> list[neo4j.Record]:
            # FalkorDB: a range scan of the id index ("n.id > $after") orders
            # non-ASCII text differently from ORDER BY, so pages go by offset.
            return await _records(
                tx,
                f"MATCH (n:{BASE_LABEL}) RETURN {_NODE_FIELDS}"
                " ORDER BY id SKIP $offset LIMIT $limit",
                offset=offset,
                limit=limit,
            )

        return [_node(record) for record in await self._execute(work, write=False)]

    async def _relationships_page(self, offset: int, limit: int) -> list[Relationship]:
        async def work(tx: AsyncManagedTransaction) -> list[neo4j.Record]:
            return await _records(
                tx,
                f"MATCH (s:{BASE_LABEL})-[r]->(e:{BASE_LABEL})"
                f" RETURN {_RELATIONSHIP_FIELDS} ORDER BY id SKIP $offset LIMIT $limit",
                offset=offset,
                limit=limit,
            )

        return [_relationship(r) for r in await self._execute(work, write=False)]

    async def _load(
        self, nodes: Sequence[Node], relationships: Sequence[Relationship]
    ) -> None:
        nodes_by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for node in nodes:
            nodes_by_type[node.type].append(
                {"id": node.id, "properties": {**node.properties, "id": node.id}}
            )
        rels_by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rel in relationships:
            rels_by_type[rel.type].append(
                {
                    "id": rel.id,
                    "source_id": rel.source.id,
                    "target_id": rel.target.id,
                    "properties": {**rel.properties, "id": rel.id},
                }
            )

        async def work(tx: AsyncManagedTransaction) -> None:
            # Labels and types cannot be parameters: one query per type.
            for node_type, rows in sorted(nodes_by_type.items()):
                await (
                    await tx.run(
                        f"UNWIND $rows AS row"
                        f" MERGE (n:{BASE_LABEL}:{_label(node_type)} {{id: row.id}})"
                        " SET n = row.properties",
                        rows=rows,
                    )
                ).consume()
            for rel_type, rows in sorted(rels_by_type.items()):
                await (
                    await tx.run(
                        f"UNWIND $rows AS row"
                        f" MATCH (s:{BASE_LABEL} {{id: row.source_id}}),"
                        f" (e:{BASE_LABEL} {{id: row.target_id}})"
                        f" MERGE (s)-[r:{_rel_type(rel_type)} {{id: row.id}}]->(e)"
                        " SET r = row.properties",
                        rows=rows,
                    )
                ).consume()

        try:
            await self._execute(work, write=True)
        except ConstraintError as exc:
            raise StoreError(
                f"the graph database refused the import: {exc.message}"
            ) from exc
