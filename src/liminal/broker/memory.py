"""The in-process broker: one instance, nothing to carry."""

from __future__ import annotations

from collections.abc import Callable

from . import ControlHandler, Deliver

__all__ = ["MemoryBroker"]


class MemoryBroker:
    """Broker of a single instance: the hub's local delivery is all there is."""

    async def start(
        self,
        deliver: Deliver,
        on_control: ControlHandler,
        on_resumed: Callable[[], object] = lambda: None,
    ) -> None:
        return None

    async def stop(self) -> None:
        return None

    def publish(self, channel: str, frame: bytes) -> None:
        return None

    def publish_control(self, message: bytes) -> None:
        return None

    def channel_added(self, channel: str) -> None:
        return None

    def channel_removed(self, channel: str) -> None:
        return None

    async def subscribed(self, channel: str, timeout: float = 1.0) -> bool:
        return True
