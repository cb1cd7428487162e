// The Bun peer for Samvad's benchmarks (docs/BENCHMARKS.md): Bun's built-in WebSocket pub/sub,
// the least a chat fan-out can do in Bun, with nothing stored and nothing acknowledged.
//
//   bun deployment/bench/bun/server.js [PORT]      (or PORT=… in the environment)
//
// A client connects to ws://HOST:PORT/?user=NAME and is subscribed to the topic "u.NAME".
// Text frames from a client:
//   sub TOPIC            subscribe to TOPIC (rooms are "r.ROOM")
//   pub TOPIC PAYLOAD    send PAYLOAD, as is, to every other subscriber of TOPIC
//   ping                 answered with "pong"
const port = Number(Bun.argv[2] ?? process.env.PORT ?? 8090);

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    const user = new URL(req.url).searchParams.get("user") ?? "";
    if (server.upgrade(req, { data: { user } })) return;
    return new Response("WebSocket only\n", { status: 400 });
  },
  websocket: {
    // Bun pings idle clients and closes those that do not answer; the load clients answer.
    idleTimeout: 960,
    perMessageDeflate: false,
    open(ws) {
      if (ws.data.user) ws.subscribe("u." + ws.data.user);
    },
    message(ws, message) {
      const text = typeof message === "string" ? message : message.toString();
      if (text.startsWith("pub ")) {
        const space = text.indexOf(" ", 4);
        if (space > 4) ws.publish(text.slice(4, space), text.slice(space + 1));
      } else if (text.startsWith("sub ")) {
        ws.subscribe(text.slice(4));
      } else if (text === "ping") {
        ws.send("pong");
      }
    },
  },
});

console.log(`bun pub/sub listening on ws://${server.hostname}:${server.port}`);
