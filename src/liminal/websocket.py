"""``GET /ws``: the life of one WebSocket connection.

Accept the upgrade, authenticate, take a slot, then read events until the
connection ends. Every refusal happens after the upgrade with a close code,
because browsers cannot read an HTTP rejection of a WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from aiohttp import WebSocketError, WSMsgType, web

from .accounts import User
from .auth import Claims
from .connection import Connection
from .errors import AuthError, ProtocolError
from .limits import ConnectionRates, TokenBucket
from .policy import Access
from .protocol import (
    ClientEvent,
    CloseCode,
    ErrorCode,
    encode_event,
    parse_event,
    utc_timestamp,
)
from .server import SERVER_KEY, Server

__all__ = ["add_routes", "bearer_token"]

logger = logging.getLogger(__name__)

_CAP_REASONS = {
    CloseCode.SERVER_FULL: "server full",
    CloseCode.TOO_MANY_FROM_IP: "too many connections from this address",
}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws", websocket_endpoint)


def bearer_token(request: web.Request, *, allow_query: bool = False) -> str | None:
    """The token of ``Authorization: Bearer``, or of ``?token=`` if allowed."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:
        return request.query.get("token") or None
    return None


async def authenticate(server: Server, token: str | None) -> tuple[User, Claims]:
    """Verify ``token`` and find its user.

    Raises:
        AuthError: 4001 or 4002 with a reason fit for the client.
    """
    if not token:
        raise AuthError(CloseCode.INVALID_TOKEN, "missing token")
    claims = server.tokens.verify(token)
    user = await server.users.lookup(claims.subject)
    if user is None:
        raise AuthError(CloseCode.INVALID_TOKEN, "unknown user")
    if claims.issued_at < user.tokens_valid_after:
        raise AuthError(CloseCode.INVALID_TOKEN, "token revoked: password changed")
    return user, claims


async def websocket_endpoint(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    settings = server.settings
    ws = web.WebSocketResponse(
        # aiohttp refuses a message of max_msg_size bytes or more, from the
        # frame header, before buffering its payload.
        max_msg_size=settings.max_message_bytes + 1,
        compress=False,
        heartbeat=settings.heartbeat_seconds,
    )
    if not ws.can_prepare(request).ok:
        return web.json_response(
            {"detail": "this endpoint only speaks WebSocket; send an upgrade request"},
            status=426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    try:
        await ws.prepare(request)
    except ConnectionError:  # the client vanished during the handshake
        return web.Response(status=499)
    transport = request.transport
    if transport is None:  # the client vanished during the handshake
        return ws

    try:
        user, claims = await authenticate(
            server, bearer_token(request, allow_query=True)
        )
    except AuthError as exc:
        return await _refuse(server, ws, exc.code, exc.reason)

    conn = Connection(
        uuid.uuid4().hex,
        user,
        server.client_ip(request),
        ws,
        transport,
        settings.max_queued_bytes,
        ConnectionRates(
            settings.rate_limit_per_minute, settings.control_rate_per_minute
        ),
        claims.issued_at,
    )
    refusal = server.hub.register(conn)
    if refusal is not None:
        return await _refuse(server, ws, refusal, _CAP_REASONS[refusal])

    server.metrics.connections_accepted.inc()
    logger.info(
        "connection opened",
        extra={"conn_id": conn.conn_id, "user": user.name, "ip": conn.ip},
    )
    loop = asyncio.get_running_loop()
    expiry = loop.call_later(
        claims.expires_at - time.time(),
        server.hub.disconnect,
        conn,
        CloseCode.TOKEN_EXPIRED,
        "token expired",
    )
    try:
        conn.send_event(
            {"type": "connection_established", "connection_id": conn.conn_id}
        )
        await _read_events(server, ws, conn)
    except Exception:
        logger.exception("connection failed", extra={"conn_id": conn.conn_id})
        server.hub.disconnect(conn, CloseCode.INTERNAL_ERROR, "internal server error")
    finally:
        expiry.cancel()
        server.hub.unregister(conn)
        await conn.wait_closed()
        code = conn.close_code
        server.metrics.connections_closed.labels(
            "peer" if code in (None, CloseCode.ABNORMAL) else str(code)
        ).inc()
        logger.info(
            "connection closed",
            extra={
                "conn_id": conn.conn_id,
                "user": user.name,
                "code": code if code is not None else ws.close_code,
            },
        )
    return ws


async def _refuse(
    server: Server, ws: web.WebSocketResponse, code: int, reason: str
) -> web.WebSocketResponse:
    server.metrics.connections_refused.labels(str(code)).inc()
    logger.info("connection refused", extra={"code": code, "reason": reason})
    await ws.close(code=code, message=reason.encode())
    return ws


async def _read_events(
    server: Server, ws: web.WebSocketResponse, conn: Connection
) -> None:
    """Handle client frames until the connection closes."""
    while not conn.closing:
        msg = await ws.receive()
        if conn.closing:
            # Closed by the server while waiting (slow consumer, expiry,
            # revocation): nothing more from this client is acted on.
            return
        received_at = time.perf_counter()
        if msg.type is WSMsgType.TEXT:
            await _handle_text(server, conn, msg.data, received_at)
        elif msg.type is WSMsgType.BINARY:
            _handle_invalid(
                server,
                conn,
                ProtocolError(
                    ErrorCode.MALFORMED,
                    "binary frames are not supported; send JSON text frames",
                ),
            )
        else:
            # CLOSE, CLOSING, CLOSED or ERROR (aiohttp has already answered
            # protocol errors such as 1009 for an oversized message).
            if msg.type is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                conn.close_code = msg.data.code
            return


async def _handle_text(
    server: Server, conn: Connection, text: str, received_at: float
) -> None:
    try:
        event = parse_event(text)
    except ProtocolError as exc:
        _handle_invalid(server, conn, exc)
        return
    server.metrics.received(event.type)
    try:
        if event.type == "message":
            if _within_rate(server, conn, conn.rates.message, event):
                if server.policy.governs(event.channel):  # open mode skips the await
                    await _authorize(server, conn, event, Access.WRITE)
                _publish(server, conn, event, received_at)
        elif not _within_rate(server, conn, conn.rates.control, event):
            return
        elif event.type == "subscribe":
            await _subscribe(server, conn, event)
        else:
            _unsubscribe(server, conn, event)
    except ProtocolError as exc:
        _reject(server, conn, exc)
    except Exception:
        # Our fault, not the client's: answer 5001 and keep the connection.
        logger.exception(
            "handling an event failed",
            extra={"conn_id": conn.conn_id, "channel": event.channel},
        )
        _reject(
            server,
            conn,
            ProtocolError(
                ErrorCode.INTERNAL,
                "the server failed this request",
                event_id=event.id,
                channel=event.channel,
            ),
        )


def _handle_invalid(server: Server, conn: Connection, error: ProtocolError) -> None:
    # Malformed events cost control budget, so garbage cannot be flooded either.
    server.metrics.received("invalid")
    if _within_rate(server, conn, conn.rates.control, error):
        _reject(server, conn, error)


def _within_rate(
    server: Server,
    conn: Connection,
    bucket: TokenBucket,
    event: ClientEvent | ProtocolError,
) -> bool:
    """Take a token for ``event``; answer 4029, or close 1008 when flooding."""
    wait = bucket.take()
    if wait == 0.0:
        return True
    if conn.rates.strikes.take() > 0.0:
        logger.warning(
            "closing flooding connection",
            extra={"conn_id": conn.conn_id, "user": conn.username},
        )
        server.hub.disconnect(
            conn, CloseCode.POLICY_VIOLATION, "kept sending while rate limited"
        )
        return False
    event_id = event.id if isinstance(event, ClientEvent) else event.event_id
    _reject(
        server,
        conn,
        ProtocolError(
            ErrorCode.RATE_LIMITED,
            "rate limited: event dropped, retry after retry_after seconds",
            event_id=event_id,
            channel=event.channel,
            retry_after=wait,
        ),
    )
    return False


async def _authorize(
    server: Server, conn: Connection, event: ClientEvent, access: Access
) -> None:
    """Raise the channel policy's refusal of ``event``, if any."""
    denial = await server.policy.check(conn, event.channel, access)
    if denial is not None:
        raise ProtocolError(
            denial.code, denial.message, event_id=event.id, channel=event.channel
        )


def _reject(server: Server, conn: Connection, error: ProtocolError) -> None:
    server.metrics.events_rejected.labels(str(int(error.code))).inc()
    conn.send_error(error)


def _reply(conn: Connection, event: ClientEvent, kind: str) -> None:
    reply: dict[str, Any] = {"type": kind, "channel": event.channel}
    if event.id is not None:
        reply["id"] = event.id
    conn.send_event(reply)


async def _subscribe(server: Server, conn: Connection, event: ClientEvent) -> None:
    limit = server.settings.max_subscriptions_per_connection
    if event.channel not in conn.channels and len(conn.channels) >= limit:
        raise ProtocolError(
            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            f"subscription limit of {limit} channels per connection reached",
            event_id=event.id,
            channel=event.channel,
        )
    await _authorize(server, conn, event, Access.READ)
    server.hub.subscribe(conn, event.channel)
    # With Redis, answer once other instances' messages reach us too (or
    # after a short wait while Redis is slow or down).
    await server.hub.broker.subscribed(event.channel)
    if event.channel in conn.channels:
        _reply(conn, event, "subscribe_success")


def _unsubscribe(server: Server, conn: Connection, event: ClientEvent) -> None:
    server.hub.unsubscribe(conn, event.channel)
    _reply(conn, event, "unsubscribe_success")


def _publish(
    server: Server, conn: Connection, event: ClientEvent, received_at: float
) -> None:
    try:
        frame = encode_event(
            {
                "type": "message",
                "channel": event.channel,
                "content": event.content,
                "sender": conn.username,
                "timestamp": utc_timestamp(),
            }
        )
    except (RecursionError, ValueError, TypeError):
        raise ProtocolError(
            ErrorCode.MALFORMED,
            "content is nested too deeply",
            event_id=event.id,
            channel=event.channel,
        ) from None
    server.hub.publish(event.channel, frame, received_at)
    if event.id is not None:
        _reply(conn, event, "publish_success")
