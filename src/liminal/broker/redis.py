"""The Redis pub/sub broker: many instances, one set of channels.

Each instance subscribes in Redis only to the channels it has local
subscribers for, and publishes every message once, wrapped in an envelope that
names the instance it came from, so no instance delivers its own messages
twice. One listening connection per instance is supervised: it is rebuilt with
jittered backoff after any failure (Redis restarted, connection killed, or no
heartbeat of our own seen for a while, which catches a connection that is up
but deaf), and every wanted channel is subscribed again without any client
action.

Limit: Redis pub/sub is at-most-once; messages published while Redis is
unreachable do not reach other instances and are not replayed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import mask_url
from ..metrics import Metrics
from . import ControlHandler, Deliver

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

_HEARTBEAT = b"\x00heartbeat"
_SEPARATOR = b"\n"


class _Deaf(Exception):
    """The listening connection stopped hearing our own heartbeats."""


class RedisBroker:
    """Cross-instance fan-out through Redis pub/sub.

    Args:
        url: ``redis://`` or ``rediss://`` URL, password included; it is only
            ever logged masked.
        prefix: prefix of every Redis channel name, so deployments can share
            a Redis; messages go to ``<prefix>ch:<channel>``, liminal's own
            control traffic to ``<prefix>control``.
        instance_id: this instance's name, written into every envelope.
        metrics: where up/down, reconnects and drops are recorded.
        heartbeat_seconds: how often the instance checks it still hears itself.
        max_pending_bytes: bytes queued for Redis (while it is slow, or lost
            but not yet noticed) before further messages are dropped.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        instance_id: str,
        metrics: Metrics,
        heartbeat_seconds: float = 2.0,
        max_pending_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._url = url
        self._safe_url = mask_url(url)
        self._channel_prefix = f"{prefix}ch:"
        self._control_channel = f"{prefix}control"
        self._origin = instance_id.encode() + _SEPARATOR
        self._metrics = metrics
        self._heartbeat_seconds = heartbeat_seconds
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._up = False
        self._warned = False
        self._wanted: set[str] = set()
        self._changed = asyncio.Event()
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._pending: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._publisher: Redis | None = None
        self._deliver: Deliver = lambda channel, frame: None
        self._on_control: ControlHandler = lambda message: None
        self._on_resumed: Callable[[], object] = lambda: None
        metrics.broker_up.set(0)

    async def start(
        self,
        deliver: Deliver,
        on_control: ControlHandler,
        on_resumed: Callable[[], object] = lambda: None,
    ) -> None:
        self._deliver = deliver
        self._on_control = on_control
        self._on_resumed = on_resumed
        self._publisher = self._client(socket_timeout=5)
        self._tasks = [
            asyncio.create_task(self._supervise(), name="liminal-broker-listen"),
            asyncio.create_task(self._publish_loop(), name="liminal-broker-publish"),
            asyncio.create_task(
                self._heartbeat_loop(), name="liminal-broker-heartbeat"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.aclose()
        self._set_down(None)

    # Called by the hub; none of these blocks.

    def publish(self, channel: str, frame: bytes) -> None:
        self._enqueue(self._channel_prefix + channel, frame)

    def publish_control(self, message: bytes) -> None:
        self._enqueue(self._control_channel, message)

    def channel_added(self, channel: str) -> None:
        self._wanted.add(channel)
        self._changed.set()

    def channel_removed(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._changed.set()

    async def subscribed(self, channel: str, timeout: float = 1.0) -> bool:
        """Wait until Redis confirmed the subscription to ``channel``.

        Returns False at once while Redis is down (the channel is subscribed
        when it returns) and after ``timeout``.
        """
        if channel in self._confirmed or not self._up:
            return channel in self._confirmed
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(channel, None)
        return True

    def _enqueue(self, redis_channel: str, payload: bytes) -> None:
        size = len(payload)
        if not self._up or self._pending_bytes + size > self._max_pending_bytes:
            self._metrics.broker_dropped.inc()
            return
        self._pending_bytes += size
        self._pending.put_nowait((redis_channel, self._origin + payload))

    # Connections.

    def _client(self, **options: Any) -> Redis:
        # No retries inside redis-py: failures surface here, and the
        # supervisor decides when to reconnect.
        return Redis.from_url(
            self._url,
            socket_connect_timeout=2,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            **options,
        )

    async def _supervise(self) -> None:
        """Keep one listening connection alive, whatever kills it."""
        failures = 0
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: rebuild, never go deaf
                if self._up:
                    failures = 0
                    self._metrics.broker_listener_restarts.inc()
                self._set_down(exc)
            failures += 1
            self._metrics.broker_reconnects.inc()
            delay = min(5.0, 0.1 * 2 ** min(failures, 6))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _listen(self) -> None:
        client = self._client()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._control_channel)
            subscribed: set[str] = set()
            await self._sync_subscriptions(pubsub, subscribed)
            self._set_up()
            loop = asyncio.get_running_loop()
            heard = loop.time()
            while True:
                if self._changed.is_set():
                    await self._sync_subscriptions(pubsub, subscribed)
                message = await pubsub.get_message(timeout=0.05)
                if message is not None and self._handle_safely(message):
                    heard = loop.time()
                if loop.time() - heard > 3 * self._heartbeat_seconds:
                    raise _Deaf("no heartbeat of our own came back")
        finally:
            self._confirmed.clear()
            await pubsub.aclose()
            await client.aclose()

    async def _sync_subscriptions(self, pubsub: PubSub, subscribed: set[str]) -> None:
        self._changed.clear()
        wanted = set(self._wanted)
        added, removed = wanted - subscribed, subscribed - wanted
        if added:
            await pubsub.subscribe(*(self._channel_prefix + name for name in added))
        if removed:
            await pubsub.unsubscribe(*(self._channel_prefix + name for name in removed))
            self._confirmed.difference_update(removed)
        subscribed.clear()
        subscribed.update(wanted)

    def _handle_safely(self, message: dict[str, Any]) -> bool:
        # A fault while delivering one message must not kill the listener.
        try:
            return self._handle(message)
        except Exception:
            logger.exception("handling a broker message failed")
            return False

    def _handle(self, message: dict[str, Any]) -> bool:
        """Act on one pub/sub message; True if it was our own heartbeat."""
        kind = message["type"]
        name = message["channel"].decode()
        if kind == "subscribe" and name.startswith(self._channel_prefix):
            channel = name[len(self._channel_prefix) :]
            self._confirmed.add(channel)
            for waiter in self._waiters.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
            return False
        if kind != "message":
            return False
        data: bytes = message["data"]
        origin, _, payload = data.partition(_SEPARATOR)
        if origin + _SEPARATOR == self._origin:
            return payload == _HEARTBEAT
        if name == self._control_channel:
            if payload != _HEARTBEAT:
                self._on_control(payload)
        elif name.startswith(self._channel_prefix):
            self._deliver(name[len(self._channel_prefix) :], payload)
        return False

    async def _publish_loop(self) -> None:
        assert self._publisher is not None
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty() and len(batch) < 512:
                batch.append(self._pending.get_nowait())
            self._pending_bytes -= sum(
                len(payload) - len(self._origin) for _, payload in batch
            )
            try:
                async with self._publisher.pipeline(transaction=False) as pipe:
                    for redis_channel, payload in batch:
                        pipe.publish(redis_channel, payload)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The listener notices the outage too and logs it once.
                self._metrics.broker_dropped.inc(len(batch))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            if self._up:
                self._enqueue(self._control_channel, _HEARTBEAT)

    # One WARNING when Redis is lost, one INFO when it is back: no log spam
    # however long the outage lasts.

    def _set_up(self) -> None:
        self._up = True
        self._metrics.broker_up.set(1)
        if self._warned:
            logger.info("broker reconnected to %s", self._safe_url)
            self._on_resumed()
        else:
            logger.info("broker connected to %s", self._safe_url)
        self._warned = False

    def _set_down(self, exc: BaseException | None) -> None:
        self._up = False
        self._metrics.broker_up.set(0)
        if exc is not None and not self._warned:
            self._warned = True
            logger.warning(
                "broker unreachable at %s (%s); local delivery continues, retrying",
                self._safe_url,
                type(exc).__name__,
            )
