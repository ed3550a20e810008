"""Logging set-up: one line per record, with context fields appended."""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["SECRET_PARAMETERS", "configure", "redact", "redact_parameters"]

# Keys passed through ``extra=`` that are worth printing, in this order.
CONTEXT_KEYS = ("instance", "conn_id", "user", "ip", "channel", "code", "reason")

# Names of query or form parameters whose values are never logged: the access
# log, URL masking and the last-line-of-defence redaction below all use them.
SECRET_PARAMETERS = frozenset(
    {"token", "access_token", "password", "passwd", "pass", "secret", "auth"}
)

# Applied to every formatted line (libraries' too, such as a malformed request
# line echoed by aiohttp): anything shaped like a JWT, and secret parameters.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_SECRET_PARAMETER = re.compile(
    r"((?:%s)(?:=|%%3D))[^&\s\"']+" % "|".join(sorted(SECRET_PARAMETERS)), re.I
)


def redact_parameters(text: str, placeholder: str = "<redacted>") -> str:
    """``text`` with the values of secret parameters replaced."""
    return _SECRET_PARAMETER.sub(lambda match: match.group(1) + placeholder, text)


def redact(text: str) -> str:
    """``text`` with tokens and secret parameters replaced."""
    return redact_parameters(_JWT.sub("<redacted-token>", text))


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
