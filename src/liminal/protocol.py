"""The WebSocket protocol: codes, client events and the frames we send.

Client events are JSON objects with a ``type``. Parsing is strict: anything
that is not a well-formed event raises :class:`ProtocolError` with code 4000,
so the connection can answer with an error event and stay open.

Outgoing events are encoded to a complete WebSocket frame (header included)
once, so the same bytes can be written to every subscriber's transport.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import ProtocolError

__all__ = [
    "CHANNEL_PATTERN",
    "ClientEvent",
    "CloseCode",
    "ErrorCode",
    "dumps",
    "encode_event",
    "parse_event",
    "text_frame",
    "utc_timestamp",
    "valid_channel",
]

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9_\-.:@/]{1,128}")
MAX_ID_LENGTH = 128
# Far below CPython's 4300-digit int limit: a 20-digit integer fits, a number
# nobody sends as data does not, and parsing it never costs measurable CPU.
MAX_INT_DIGITS = 100

CLIENT_EVENT_TYPES = frozenset({"subscribe", "unsubscribe", "message"})


class CloseCode(enum.IntEnum):
    """WebSocket close codes liminal sends, with the client's reconnect advice."""

    NORMAL = 1000  # done; reconnect only if the application wants to
    GOING_AWAY = 1001  # server shutting down: reconnect with backoff
    PROTOCOL_ERROR = 1002  # broken WebSocket framing: fix the client first
    POLICY_VIOLATION = 1008  # e.g. kept flooding while rate limited: do not
    ABNORMAL = 1006  # never sent: recorded when the peer vanished without closing
    INVALID_TEXT = 1007  # a text frame that is not UTF-8: fix the client first
    MESSAGE_TOO_BIG = 1009  # message over the size limit: fix the client first
    INTERNAL_ERROR = 1011  # unexpected server fault: reconnect with backoff
    TRY_AGAIN_LATER = 1013  # temporary overload: reconnect with backoff
    INVALID_TOKEN = 4001  # bad, forged or revoked token: do not, get a new one
    TOKEN_EXPIRED = 4002  # reconnect with a fresh token
    SERVER_FULL = 4005  # reconnect with backoff
    TOO_MANY_FROM_IP = 4006  # reconnect with backoff
    SLOW_CONSUMER = 4008  # outbound queue overflowed: reconnect with backoff


class ErrorCode(enum.IntEnum):
    """Codes of error events; the connection stays open after each."""

    MALFORMED = 4000  # not JSON, not an object, unknown type, bad field
    FORBIDDEN = 4003  # not allowed on this channel
    CHANNEL_NOT_FOUND = 4004  # no such channel
    RATE_LIMITED = 4029  # too many events; see retry_after
    TOO_MANY_SUBSCRIPTIONS = 4030  # per-connection subscription cap reached
    INTERNAL = 5001  # the server failed this request


@dataclass(slots=True, frozen=True)
class ClientEvent:
    """One validated event from a client."""

    type: str
    channel: str
    content: Any = None
    id: str | int | None = None


def valid_channel(name: object) -> bool:
    """Tell whether ``name`` is a syntactically valid channel name."""
    return isinstance(name, str) and CHANNEL_PATTERN.fullmatch(name) is not None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    if value == 0.0 and any(
        digit in "123456789" for digit in text.lower().partition("e")[0]
    ):
        raise ValueError("number too small for a double")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


_decoder = json.JSONDecoder(
    parse_float=_parse_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
)


def _event_id(data: dict[str, Any]) -> str | int | None:
    event_id = data.get("id")
    if event_id is None:
        return None
    if isinstance(event_id, bool) or not isinstance(event_id, str | int):
        raise ProtocolError(ErrorCode.MALFORMED, "id must be a string or an integer")
    if isinstance(event_id, str) and len(event_id) > MAX_ID_LENGTH:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"id longer than {MAX_ID_LENGTH} characters"
        )
    if isinstance(event_id, int) and not -(2**63) <= event_id < 2**63:
        raise ProtocolError(ErrorCode.MALFORMED, "id out of the 64-bit range")
    return event_id


def parse_event(text: str) -> ClientEvent:
    """Decode and validate one client event.

    Integers of more than 100 digits, ``NaN``, ``Infinity`` and numbers that
    overflow a float are refused, so every accepted payload can be encoded
    again as standard JSON with the same value.

    Raises:
        ProtocolError: code 4000, with the event's ``id`` and ``channel``
            when they could be read.
    """
    try:
        data = _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and our own number checks;
        # RecursionError comes from thousands of nested arrays.
        raise ProtocolError(
            ErrorCode.MALFORMED, f"not valid JSON: {_short(exc)}"
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "an event must be a JSON object")

    event_id = _event_id(data)
    kind = data.get("type")
    channel = data.get("channel")
    echo = channel if valid_channel(channel) else None
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.MALFORMED, "missing string field: type", event_id=event_id
        )
    if kind not in CLIENT_EVENT_TYPES:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            "unknown type; expected subscribe, unsubscribe or message",
            event_id=event_id,
            channel=echo,
        )
    if not isinstance(channel, str):
        raise ProtocolError(
            ErrorCode.MALFORMED, "missing string field: channel", event_id=event_id
        )
    if echo is None:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            "invalid channel name: 1-128 letters, digits or _ - . : @ /",
            event_id=event_id,
        )
    if kind != "message":
        return ClientEvent(kind, channel, id=event_id)
    content = data.get("content")
    if content is None:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            "missing field: content (any JSON value but null)",
            event_id=event_id,
            channel=channel,
        )
    return ClientEvent(kind, channel, content, event_id)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact JSON; integers beyond 64 bits included."""
    try:
        return orjson.dumps(value)
    except TypeError:
        # orjson refuses integers beyond 64 bits and lone surrogates; the
        # standard library writes both as valid JSON.
        return json.dumps(value, separators=(",", ":")).encode()


def text_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in an unmasked, final WebSocket text frame."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def encode_event(event: dict[str, Any]) -> bytes:
    """Encode an outgoing event as a complete WebSocket frame."""
    return text_frame(dumps(event))


def utc_timestamp() -> str:
    """Now, in UTC, as ISO 8601 with millisecond precision and a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
