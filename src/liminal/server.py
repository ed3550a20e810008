"""The liminal application: state of one instance, its routes and its life cycle.

REST and WebSocket are served by one aiohttp application on one port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from .accounts import Accounts, User, UserDirectory
from .auth import TokenIssuer
from .broker import open_broker
from .config import Settings, load_jwt_secret
from .connection import Connection
from .graph_events import change_from_message, change_message, feed_frames
from .hub import Hub
from .limits import LoginGuard, client_ip
from .logs import SECRET_PARAMETERS
from .metrics import Metrics
from .policy import ChannelPolicy, Denial
from .protocol import CloseCode
from .store import GraphChange, GraphStore, ensure_nodes_soon, open_store

__all__ = ["Server", "build_app", "run"]

logger = logging.getLogger(__name__)

SERVER_KEY: web.AppKey[Server] = web.AppKey("liminal_server")


@dataclass
class Server:
    """Everything one instance holds, shared by its request handlers."""

    settings: Settings
    accounts: Accounts
    tokens: TokenIssuer
    metrics: Metrics
    hub: Hub
    store: GraphStore
    # Awaited after every successful write through the graph API.
    graph_listeners: list[Callable[[GraphChange], Awaitable[None]]] = field(
        default_factory=list
    )
    users: UserDirectory = field(init=False)
    login_guard: LoginGuard = field(init=False)
    policy: ChannelPolicy = field(init=False)
    _user_nodes: asyncio.Task[None] | None = field(default=None, init=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.users = UserDirectory(self.accounts, self._on_users_changed)
        self.login_guard = LoginGuard(
            self.settings.login_max_failures, self.settings.login_window_seconds
        )
        self.policy = ChannelPolicy(self.settings, self.store, self.metrics)
        self.graph_listeners.append(self._on_graph_change)

    def client_ip(self, request: web.BaseRequest) -> str:
        """The client address the limits count (see :func:`limits.client_ip`)."""
        peer = (
            request.transport.get_extra_info("peername") if request.transport else None
        )
        return client_ip(
            peer[0] if peer else request.remote,
            request.headers.getall("X-Forwarded-For", []),
            self.settings.trusted_proxies,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Server:
        """Build an instance's state; raises ConfigError on a bad setting."""
        secret = load_jwt_secret(settings)
        metrics = Metrics()
        hub = Hub(
            metrics,
            broker=open_broker(settings, metrics),
            max_connections=settings.max_connections,
            max_connections_per_ip=settings.max_connections_per_ip,
        )
        return cls(
            settings=settings,
            accounts=Accounts(settings.database_path),
            tokens=TokenIssuer(
                secret, settings.jwt_algorithm, settings.token_ttl_seconds
            ),
            metrics=metrics,
            hub=hub,
            store=open_store(settings),
        )

    def _on_users_changed(self, changed: dict[str, User | None]) -> None:
        """Close connections of removed users and of revoked tokens (4001)."""
        for conn in self.hub.connections_of(set(changed)):
            user = changed[conn.username]
            if user is not None and conn.issued_at >= user.tokens_valid_after:
                continue
            reason = (
                "user removed" if user is None else "token revoked: password changed"
            )
            logger.info(
                "closing connection: %s",
                reason,
                extra={"conn_id": conn.conn_id, "user": conn.username},
            )
            self.hub.disconnect(conn, CloseCode.INVALID_TOKEN, reason)

    async def _on_graph_change(self, change: GraphChange) -> None:
        """A write through this instance's graph API succeeded."""
        received_at = time.perf_counter()
        for channel, frame in feed_frames(change):
            self.hub.publish(channel, frame, received_at)
        self.hub.broker.publish_control(change_message(change))
        await self.apply_graph_change(change)

    async def apply_graph_change(self, change: GraphChange) -> None:
        """Forget cached permissions and revoke subscriptions ``change`` ended."""
        self._revoke(await self.policy.revoked(self.hub.connections(), change))

    async def recheck_subscriptions(self) -> None:
        """Check every graph-governed subscription again (changes were missed)."""
        self._revoke(await self.policy.recheck_all(self.hub.connections()))

    def _revoke(self, lost: list[tuple[Connection, str, Denial]]) -> None:
        for conn, channel, denial in lost:
            if not self.hub.unsubscribe(conn, channel):
                continue
            logger.info(
                "subscription revoked",
                extra={
                    "conn_id": conn.conn_id,
                    "user": conn.username,
                    "channel": channel,
                },
            )
            conn.send_event(
                {
                    "type": "unsubscribed",
                    "channel": channel,
                    "code": int(denial.code),
                    "reason": denial.message,
                }
            )

    def _on_control(self, message: bytes) -> None:
        """A control message from another instance."""
        change = change_from_message(message)
        if change is None:
            logger.debug("ignoring control message of %d bytes", len(message))
            return
        self._in_background(self.apply_graph_change(change))

    def _on_broker_resumed(self) -> None:
        # Graph changes made elsewhere during the outage were not heard.
        self._in_background(self.recheck_subscriptions())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        await self.users.start()
        await self.hub.broker.start(
            self.hub.deliver, self._on_control, self._on_broker_resumed
        )
        await self.store.start()
        # Users made before the graph existed get their node too.
        names = [user.name for user in await asyncio.to_thread(self.accounts.list)]
        self._user_nodes = await ensure_nodes_soon(self.store, "user", names)

    async def stop(self) -> None:
        closing = self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
        await asyncio.gather(*(conn.wait_closed() for conn in closing))
        await self.hub.broker.stop()
        await self.users.stop()
        if self._user_nodes is not None:
            self._user_nodes.cancel()
            await asyncio.gather(self._user_nodes, return_exceptions=True)
        await self.store.close()
        self.accounts.close()


def loggable_path(request: BaseRequest) -> str:
    """The request's path and query, with secret parameters' values replaced.

    Works on the decoded query, so ``%74oken=`` is caught like ``token=``.
    """
    url = request.rel_url
    if not url.query:
        return url.raw_path
    query = [
        (key, "<redacted>" if key.lower() in SECRET_PARAMETERS else value)
        for key, value in url.query.items()
    ]
    return f"{url.raw_path}?{urlencode(query, safe='<>')}"


class AccessLogger(AbstractAccessLogger):
    """Access log lines without tokens or passwords from the query string."""

    def log(
        self, request: BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1fms',
            request.remote,
            request.method,
            loggable_path(request),
            response.status,
            time * 1000,
        )


def build_app(server: Server) -> web.Application:
    """Create the aiohttp application serving REST and WebSocket routes."""
    from . import api, graph_api, websocket

    app = web.Application(middlewares=[api.error_middleware], client_max_size=1 << 20)
    app[SERVER_KEY] = server
    websocket.add_routes(app)
    api.add_routes(app)
    graph_api.add_routes(app)

    async def on_startup(app: web.Application) -> None:
        await server.start()

    async def on_shutdown(app: web.Application) -> None:
        await server.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on this platform; asyncio's loop works too
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(settings: Settings) -> None:
    server = Server.from_settings(settings)
    app = build_app(server)
    runner = web.AppRunner(
        app, access_log_class=AccessLogger, handle_signals=False, shutdown_timeout=5
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    for address in runner.addresses:
        host, port = address[0], address[1]
        logger.info(
            "listening on http://%s:%s",
            f"[{host}]" if ":" in host else host,
            port,
            extra={"instance": settings.instance_id},
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger.info("shutting down", extra={"instance": settings.instance_id})
    await runner.cleanup()


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM."""
    _install_uvloop()
    asyncio.run(_serve(settings))
