"""Channel access: who may subscribe to and publish on which channel.

``open`` (the default): every valid channel exists and every authenticated
user may subscribe and publish. ``graph``: the graph decides. A channel
exists iff a ``channel`` node with its name as id exists; a user may
subscribe through a read relationship and publish through a write
relationship from their ``user`` node to it, directly or through one group:

    (user) -[read type]-> (channel)
    (user) -[MEMBER_OF]-> (group) -[read type]-> (channel)

and the same with the write types for publishing. Admins may do anything on
a channel that exists.

In both modes, ``graph:<node_type>:<node_id>`` channels are change feeds of
graph nodes: written by liminal only, readable by the node's own user, by
admins, and by users with a feed-read relationship to the node.

Verdicts are cached per connection and invalidated by every graph write, so
publishing stays on the fast path; a write that removes access also revokes
the live subscriptions it granted.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import StoreError
from .protocol import ErrorCode

if TYPE_CHECKING:
    from .config import Settings
    from .connection import Connection
    from .metrics import Metrics
    from .store import GraphChange, GraphStore

__all__ = ["Access", "ChannelPolicy", "Denial", "FEED_PREFIX", "feed_channel"]

logger = logging.getLogger(__name__)

FEED_PREFIX = "graph:"
GROUP_TYPE = "group"
GROUP_MEMBERSHIP = "MEMBER_OF"
# A cached verdict is trusted this long at most, which bounds how stale it can
# be after graph changes liminal did not see (an import, a write straight to
# Neo4j).
VERDICT_TTL_SECONDS = 30.0
MAX_CACHED_VERDICTS = 256
MAX_DECISION_ATTEMPTS = 5
_FEED_PATTERN = re.compile(r"graph:([a-z][a-z0-9_]{0,63}):(.+)")


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"


@dataclass(slots=True, frozen=True)
class Denial:
    """Why an action on a channel is refused: an error code and a message."""

    code: ErrorCode
    message: str


def feed_channel(node_type: str, node_id: str) -> str:
    """The change-feed channel of a node."""
    return f"{FEED_PREFIX}{node_type}:{node_id}"


class ChannelPolicy:
    """Decides channel access and revokes subscriptions when access ends.

    Args:
        settings: the policy mode and relationship types.
        store: the graph store (unused in open mode except for feeds).
        metrics: where denials are counted.
    """

    def __init__(self, settings: Settings, store: GraphStore, metrics: Metrics) -> None:
        self.graph_mode = settings.channel_policy == "graph"
        self._types = {
            Access.READ: tuple(settings.channel_read_relationships),
            Access.WRITE: tuple(settings.channel_write_relationships),
        }
        self._feed_types = tuple(settings.feed_read_relationships)
        self._store = store
        self._metrics = metrics
        self._generation = 0

    def governs(self, channel: str) -> bool:
        """Whether access to ``channel`` depends on the graph at all."""
        return self.graph_mode or channel.startswith(FEED_PREFIX)

    def invalidate(self) -> None:
        """Forget every cached verdict (the graph changed)."""
        self._generation += 1

    async def check(
        self, conn: Connection, channel: str, access: Access
    ) -> Denial | None:
        """None if ``conn`` may do ``access`` on ``channel``, else why not."""
        if not self.governs(channel):
            return None
        key = (channel, access)
        cached = conn.verdicts.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] == self._generation and cached[1] > now:
            cached_verdict: Denial | None = cached[2]
            return cached_verdict
        for _ in range(MAX_DECISION_ATTEMPTS):
            # A graph write during the reads makes their verdict stale: decide
            # again, so a verdict is only ever kept for the graph it saw.
            generation = self._generation
            verdict = await self.decide(conn.username, conn.is_admin, channel, access)
            if generation == self._generation:
                break
        else:
            # Writes keep landing mid-check: refuse for now rather than trust
            # a verdict that may already be stale; nothing is cached.
            return Denial(ErrorCode.INTERNAL, "the graph is changing; try again")
        if verdict is None or verdict.code != ErrorCode.INTERNAL:
            # A failed check is not remembered: the next one asks the store.
            if len(conn.verdicts) >= MAX_CACHED_VERDICTS:
                conn.verdicts.clear()
            conn.verdicts[key] = (generation, now + VERDICT_TTL_SECONDS, verdict)
        if verdict is not None and verdict.code != ErrorCode.INTERNAL:
            self._metrics.channel_denials.labels(str(int(verdict.code))).inc()
        return verdict

    async def decide(
        self, username: str, is_admin: bool, channel: str, access: Access
    ) -> Denial | None:
        """The uncached verdict."""
        try:
            if channel.startswith(FEED_PREFIX):
                return await self._decide_feed(username, is_admin, channel, access)
            return await self._decide_channel(username, is_admin, channel, access)
        except StoreError as exc:
            logger.warning(
                "permission check failed: %s", exc, extra={"channel": channel}
            )
            return Denial(
                ErrorCode.INTERNAL, "permission check failed: graph store unavailable"
            )

    async def _decide_channel(
        self, username: str, is_admin: bool, channel: str, access: Access
    ) -> Denial | None:
        store = self._store
        if await store.get_node("channel", channel) is None:
            return Denial(ErrorCode.CHANNEL_NOT_FOUND, f"no channel node {channel}")
        if is_admin:
            return None
        types = self._types[access]
        if not await self._is_user_node(username):
            return Denial(ErrorCode.FORBIDDEN, f"no user node {username}")
        if await store.has_relationship(username, channel, types):
            return None
        if await store.has_relationship_via(
            username, (GROUP_MEMBERSHIP,), GROUP_TYPE, channel, types
        ):
            return None
        return Denial(
            ErrorCode.FORBIDDEN,
            f"no {' or '.join(types)} relationship from user {username} "
            f"to channel {channel}",
        )

    async def _decide_feed(
        self, username: str, is_admin: bool, channel: str, access: Access
    ) -> Denial | None:
        if access is Access.WRITE:
            return Denial(
                ErrorCode.FORBIDDEN, "graph feeds are written by liminal only"
            )
        match = _FEED_PATTERN.fullmatch(channel)
        if match is None:
            return Denial(
                ErrorCode.CHANNEL_NOT_FOUND, "a feed is graph:<node_type>:<node_id>"
            )
        node_type, node_id = match.groups()
        if is_admin or (node_type == "user" and node_id == username):
            return None
        if (
            await self._is_user_node(username)
            and await self._store.get_node(node_type, node_id) is not None
            and await self._store.has_relationship(username, node_id, self._feed_types)
        ):
            return None
        types = " or ".join(self._feed_types) or "feed-read"
        return Denial(
            ErrorCode.FORBIDDEN,
            f"no {types} relationship from user {username} to {node_type} {node_id}",
        )

    async def _is_user_node(self, username: str) -> bool:
        # Relationships grant access only from the user's own node: a node of
        # another type that happens to carry the username as id grants nothing.
        return await self._store.get_node("user", username) is not None

    # Revocation.

    async def recheck_all(
        self, connections: Iterable[Connection]
    ) -> list[tuple[Connection, str, Denial]]:
        """Every governed subscription that is no longer allowed.

        For when graph changes may have been missed (the broker was down).
        """
        self.invalidate()
        return await self._lost(connections, None, None)

    def affected(self, change: GraphChange) -> tuple[set[str] | None, set[str] | None]:
        """Which users and channels a removal may have cut off (None: any).

        Returns ``(None, set())`` when nothing can be affected.
        """
        nothing: tuple[set[str] | None, set[str] | None] = (set(), set())
        if change.kind == "relationship_deleted":
            assert change.relationship is not None
            source, target = change.relationship.source, change.relationship.target
            source_type, source_id = source.type, source.id
            target_type, target_id = target.type, target.id
            feed = feed_channel(target_type, target_id)
            users = {source_id} if source_type == "user" else None
            if target_type == "channel" and self.graph_mode:
                return users, {target_id, feed}
            if target_type == GROUP_TYPE and self.graph_mode and source_type == "user":
                return users, None
            return (users, {feed}) if users else nothing
        if change.kind == "node_deleted":
            assert change.node is not None
            node_type, node_id = change.node.type, change.node.id
            if node_type == "user":
                return {node_id}, None
            if node_type == "channel" and self.graph_mode:
                return None, {node_id, feed_channel(node_type, node_id)}
            if node_type == GROUP_TYPE and self.graph_mode:
                return None, None
            return None, {feed_channel(node_type, node_id)}
        return nothing

    async def revoked(
        self, connections: Iterable[Connection], change: GraphChange
    ) -> list[tuple[Connection, str, Denial]]:
        """The subscriptions ``change`` took away: (connection, channel, why)."""
        self.invalidate()
        users, channels = self.affected(change)
        if users is not None and not users or channels is not None and not channels:
            return []
        return await self._lost(connections, users, channels)

    async def _lost(
        self,
        connections: Iterable[Connection],
        users: set[str] | None,
        channels: set[str] | None,
    ) -> list[tuple[Connection, str, Denial]]:
        lost = []
        for conn in list(connections):
            if users is not None and conn.username not in users:
                continue
            for channel in list(conn.channels):
                if channels is not None and channel not in channels:
                    continue
                if not self.governs(channel):
                    continue
                denial = await self.check(conn, channel, Access.READ)
                # A store outage revokes nothing: only a real "no" does.
                if denial is not None and denial.code != ErrorCode.INTERNAL:
                    lost.append((conn, channel, denial))
        return lost
