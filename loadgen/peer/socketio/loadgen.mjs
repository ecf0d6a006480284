// The peer's load generator for scripts/bench.sh: push-loadgen's shapes, metric
// definitions and output lines (loadgen/src/main.rs), against the Socket.IO server in
// server.mjs, pushing the way a Socket.IO backend does: @socket.io/redis-emitter
// publishing through Redis to a room per user (`u:<id>`), a room per group (`g:<id>`)
// or to all.
//
//   node loadgen.mjs --target http://127.0.0.1:52051 --redis redis://127.0.0.1:6392 \
//     --streams 5000 --mode all --rate 4 --pushers 2 --duration 30s
//
// It opens `--streams` clients, one WebSocket connection each (websocket transport only,
// no reconnection), at most `--connect-concurrency` at a time, and says how many failed
// to open and why. Then `--pushers` concurrent loops publish, at `--rate` pushes/s in
// total or, with rate 0, as fast as Redis acknowledges the PUBLISH (so at most
// `--pushers` publishes are in flight), for `--duration`, and it drains for `--drain`.
// Each payload starts with the push's sequence number and its send time (µs, this
// machine's clock), so every receipt yields a latency and the last receipt of each
// message its fan-out latency.
//
// One process, on purpose: it is what the earlier comparison (shared/DESIGN.md) ran,
// and on the 2-core benchmark machine a second loader process would only take CPU from
// the server it measures. Its own CPU per delivery is printed at the end, so a run in
// which the loader rather than the server was the limit shows as such.
//
// Expected deliveries count only clients that opened and are still connected when the
// push is sent: `all` expects one per connected client, `groups` one per connected
// member of the group, and `users` picks its user among the clients that opened (a push
// to a user with no connection costs Socket.IO nothing and would flatter it) and expects
// one if that client is still connected. A PUBLISH that reached no server (Redis answered
// 0 subscribers) counts as a push error, like a failed push call in push-loadgen.
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";

// === arguments (push-loadgen's names and defaults) ===

const { values: a } = parseArgs({
  options: {
    target: { type: "string", default: "http://127.0.0.1:52051" },
    redis: { type: "string", default: "redis://127.0.0.1:6379" },
    streams: { type: "string", default: "1000" },
    mode: { type: "string", default: "all" },
    rate: { type: "string", default: "0" },
    duration: { type: "string", default: "10s" },
    drain: { type: "string", default: "5s" },
    hold: { type: "string", default: "0s" },
    payload: { type: "string", default: "132" },
    groups: { type: "string", default: "10" },
    "users-per-push": { type: "string", default: "1" },
    pushers: { type: "string", default: "8" },
    prefix: { type: "string", default: "lg" },
    "connect-concurrency": { type: "string", default: "256" },
    "max-pushes": { type: "string", default: "5000000" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (a.help) {
  console.log(
    "node loadgen.mjs [--target URL] [--redis URL] [--streams N] [--mode all|users|groups] [--rate R]\n" +
      "  [--duration 10s] [--drain 5s] [--hold 0s] [--payload 132] [--groups 10] [--users-per-push 1]\n" +
      "  [--pushers 8] [--prefix lg] [--connect-concurrency 256] [--max-pushes 5000000]",
  );
  process.exit(0);
}

function duration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(s);
  if (!m) fail(`not a duration: ${s} (e.g. 500ms, 10s, 2m)`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2]];
}
function count(s, name) {
  const n = Number(s);
  if (!Number.isFinite(n) || n < 0) fail(`--${name} must be a non-negative number`);
  return n;
}
function fail(msg) {
  console.error(`error: ${msg}`);
  process.exit(2);
}

const MODES = { all: "All", users: "Users", groups: "Groups" };
if (!(a.mode in MODES)) fail(`--mode must be one of ${Object.keys(MODES).join(", ")}`);
const args = {
  target: a.target,
  redis: a.redis,
  streams: Math.floor(count(a.streams, "streams")),
  mode: a.mode,
  rate: count(a.rate, "rate"),
  durationMs: duration(a.duration),
  drainMs: duration(a.drain),
  holdMs: duration(a.hold),
  hold: a.hold,
  payload: Math.max(32, Math.floor(count(a.payload, "payload"))),
  groups: Math.floor(count(a.groups, "groups")),
  usersPerPush: Math.max(1, Math.floor(count(a["users-per-push"], "users-per-push"))),
  pushers: Math.floor(count(a.pushers, "pushers")),
  prefix: a.prefix,
  connectConcurrency: Math.max(1, Math.floor(count(a["connect-concurrency"], "connect-concurrency"))),
  maxPushes: Math.floor(count(a["max-pushes"], "max-pushes")),
};
if (!(args.streams > 0 && args.groups > 0 && args.pushers > 0)) fail("streams, groups and pushers must be positive");

const user = (i) => `${args.prefix}-u${i}`;
const group = (g) => `${args.prefix}-g${g}`;
// This machine's clock in µs, as a double: exact to well under a µs at today's epoch.
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

// === measurements ===

// Latency histogram in µs: exact below 2,048 µs, then 1,024 buckets per power of two
// (0.1% resolution, like push-loadgen's HdrHistogram with 3 significant digits).
class Histogram {
  constructor() {
    this.counts = new Float64Array(2048 + 32 * 1024);
    this.total = 0;
    this.max = 0;
  }
  static bucket(v) {
    if (v < 2048) return v;
    const e = 31 - Math.clz32(v);
    return 2048 + (e - 11) * 1024 + ((v >>> (e - 10)) - 1024);
  }
  static highest(b) {
    if (b < 2048) return b;
    const e = Math.floor((b - 2048) / 1024) + 11;
    const m = (b - 2048) % 1024 + 1024;
    return ((m + 1) * 2 ** (e - 10)) - 1;
  }
  record(us) {
    const v = Math.min(Math.max(1, Math.round(us)), 2 ** 31 - 1);
    this.counts[Histogram.bucket(v)]++;
    this.total++;
    if (v > this.max) this.max = v;
  }
  quantile(q) {
    if (q >= 1) return this.max;
    const want = Math.max(1, Math.ceil(q * this.total));
    let seen = 0;
    for (let b = 0; b < this.counts.length; b++) {
      seen += this.counts[b];
      if (seen >= want) return Math.min(Histogram.highest(b), this.max);
    }
    return this.max;
  }
  pct(q) {
    return this.total === 0 ? "-" : `${(this.quantile(q) / 1000).toFixed(2)} ms`;
  }
}

// A Float64Array that grows as sequence numbers do (push-loadgen preallocates
// --max-pushes of them; most runs use a small part).
class Times {
  constructor() {
    this.v = new Float64Array(1 << 16);
  }
  get(i) {
    return i < this.v.length ? this.v[i] : 0;
  }
  set(i, x) {
    if (i >= this.v.length) {
      let n = this.v.length;
      while (n <= i) n *= 2;
      const w = new Float64Array(n);
      w.set(this.v);
      this.v = w;
    }
    this.v[i] = x;
  }
}

const latency = new Histogram();
const sent = new Times();
const lastRx = new Times();
let deliveries = 0;
let expected = 0;
let pushed = 0;
let firstSend = Infinity;
let lastReceipt = 0;
const pushErrors = new Map();
const streamEnds = new Map();
const openFailures = new Map();
const bump = (m, k) => m.set(k, (m.get(k) ?? 0) + 1);
// push-loadgen prints its maps (BTreeMaps) with Rust's Debug: {} or {"reason": n, ...}.
const byKey = ([x], [y]) => (x < y ? -1 : x > y ? 1 : 0);
const show = (m) => `{${[...m].sort(byKey).map(([k, v]) => `${JSON.stringify(k)}: ${v}`).join(", ")}}`;

function onPush(p) {
  const now = nowUs();
  if (typeof p !== "string") return;
  const i = p.indexOf(":");
  const j = p.indexOf(":", i + 1);
  const seq = +p.slice(0, i);
  const sentUs = +p.slice(i + 1, j);
  latency.record(now - sentUs);
  if (now > lastRx.get(seq)) lastRx.set(seq, now);
  deliveries++;
  if (now > lastReceipt) lastReceipt = now;
}

// === the backend's Redis connection ===

// Connected before the clients, as push-loadgen joins its groups first: with the
// descriptors all taken by clients, node-redis would retry forever instead of failing.
const redis = createClient({ url: args.redis, socket: { connectTimeout: 5000, reconnectStrategy: false } });
redis.on("error", (e) => bump(pushErrors, `redis: ${e.message}`));
await redis.connect().catch((e) => fail(`redis ${args.redis}: ${e.message}`));
// The emitter publishes and returns `true`, dropping the reply. This stand-in for its
// client keeps the promise of the PUBLISH it just made, so a pusher can await Redis's
// answer (and the number of subscribers that got it) as push-loadgen awaits its call.
let published;
const emitter = new Emitter({ publish: (channel, msg) => (published = redis.publish(channel, msg)) });

// === open the clients ===

const connected = new Uint8Array(args.streams);
const groupOpen = new Float64Array(args.groups);
let open = 0;

// Why an open failed: Socket.IO's reason plus the socket error under it when there is one
// (e.g. "websocket error: ECONNREFUSED", "timeout").
function reasonOf(err) {
  const d = err?.description;
  const cause = d?.error?.code ?? d?.error?.message ?? d?.code ?? (typeof d === "string" ? d : d?.message);
  return cause ? `${err.message}: ${cause}` : String(err?.message ?? err);
}

function openClient(i) {
  return new Promise((resolve) => {
    const g = i % args.groups;
    const s = io(args.target, {
      transports: ["websocket"],
      forceNew: true, // a connection of its own, never a shared Manager
      reconnection: false, // a client that drops stays dropped and is counted
      timeout: 10_000,
      auth: args.mode === "groups" ? { user: user(i), group: group(g) } : { user: user(i) },
    });
    s.on("push", onPush);
    s.once("connect", () => {
      connected[i] = 1;
      open++;
      groupOpen[g]++;
      s.once("disconnect", (reason, desc) => {
        connected[i] = 0;
        open--;
        groupOpen[g]--;
        const cause = desc?.description?.code ?? desc?.description?.message;
        bump(streamEnds, cause ? `${reason}: ${cause}` : reason);
      });
      resolve(true);
    });
    s.once("connect_error", (err) => {
      s.close();
      bump(openFailures, reasonOf(err));
      resolve(false);
    });
  });
}

const opening = performance.now();
let nextClient = 0;
await Promise.all(
  Array.from({ length: Math.min(args.connectConcurrency, args.streams) }, async () => {
    while (nextClient < args.streams) await openClient(nextClient++);
  }),
);
const failed = [...openFailures.values()].reduce((x, y) => x + y, 0);
console.error(`opened ${open} streams in ${((performance.now() - opening) / 1000).toFixed(1)}s (${failed} failed) over ${open} connections`);
for (const [why, n] of [...openFailures].sort(byKey)) console.error(`  ${n} failed to open: ${why}`);
if (open === 0) fail(`no stream could be opened against ${args.target}`);
const opened = [];
for (let i = 0; i < args.streams; i++) if (connected[i]) opened.push(i);

if (args.holdMs > 0) {
  console.error(`holding ${open} idle streams for ${args.hold}`);
  await sleep(args.holdMs);
}
if (args.durationMs === 0) {
  console.log(`held ${open} streams; no pushes (--duration 0s)`);
  process.exit(0);
}

// === push ===

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// A small xorshift per pusher: cheap spread, not cryptographic randomness.
function rng(id) {
  let x = (0x9e3779b9 ^ Math.imul(id + 1, 0x2545f491)) >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

const start = performance.now();
let nextSeq = 0;
const pad = "x".repeat(args.payload);
async function pushLoop(id) {
  const below = rng(id);
  for (;;) {
    const seq = nextSeq++;
    if (seq >= args.maxPushes || performance.now() - start >= args.durationMs) break;
    if (args.rate > 0) {
      const at = (seq / args.rate) * 1000;
      if (at >= args.durationMs) break;
      const wait = start + at - performance.now();
      if (wait > 0) await sleep(wait);
    }
    const t = nowUs();
    const head = `${seq}:${t}:`;
    const payload = head + pad.slice(0, Math.max(0, args.payload - head.length));
    sent.set(seq, t);
    if (t < firstSend) firstSend = t;
    let receivers;
    if (args.mode === "all") {
      emitter.emit("push", payload);
      receivers = open;
    } else if (args.mode === "users") {
      const targets = new Set();
      for (let k = 0; k < args.usersPerPush; k++) targets.add(opened[below(opened.length)]);
      emitter.to([...targets].map((i) => `u:${user(i)}`)).emit("push", payload);
      receivers = 0;
      for (const i of targets) receivers += connected[i];
    } else {
      const g = below(args.groups);
      emitter.to(`g:${group(g)}`).emit("push", payload);
      receivers = groupOpen[g];
    }
    try {
      const servers = await published;
      if (servers > 0) {
        pushed++;
        expected += receivers;
      } else {
        sent.set(seq, 0);
        bump(pushErrors, "no subscriber (PUBLISH reached no server)");
      }
    } catch (e) {
      sent.set(seq, 0);
      bump(pushErrors, e.message);
    }
  }
}

const cpuAtStart = process.cpuUsage();
let last = { d: 0, p: 0 };
const progress = setInterval(() => {
  const errors = [...pushErrors.values()].reduce((x, y) => x + y, 0);
  console.error(
    `[${((performance.now() - start) / 1000).toFixed(1).padStart(5)}s] pushes ${pushed} (${pushed - last.p}/s)  deliveries ${deliveries} (${deliveries - last.d}/s)  push errors ${errors}  open streams ${open}`,
  );
  last = { d: deliveries, p: pushed };
}, 1000);
await Promise.all(Array.from({ length: args.pushers }, (_, id) => pushLoop(id)));
const pushingS = (performance.now() - start) / 1000;
const drainUntil = performance.now() + args.drainMs;
while (deliveries < expected && performance.now() < drainUntil) await sleep(50);
clearInterval(progress);
const cpu = process.cpuUsage(cpuAtStart);

// === report, in push-loadgen's lines ===

const windowS = Math.max(0, lastReceipt - firstSend) / 1e6;
const fanout = new Histogram();
for (let seq = 0; seq < nextSeq; seq++) {
  const s = sent.get(seq);
  const r = lastRx.get(seq);
  if (s > 0 && r > s) fanout.record(r - s);
}
console.log(
  `mode ${MODES[args.mode]}, ${open} streams over ${open} connections, payload ${args.payload} B, pushers ${args.pushers}, rate ${args.rate > 0 ? `${args.rate}/s` : "max"}`,
);
console.log(`pushes        ${pushed} in ${pushingS.toFixed(2)}s (${(pushed / pushingS).toFixed(0)}/s)`);
console.log(`deliveries    ${deliveries} of ${expected} expected (${(expected > 0 ? (deliveries * 100) / expected : 0).toFixed(3)}%)`);
console.log(
  `deliveries/s  ${(windowS > 0 ? deliveries / windowS : 0).toFixed(0)}  (all deliveries / (last receipt - first send) = ${windowS.toFixed(2)}s)`,
);
console.log(`latency       p50 ${latency.pct(0.5)}  p99 ${latency.pct(0.99)}  max ${latency.pct(1)}  (push call to receipt, every delivery)`);
if (args.mode !== "users") {
  console.log(`fan-out       p50 ${fanout.pct(0.5)}  p99 ${fanout.pct(0.99)}  max ${fanout.pct(1)}  (push call to the last receiver, per message)`);
}
console.log(`push errors   ${show(pushErrors)}`);
console.log(`stream ends   ${show(streamEnds)}  (open failures: ${failed} ${show(openFailures)})`);
const cpuMs = (cpu.user + cpu.system) / 1000;
console.log(
  `loadgen cpu   ${cpuMs.toFixed(0)} ms pushing and draining${deliveries > 0 ? `, ${((cpuMs * 1000) / deliveries).toFixed(1)} µs per delivery` : ""}`,
);
process.exit(0);
