// @push/client against a scripted gateway (src/fakegateway.ts): what the real services
// cannot be made to do on cue. Gaps told once each, positions from states and ids,
// acks of what the app was handed, which statuses stop it, the backoff, token
// timing, the judging of a token refresh's new stream, and listeners that stop the
// client.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { afterEach, describe, test } from "node:test";
import { PushClient, type PushClientOptions } from "@push/client";
import { Code, Continuity, FakeGateway, msg, state } from "../src/fakegateway.js";
import { signHs256 } from "../src/jwt.js";
import { Recorder } from "../src/recorder.js";
import { eventually, sleep } from "../src/wait.js";

const E1 = "1700000000001";
const E2 = "1700000000002";
const { RESUMED, FROM_NOW, GAP, LEFT } = Continuity;

/** A JWT living `life` seconds from `iat` (default now); each one new. */
function jwt(life: number, iat = Math.floor(Date.now() / 1000), withIat = true): string {
  const claims = { sub: "ann", exp: iat + life, ...(withIat ? { iat } : {}), jti: randomBytes(6).toString("hex") };
  return signHs256(claims, "a-secret-the-fake-never-checks-000", "k");
}

describe("@push/client against a scripted gateway", () => {
  const clients: PushClient[] = [];
  afterEach(() => {
    for (const c of clients.splice(0)) c.stop();
  });

  /** A client of a new scripted gateway; an API key by default (never refreshed). */
  function setup(options: Partial<PushClientOptions> = {}) {
    const gw = new FakeGateway();
    const tokens: string[] = [];
    const client = new PushClient({
      transport: gw.transport,
      deviceId: "d1",
      getToken: async () => {
        tokens.push("an-api-key");
        return "an-api-key";
      },
      backoff: { initialMs: 10, maxMs: 100 },
      ...options,
    });
    clients.push(client);
    return { gw, client, rec: new Recorder(client), tokens };
  }

  const inbox = (client: PushClient) => {
    const c = client.cursors().find((c) => c.audience === "user");
    return c && `${c.epoch} ${c.messageId}`;
  };

  // ---- gaps, positions, ids, epochs ----

  test("a gap other than the last one told is told, with no message between and across a reconnect; the same one once", async () => {
    const { gw, client, rec } = setup();
    client.start();
    const a = await gw.call(1);
    a.send([state("user", E1, "0-0", GAP)]);
    await rec.nth("gap");
    a.send([state("user", E1, "0-0", GAP)]); // the same gap again: not told
    a.send([state("user", E1, "3-0", GAP)]); // another point: told
    await rec.nth("gap", 2);
    a.fail(Code.Unavailable);
    const b = await gw.call(2);
    b.send([state("user", E1, "3", GAP)]); // the same point ("3" is "3-0"): not told
    b.send([state("user", E2, "3-0", GAP)]); // another epoch: told
    await rec.nth("gap", 3);
    b.send([], [msg("user", "3-1", "after")]);
    await rec.text("after");
    assert.deepEqual(
      rec.of("gap").map((g) => `${g.epoch} ${g.messageId}`),
      [`${E1} 0-0`, `${E1} 3-0`, `${E2} 3-0`],
    );
  });

  test("a gap moves the position to the gateway's point even behind it, in the same epoch", async () => {
    const { gw, client, rec } = setup();
    client.start();
    const a = await gw.call(1);
    a.send([state("user", E1, "9-0", RESUMED)]);
    a.send([state("user", E1, "4-0", GAP)], [msg("user", "5-0")]);
    await rec.text("5-0");
    assert.equal(inbox(client), `${E1} 5-0`);
    assert.equal(rec.of("gap").length, 1);
  });

  test("a continuity the client does not know is a gap", async () => {
    const { gw, client, rec } = setup();
    client.start();
    const a = await gw.call(1);
    a.send([state("user", E1, "2-0", RESUMED), state("all", E1, "3-0", 99 as Continuity)]);
    const gap = await rec.nth("gap");
    assert.equal(gap.audience, "all");
  });

  test("ids: \"5\" is \"5-0\", and a message whose id does not parse is delivered, not tracked", async () => {
    const { gw, client, rec } = setup();
    client.start();
    const a = await gw.call(1);
    a.send([state("user", E1, "5", RESUMED)], [msg("user", "5-0"), msg("user", "5-1"), msg("user", "junk"), msg("user", "6")]);
    await rec.text("6");
    assert.deepEqual(rec.texts, ["5-1", "junk", "6"]);
    assert.equal(inbox(client), `${E1} 6`);
    await assert.rejects(async () => client.setCursor({ audience: "user", groupId: "", epoch: E1, messageId: "junk" }), TypeError);
  });

  test("epochs are strings: two epochs that are not numbers are different, and an ack in the later one is sent", async () => {
    const { gw, client, rec } = setup();
    client.start();
    const a = await gw.call(1);
    a.send([state("user", "a", "0-0", FROM_NOW)], [msg("user", "9-0")]);
    await rec.text("9-0");
    assert.deepEqual((await client.ack()).map((c) => `${c.epoch} ${c.messageId}`), ["a 9-0"]);
    a.send([state("user", "b", "1-0", RESUMED)], [msg("user", "2-0")]);
    await rec.text("2-0");
    assert.equal(inbox(client), "b 2-0");
    assert.deepEqual((await client.ack()).map((c) => `${c.epoch} ${c.messageId}`), ["b 2-0"]);
    assert.deepEqual(gw.acked, [["user a 9-0"], ["user b 2-0"]]);
  });

  // ---- acks ----

  test("ack() acknowledges the messages handed to the app, never a position from a state or saved cursors", async () => {
    const { gw, client, rec } = setup({ cursors: [{ audience: "all", groupId: "", epoch: E1, messageId: "3-0" }] });
    client.start();
    const a = await gw.call(1);
    a.send([state("user", E1, "7-0", FROM_NOW), state("all", E1, "3-0", RESUMED)]);
    await rec.nth("connected");
    assert.deepEqual(await client.ack(), [], "FROM_NOW and RESUMED positions, and saved cursors, are not acked");
    a.send([], [msg("user", "8-0")]);
    await rec.text("8-0");
    assert.deepEqual((await client.ack()).map((c) => `${c.audience} ${c.messageId}`), ["user 8-0"]);
    a.send([state("user", E1, "20-0", GAP)]);
    a.send([state("g:team", E1, "4-0", FROM_NOW)]); // a group joined
    await rec.nth("gap");
    await eventually("the join applied", () => client.cursors().some((c) => c.groupId === "team"));
    assert.deepEqual(await client.ack(), [], "a gap's point and a join are not acked");
    a.send([state("user", E2, "1-0", RESUMED)], [msg("user", "2-0")]);
    await rec.text("2-0");
    assert.deepEqual((await client.ack()).map((c) => `${c.epoch} ${c.messageId}`), [`${E2} 2-0`]);
    assert.deepEqual(gw.acked, [[`user ${E1} 8-0`], [`user ${E2} 2-0`]]);
  });

  // ---- which statuses stop it ----

  test("UNIMPLEMENTED (an ingress 404), NOT_FOUND, DATA_LOSS, OUT_OF_RANGE, ALREADY_EXISTS, FAILED_PRECONDITION are retried", async () => {
    const codes = [Code.Unimplemented, Code.NotFound, Code.DataLoss, Code.OutOfRange, Code.AlreadyExists, Code.FailedPrecondition];
    const { gw, client, rec } = setup();
    gw.onSubscribe = (call) => {
      const code = codes[gw.calls.length - 1];
      if (code !== undefined) call.fail(code);
      else call.send([state("user", E1, "0-0", FROM_NOW)]);
    };
    client.start();
    await rec.nth("connected");
    assert.deepEqual(
      rec.of("disconnected").map((d) => d.status.codeName),
      ["UNIMPLEMENTED", "NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "ALREADY_EXISTS", "FAILED_PRECONDITION"],
    );
    assert.equal(rec.of("stopped").length, 0);
  });

  test("ABORTED, PERMISSION_DENIED, INVALID_ARGUMENT, and FAILED_PRECONDITION under strictResume stop it", async () => {
    for (const [code, strictResume] of [
      [Code.Aborted, false],
      [Code.PermissionDenied, false],
      [Code.InvalidArgument, false],
      [Code.FailedPrecondition, true],
    ] as const) {
      const { gw, client, rec } = setup({ strictResume });
      client.start();
      (await gw.call(1)).fail(code);
      const stopped = await rec.nth("stopped");
      assert.equal(stopped.status?.code, code);
      assert.equal(rec.of("disconnected").length, 0);
      assert.equal(client.running, false);
    }
  });

  // ---- backoff ----

  test("the backoff grows across streams that fail right after answering, and starts over after one that stayed up maxMs", async (t) => {
    const random = Math.random;
    t.after(() => (Math.random = random));
    Math.random = () => 0.999; // each delay near its ceiling
    const { gw, client, rec } = setup({ backoff: { initialMs: 8, maxMs: 1500 } });
    gw.onSubscribe = (call) => {
      call.send([state("user", E1, "0-0", FROM_NOW)]);
      if (gw.calls.length <= 4) call.fail(Code.Unavailable);
    };
    client.start();
    await rec.nth("connected", 5);
    const first = rec.of("disconnected").map((d) => d.retryIn);
    assert.deepEqual(first, [7, 15, 31, 63], "the ceiling doubles: an answer does not reset it");
    await sleep(1600); // the fifth stream stays up longer than maxMs
    (await gw.call(5)).fail(Code.Unavailable);
    const d = await rec.nth("disconnected", 5);
    assert.equal(d.retryIn, 7, "starts over");
  });

  // ---- token timing ----

  test("a token that lives for 30 days is not refreshed in a loop (timers longer than 2^31-1 ms)", async () => {
    const token = jwt(30 * 86_400);
    const { gw, client, rec, tokens } = setup({
      getToken: async () => {
        tokens.push(token);
        return token;
      },
    });
    gw.onSubscribe = (call) => call.send([state("user", E1, "0-0", FROM_NOW)]);
    client.start();
    await rec.nth("connected");
    await sleep(1500);
    assert.equal(tokens.length, 1);
    assert.equal(gw.calls.length, 1);
  });

  test("the refresh is timed from when the token came, by exp - iat: a device clock a day ahead does not refresh every second", async () => {
    const dayAgo = Math.floor(Date.now() / 1000) - 86_400;
    const { gw, client, rec, tokens } = setup({
      getToken: async () => {
        const t = jwt(600, dayAgo); // issued and expiring a day ago by this device's clock
        tokens.push(t);
        return t;
      },
    });
    gw.onSubscribe = (call) => call.send([state("user", E1, "0-0", FROM_NOW)]);
    client.start();
    await rec.nth("connected");
    await sleep(2500);
    assert.equal(tokens.length, 1);
    assert.equal(gw.calls.length, 1);
  });

  test("a refresh that gets the same token back opens no stream: it backs off and asks again", async () => {
    const token = jwt(6); // refreshed 1 s after it came
    const { gw, client, rec, tokens } = setup({
      getToken: async () => {
        tokens.push(token);
        return token;
      },
    });
    gw.onSubscribe = (call) => call.send([state("user", E1, "0-0", FROM_NOW)]);
    client.start();
    await rec.nth("connected");
    await eventually("three getToken calls", () => tokens.length >= 3, 20_000);
    assert.equal(gw.calls.length, 1);
    assert.equal(rec.of("disconnected").length, 0);
  });

  test("a token that comes already expired is not used: it backs off and asks again", async () => {
    const expired = jwt(-60, Math.floor(Date.now() / 1000), false); // exp a minute ago, no iat
    const fresh = jwt(600);
    const { gw, client, rec, tokens } = setup({
      getToken: async () => {
        const t = tokens.length === 0 ? expired : fresh;
        tokens.push(t);
        return t;
      },
    });
    gw.onSubscribe = (call) => call.send([state("user", E1, "0-0", FROM_NOW)]);
    client.start();
    await rec.nth("connected");
    const [d] = rec.of("disconnected");
    assert.equal(d?.status.codeName, "UNAVAILABLE");
    assert.match(d.status.message, /expired/);
    assert.deepEqual(
      gw.calls.map((c) => c.token),
      [fresh],
    );
  });

  test("after UNAUTHENTICATED, the same token back is not reopened at once: it backs off and asks again", async () => {
    const first = jwt(600);
    const second = jwt(600);
    const answers = [first, first, second];
    const { gw, client, rec, tokens } = setup({
      getToken: async () => {
        const t = answers[Math.min(tokens.length, answers.length - 1)]!;
        tokens.push(t);
        return t;
      },
    });
    client.start();
    (await gw.call(1)).fail(Code.Unauthenticated, "logged out by the backend");
    const b = await gw.call(2);
    b.send([state("user", E1, "0-0", FROM_NOW)]);
    await rec.nth("connected");
    assert.deepEqual(
      rec.of("disconnected").map((d) => d.status.codeName),
      ["UNAUTHENTICATED", "UNAVAILABLE"],
    );
    assert.match(rec.of("disconnected")[1]!.status.message, /same token/);
    assert.equal(b.token, second);
    assert.equal(rec.of("stopped").length, 0);
  });

  // ---- make-before-break refresh ----

  /** A client on 6 s tokens (refreshed 1 s after each came), with a stream open on E1 5-0. */
  async function refreshing() {
    const s = setup({
      cursors: [{ audience: "user", groupId: "", epoch: E1, messageId: "5-0" }],
      getToken: async () => {
        const t = jwt(6);
        s.tokens.push(t);
        return t;
      },
    });
    s.client.start();
    const a = await s.gw.call(1);
    a.send([state("user", E1, "5-0", RESUMED), state("all", E1, "0-0", FROM_NOW)]);
    await s.rec.nth("connected");
    return { ...s, a };
  }

  test("refresh: a new stream in an older epoch than the current one is now in is dropped, not the current one; a later one switches", async () => {
    const { gw, client, rec, a } = await refreshing();
    const b = await gw.call(2);
    assert.ok(b.cursors.includes(`user ${E1} 5-0`));
    // The epoch changes on the current stream after the new one opened.
    a.send([state("user", E2, "5-0", RESUMED)], [msg("user", "6-0", "a6")]);
    await rec.text("a6");
    b.send([state("user", E1, "5-0", RESUMED), state("all", E1, "0-0", RESUMED)], [msg("user", "6-0", "b6")]);
    await eventually("the new stream dropped", () => b.aborted);
    assert.equal(inbox(client), `${E2} 6-0`, "never back to the older epoch");
    assert.ok(a.open, "the current stream goes on");
    a.send([], [msg("user", "7-0", "a7")]);
    await rec.text("a7");

    const c = await gw.call(3); // tried again later, from where the client is
    assert.ok(c.cursors.includes(`user ${E2} 7-0`));
    c.send([state("user", E2, "6-0", RESUMED), state("all", E1, "0-0", RESUMED)], [msg("user", "7-0", "c7"), msg("user", "8-0", "c8")]);
    await rec.text("c8");
    assert.ok(a.aborted, "switched: the old stream is closed");
    assert.deepEqual(rec.texts, ["a6", "a7", "c8"], "no duplicate");
    assert.equal(rec.of("gap").length, 0);
    assert.equal(rec.of("disconnected").length, 0);
    assert.equal(rec.of("connected").length, 1);
  });

  test("refresh: a new stream that reports a gap, or a position ahead, is dropped without a gap event", async () => {
    const { gw, client, rec, a } = await refreshing();
    const b = await gw.call(2);
    b.send([state("user", E1, "2-0", GAP), state("all", E1, "0-0", RESUMED)], [msg("user", "3-0")]);
    await eventually("the new stream dropped", () => b.aborted);
    const c = await gw.call(3);
    c.send([state("user", E1, "9-0", RESUMED), state("all", E1, "0-0", RESUMED)]); // ahead of 5-0
    await eventually("the next one dropped too", () => c.aborted);
    a.send([], [msg("user", "6-0")]);
    await rec.text("6-0");
    assert.equal(inbox(client), `${E1} 6-0`);
    assert.deepEqual(rec.texts, ["6-0"]);
    assert.equal(rec.of("gap").length, 0);
    assert.ok(a.open);
  });

  test("refresh: a new stream that fails, whatever the status, leaves the current one alone", async () => {
    const { gw, rec, a } = await refreshing();
    (await gw.call(2)).fail(Code.PermissionDenied);
    const c = await gw.call(3);
    assert.ok(a.open);
    c.fail(Code.Unauthenticated);
    await gw.call(4);
    assert.ok(a.open);
    assert.equal(rec.of("stopped").length, 0);
    assert.equal(rec.of("disconnected").length, 0);
  });

  test("refresh: the current stream ending with a status that stops (ABORTED) while the new one opens stops the client", async () => {
    const { gw, client, rec, a } = await refreshing();
    const b = await gw.call(2);
    a.fail(Code.Aborted, "replaced by a newer stream");
    const stopped = await rec.nth("stopped");
    assert.equal(stopped.status?.codeName, "ABORTED");
    assert.equal(client.running, false);
    await eventually("the new stream closed", () => b.aborted);
  });

  test("refresh: the current stream ending otherwise while the new one is judged: the new one carries on if it continues, else a reconnect", async () => {
    const { gw, rec, a } = await refreshing();
    const b = await gw.call(2);
    a.fail(Code.Unavailable);
    b.send([state("user", E1, "5-0", RESUMED), state("all", E1, "0-0", RESUMED)], [msg("user", "6-0")]);
    await rec.text("6-0");
    assert.equal(rec.of("disconnected").length, 0, "carried on");

    // Next refresh: the current stream ends, and the new one reports a gap.
    const c = await gw.call(3);
    b.fail(Code.Unavailable, "draining");
    c.send([state("user", E1, "1-0", GAP), state("all", E1, "0-0", RESUMED)]);
    const d = await rec.nth("disconnected");
    assert.equal(d.status.message, "draining");
    const e = await gw.call(4);
    assert.ok(e.cursors.includes(`user ${E1} 6-0`));
    assert.equal(rec.of("gap").length, 0);
  });

  // ---- listeners ----

  test("stop() in a listener ends delivery at once, even the later states of the same response", async () => {
    const { gw, client, rec } = setup();
    client.on("gap", () => client.stop());
    client.start();
    const a = await gw.call(1);
    a.send([state("user", E1, "1-0", GAP), state("all", E1, "1-0", GAP), state("g:team", E1, "0-0", LEFT)], [msg("user", "2-0")]);
    await rec.nth("stopped");
    await sleep(100);
    assert.deepEqual(
      rec.events.map((e) => e.kind),
      ["connected", "gap", "stopped"],
    );
  });

  test("stop(); start() in a disconnected listener leaves one stream", async () => {
    const { gw, client } = setup();
    let restarted = false;
    client.on("disconnected", () => {
      if (restarted) return;
      restarted = true;
      client.stop();
      client.start();
    });
    gw.onSubscribe = (call) => {
      if (gw.calls.length === 1) call.fail(Code.Unavailable);
      else call.send([state("user", E1, "0-0", FROM_NOW)]);
    };
    client.start();
    await gw.call(2);
    await sleep(300); // well past the backoff (at most 10 ms) an orphaned retry would wait
    assert.equal(gw.calls.length, 2);
    assert.equal(gw.open.length, 1);
  });
});
