// The client's pure parts: id order, token lifetimes, the emitter.
import assert from "node:assert/strict";
import { test } from "node:test";
import { compareIds, compareEpochs, Emitter, refreshAt, tokenTimes } from "@push/client";
import { signHs256 } from "../src/jwt.js";

test("message ids compare as numbers, not strings", () => {
  assert.ok(compareIds("10-0", "9-0") > 0);
  assert.ok(compareIds("1700000000000-10", "1700000000000-9") > 0);
  assert.ok(compareIds("1700000000000-0", "1700000000001-0") < 0);
  assert.equal(compareIds("5-5", "5-5"), 0);
  assert.ok(compareIds("0-0", "1-0") < 0);
  assert.equal(compareIds("not-an-id", "0-0"), 0, "a malformed id counts as 0-0");
  assert.ok(compareEpochs("1700000000123", "999") > 0);
});

test("a token is refreshed 10% of its lifetime before exp, and at least 5 s before", () => {
  const now = 1_700_000_000;
  const t = (life: number, iat = true) =>
    signHs256({ sub: "u", exp: now + life, ...(iat ? { iat: now } : {}) }, "secret-secret-secret-secret-secret", "k");
  assert.deepEqual(tokenTimes(t(600)), { exp: now + 600, iat: now });
  assert.equal(refreshAt(t(600), 0), (now + 600 - 60) * 1000, "10 minutes: 60 s before");
  assert.equal(refreshAt(t(20), 0), (now + 20 - 5) * 1000, "20 s: 5 s before");
  assert.equal(refreshAt(t(600, false), now * 1000), (now + 540) * 1000, "without iat: from when it was obtained");
  assert.equal(refreshAt("an-api-key", 0), undefined, "an API key is never refreshed");
  assert.deepEqual(tokenTimes("a.b.c"), {});
});

test("the emitter delivers to every listener, once() once, and a throwing listener harms no other", () => {
  const thrown: unknown[] = [];
  class E extends Emitter<{ n: number }> {
    fire(n: number) {
      this.emit("n", n);
    }
    protected override listenerError(err: unknown) {
      thrown.push(err);
    }
  }
  const e = new E();
  const seen: number[] = [];
  const once: number[] = [];
  const off = e.on("n", (n) => seen.push(n));
  e.once("n", (n) => once.push(n));
  e.on("n", () => {
    throw new Error("listener bug");
  });
  e.fire(1);
  e.fire(2);
  off();
  e.fire(3);
  assert.deepEqual(seen, [1, 2]);
  assert.deepEqual(once, [1]);
  assert.equal(thrown.length, 3, "each throw is reported");
});
