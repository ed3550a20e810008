// Yardstick for `liminal bench`: the smallest pub/sub server on Node.js ws.
//
// It speaks liminal's event protocol (subscribe, message) and nothing else:
// no authentication, no limits. Each publish is encoded once into a Buffer
// and that Buffer is sent to every subscriber.
//
// Run: node server.js --port 0   (it logs the port it bound)
"use strict";

const { WebSocketServer } = require("ws");

const SENDER = "bench";

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const host = option("--host", "127.0.0.1");
const port = Number(option("--port", "0"));
const channels = new Map();

const server = new WebSocketServer({ host, port, backlog: 1024, perMessageDeflate: false });

server.on("listening", () => {
  const bound = server.address();
  console.log(`listening on http://${bound.address}:${bound.port}`);
});

server.on("connection", (ws) => {
  const joined = new Set();
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    const event = JSON.parse(data);
    const channel = event.channel;
    if (event.type === "subscribe") {
      if (!channels.has(channel)) channels.set(channel, new Set());
      channels.get(channel).add(ws);
      joined.add(channel);
      ws.send(JSON.stringify({ type: "subscribe_success", channel }));
    } else if (event.type === "message") {
      const frame = Buffer.from(JSON.stringify({
        type: "message",
        channel,
        content: event.content,
        sender: SENDER,
        timestamp: new Date().toISOString(),
      }));
      for (const member of channels.get(channel) || []) {
        member.send(frame, { binary: false });
      }
    }
  });
  ws.on("close", () => {
    for (const channel of joined) channels.get(channel).delete(ws);
  });
});

// Exit at once: ws does not close open connections when its server closes.
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
