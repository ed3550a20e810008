"""Cross-instance fan-out: the broker interface and its factory.

The hub delivers every message to its own subscribers itself and hands the
already-encoded frame to the broker, which carries it to the other instances.
A broker never delivers an instance's own messages back to it, so each
subscriber gets each message exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..config import Settings
from ..errors import ConfigError
from ..metrics import Metrics

__all__ = ["Broker", "ControlHandler", "Deliver", "open_broker"]

# Called with a channel name and an encoded frame that arrived from another
# instance; hands it to the local subscribers without awaiting.
Deliver = Callable[[str, bytes], object]
# Called with a control message (liminal's own instance-to-instance traffic).
ControlHandler = Callable[[bytes], object]


class Broker(Protocol):
    """What the hub needs from cross-instance fan-out."""

    async def start(
        self,
        deliver: Deliver,
        on_control: ControlHandler,
        on_resumed: Callable[[], object] = lambda: None,
    ) -> None:
        """Begin carrying messages; ``deliver`` receives other instances' ones.

        ``on_resumed`` is called when the broker is back after an outage, in
        which other instances' control messages may have been lost.
        """

    async def stop(self) -> None:
        """Stop and release every connection."""

    def publish(self, channel: str, frame: bytes) -> None:
        """Send ``frame`` to the other instances' subscribers; never blocks."""

    def publish_control(self, message: bytes) -> None:
        """Send a control message to every other instance; never blocks."""

    def channel_added(self, channel: str) -> None:
        """This instance has a first local subscriber of ``channel``."""

    def channel_removed(self, channel: str) -> None:
        """This instance's last local subscriber of ``channel`` left."""

    async def subscribed(self, channel: str, timeout: float = 1.0) -> bool:
        """Wait (at most ``timeout``) until other instances' messages on
        ``channel`` reach this one; False if they may not yet."""


def open_broker(settings: Settings, metrics: Metrics) -> Broker:
    """The broker the settings ask for: Redis with a URL, else in-process."""
    if settings.broker_url is None:
        from .memory import MemoryBroker

        return MemoryBroker()
    from .redis import RedisBroker

    url = settings.broker_url.get_secret_value()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "LIMINAL_BROKER_URL must look like redis://[:password@]host:port/db "
            "(or rediss:// for TLS)"
        )
    return RedisBroker(
        url,
        prefix=settings.broker_prefix,
        instance_id=settings.instance_id,
        metrics=metrics,
    )
