"""Logging set-up: one line per record, with context fields appended."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure"]

# Keys passed through ``extra=`` that are worth printing, in this order.
CONTEXT_KEYS = ("instance", "conn_id", "user", "ip", "channel", "code", "reason")


class ContextFormatter(logging.Formatter):
    """Formats ``extra`` context as ``key=value`` after the message."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if hasattr(record, key)
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
