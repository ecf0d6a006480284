// The client's pure parts: ids and epochs, token lifetimes, the stop list, the emitter.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, compareIds, compareEpochs, Emitter, isStop, parseMessageId, refreshAfter, tokenLifetime, tokenTimes } from "@push/client";
import { signHs256 } from "../src/jwt.js";

test("message ids compare as numbers, not strings; \"5\" is \"5-0\"; a malformed id cannot be ordered", () => {
  assert.ok(compareIds("10-0", "9-0") > 0);
  assert.ok(compareIds("1700000000000-10", "1700000000000-9") > 0);
  assert.ok(compareIds("1700000000000-0", "1700000000001-0") < 0);
  assert.equal(compareIds("5-5", "5-5"), 0);
  assert.ok(compareIds("0-0", "1-0") < 0);
  assert.equal(compareIds("5", "5-0"), 0);
  assert.ok(compareIds("5", "5-1") < 0);
  for (const bad of ["not-an-id", "", "-", "1-", "-1", "a-1", "+1-0", "1-0-0", "18446744073709551616-0"]) {
    assert.equal(parseMessageId(bad), undefined, bad);
    assert.ok(Number.isNaN(compareIds(bad, "0-0")), `${bad} is not ordered`);
  }
  assert.deepEqual(parseMessageId("18446744073709551615-7"), { ms: 18446744073709551615n, seq: 7n });
});

test("epochs are the same only as the same string; numbers order, other strings do not", () => {
  assert.ok(compareEpochs("1700000000123", "999") > 0);
  assert.equal(compareEpochs("17", "17"), 0);
  assert.ok(Number.isNaN(compareEpochs("a", "b")), "two different epochs that are not numbers are not equal");
  assert.ok(Number.isNaN(compareEpochs("a", "0")));
  assert.ok(Number.isNaN(compareEpochs("017", "17")), "spelt differently: another epoch");
});

test("a token lives exp - iat from when it came (exp - now without iat), refreshed 10% of it before its end, at least 5 s", () => {
  const now = 1_700_000_000;
  const t = (life: number, iat = true, at = now) =>
    signHs256({ sub: "u", exp: at + life, ...(iat ? { iat: at } : {}) }, "secret-secret-secret-secret-secret", "k");
  assert.deepEqual(tokenTimes(t(600)), { exp: now + 600, iat: now });
  assert.equal(tokenLifetime(t(600), 0), 600_000, "the device's clock plays no part with iat");
  assert.equal(tokenLifetime(t(600, true, now - 86_400), now * 1000), 600_000, "even a day off");
  assert.equal(tokenLifetime(t(600, false), (now + 100) * 1000), 500_000, "without iat: exp - now");
  assert.ok(tokenLifetime(t(-60, false), now * 1000)! <= 0, "expired already");
  assert.equal(tokenLifetime("an-api-key"), undefined, "an API key is never refreshed");
  assert.equal(refreshAfter(600_000), 540_000, "10 minutes: 60 s before");
  assert.equal(refreshAfter(20_000), 15_000, "20 s: 5 s before");
  assert.equal(refreshAfter(30 * 86_400_000), 27 * 86_400_000, "30 days: 3 days before");
  assert.deepEqual(tokenTimes("a.b.c"), {});
});

test("the stop list: ABORTED, PERMISSION_DENIED, INVALID_ARGUMENT, FAILED_PRECONDITION under strict resume", () => {
  const stops = Object.values(Code)
    .filter((c): c is Code => typeof c === "number")
    .filter((c) => isStop(c));
  assert.deepEqual(stops.sort(), [Code.InvalidArgument, Code.PermissionDenied, Code.Aborted].sort());
  assert.equal(isStop(Code.FailedPrecondition, true), true);
  assert.equal(isStop(Code.FailedPrecondition, false), false);
  for (const c of [Code.Unimplemented, Code.NotFound, Code.DataLoss, Code.OutOfRange, Code.AlreadyExists, Code.Unauthenticated]) {
    assert.equal(isStop(c, true), false, Code[c]);
  }
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
