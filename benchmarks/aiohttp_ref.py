"""Yardstick for ``liminal bench``: the smallest pub/sub server on aiohttp.

It speaks liminal's event protocol (subscribe, message) and nothing else: no
authentication, no limits, no metrics. Each publish is encoded once and sent
to every subscriber with aiohttp's own ``send_str``, the way a plain aiohttp
application would do it.

Run: ``python benchmarks/aiohttp_ref.py --port 0``; it logs the port it bound.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import WSMsgType, web
from refcommon import message_json, serve

CHANNELS: web.AppKey[dict[str, set[web.WebSocketResponse]]] = web.AppKey("channels")


async def _endpoint(request: web.Request) -> web.WebSocketResponse:
    channels = request.app[CHANNELS]
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    joined: set[str] = set()
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            channel = event["channel"]
            if event["type"] == "subscribe":
                channels.setdefault(channel, set()).add(ws)
                joined.add(channel)
                await ws.send_str(
                    json.dumps({"type": "subscribe_success", "channel": channel})
                )
            elif event["type"] == "message":
                text = message_json(channel, event["content"])
                for member in tuple(channels.get(channel, ())):
                    if not member.closed:
                        await member.send_str(text)
    finally:
        for channel in joined:
            channels[channel].discard(ws)
    return ws


async def _main(host: str, port: int) -> None:
    app = web.Application()
    app[CHANNELS] = {}
    app.router.add_get("/ws", _endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0]
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    serve(__doc__.splitlines()[0], _main)
