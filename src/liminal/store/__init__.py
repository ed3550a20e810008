"""The graph store: nodes and relationships behind one small interface.

Two backends implement :class:`GraphStore`: ``SqliteStore`` (embedded, the
default, in the data dir's database) and ``Neo4jStore`` (any server speaking
Bolt: Neo4j 5, or FalkorDB in the tests). Everything both must agree on lives
here: the data types, the validation of types, ids and properties, the
timestamps and the generated relationship ids. A backend only stores.

Validation runs before any query: node and relationship types become labels
and relationship types in Cypher, where they cannot be query parameters, so
only text matching the patterns below ever reaches a query.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import LiminalError, StoreError
from ..protocol import utc_timestamp

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "ChangeKind",
    "GraphChange",
    "GraphStore",
    "MissingNode",
    "Node",
    "NodeRef",
    "NodeTypeConflict",
    "Properties",
    "PropertyValue",
    "Relationship",
    "UnsafeValue",
    "check_node",
    "check_node_id",
    "check_node_type",
    "check_properties",
    "check_relationship",
    "check_relationship_type",
    "ensure_nodes_soon",
    "open_store",
]

logger = logging.getLogger(__name__)

NODE_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
RELATIONSHIP_TYPE_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
PROPERTY_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_ID_LENGTH = 128
# ``/api/graph/relationship/{id}`` is the relationship's own address.
RESERVED_NODE_TYPES = frozenset({"relationship"})
# The id is the node's address, not one of its properties.
RESERVED_KEYS = frozenset({"id"})
# Set by the store on every write; values sent for them are dropped.
MANAGED_KEYS = frozenset({"created_at", "updated_at"})
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
EXPORT_PAGE = 500

PropertyValue = (
    str | int | float | bool | list[str] | list[int] | list[float] | list[bool]
)
Properties = dict[str, PropertyValue]


class ChangeKind(enum.StrEnum):
    """What a :class:`GraphChange` reports."""

    NODE_CREATED = "node_created"
    NODE_UPDATED = "node_updated"
    NODE_DELETED = "node_deleted"
    RELATIONSHIP_CREATED = "relationship_created"
    RELATIONSHIP_DELETED = "relationship_deleted"


@dataclass(frozen=True, slots=True)
class NodeRef:
    """The address of a node: its type and its id (unique across types)."""

    type: str
    id: str


@dataclass(frozen=True, slots=True)
class Node:
    """A node with its properties, ``created_at`` and ``updated_at`` included."""

    type: str
    id: str
    properties: Properties = field(default_factory=dict)

    @property
    def ref(self) -> NodeRef:
        return NodeRef(self.type, self.id)


@dataclass(frozen=True, slots=True)
class Relationship:
    """A directed relationship from ``source`` to ``target``.

    ``properties`` include ``created_at``, set by the store.
    """

    id: str
    type: str
    source: NodeRef
    target: NodeRef
    properties: Properties = field(default_factory=dict)

    @property
    def created_at(self) -> str:
        return str(self.properties.get("created_at", ""))


@dataclass(frozen=True, slots=True)
class GraphChange:
    """One successful write, as reported to ``Server.graph_listeners``.

    ``node`` is set for the ``node_*`` kinds, ``relationship`` for the
    ``relationship_*`` kinds.
    """

    kind: ChangeKind
    node: NodeRef | None = None
    relationship: Relationship | None = None


class NodeTypeConflict(LiminalError):
    """The node id is already used by a node of another type."""

    def __init__(self, node_id: str, existing_type: str) -> None:
        super().__init__(
            f"node id {node_id!r} is already used by a {existing_type} node"
        )
        self.node_id = node_id
        self.existing_type = existing_type


class UnsafeValue(LiminalError):
    """A value this database cannot be trusted to keep out of query text."""


class MissingNode(LiminalError):
    """A relationship names a node that does not exist."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"no node with id {node_id!r}")
        self.node_id = node_id


def check_node_type(value: str) -> str:
    """Return ``value`` if it can be a node type; raise ValueError otherwise."""
    if not NODE_TYPE_PATTERN.fullmatch(value):
        raise ValueError(f"a node type must match {NODE_TYPE_PATTERN.pattern}")
    if value in RESERVED_NODE_TYPES:
        raise ValueError(f"the node type {value!r} is reserved")
    return value


def check_relationship_type(value: str) -> str:
    """Return ``value`` if it can be a relationship type; raise ValueError otherwise."""
    if not RELATIONSHIP_TYPE_PATTERN.fullmatch(value):
        raise ValueError(
            f"a relationship type must match {RELATIONSHIP_TYPE_PATTERN.pattern}"
        )
    return value


def check_node_id(value: str) -> str:
    """Return ``value`` if it is 1-128 printable characters; raise ValueError otherwise.

    Relationship ids follow the same rule.
    """
    if not 1 <= len(value) <= MAX_ID_LENGTH or not value.isprintable():
        raise ValueError(f"an id is 1-{MAX_ID_LENGTH} printable characters")
    return value


def check_properties(properties: Mapping[str, Any]) -> Properties:
    """Return ``properties`` if every key and value can be stored.

    Keys match ``^[A-Za-z_][A-Za-z0-9_]{0,63}$`` and are not ``id``. Values
    are strings (without NUL), 64-bit integers, finite floats, booleans, or
    lists whose items all have one of those types.

    Raises:
        ValueError: naming the first offending property.
    """
    for key, value in properties.items():
        if not PROPERTY_KEY_PATTERN.fullmatch(key):
            raise ValueError(
                f"property key {key!r} must match {PROPERTY_KEY_PATTERN.pattern}"
            )
        if key in RESERVED_KEYS:
            raise ValueError(f"property key {key!r} is reserved")
        problem = _value_problem(value)
        if problem:
            raise ValueError(f"property {key!r}: {problem}")
    return dict(properties)


def _value_problem(value: object) -> str | None:
    if not isinstance(value, list):
        return _scalar_problem(value)
    if any(item is None or isinstance(item, list | dict) for item in value):
        return "a list holds strings, numbers or booleans, not lists, objects or null"
    if len({type(item) for item in value}) > 1:
        # Neo4j stores a list property as an array of one type.
        return "the items of a list must all have the same type"
    return next(filter(None, map(_scalar_problem, value)), None)


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT_MIN <= value <= INT_MAX else "integers must fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, str):
        # FalkorDB cuts a string at its first NUL; refusing it keeps stores equal.
        if "\x00" in value:
            return "strings must not contain NUL characters"
        try:
            value.encode()
        except UnicodeEncodeError:
            return "strings must be valid Unicode (no lone surrogates)"
        return None
    return (
        "values are strings, numbers, booleans or lists of those, not objects or null"
    )


def new_relationship_id() -> str:
    """A unique id that sorts by creation time (microseconds, then 40 random bits)."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


def _user_properties(properties: Mapping[str, Any]) -> Properties:
    checked = check_properties(properties)
    return {key: value for key, value in checked.items() if key not in MANAGED_KEYS}


def check_node(node: Node) -> Node:
    """Return ``node`` if its type, id and properties are valid; raise ValueError."""
    check_node_type(node.type)
    check_node_id(node.id)
    check_properties(node.properties)
    return node


def check_relationship(relationship: Relationship) -> Relationship:
    """Return ``relationship`` if every part of it is valid; raise ValueError."""
    check_node_id(relationship.id)
    check_relationship_type(relationship.type)
    for end in (relationship.source, relationship.target):
        check_node_type(end.type)
        check_node_id(end.id)
    check_properties(relationship.properties)
    return relationship


class GraphStore(abc.ABC):
    """The interface the API uses; a backend implements the ``_`` hooks.

    Public methods validate their arguments (ValueError) before a backend
    sees them. Every method may raise :class:`~liminal.errors.StoreError`
    when the database fails or is unreachable; the store recovers by itself
    once it is back.
    """

    async def start(self) -> None:
        """Connect and create or migrate the schema.

        Raises:
            StoreError: the embedded database cannot be opened. A remote
                database that is unreachable is not an error here.
        """

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    async def get_node(self, node_type: str, node_id: str) -> Node | None:
        """The node, or None if there is none or it has another type."""
        node = await self._get_node(check_node_id(node_id))
        return node if node is not None and node.type == node_type else None

    async def relationships(
        self, node_id: str, *, limit: int, after: str | None = None
    ) -> list[Relationship]:
        """Relationships of the node in both directions, ordered by id.

        Args:
            limit: at most this many.
            after: only ids greater than this (the last id of the previous page).
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        return await self._relationships(check_node_id(node_id), limit, after or "")

    async def put_node(
        self, node_type: str, node_id: str, properties: Mapping[str, Any]
    ) -> tuple[Node, bool]:
        """Create the node or replace its properties.

        ``created_at`` is kept from creation, ``updated_at`` set to now.

        Returns:
            The node as stored, and whether it was created.

        Raises:
            NodeTypeConflict: the id belongs to a node of another type.
        """
        return await self._put_node(
            check_node_type(node_type),
            check_node_id(node_id),
            _user_properties(properties),
            utc_timestamp(),
        )

    async def delete_node(
        self, node_type: str, node_id: str
    ) -> list[Relationship] | None:
        """Delete the node and its relationships.

        Returns:
            The relationships removed with it, or None if there was no node
            of that type with that id (nothing is deleted then).

        Limit: all of the node's relationships are read and removed in one
        go, so a node with millions of them makes one slow, large request.
        """
        return await self._delete_node(
            check_node_type(node_type), check_node_id(node_id)
        )

    async def ensure_nodes(self, node_type: str, node_ids: Iterable[str]) -> list[str]:
        """Create the nodes that do not exist yet, with no properties.

        An id already used by another type is skipped with a warning.

        Returns:
            The ids of the nodes created.
        """
        check_node_type(node_type)
        wanted = sorted({check_node_id(node_id) for node_id in node_ids})
        existing = await self._node_types(wanted)
        for node_id, other in existing.items():
            if other != node_type:
                logger.warning(
                    "not creating %s node %s: the id is used by a %s node",
                    node_type,
                    node_id,
                    other,
                )
        now = utc_timestamp()
        new = [
            Node(node_type, node_id, {"created_at": now, "updated_at": now})
            for node_id in wanted
            if node_id not in existing
        ]
        if new:
            await self._load(new, [])
        return [node.id for node in new]

    async def create_relationship(
        self,
        source_id: str,
        target_id: str,
        relationship_type: str,
        properties: Mapping[str, Any],
    ) -> Relationship:
        """Create a relationship with a new id and ``created_at``.

        Raises:
            MissingNode: the source or the target does not exist.
        """
        check_relationship_type(relationship_type)
        ends = await self._node_types(
            [check_node_id(source_id), check_node_id(target_id)]
        )
        for node_id in (source_id, target_id):
            if node_id not in ends:
                raise MissingNode(node_id)
        relationship = Relationship(
            new_relationship_id(),
            relationship_type,
            NodeRef(ends[source_id], source_id),
            NodeRef(ends[target_id], target_id),
            {**_user_properties(properties), "created_at": utc_timestamp()},
        )
        await self._create_relationship(relationship)
        return relationship

    async def delete_relationship(self, relationship_id: str) -> Relationship | None:
        """Delete a relationship; return it, or None if there was none."""
        return await self._delete_relationship(check_node_id(relationship_id))

    async def has_relationship(
        self, source_id: str, target_id: str, types: Collection[str]
    ) -> bool:
        """Whether a relationship of one of ``types`` leads from source to target."""
        if not types:
            return False
        for relationship_type in types:
            check_relationship_type(relationship_type)
        return await self._has_relationship(
            check_node_id(source_id), check_node_id(target_id), sorted(set(types))
        )

    async def has_relationship_via(
        self,
        source_id: str,
        via_types: Collection[str],
        via_node_type: str,
        target_id: str,
        types: Collection[str],
    ) -> bool:
        """Whether source -[via type]-> (node of ``via_node_type``) -[type]-> target.

        One level of indirection, e.g. a user who is a member of a group that
        may read a channel.
        """
        if not via_types or not types:
            return False
        for relationship_type in (*via_types, *types):
            check_relationship_type(relationship_type)
        return await self._has_relationship_via(
            check_node_id(source_id),
            sorted(set(via_types)),
            check_node_type(via_node_type),
            check_node_id(target_id),
            sorted(set(types)),
        )

    async def export(self) -> AsyncIterator[Node | Relationship]:
        """Every node, then every relationship, each in id order, page by page.

        Pages are read by offset: a graph written to meanwhile may come out
        with an item missing or repeated.
        """
        offset = 0
        while nodes := await self._nodes_page(offset, EXPORT_PAGE):
            for node in nodes:
                yield node
            offset += len(nodes)
        offset = 0
        while relationships := await self._relationships_page(offset, EXPORT_PAGE):
            for relationship in relationships:
                yield relationship
            offset += len(relationships)

    async def load(
        self, nodes: Sequence[Node], relationships: Sequence[Relationship]
    ) -> None:
        """Write nodes, then relationships, exactly as given (an import).

        An existing node or relationship with the same id is replaced.

        Raises:
            ValueError: a type, id or property is invalid.
            NodeTypeConflict: a node id is used by a node of another type, or
                a relationship's end has another type than it says.
            MissingNode: a relationship's end is neither given nor stored.
        """
        nodes = [check_node(node) for node in nodes]
        relationships = [check_relationship(rel) for rel in relationships]
        existing = await self._node_types([node.id for node in nodes])
        for node in nodes:
            other = existing.get(node.id, node.type)
            if other != node.type:
                raise NodeTypeConflict(node.id, other)
        known = {node.id: node.type for node in nodes}
        ends = {end for rel in relationships for end in (rel.source, rel.target)}
        known.update(await self._node_types(sorted({e.id for e in ends} - set(known))))
        for end in sorted(ends, key=lambda ref: ref.id):
            if end.id not in known:
                raise MissingNode(end.id)
            if known[end.id] != end.type:
                raise NodeTypeConflict(end.id, known[end.id])
        await self._load(nodes, relationships)

    # Backend hooks: arguments are validated, managed properties already set.

    @abc.abstractmethod
    async def _get_node(self, node_id: str) -> Node | None: ...

    @abc.abstractmethod
    async def _node_types(self, node_ids: Sequence[str]) -> dict[str, str]:
        """Map each of the ids that exists to its node type."""

    @abc.abstractmethod
    async def _relationships(
        self, node_id: str, limit: int, after: str
    ) -> list[Relationship]: ...

    @abc.abstractmethod
    async def _put_node(
        self, node_type: str, node_id: str, properties: Properties, now: str
    ) -> tuple[Node, bool]: ...

    @abc.abstractmethod
    async def _delete_node(
        self, node_type: str, node_id: str
    ) -> list[Relationship] | None: ...

    @abc.abstractmethod
    async def _create_relationship(self, relationship: Relationship) -> None:
        """Store it; raise MissingNode if an end vanished meanwhile."""

    @abc.abstractmethod
    async def _delete_relationship(
        self, relationship_id: str
    ) -> Relationship | None: ...

    @abc.abstractmethod
    async def _has_relationship(
        self, source_id: str, target_id: str, types: list[str]
    ) -> bool: ...

    @abc.abstractmethod
    async def _has_relationship_via(
        self,
        source_id: str,
        via_types: list[str],
        via_node_type: str,
        target_id: str,
        types: list[str],
    ) -> bool: ...

    @abc.abstractmethod
    async def _nodes_page(self, offset: int, limit: int) -> list[Node]: ...

    @abc.abstractmethod
    async def _relationships_page(
        self, offset: int, limit: int
    ) -> list[Relationship]: ...

    @abc.abstractmethod
    async def _load(
        self, nodes: Sequence[Node], relationships: Sequence[Relationship]
    ) -> None:
        """Upsert nodes by id, then relationships by id, as given."""


def open_store(settings: Settings) -> GraphStore:
    """The store the settings choose: Neo4j if ``graph_url`` is set, else SQLite.

    Nothing connects until :meth:`GraphStore.start`.
    """
    if settings.graph_url:
        from .neo4j import Neo4jStore

        password = settings.graph_password
        return Neo4jStore(
            settings.graph_url,
            settings.graph_user,
            password.get_secret_value() if password is not None else None,
        )
    from .sqlite import SqliteStore

    return SqliteStore(settings.database_path)


async def ensure_nodes_soon(
    store: GraphStore,
    node_type: str,
    node_ids: Iterable[str],
    *,
    retry_seconds: float = 2.0,
) -> asyncio.Task[None] | None:
    """Create missing nodes now, or, while the store is unavailable, later.

    Returns:
        None if the nodes exist now; otherwise the background task that keeps
        trying (waiting twice as long each time, up to a minute) until it
        succeeds or is cancelled.
    """
    ids = list(node_ids)
    try:
        await _ensure_and_log(store, node_type, ids)
    except StoreError as exc:
        logger.warning("cannot create %s nodes yet, will retry: %s", node_type, exc)
    else:
        return None
    return asyncio.create_task(
        _ensure_later(store, node_type, ids, retry_seconds),
        name=f"liminal-{node_type}-nodes",
    )


async def _ensure_and_log(store: GraphStore, node_type: str, ids: list[str]) -> None:
    created = await store.ensure_nodes(node_type, ids)
    if created:
        logger.info("created %d missing %s nodes", len(created), node_type)


async def _ensure_later(
    store: GraphStore, node_type: str, ids: list[str], delay: float
) -> None:
    while True:
        await asyncio.sleep(delay)
        try:
            await _ensure_and_log(store, node_type, ids)
        except StoreError as exc:
            logger.debug("cannot create %s nodes yet: %s", node_type, exc)
            delay = min(delay * 2, 60.0)
        else:
            return
