"""What the Python reference servers share: command line, clock and event loop."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

SENDER = "bench"


def timestamp() -> str:
    """Now in UTC, ISO 8601 with milliseconds and a Z, as liminal writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_json(channel: str, content: Any) -> str:
    """The event every subscriber receives for one publish, encoded once."""
    event = {
        "type": "message",
        "channel": channel,
        "content": content,
        "sender": SENDER,
        "timestamp": timestamp(),
    }
    return json.dumps(event, separators=(",", ":"))


def serve(
    description: str, main: Callable[[str, int], Coroutine[Any, Any, None]]
) -> None:
    """Parse ``--host``/``--port``, then run ``main(host, port)`` on uvloop if present."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
