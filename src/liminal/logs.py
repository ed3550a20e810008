"""Logging set-up: one line per record, with context fields appended."""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["configure", "redact"]

# Keys passed through ``extra=`` that are worth printing, in this order.
CONTEXT_KEYS = ("instance", "conn_id", "user", "ip", "channel", "code", "reason")

# Last line of defence, applied to every formatted line (libraries' too, such
# as a malformed request line echoed by aiohttp): anything shaped like a JWT,
# and the values of token or password parameters.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_SECRET_PARAMETER = re.compile(
    r"((?:token|access_token|password|passwd|secret)(?:=|%3D))[^&\s\"']+", re.I
)


def redact(text: str) -> str:
    """``text`` with tokens and password parameters replaced."""
    text = _JWT.sub("<redacted-token>", text)
    return _SECRET_PARAMETER.sub(r"\1<redacted>", text)


class ContextFormatter(logging.Formatter):
    """Formats ``extra`` context as ``key=value`` after the message."""

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        context = " ".join(
            f"{key}={getattr(record, key)}"
            for key in CONTEXT_KEYS
            if hasattr(record, key)
        )
        if not context:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} {context}{newline}{rest}"


def configure(level: str) -> None:
    """Log to standard error at ``level`` (liminal) and WARNING (libraries)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("liminal").setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(level)
