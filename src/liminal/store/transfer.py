"""Export and import a graph as JSON lines, to move it between stores.

One JSON object per line; nodes first, then relationships::

    {"kind": "node", "type": "user", "id": "alice", "properties": {...}}
    {"kind": "relationship", "id": "...", "type": "OWNS",
     "source_type": "user", "source_id": "alice",
     "target_type": "device", "target_id": "d1", "properties": {...}}

Properties include ``created_at`` and ``updated_at`` and are written back
unchanged, so a round trip keeps every timestamp and relationship id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

from . import GraphStore, Node, NodeRef, Relationship, check_node, check_relationship

__all__ = ["export_graph", "import_graph"]

BATCH = 500


def _record(item: Node | Relationship) -> dict[str, Any]:
    if isinstance(item, Node):
        return {
            "kind": "node",
            "type": item.type,
            "id": item.id,
            "properties": item.properties,
        }
    return {
        "kind": "relationship",
        "id": item.id,
        "type": item.type,
        "source_type": item.source.type,
        "source_id": item.source.id,
        "target_type": item.target.type,
        "target_id": item.target.id,
        "properties": item.properties,
    }


def _item(record: Any) -> Node | Relationship:
    if not isinstance(record, dict):
        raise TypeError("not a JSON object")
    properties = record.get("properties", {})
    if not isinstance(properties, dict):
        raise TypeError("properties must be an object")
    try:
        if record.get("kind") == "node":
            return check_node(
                Node(_text(record["type"]), _text(record["id"]), properties)
            )
        if record.get("kind") == "relationship":
            return check_relationship(
                Relationship(
                    _text(record["id"]),
                    _text(record["type"]),
                    NodeRef(_text(record["source_type"]), _text(record["source_id"])),
                    NodeRef(_text(record["target_type"]), _text(record["target_id"])),
                    properties,
                )
            )
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    raise ValueError('kind must be "node" or "relationship"')


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


async def export_graph(store: GraphStore, out: TextIO) -> tuple[int, int]:
    """Write every node and relationship to ``out``; return both counts."""
    counts = {"node": 0, "relationship": 0}
    async for item in store.export():
        record = _record(item)
        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        counts[record["kind"]] += 1
    return counts["node"], counts["relationship"]


async def import_graph(store: GraphStore, lines: Iterable[str]) -> tuple[int, int]:
    """Read JSON lines and write them into ``store``; return both counts.

    Every line is parsed and checked before anything is written; then nodes
    go in before relationships, in batches.

    Raises:
        ValueError: a line is malformed, with its number.
        NodeTypeConflict, MissingNode: the data does not fit the store.
    """
    nodes: list[Node] = []
    relationships: list[Relationship] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = _item(json.loads(line))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if isinstance(item, Node):
            nodes.append(item)
        else:
            relationships.append(item)
    for start in range(0, len(nodes), BATCH):
        await store.load(nodes[start : start + BATCH], [])
    for start in range(0, len(relationships), BATCH):
        await store.load([], relationships[start : start + BATCH])
    return len(nodes), len(relationships)
