// The peer's server for scripts/bench.sh: one Node process running Socket.IO with its
// Redis adapter, set up as its documentation shows and nothing more, so that what the
// benchmark measures is Socket.IO's own cost per connection and per delivery.
//
//   node server.mjs --port 52051 --redis redis://127.0.0.1:6392
//
// A client passes `user` (and `group`, if any) in its handshake `auth` (or query); the
// server joins it to the rooms `u:<user>` and `g:<group>`. The backend pushes through
// Redis with @socket.io/redis-emitter (loadgen.mjs does), to one of those rooms or to
// all. The server does no work per message beyond Socket.IO's.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const { values: opt } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "52051" },
    redis: { type: "string", default: "redis://127.0.0.1:6379" },
  },
});

const pubClient = createClient({ url: opt.redis });
const subClient = pubClient.duplicate();
for (const [name, c] of [["pub", pubClient], ["sub", subClient]]) {
  // node-redis reconnects by itself; say so, because a subscriber that Redis dropped
  // (e.g. over client-output-buffer-limit pubsub) loses every message until it is back.
  c.on("error", (e) => console.error(`redis ${name} client: ${e.message}`));
  c.on("reconnecting", () => console.error(`redis ${name} client: reconnecting`));
}
await Promise.all([pubClient.connect(), subClient.connect()]);

const http = createServer();
// WebSocket only, as the clients use it: no long-polling upgrade dance. Everything else
// (perMessageDeflate off, pings every 25 s) is Socket.IO 4's default.
const io = new Server(http, { adapter: createAdapter(pubClient, subClient), transports: ["websocket"] });

io.on("connection", (socket) => {
  const hs = socket.handshake;
  const user = hs.auth?.user ?? hs.query?.user;
  const group = hs.auth?.group ?? hs.query?.group;
  if (typeof user !== "string" || user === "") {
    socket.disconnect(true);
    return;
  }
  // Joined in the same tick as the CONNECT packet is written, so a client that saw
  // "connect" is already in its rooms.
  socket.join(`u:${user}`);
  if (typeof group === "string" && group !== "") socket.join(`g:${group}`);
});

// Why connections fail, from the server's side (the load generator reports its side),
// summed and printed at most every 5 s so that a storm of them costs nothing per event.
const failures = new Map();
io.engine.on("connection_error", (err) => {
  const key = `${err.code} ${err.message}`;
  failures.set(key, (failures.get(key) ?? 0) + 1);
});
setInterval(() => {
  if (failures.size === 0) return;
  console.error(`connection errors: ${JSON.stringify(Object.fromEntries(failures))}`);
  failures.clear();
}, 5000).unref();

http.on("error", (e) => {
  console.error(`listen ${opt.host}:${opt.port}: ${e.message}`);
  process.exit(1);
});
http.listen(Number(opt.port), opt.host, () => {
  console.error(`socket.io server listening on ${opt.host}:${opt.port}, redis ${opt.redis}, pid ${process.pid}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
