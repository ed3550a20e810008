"""Exception hierarchy: one root, one subclass per party that must react."""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BrokerError",
    "ConfigError",
    "LiminalError",
    "ProtocolError",
    "StoreError",
]


class LiminalError(Exception):
    """Root of every error liminal raises on purpose."""


class ConfigError(LiminalError):
    """The operator must fix a setting before the server can start."""


class AuthError(LiminalError):
    """The client's credentials are not acceptable.

    Args:
        code: the WebSocket close code to send (4001 invalid, 4002 expired).
        reason: a short explanation safe to show the client (no secrets).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ProtocolError(LiminalError):
    """A client event could not be accepted; answered with an error event.

    Args:
        code: the error-event code (4000 malformed, 4003, 4004, 4029, ...).
        message: what was wrong, for the client.
        event_id: the ``id`` of the offending event, echoed when known.
        channel: the channel the event named, echoed when known.
        retry_after: for 4029, seconds until the event would be accepted.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        event_id: str | int | None = None,
        channel: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id
        self.channel = channel
        self.retry_after = retry_after


class StoreError(LiminalError):
    """The graph store failed or is unreachable."""


class BrokerError(LiminalError):
    """The cross-instance broker failed or is unreachable."""
