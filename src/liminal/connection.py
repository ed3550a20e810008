"""One accepted WebSocket on this instance, as the hub sees it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import ProtocolError
from .limits import ConnectionRates
from .protocol import CloseCode, encode_event

if TYPE_CHECKING:
    from .accounts import User

__all__ = ["Connection", "coalescer"]

logger = logging.getLogger(__name__)

# A peer that does not answer our close frame within this time is cut off.
CLOSE_TIMEOUT_SECONDS = 5.0


class WriteCoalescer:
    """Gathers the frames fanned out in one event-loop pass into one write each.

    A socket write is a system call, and it dominates the cost of a delivery.
    The first fan-out of a pass writes at once, so a lone message is not
    delayed; when more follow in the same pass (a busy publisher, several
    publishers), each connection's further frames are gathered and written
    together when the pass ends, in the order they were sent.
    """

    __slots__ = ("batching", "dirty", "in_pass")

    def __init__(self) -> None:
        self.in_pass = False
        self.batching = False
        self.dirty: list[Connection] = []

    def begin(self) -> None:
        """A fan-out starts: batch it if another one already ran this pass."""
        if self.in_pass:
            self.batching = True
            return
        self.in_pass = True
        asyncio.get_running_loop().call_soon(self._end_pass)

    def _end_pass(self) -> None:
        dirty, self.dirty = self.dirty, []
        self.in_pass = self.batching = False
        for conn in dirty:
            conn.flush()


coalescer = WriteCoalescer()


class Connection:
    """An authenticated WebSocket and everything the hub tracks about it.

    Outgoing frames go to the socket's transport, at once or gathered with the
    others of the same loop pass (see :class:`WriteCoalescer`); the transport's
    write buffer is the connection's outbound queue, drained by the event loop
    whenever the socket is writable. It is bounded in bytes, gathered frames
    included: a frame that would take it past ``max_queued_bytes`` is not
    queued and the connection is closed with 4008 instead, so a client that
    stops reading costs at most that much memory and never delays anyone else.

    Args:
        conn_id: unique id of this connection, sent to the client.
        user: the authenticated account.
        ip: the client address the admission limits count.
        ws: the prepared aiohttp WebSocket.
        transport: the socket's transport, written to directly.
        max_queued_bytes: bound of the outbound queue.
        rates: the connection's rate limits.
        issued_at: the ``iat`` of the token it authenticated with.
    """

    __slots__ = (
        "_close_task",
        "_max_queued",
        "_pending",
        "_pending_size",
        "_transport",
        "_ws",
        "channels",
        "close_code",
        "conn_id",
        "ip",
        "is_admin",
        "issued_at",
        "rates",
        "username",
        "verdicts",
    )

    def __init__(
        self,
        conn_id: str,
        user: User,
        ip: str,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        max_queued_bytes: int,
        rates: ConnectionRates,
        issued_at: float = 0.0,
    ) -> None:
        self.conn_id = conn_id
        self.username = user.name
        self.is_admin = user.is_admin
        self.ip = ip
        self.rates = rates
        self.issued_at = issued_at
        self.channels: set[str] = set()
        # Cached channel-policy verdicts: (channel, access) ->
        # (graph generation, expiry, denial or None). Owned by the policy.
        self.verdicts: dict[tuple[str, Any], tuple[int, float, Any]] = {}
        self.close_code: int | None = None
        self._ws = ws
        self._transport = transport
        self._max_queued = max_queued_bytes
        self._close_task: asyncio.Task[None] | None = None
        # Frames gathered by the coalescer, not yet written.
        self._pending: list[bytes] = []
        self._pending_size = 0

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def send(self, frame: bytes) -> bool:
        """Queue an encoded frame; False if the connection cannot take it.

        Never blocks. When the outbound queue would overflow, the frame is
        dropped and the connection is marked for closing with 4008; the hub
        sees :attr:`closing` and removes it.
        """
        if self.close_code is not None:
            return False
        transport = self._transport
        if transport.is_closing():
            # The peer vanished (reset or closed); its read loop ends soon.
            self.close_code = CloseCode.ABNORMAL
            return False
        queued = transport.get_write_buffer_size() + self._pending_size + len(frame)
        if queued > self._max_queued:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue full")
            return False
        if coalescer.batching:
            if not self._pending:
                coalescer.dirty.append(self)
            self._pending.append(frame)
            self._pending_size += len(frame)
            return True
        return self._write(frame)

    def flush(self) -> None:
        """Write the frames the coalescer gathered (dropped if closing)."""
        pending = self._pending
        self._pending = []
        self._pending_size = 0
        if pending and self.close_code is None and not self._transport.is_closing():
            self._write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _write(self, data: bytes) -> bool:
        try:
            self._transport.write(data)
        except (RuntimeError, OSError):  # the transport died just now
            self.close_code = CloseCode.ABNORMAL
            return False
        return True

    def send_event(self, event: dict[str, Any]) -> bool:
        return self.send(encode_event(event))

    def send_error(self, error: ProtocolError) -> bool:
        event: dict[str, Any] = {
            "type": "error",
            "code": int(error.code),
            "message": error.message,
        }
        if error.channel is not None:
            event["channel"] = error.channel
        if error.event_id is not None:
            event["id"] = error.event_id
        if error.retry_after is not None:
            event["retry_after"] = round(error.retry_after, 3)
        return self.send_event(event)

    def close(self, code: int, reason: str) -> None:
        """Start closing with ``code``; idempotent, returns at once."""
        if self.close_code is not None:
            return
        self.close_code = code
        self._close_task = asyncio.get_running_loop().create_task(
            self._close(code, reason), name=f"liminal-close-{self.conn_id}"
        )

    async def _close(self, code: int, reason: str) -> None:
        # Close reasons must fit a control frame: 123 bytes of UTF-8.
        message = reason.encode()[:123]
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self._ws.close(code=code, message=message)
        except (TimeoutError, ConnectionError):
            self._transport.abort()
        except Exception:
            logger.exception(
                "closing connection failed", extra={"conn_id": self.conn_id}
            )
            self._transport.abort()

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            with contextlib.suppress(Exception):
                await self._close_task

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} user={self.username} ip={self.ip}>"
