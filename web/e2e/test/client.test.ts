// @push/client from Node against a real system (gRPC-Web over the gateway's main port):
// delivery, resume, gaps, acks, groups left, token refresh, and when it reconnects or
// stops.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { randomBytes } from "node:crypto";
import { Audience, PushClient, tokenTimes, type CursorSnapshot, type PushClientOptions } from "@push/client";
import { DeliveryState } from "@push/client/gen";
import { Recorder } from "../src/recorder.js";
import { System } from "../src/system.js";
import { eventually, sleep } from "../src/wait.js";

const enc = (s: string) => new TextEncoder().encode(s);
const uid = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

describe("@push/client against a real gateway", () => {
  let sys: System;
  const clients: PushClient[] = [];

  before(async () => {
    // Two replicas (one may be crashed while the other takes pushes); tokens expire
    // exactly at `exp` and streams are checked every second, so a token the client
    // failed to refresh would end its stream.
    sys = await System.start({ gateways: 2, gatewayArgs: ["--jwt-leeway", "0s", "--stream-lease", "3s"] });
  });
  after(async () => {
    await sys?.stop();
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.stop();
  });

  /** A device of `user` on gateway `gw`, with tokens from the test's auth service. */
  function device(user: string, options: Partial<PushClientOptions> = {}, gw = 0) {
    const tokens: string[] = [];
    const client = new PushClient({
      baseUrl: sys.gateways[gw]!.url,
      deviceId: "d1",
      getToken: async () => {
        const t = sys.deviceToken(user);
        tokens.push(t);
        return t;
      },
      backoff: { initialMs: 100, maxMs: 1000 },
      ...options,
    });
    clients.push(client);
    return { client, rec: new Recorder(client), tokens };
  }

  /** Pushes `text` to `user` through gateway `gw` with the publish key; the message id. */
  async function push(user: string, text: string, gw = 0): Promise<string> {
    const res = await sys.backend(sys.publishKey, gw).pushToUsers({ userIds: [user], topic: "test", payload: enc(text) });
    return res.messageId;
  }

  test("a pushed message arrives once, with its id, and moves the inbox cursor", async () => {
    const user = uid("ann");
    const { client, rec } = device(user);
    client.start();
    await rec.nth("connected");
    const ids = [await push(user, "m1"), await push(user, "m2"), await push(user, "m3")];
    await rec.text("m3");
    assert.deepEqual(rec.texts, ["m1", "m2", "m3"]);
    assert.deepEqual(
      rec.messages.map((m) => m.id),
      ids,
    );
    assert.equal(rec.messages[0]!.audience, Audience.USER);
    const inbox = client.cursors().find((c) => c.audience === "user");
    assert.ok(inbox && inbox.epoch !== "", "the inbox cursor has the epoch the stream reported");
    assert.equal(inbox.messageId, ids[2]);
  });

  test("a device that comes back with its saved cursors gets exactly what it missed", async () => {
    const user = uid("bob");
    const a = device(user);
    a.client.start();
    await a.rec.nth("connected");
    for (const t of ["m1", "m2", "m3"]) await push(user, t);
    await a.rec.text("m3");
    const saved: CursorSnapshot[] = JSON.parse(JSON.stringify(a.client.cursors())); // as in localStorage
    a.client.stop();

    for (const t of ["m4", "m5", "m6"]) await push(user, t);
    const b = device(user, { cursors: saved });
    b.client.start();
    await b.rec.text("m6");
    await push(user, "m7");
    await b.rec.text("m7");
    assert.deepEqual(b.rec.texts, ["m4", "m5", "m6", "m7"]);
    assert.equal(b.rec.of("gap").length, 0);
  });

  test("when its replica crashes it reconnects with backoff and misses nothing, once each, in order", async () => {
    const user = uid("cid");
    const [gw0] = sys.gateways;
    const { client, rec } = device(user, {}, 0);
    client.start();
    await rec.nth("connected");
    await push(user, "m1", 1);
    await rec.text("m1");

    await sys.crash(gw0!);
    for (const t of ["m2", "m3", "m4", "m5"]) await push(user, t, 1); // the other replica takes pushes meanwhile
    const d = await rec.nth("disconnected");
    assert.ok(d.retryIn >= 0 && d.retryIn <= 1000, `retryIn ${d.retryIn} within the backoff`);
    await sys.restart(gw0!);
    await rec.nth("connected", 2, 30_000);
    await push(user, "m6", 1);
    await rec.text("m6");
    assert.deepEqual(rec.texts, ["m1", "m2", "m3", "m4", "m5", "m6"]);
    assert.equal(rec.of("stopped").length, 0);
  });

  test("when its replica drains (SIGTERM) the stream ends UNAVAILABLE and it comes back, missing nothing", async () => {
    const user = uid("dan");
    const [gw0] = sys.gateways;
    const { client, rec } = device(user, {}, 0);
    client.start();
    await rec.nth("connected");
    await push(user, "d1", 1);
    await rec.text("d1");

    const stopping = gw0!.stop("SIGTERM");
    const d = await rec.nth("disconnected");
    assert.equal(d.status.codeName, "UNAVAILABLE", `drained: ${d.status.message}`);
    for (const t of ["d2", "d3", "d4"]) await push(user, t, 1);
    await stopping;
    await sys.restart(gw0!);
    await eventually("connected again", () => rec.of("connected").length >= 2, 30_000);
    await push(user, "d5", 1);
    await rec.text("d5");
    assert.deepEqual(rec.texts, ["d1", "d2", "d3", "d4", "d5"]);
    assert.equal(rec.of("stopped").length, 0);
  });

  test("a cursor the history cannot honour is a gap event, then what is retained follows", async () => {
    const user = uid("dee");
    await push(user, "g1");
    await push(user, "g2");
    const { client, rec } = device(user, { cursors: [{ audience: "user", groupId: "", epoch: "0", messageId: "0-0" }] });
    client.start();
    await rec.text("g2");
    assert.equal(rec.of("gap").length, 1, "one gap event");
    const [gap] = rec.of("gap");
    assert.ok(gap);
    assert.equal(gap.audience, "user");
    assert.equal(gap.previous?.epoch, "0");
    assert.notEqual(gap.epoch, "0");
    assert.deepEqual(rec.texts, ["g1", "g2"]);
    const gapAt = rec.events.findIndex((e) => e.kind === "gap");
    const firstMessageAt = rec.events.findIndex((e) => e.kind === "message");
    assert.ok(gapAt < firstMessageAt, "the gap is told before the messages after it");
  });

  test("ack sends what was handed to the app, never backwards, and a later stream without cursors starts there", async () => {
    const user = uid("eve");
    const { client, rec } = device(user, { deviceId: "acker" });
    client.start();
    await rec.nth("connected");
    const ids = [await push(user, "a1"), await push(user, "a2")];
    await rec.text("a2");

    const sent = await client.ack();
    assert.equal(sent.length, 1);
    assert.equal(sent[0]!.audience, "user");
    assert.equal(sent[0]!.messageId, ids[1]);
    const status = await sys.backend().getDeliveryStatus({ messageId: ids[1], audience: Audience.USER, userIds: [user] });
    assert.equal(status.deliveries[0]!.state, DeliveryState.DELIVERED);
    assert.deepEqual(status.deliveries[0]!.deviceIds, ["acker"]);

    assert.deepEqual(await client.ack(), [], "nothing new: nothing sent");
    assert.deepEqual(await client.ack([{ ...sent[0]!, messageId: ids[0]! }]), [], "an older position is not sent");
    client.stop();

    await push(user, "a3");
    const later = device(user, { deviceId: "acker" });
    later.client.start();
    await later.rec.text("a3");
    await push(user, "a4");
    await later.rec.text("a4");
    assert.deepEqual(later.rec.texts, ["a3", "a4"], "starts after the acknowledged a2");
  });

  test("a group left while connected: ack leaves its cursor out, for good, and acknowledges the rest", async () => {
    const user = uid("flo");
    const group = uid("crew");
    const admin = sys.backend();
    await admin.joinGroup({ groupId: group, userIds: [user] });
    const { client, rec } = device(user, { deviceId: "acker" });
    client.start();
    await rec.nth("connected");
    await admin.pushToGroup({ groupId: group, topic: "crew", payload: enc("c1") });
    const inboxId = await push(user, "i1");
    await rec.text("c1");
    await rec.text("i1");
    await admin.leaveGroup({ groupId: group, userIds: [user] });

    const sent = await client.ack();
    assert.deepEqual(
      sent.map((c) => c.audience),
      ["user"],
      "the inbox is acknowledged, the group's refused cursor left out",
    );
    const status = await admin.getDeliveryStatus({ messageId: inboxId, audience: Audience.USER, userIds: [user] });
    assert.equal(status.deliveries[0]!.state, DeliveryState.DELIVERED);
    assert.deepEqual(await client.ack(), [], "the refused cursor is not sent again");
  });

  test("ack() acknowledges only messages handed to the app: not where a new device starts from now", async () => {
    const user = uid("gil");
    const before = await push(user, "old"); // the inbox has a last id: FROM_NOW starts there
    const { client, rec } = device(user, { deviceId: "fresh" });
    client.start();
    await rec.nth("connected");
    const inbox = client.cursors().find((c) => c.audience === "user");
    assert.equal(inbox?.messageId, before, "the FROM_NOW position");
    assert.deepEqual(await client.ack(), [], "nothing was handed to the app");
    const status = await sys.backend().getDeliveryStatus({ messageId: before, audience: Audience.USER, userIds: [user] });
    assert.equal(status.deliveries[0]!.state, DeliveryState.PENDING, "the message before the stream is not acknowledged");

    const id = await push(user, "new");
    await rec.text("new");
    assert.deepEqual(
      (await client.ack()).map((c) => `${c.audience} ${c.messageId}`),
      [`user ${id}`],
    );
  });

  test("two groups left: ack leaves each refused cursor out, in turn (one per answer), and acknowledges the rest", async () => {
    const user = uid("hob");
    const [g1, g2] = [uid("one"), uid("two")];
    const admin = sys.backend();
    await admin.joinGroup({ groupId: g1, userIds: [user] });
    await admin.joinGroup({ groupId: g2, userIds: [user] });
    const a = device(user, { deviceId: "acker" });
    a.client.start();
    await a.rec.nth("connected");
    await admin.pushToGroup({ groupId: g1, topic: "g", payload: enc("x1") });
    await admin.pushToGroup({ groupId: g2, topic: "g", payload: enc("y1") });
    const inboxId = await push(user, "i1");
    for (const t of ["x1", "y1", "i1"]) await a.rec.text(t);
    // Positions saved by the app, acknowledged later from a client that has not heard of
    // the leaves (a stream may tell them as LEFT first, and the client then sends nothing).
    const saved = a.client.cursors().filter((c) => c.audience !== "all");
    assert.equal(saved.length, 3);
    a.client.stop();
    await admin.leaveGroup({ groupId: g1, userIds: [user] });
    await admin.leaveGroup({ groupId: g2, userIds: [user] });

    const later = device(user, { deviceId: "acker" }).client;
    const sent = await later.ack(saved);
    assert.deepEqual(
      sent.map((c) => c.audience),
      ["user"],
      "the gateway refuses one group per answer: both are left out, the inbox acknowledged",
    );
    const status = await admin.getDeliveryStatus({ messageId: inboxId, audience: Audience.USER, userIds: [user] });
    assert.equal(status.deliveries[0]!.state, DeliveryState.DELIVERED);
    assert.deepEqual(await later.ack(saved), [], "the refused cursors are not sent again");
  });

  test("a group left while away: its messages up to the leave, then a left event and the cursor is forgotten", async () => {
    const user = uid("fay");
    const group = uid("team");
    const admin = sys.backend();
    await admin.joinGroup({ groupId: group, userIds: [user] });
    const a = device(user);
    a.client.start();
    await a.rec.nth("connected");
    await admin.pushToGroup({ groupId: group, topic: "team", payload: enc("x1") });
    await a.rec.text("x1");
    assert.equal(a.rec.messages[0]!.groupId, group);
    const saved = a.client.cursors();
    assert.ok(saved.some((c) => c.audience === "group" && c.groupId === group));
    a.client.stop();

    await admin.pushToGroup({ groupId: group, topic: "team", payload: enc("x2") });
    await admin.leaveGroup({ groupId: group, userIds: [user] });
    await admin.pushToGroup({ groupId: group, topic: "team", payload: enc("x3") });
    const b = device(user, { cursors: saved });
    b.client.start();
    const left = await b.rec.nth("left");
    assert.equal(left.groupId, group);
    assert.deepEqual(b.rec.texts, ["x2"], "what was pushed while a member, not after");
    assert.ok(!b.client.cursors().some((c) => c.audience === "group"), "the group's cursor is forgotten");
  });

  test("tokens are refreshed before they expire, new stream before the old one closes: no disconnect, no loss", async () => {
    const user = uid("gus");
    const tokens: string[] = [];
    const { client, rec } = device(user, {
      // 7 s tokens: refreshed 5 s before exp (10% of the lifetime is less).
      getToken: async () => {
        const t = sys.deviceToken(user, 7);
        tokens.push(t);
        return t;
      },
    });
    client.start();
    await rec.nth("connected");
    const sent: string[] = [];
    // Push until the first token has been expired for two of the gateway's checks (every
    // second here): a stream still on it would have been ended with UNAUTHENTICATED.
    const firstExp = tokenTimes(tokens[0]!).exp!;
    for (let i = 1; Date.now() < (firstExp + 2) * 1000 || tokens.length < 3; i++) {
      const text = `r${i}`;
      await push(user, text);
      sent.push(text);
      await sleep(250);
      assert.ok(i < 200, "within 50 s");
    }
    await push(user, "last");
    sent.push("last");
    await rec.text("last");
    assert.deepEqual(rec.texts, sent);
    assert.equal(rec.of("disconnected").length, 0, "the refresh never interrupted the stream");
    assert.equal(rec.of("connected").length, 1);
  });

  test("a stream ended by the backend's Logout (UNAUTHENTICATED) comes back at once with a fresh token", async () => {
    const user = uid("hal");
    const { client, rec, tokens } = device(user, { deviceId: "phone" });
    client.start();
    await rec.nth("connected");
    await sys.backend().logout({ userId: user, sessionId: "phone" });
    const d = await rec.nth("disconnected");
    assert.equal(d.status.codeName, "UNAUTHENTICATED");
    assert.equal(d.retryIn, 0);
    await rec.nth("connected", 2);
    assert.equal(tokens.length, 2, "a fresh token for the new stream");
    await push(user, "back");
    await rec.text("back");
  });

  test("a getToken that fails is retried with backoff", async () => {
    const user = uid("ivy");
    let calls = 0;
    const { client, rec } = device(user, {
      getToken: async () => {
        if (++calls <= 2) throw new Error("auth service down");
        return sys.deviceToken(user);
      },
    });
    client.start();
    await rec.nth("connected");
    const ds = rec.of("disconnected");
    assert.equal(ds.length, 2);
    assert.ok(ds.every((d) => d.status.codeName === "UNAVAILABLE" && /auth service down/.test(d.status.message)));
    await push(user, "in");
    await rec.text("in");
  });

  test("a getToken that does not answer is given up on after tokenTimeoutMs: UNAVAILABLE, then a retry", async () => {
    const user = uid("ike");
    let calls = 0;
    const { client, rec } = device(user, {
      tokenTimeoutMs: 300,
      getToken: () => (++calls === 1 ? new Promise<string>(() => {}) : Promise.resolve(sys.deviceToken(user))),
    });
    client.start();
    await rec.nth("connected");
    const [d] = rec.of("disconnected");
    assert.equal(d?.status.codeName, "UNAVAILABLE");
    assert.match(d.status.message, /getToken/);
    await push(user, "in");
    await rec.text("in");
  });

  test("a Subscribe that does not answer is given up on after openTimeoutMs: UNAVAILABLE, then a retry", async () => {
    const user = uid("jay");
    let subscribes = 0;
    // The first Subscribe goes nowhere (a connection that hangs), as a broken proxy would.
    const hanging: typeof fetch = (input, init) => {
      if (String(input instanceof Request ? input.url : input).endsWith("/Subscribe") && ++subscribes === 1) {
        return new Promise((_, reject) => init?.signal?.addEventListener("abort", () => reject(init.signal!.reason)));
      }
      return fetch(input, init);
    };
    const { client, rec } = device(user, { openTimeoutMs: 2000, fetch: hanging }); // ample for a loaded debug gateway
    client.start();
    await rec.nth("connected");
    const [d] = rec.of("disconnected");
    assert.equal(d?.status.codeName, "UNAVAILABLE");
    assert.match(d.status.message, /Subscribe did not answer/);
    await push(user, "in");
    await rec.text("in");
  });

  test("an ingress answering 404 during a deploy (UNIMPLEMENTED) is retried until the gateway is back", async () => {
    const user = uid("kai");
    let subscribes = 0;
    const ingress: typeof fetch = (input, init) => {
      if (String(input instanceof Request ? input.url : input).endsWith("/Subscribe") && ++subscribes <= 2) {
        return Promise.resolve(new Response("404 page not found", { status: 404, headers: { "content-type": "text/plain" } }));
      }
      return fetch(input, init);
    };
    const { client, rec } = device(user, { fetch: ingress });
    client.start();
    await rec.nth("connected");
    assert.deepEqual(
      rec.of("disconnected").map((d) => d.status.codeName),
      ["UNIMPLEMENTED", "UNIMPLEMENTED"],
    );
    assert.equal(rec.of("stopped").length, 0);
    await push(user, "in");
    await rec.text("in");
  });

  test("UNAUTHENTICATED again with a fresh token stops the client", async () => {
    const user = uid("ida");
    let calls = 0;
    const { client, rec } = device(user, {
      getToken: async () => {
        calls++;
        return sys.forgedToken(user);
      },
    });
    client.start();
    const stopped = await rec.nth("stopped");
    assert.equal(stopped.status?.codeName, "UNAUTHENTICATED");
    assert.equal(calls, 2, "one retry with a fresh token, then stop");
    assert.equal(client.running, false);
  });

  test("a newer stream of the same device replaces it: ABORTED stops the client", async () => {
    const user = uid("jon");
    const { client, rec } = device(user, { deviceId: "tablet" });
    client.start();
    await rec.nth("connected");
    const admin = sys.backend();
    const others = new AbortController();
    const opened: Promise<void>[] = [];
    // --max-streams-per-device is 4: the fifth stream of the device replaces the oldest.
    for (let i = 0; i < 4; i++) {
      opened.push(
        (async () => {
          try {
            for await (const _ of admin.subscribe({ userId: user, deviceId: "tablet" }, { signal: others.signal }));
          } catch {
            // ended by the abort below
          }
        })(),
      );
    }
    try {
      const stopped = await rec.nth("stopped");
      assert.equal(stopped.status?.codeName, "ABORTED");
      assert.equal(rec.of("disconnected").length, 0, "not retried");
    } finally {
      others.abort();
      await Promise.all(opened);
    }
  });

  test("Disconnect: reconnect=true comes back, reconnect=false (a ban) stops with PERMISSION_DENIED", async () => {
    const user = uid("kim");
    const { client, rec } = device(user);
    client.start();
    await rec.nth("connected");
    const admin = sys.backend();
    await admin.disconnect({ userId: user, reason: "move along", reconnect: true });
    const d = await rec.nth("disconnected");
    assert.equal(d.status.codeName, "UNAVAILABLE");
    await rec.nth("connected", 2);
    await admin.disconnect({ userId: user, reason: "banned", reconnect: false });
    const stopped = await rec.nth("stopped");
    assert.equal(stopped.status?.codeName, "PERMISSION_DENIED");
  });

  test("strictResume: a cursor that cannot be honoured stops with FAILED_PRECONDITION, delivering nothing", async () => {
    const user = uid("lou");
    await push(user, "s1");
    const { client, rec } = device(user, {
      strictResume: true,
      cursors: [{ audience: "user", groupId: "", epoch: "0", messageId: "0-0" }],
    });
    client.start();
    const stopped = await rec.nth("stopped");
    assert.equal(stopped.status?.codeName, "FAILED_PRECONDITION");
    assert.deepEqual(stopped.resync, { audience: "user", groupId: "" }, "it names the history to resync");
    assert.deepEqual(rec.texts, []);
    // The app resyncs the history (ListHistory), sets a fresh cursor and starts again.
    const history = await sys.backend().listHistory({ audience: Audience.USER, userId: user, oldestFirst: true });
    const last = history.messages.at(-1)!;
    client.setCursor({ audience: "user", groupId: "", epoch: history.epoch, messageId: last.id });
    client.start();
    await rec.nth("connected");
    await push(user, "s2");
    await rec.text("s2");
    assert.deepEqual(rec.texts, ["s2"]);
  });

  test("stop() ends the stream: nothing more arrives and the device goes offline", async () => {
    const user = uid("max");
    const { client, rec } = device(user, { deviceId: "watch" });
    client.start();
    await rec.nth("connected");
    const admin = sys.backend();
    await eventually("online", async () => (await admin.getPresence({ userIds: [user] })).presences[0]!.online);
    client.stop();
    assert.deepEqual(rec.of("stopped").at(-1), {});
    await eventually("offline", async () => !(await admin.getPresence({ userIds: [user] })).presences[0]!.online);
    await push(user, "after");
    await sleep(300);
    assert.deepEqual(rec.texts, []);
  });
});
