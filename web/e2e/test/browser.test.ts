// A page using @push/client in Debian's chromium, against a real system over gRPC-Web
// with CORS: it shows pushes, survives losing its connection, resumes after a reload,
// and refreshes its tokens.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomBytes } from "node:crypto";
import type { Browser } from "playwright-core";
import { launch, pageMessages, pageShows, textIs } from "../src/browser.js";
import { startPageServer, type PageServer } from "../src/pageserver.js";
import { freePort, System } from "../src/system.js";
import { eventually, sleep } from "../src/wait.js";

const enc = (s: string) => new TextEncoder().encode(s);
const uid = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

describe("a page using @push/client in chromium", () => {
  let sys: System;
  let pages: PageServer;
  let browser: Browser;

  before(async () => {
    const port = await freePort();
    sys = await System.start({
      gateways: 2,
      corsOrigins: [`http://127.0.0.1:${port}`],
      gatewayArgs: ["--jwt-leeway", "0s", "--stream-lease", "3s"],
    });
    pages = await startPageServer(port, () => sys);
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await pages?.close();
    await sys?.stop();
  });

  async function push(user: string, text: string, gw = 0): Promise<string> {
    return (await sys.backend(sys.publishKey, gw).pushToUsers({ userIds: [user], topic: "test", payload: enc(text) })).messageId;
  }

  test("the page subscribes, a backend pushes, the page shows it", async () => {
    const user = uid("ann");
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(pages.pageUrl(sys.gateways[0]!.url, user, "browser"));
    await textIs(page, "#state", "connected");
    const id = await push(user, "hello, browser");
    await pageShows(page, "hello, browser");
    assert.deepEqual(await pageMessages(page), [{ id, text: "hello, browser" }]);
    await ctx.close();
  });

  test("the page's replica is killed, pushes go on elsewhere, it reconnects: every message once, in order", async () => {
    const user = uid("bob");
    const [gw0] = sys.gateways;
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(pages.pageUrl(gw0!.url, user, "browser"));
    await textIs(page, "#state", "connected");
    const sent = ["p1"];
    await push(user, "p1", 1);
    await pageShows(page, "p1");

    await sys.crash(gw0!);
    await textIs(page, "#state", "disconnected");
    for (let i = 2; i <= 6; i++) {
      sent.push(`p${i}`);
      await push(user, `p${i}`, 1);
    }
    await sys.restart(gw0!); // on the same port
    await textIs(page, "#connections", "2");
    sent.push("p7");
    await push(user, "p7", 1);
    await pageShows(page, "p7");
    assert.deepEqual((await pageMessages(page)).map((m) => m.text), sent);
    await ctx.close();
  });

  test("the browser goes offline and back online: it reconnects and shows every message once, in order", async () => {
    const user = uid("cid");
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(pages.pageUrl(sys.gateways[0]!.url, user, "browser"));
    await textIs(page, "#state", "connected");
    const sent = ["o1"];
    await push(user, "o1");
    await pageShows(page, "o1");

    await ctx.setOffline(true);
    // Chromium fails the open stream when the network goes; pushes go on meanwhile.
    await textIs(page, "#state", "disconnected");
    for (let i = 2; i <= 6; i++) {
      sent.push(`o${i}`);
      await push(user, `o${i}`);
    }
    await ctx.setOffline(false);
    await textIs(page, "#connections", "2");
    sent.push("o7");
    await push(user, "o7");
    await pageShows(page, "o7");
    assert.deepEqual((await pageMessages(page)).map((m) => m.text), sent);
    await ctx.close();
  });

  test("a page opened again resumes from the cursors it kept in localStorage", async () => {
    const user = uid("dee");
    const ctx = await browser.newContext();
    const first = await ctx.newPage();
    const url = pages.pageUrl(sys.gateways[0]!.url, user, "browser");
    await first.goto(url);
    await textIs(first, "#state", "connected");
    await push(user, "k1");
    await push(user, "k2");
    await pageShows(first, "k2");
    await first.close();

    await push(user, "k3"); // while no page is open
    await push(user, "k4");
    const second = await ctx.newPage();
    await second.goto(url);
    await pageShows(second, "k4");
    await push(user, "k5");
    await pageShows(second, "k5");
    assert.deepEqual((await pageMessages(second)).map((m) => m.text), ["k3", "k4", "k5"]);
    await ctx.close();
  });

  test("short-lived tokens are refreshed in the page before they expire, without a disconnect", async () => {
    const user = uid("eve");
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(pages.pageUrl(sys.gateways[0]!.url, user, "browser", 7));
    await textIs(page, "#state", "connected");
    const sent: string[] = [];
    // Until the first token (7 s) has been expired for two of the gateway's checks.
    const until = Date.now() + 9_000;
    for (let i = 1; Date.now() < until || (pages.tokens.get(user) ?? 0) < 3; i++) {
      sent.push(`t${i}`);
      await push(user, `t${i}`);
      await sleep(250);
      assert.ok(i < 200, "within 50 s");
    }
    sent.push("last");
    await push(user, "last");
    await pageShows(page, "last");
    assert.deepEqual((await pageMessages(page)).map((m) => m.text), sent);
    const disconnects = await page.$$eval("[data-testid=event][data-kind=disconnected]", (els) => els.length);
    assert.equal(disconnects, 0, "the stream was never interrupted");
    assert.equal(await page.textContent("#connections"), "1");
    await eventually("three tokens", () => (pages.tokens.get(user) ?? 0) >= 3);
    await ctx.close();
  });
});
