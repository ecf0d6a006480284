// The console's bookkeeping of test pushes (web/console/src/sent.ts), from its source:
// build-page.mjs bundles this file into dist/test/ (the console is not a library).
import assert from "node:assert/strict";
import { test } from "node:test";
import { SentTimes } from "../../console/src/sent.js";

test("the console remembers when it pushed a message only until it arrives or is given up on, and at most max of them", () => {
  const sent = new SentTimes(3);
  sent.add("1-0", 10);
  assert.equal(sent.take("1-0"), 10, "the latency of an arrival");
  assert.equal(sent.size, 0, "forgotten once it arrived");
  assert.equal(sent.take("1-0"), undefined);
  for (let i = 0; i < 10; i++) sent.add(`${i}-0`, i);
  assert.equal(sent.size, 3, "bounded");
  assert.equal(sent.take("0-0"), undefined, "the oldest went first");
  assert.equal(sent.take("9-0"), 9);
});
