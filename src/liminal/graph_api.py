"""``/api/graph``: nodes and relationships over REST.

Reads need any valid bearer token (401 otherwise), writes the admin role
(403 otherwise); authorization is checked before the input is validated.
Input is validated (422) before the store sees it, by the same rules on
both stores. An unavailable store answers 503 with ``Retry-After``; the
real-time side does not depend on it.

After every successful write each callback in ``Server.graph_listeners`` is
awaited with a :class:`~liminal.store.GraphChange`; a failing callback is
logged and does not fail the request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, TypeAlias

from aiohttp import web
from aiohttp_pydantic.injectors import CONTEXT
from aiohttp_pydantic.oas.typing import (
    r200,
    r201,
    r204,
    r401,
    r403,
    r404,
    r409,
    r422,
    r503,
)
from pydantic import AfterValidator, BaseModel, Field, ValidationError, WithJsonSchema

from .api import ErrorBody, LiminalView, http_error, require_user
from .errors import StoreError
from .server import Server
from .store import (
    MAX_ID_LENGTH,
    NODE_TYPE_PATTERN,
    PROPERTY_KEY_PATTERN,
    RELATIONSHIP_TYPE_PATTERN,
    ChangeKind,
    GraphChange,
    MissingNode,
    Node,
    NodeTypeConflict,
    Relationship,
    UnsafeValue,
    check_node_id,
    check_node_type,
    check_properties,
    check_relationship_type,
)

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000
RETRY_AFTER_SECONDS = 5

_SCALAR_SCHEMAS: list[dict[str, Any]] = [
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
]

NodeType = Annotated[
    str,
    AfterValidator(check_node_type),
    WithJsonSchema({"type": "string", "pattern": NODE_TYPE_PATTERN.pattern}),
]
RelationshipType = Annotated[
    str,
    AfterValidator(check_relationship_type),
    WithJsonSchema({"type": "string", "pattern": RELATIONSHIP_TYPE_PATTERN.pattern}),
]
Id = Annotated[
    str,
    AfterValidator(check_node_id),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "description": "printable characters",
        }
    ),
]
PropertyMap = Annotated[
    dict[str, Any],
    AfterValidator(check_properties),
    WithJsonSchema(
        {
            "type": "object",
            "description": "keys match "
            f"{PROPERTY_KEY_PATTERN.pattern} (not 'id'); values are strings, "
            "numbers, booleans or lists of one of those. created_at and "
            "updated_at are set by the server; values sent for them are ignored.",
            "additionalProperties": {
                "anyOf": [
                    *_SCALAR_SCHEMAS,
                    *({"type": "array", "items": item} for item in _SCALAR_SCHEMAS),
                ]
            },
        }
    ),
]
Limit = Annotated[
    int, Field(ge=1, le=MAX_PAGE, description="most relationships in one response")
]
After = Annotated[
    str | None,
    AfterValidator(lambda value: value if value is None else check_node_id(value)),
    Field(description="relationship id to continue after: next_after of the last page"),
]


# What any write may answer besides its own codes (for the OpenAPI document).
WriteErrors: TypeAlias = (
    r401[ErrorBody] | r403[ErrorBody] | r422[ErrorBody] | r503[ErrorBody]
)


class NodeBody(BaseModel):
    """The properties a node gets; they replace any it had."""

    properties: PropertyMap = Field(default_factory=dict)


class RelationshipBody(BaseModel):
    """A relationship to create from ``source_id`` to ``target_id``."""

    source_id: Id
    target_id: Id
    type: RelationshipType
    properties: PropertyMap = Field(default_factory=dict)


class NodeOut(BaseModel):
    """A node as stored."""

    id: str
    type: str
    properties: dict[str, Any]


class RelationshipOut(BaseModel):
    """One relationship as seen from the node it is listed under."""

    id: str
    type: str
    direction: Literal["outgoing", "incoming"]
    target_id: str = Field(description="the node at the other end")
    target_type: str
    properties: dict[str, Any]


class NodeWithRelationships(NodeOut):
    """A node and a page of its relationships in both directions."""

    relationships: list[RelationshipOut]
    next_after: str | None = Field(
        description="pass as ?after= for the next page; null on the last page"
    )


class RelationshipCreated(BaseModel):
    id: str
    source_id: str
    target_id: str
    type: str
    created_at: str


def _node_out(node: Node) -> dict[str, Any]:
    return NodeOut(id=node.id, type=node.type, properties=node.properties).model_dump()


def _seen_from(node_id: str, relationship: Relationship) -> RelationshipOut:
    outgoing = relationship.source.id == node_id
    other = relationship.target if outgoing else relationship.source
    return RelationshipOut(
        id=relationship.id,
        type=relationship.type,
        direction="outgoing" if outgoing else "incoming",
        target_id=other.id,
        target_type=other.type,
        properties=relationship.properties,
    )


@contextmanager
def _store_errors() -> Iterator[None]:
    """Answer store failures with 503, conflicts with 409, missing nodes with 404."""
    try:
        yield
    except StoreError as exc:
        raise http_error(
            web.HTTPServiceUnavailable,
            f"graph store unavailable: {exc}",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
    except NodeTypeConflict as exc:
        raise http_error(web.HTTPConflict, str(exc)) from None
    except MissingNode as exc:
        raise http_error(web.HTTPNotFound, str(exc)) from None
    except UnsafeValue as exc:
        raise http_error(web.HTTPUnprocessableEntity, str(exc)) from None


async def _notify(server: Server, changes: list[GraphChange]) -> None:
    for change in changes:
        for listener in list(server.graph_listeners):
            try:
                await listener(change)
            except Exception:
                logger.exception("graph listener failed on %s", change.kind.value)


def _deleted(relationships: list[Relationship]) -> list[GraphChange]:
    return [
        GraphChange(ChangeKind.RELATIONSHIP_DELETED, relationship=relationship)
        for relationship in relationships
    ]


class GraphView(LiminalView):
    """Checks the token before reporting invalid input, so 401/403 come first."""

    async def on_validation_error(
        self, exception: ValidationError, context: CONTEXT
    ) -> web.StreamResponse:
        await require_user(self.request, admin=self.request.method != "GET")
        return await super().on_validation_error(exception, context)


class NodeView(GraphView):
    async def get(
        self,
        node_type: NodeType,
        node_id: Id,
        /,
        limit: Limit = DEFAULT_PAGE,
        after: After = None,
    ) -> (
        r200[NodeWithRelationships]
        | r401[ErrorBody]
        | r404[ErrorBody]
        | r422[ErrorBody]
        | r503[ErrorBody]
    ):
        """A node and its relationships in both directions.

        Relationships come in pages ordered by id, `limit` at a time (default
        100, at most 1000); `next_after` continues.

        Tags: graph
        Status Codes:
            200: the node
            401: missing or invalid bearer token
            404: no node of this type with this id
            422: invalid type, id or paging parameter
            503: the graph store is unavailable; see Retry-After
        """
        await require_user(self.request)
        store = self.server.store
        with _store_errors():
            node = await store.get_node(node_type, node_id)
            if node is None:
                raise http_error(web.HTTPNotFound, f"no {node_type} node {node_id!r}")
            # One more than asked tells whether another page follows.
            page = await store.relationships(node_id, limit=limit + 1, after=after)
        more = len(page) > limit
        page = page[:limit]
        body = NodeWithRelationships(
            id=node.id,
            type=node.type,
            properties=node.properties,
            relationships=[_seen_from(node_id, rel) for rel in page],
            next_after=page[-1].id if more else None,
        )
        return web.json_response(body.model_dump())

    async def put(
        self, node_type: NodeType, node_id: Id, /, body: NodeBody
    ) -> r200[NodeOut] | r201[NodeOut] | r409[ErrorBody] | WriteErrors:
        """Create a node, or replace the properties of an existing one.

        `created_at` is kept from creation; `updated_at` is set on every write.

        Tags: graph
        Status Codes:
            200: the properties were replaced
            201: the node was created
            401: missing or invalid bearer token
            403: the token's user is not an admin
            409: a node of another type has this id
            422: invalid type, id or properties
            503: the graph store is unavailable; see Retry-After
        """
        await require_user(self.request, admin=True)
        with _store_errors():
            node, created = await self.server.store.put_node(
                node_type, node_id, body.properties
            )
        kind = ChangeKind.NODE_CREATED if created else ChangeKind.NODE_UPDATED
        await _notify(self.server, [GraphChange(kind, node=node.ref)])
        return web.json_response(_node_out(node), status=201 if created else 200)

    async def delete(
        self, node_type: NodeType, node_id: Id, /
    ) -> r204 | r404[ErrorBody] | WriteErrors:
        """Delete a node and every relationship from or to it.

        Tags: graph
        Status Codes:
            204: deleted
            401: missing or invalid bearer token
            403: the token's user is not an admin
            404: no node of this type with this id
            422: invalid type or id
            503: the graph store is unavailable; see Retry-After
        """
        await require_user(self.request, admin=True)
        with _store_errors():
            removed = await self.server.store.delete_node(node_type, node_id)
        if removed is None:
            raise http_error(web.HTTPNotFound, f"no {node_type} node {node_id!r}")
        node = Node(node_type, node_id).ref
        changes = [*_deleted(removed), GraphChange(ChangeKind.NODE_DELETED, node=node)]
        await _notify(self.server, changes)
        return web.Response(status=204)


class RelationshipsView(GraphView):
    async def post(
        self, body: RelationshipBody
    ) -> r201[RelationshipCreated] | r404[ErrorBody] | WriteErrors:
        """Create a relationship between two existing nodes.

        Tags: graph
        Status Codes:
            201: created, with its generated id
            401: missing or invalid bearer token
            403: the token's user is not an admin
            404: the source or the target node does not exist
            422: invalid type, id or properties
            503: the graph store is unavailable; see Retry-After
        """
        await require_user(self.request, admin=True)
        with _store_errors():
            relationship = await self.server.store.create_relationship(
                body.source_id, body.target_id, body.type, body.properties
            )
        change = GraphChange(ChangeKind.RELATIONSHIP_CREATED, relationship=relationship)
        await _notify(self.server, [change])
        created = RelationshipCreated(
            id=relationship.id,
            source_id=relationship.source.id,
            target_id=relationship.target.id,
            type=relationship.type,
            created_at=relationship.created_at,
        )
        return web.json_response(created.model_dump(), status=201)


class RelationshipView(GraphView):
    async def delete(
        self, relationship_id: Id, /
    ) -> r204 | r404[ErrorBody] | WriteErrors:
        """Delete a relationship by its id.

        Tags: graph
        Status Codes:
            204: deleted
            401: missing or invalid bearer token
            403: the token's user is not an admin
            404: no relationship with this id
            422: invalid id
            503: the graph store is unavailable; see Retry-After
        """
        await require_user(self.request, admin=True)
        with _store_errors():
            removed = await self.server.store.delete_relationship(relationship_id)
        if removed is None:
            raise http_error(
                web.HTTPNotFound, f"no relationship with id {relationship_id!r}"
            )
        await _notify(self.server, _deleted([removed]))
        return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    # An id may hold any printable character; aiohttp's default {name} refuses
    # braces. "relationship" is a reserved node type, so the routes never meet.
    app.router.add_view("/api/graph/relationship", RelationshipsView)
    app.router.add_view(
        "/api/graph/relationship/{relationship_id:[^/]+}", RelationshipView
    )
    app.router.add_view("/api/graph/{node_type}/{node_id:[^/]+}", NodeView)
