"""The embedded graph store: two tables in the data dir's SQLite database.

It shares the file with the users table but not its connection. Properties
are kept as JSON text, so integers, floats, booleans and lists come back as
they went in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from ..config import make_private_dir
from ..errors import StoreError
from . import (
    GraphStore,
    MissingNode,
    Node,
    NodeRef,
    NodeTypeConflict,
    Properties,
    Relationship,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

logger = logging.getLogger(__name__)

# Migration N (counting from 1) brings the schema from version N-1 to N.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE graph_nodes (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            properties TEXT NOT NULL
        )""",
        """CREATE TABLE graph_relationships (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            source_id TEXT NOT NULL REFERENCES graph_nodes (id) ON DELETE CASCADE,
            target_id TEXT NOT NULL REFERENCES graph_nodes (id) ON DELETE CASCADE,
            properties TEXT NOT NULL
        )""",
        # Outgoing lookups and has_relationship(); incoming lookups.
        "CREATE INDEX graph_relationships_source ON graph_relationships"
        + " (source_id, target_id, type)",
        "CREATE INDEX graph_relationships_target ON graph_relationships"
        + " (target_id, source_id)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_RELATIONSHIP_COLUMNS = """
    SELECT r.id, r.type, s.type, r.source_id, t.type, r.target_id, r.properties
    FROM graph_relationships AS r
    JOIN graph_nodes AS s ON s.id = r.source_id
    JOIN graph_nodes AS t ON t.id = r.target_id
"""
_RELATIONSHIPS_OF_NODE = (
    _RELATIONSHIP_COLUMNS
    + " WHERE (r.source_id = ? OR r.target_id = ?) AND r.id > ? ORDER BY r.id"
)


def _dump(properties: Properties) -> str:
    return json.dumps(properties, ensure_ascii=False, separators=(",", ":"))


def _node(row: Sequence[Any]) -> Node:
    node_id, node_type, properties = row
    return Node(node_type, node_id, json.loads(properties))


def _relationship(row: Sequence[Any]) -> Relationship:
    rel_id, rel_type, source_type, source_id, target_type, target_id, properties = row
    return Relationship(
        rel_id,
        rel_type,
        NodeRef(source_type, source_id),
        NodeRef(target_type, target_id),
        json.loads(properties),
    )


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


class SqliteStore(GraphStore):
    """The graph in the embedded SQLite database (WAL mode).

    Operations share one connection and run one at a time.

    Args:
        path: the database file (created if missing).
    """


    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            make_private_dir(self._path.parent)
            db = await aiosqlite.connect(self._path, timeout=10, isolation_level=None)
            self._path.chmod(0o600)  # shared with the users table
            self._db = db
            for pragma in ("journal_mode=WAL", "busy_timeout=10000", "foreign_keys=ON"):
                await db.execute(f"PRAGMA {pragma}")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the graph database: {exc}") from exc
        async with self._transaction() as db:
            await self._migrate(db)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS graph_meta"
            " (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        rows = await db.execute_fetchall(
            "SELECT value FROM graph_meta WHERE key = 'schema_version'"
        )
        version = int(next(iter(rows))[0]) if rows else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the graph schema is version {version}, newer than this liminal "
                f"understands ({SCHEMA_VERSION}); upgrade liminal"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[number - 1]:
                await db.execute(statement)
            logger.info("graph schema migrated to version %d", number)
        if version != SCHEMA_VERSION:
            await db.execute(
                "INSERT INTO graph_meta (key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    @asynccontextmanager
    async def _transaction(
        self, write: bool = True
    ) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, for this task alone, inside a transaction."""
        if self._db is None:
            raise RuntimeError("the store is not started")
        db = self._db
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                except BaseException:
                    await db.rollback()
                    raise
                await db.commit()
            except sqlite3.Error as exc:
                raise StoreError(f"the graph database failed: {exc}") from exc

    async def _get_node(self, node_id: str) -> Node | None:
        async with self._transaction(write=False) as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT id, type, properties FROM graph_nodes WHERE id = ?",
                    (node_id,),
                )
            )
        return _node(rows[0]) if rows else None

    async def _node_types(self, node_ids: Sequence[str]) -> dict[str, str]:
        async with self._transaction(write=False) as db:
            return await _types_of(db, node_ids)

    async def _relationships(
        self, node_id: str, limit: int, after: str
    ) -> list[Relationship]:
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                _RELATIONSHIPS_OF_NODE + " LIMIT ?", (node_id, node_id, after, limit)
            )
        return [_relationship(row) for row in rows]

    async def _put_node(
        self, node_type: str, node_id: str, properties: Properties, now: str
    ) -> tuple[Node, bool]:
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "SELECT id, type, properties FROM graph_nodes WHERE id = ?",
                    (node_id,),
                )
            )
            old = _node(rows[0]) if rows else None
            if old is not None and old.type != node_type:
                raise NodeTypeConflict(node_id, old.type)
            created_at = old.properties.get("created_at", now) if old else now
            node = Node(
                node_type,
                node_id,
                {**properties, "created_at": created_at, "updated_at": now},
            )
            await db.execute(
                "INSERT INTO graph_nodes (id, type, properties) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET properties = excluded.properties",
                (node_id, node_type, _dump(node.properties)),
            )
        return node, old is None

    async def _delete_node(
        self, node_type: str, node_id: str
    ) -> list[Relationship] | None:
        async with self._transaction() as db:
            types = await _types_of(db, [node_id])
            if types.get(node_id) != node_type:
                return None
            rows = await db.execute_fetchall(
                _RELATIONSHIPS_OF_NODE, (node_id, node_id, "")
            )
            await db.execute(
                "DELETE FROM graph_relationships WHERE source_id = ? OR target_id = ?",
                (node_id, node_id),
            )
            await db.execute("DELETE FROM graph_nodes WHERE id = ?", (node_id,))
        return [_relationship(row) for row in rows]

    async def _create_relationship(self, relationship: Relationship) -> None:
        async with self._transaction() as db:
            ends = [relationship.source.id, relationship.target.id]
            types = await _types_of(db, ends)
            for node_id in ends:
                if node_id not in types:
                    raise MissingNode(node_id)
            await _insert_relationships(db, [relationship])

    async def _delete_relationship(self, relationship_id: str) -> Relationship | None:
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    _RELATIONSHIP_COLUMNS + " WHERE r.id = ?", (relationship_id,)
                )
            )
            if not rows:
                return None
            await db.execute(
                "DELETE FROM graph_relationships WHERE id = ?", (relationship_id,)
            )
        return _relationship(rows[0])

    async def _has_relationship(
        self, source_id: str, target_id: str, types: list[str]
    ) -> bool:
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT 1 FROM graph_relationships"
                " WHERE source_id = ? AND target_id = ?"
                f" AND type IN ({_placeholders(len(types))}) LIMIT 1",
                (source_id, target_id, *types),
            )
        return bool(rows)

    async def _has_relationship_via(
        self,
        source_id: str,
        via_types: list[str],
        via_node_type: str,
        target_id: str,
        types: list[str],
    ) -> bool:
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT 1 FROM graph_relationships AS m"
                " JOIN graph_nodes AS via ON via.id = m.target_id AND via.type = ?"
                " JOIN graph_relationships AS r ON r.source_id = via.id"
                " WHERE m.source_id = ? AND r.target_id = ?"
                f" AND m.type IN ({_placeholders(len(via_types))})"
                f" AND r.type IN ({_placeholders(len(types))}) LIMIT 1",
                (via_node_type, source_id, target_id, *via_types, *types),
            )
        return bool(rows)

    async def _nodes_page(self, offset: int, limit: int) -> list[Node]:
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT id, type, properties FROM graph_nodes"
                " ORDER BY id LIMIT ? OFFSET ?",
                (limit, offset),
            )
        return [_node(row) for row in rows]

    async def _relationships_page(self, offset: int, limit: int) -> list[Relationship]:
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                _RELATIONSHIP_COLUMNS + " ORDER BY r.id LIMIT ? OFFSET ?",
                (limit, offset),
            )
        return [_relationship(row) for row in rows]

    async def _load(
        self, nodes: Sequence[Node], relationships: Sequence[Relationship]
    ) -> None:
        async with self._transaction() as db:
            await db.executemany(
                "INSERT INTO graph_nodes (id, type, properties) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET properties = excluded.properties",
                [(node.id, node.type, _dump(node.properties)) for node in nodes],
            )
            await _insert_relationships(db, relationships)


async def _types_of(
    db: aiosqlite.Connection, node_ids: Sequence[str]
) -> dict[str, str]:
    types: dict[str, str] = {}
    # SQLite allows 999 parameters per statement in old builds.
    for start in range(0, len(node_ids), 900):
        chunk = node_ids[start : start + 900]
        rows = await db.execute_fetchall(
            "SELECT id, type FROM graph_nodes"
            f" WHERE id IN ({_placeholders(len(chunk))})",
            chunk,
        )
        types.update((row[0], row[1]) for row in rows)
    return types


async def _insert_relationships(
    db: aiosqlite.Connection, relationships: Sequence[Relationship]
) -> None:
    await db.executemany(
        "INSERT INTO graph_relationships"
        " (id, type, source_id, target_id, properties) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET type = excluded.type,"
        " source_id = excluded.source_id, target_id = excluded.target_id,"
        " properties = excluded.properties",
        [
            (rel.id, rel.type, rel.source.id, rel.target.id, _dump(rel.properties))
            for rel in relationships
        ],
    )
