"""Graph changes as data: change-feed events and instance-to-instance messages.

A write through the graph API becomes one :class:`GraphChange`. The instance
that made it publishes a change-feed event on ``graph:<type>:<id>`` for each
node concerned (through the hub, so other instances deliver it too), and
sends the change itself to the other instances as a control message, so each
can invalidate cached permissions and revoke subscriptions locally.
"""

from __future__ import annotations

from typing import Any

import orjson

from .policy import feed_channel
from .protocol import encode_event, utc_timestamp, valid_channel
from .store import ChangeKind, GraphChange, NodeRef, Relationship

__all__ = [
    "FEED_SENDER",
    "change_from_message",
    "change_message",
    "change_to_dict",
    "feed_frames",
]

FEED_SENDER = "liminal"
_CONTROL_KIND = "graph_change"


def _ref(ref: NodeRef) -> dict[str, str]:
    return {"type": ref.type, "id": ref.id}


def change_to_dict(change: GraphChange) -> dict[str, Any]:
    """The change as JSON-ready data, as change-feed events carry it."""
    data: dict[str, Any] = {"event": change.kind.value}
    if change.node is not None:
        data["node"] = _ref(change.node)
    if change.relationship is not None:
        rel = change.relationship
        data["relationship"] = {
            "id": rel.id,
            "type": rel.type,
            "source": _ref(rel.source),
            "target": _ref(rel.target),
            "properties": rel.properties,
        }
    return data


def _concerned(change: GraphChange) -> list[NodeRef]:
    if change.relationship is not None:
        ends = [change.relationship.source, change.relationship.target]
        return ends if ends[0] != ends[1] else ends[:1]
    return [change.node] if change.node is not None else []


def feed_frames(change: GraphChange) -> list[tuple[str, bytes]]:
    """One encoded change-feed event per node the change concerns.

    Nodes whose feed name is not a valid channel name (an id with characters
    outside the channel alphabet, or too long) have no feed.
    """
    content = change_to_dict(change)
    timestamp = utc_timestamp()
    frames = []
    for ref in _concerned(change):
        channel = feed_channel(ref.type, ref.id)
        if not valid_channel(channel):
            continue
        frames.append(
            (
                channel,
                encode_event(
                    {
                        "type": "message",
                        "channel": channel,
                        "content": content,
                        "sender": FEED_SENDER,
                        "timestamp": timestamp,
                    }
                ),
            )
        )
    return frames


def change_message(change: GraphChange) -> bytes:
    """The control message telling other instances about ``change``."""
    return orjson.dumps({"kind": _CONTROL_KIND, "change": change_to_dict(change)})


def change_from_message(message: bytes) -> GraphChange | None:
    """The change in a control message, or None if it is not one."""
    try:
        data = orjson.loads(message)
        if data.get("kind") != _CONTROL_KIND:
            return None
        change = data["change"]
        kind = ChangeKind(change["event"])
        node = NodeRef(**change["node"]) if "node" in change else None
        relationship = None
        if "relationship" in change:
            rel = change["relationship"]
            relationship = Relationship(
                id=rel["id"],
                type=rel["type"],
                source=NodeRef(**rel["source"]),
                target=NodeRef(**rel["target"]),
                properties=rel["properties"],
            )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return GraphChange(kind, node=node, relationship=relationship)
