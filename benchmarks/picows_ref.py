"""Yardstick for ``liminal bench``: the smallest pub/sub server on picows.

The same event protocol as liminal (subscribe, message) with nothing else: no
authentication, no limits, no HTTP routes. picows is the fastest Python
WebSocket library measured for liminal, so this marks what Python can reach.

Run: ``python benchmarks/picows_ref.py --port 0``; it logs the port it bound.
"""

from __future__ import annotations

import json

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)
from refcommon import message_json, serve


class _Member(WSListener):  # type: ignore[misc]
    """One connection; ``channels`` is the registry shared by all of them."""

    def __init__(self, channels: dict[str, set[WSTransport]]) -> None:
        self.channels = channels
        self.joined: set[str] = set()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for channel in self.joined:
            self.channels[channel].discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        event = json.loads(frame.get_payload_as_bytes())
        channel = event["channel"]
        if event["type"] == "subscribe":
            self.channels.setdefault(channel, set()).add(transport)
            self.joined.add(channel)
            reply = {"type": "subscribe_success", "channel": channel}
            transport.send(WSMsgType.TEXT, json.dumps(reply).encode())
        elif event["type"] == "message":
            payload = message_json(channel, event["content"]).encode()
            for member in tuple(self.channels.get(channel, ())):
                member.send(WSMsgType.TEXT, payload)


async def _main(host: str, port: int) -> None:
    channels: dict[str, set[WSTransport]] = {}

    def accept(request: WSUpgradeRequest) -> _Member:
        return _Member(channels)

    server = await ws_create_server(accept, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    serve(__doc__.splitlines()[0], _main)
