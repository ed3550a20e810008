"""liminal: a real-time messaging server that knows who may talk to whom."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Settings  # noqa: E402
from .errors import (  # noqa: E402
    AuthError,
    BrokerError,
    ConfigError,
    LiminalError,
    ProtocolError,
    StoreError,
)
from .protocol import CloseCode, ErrorCode  # noqa: E402

__all__ = [
    "AuthError",
    "BrokerError",
    "CloseCode",
    "ConfigError",
    "ErrorCode",
    "LiminalError",
    "ProtocolError",
    "Settings",
    "StoreError",
    "__version__",
]
