// The operator console (served by the gateway on --console-listen) in chromium: it
// asks for an admin key, lists a device's user online, shows their presence events,
// the counters and a group's members, and sends a test push that it shows arriving.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomBytes } from "node:crypto";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { launch, pageMessages, pageShows, textIs } from "../src/browser.js";
import { startPageServer, type PageServer } from "../src/pageserver.js";
import { freePort, System } from "../src/system.js";
import { eventually } from "../src/wait.js";

const uid = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

/** Opens the console and signs in with `key`. */
export async function openConsole(ctx: BrowserContext, url: string, key: string): Promise<Page> {
  const page = await ctx.newPage();
  await page.goto(url);
  await page.fill("#api-key", key);
  await page.click("#login-submit");
  return page;
}

describe("the operator console in chromium", () => {
  let sys: System;
  let pages: PageServer;
  let browser: Browser;

  before(async () => {
    const port = await freePort();
    sys = await System.start({ corsOrigins: [`http://127.0.0.1:${port}`] });
    pages = await startPageServer(port, () => sys);
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    await pages?.close();
    await sys?.stop();
  });

  test("refuses a key without the admin scope, and keeps the key in memory only", async () => {
    const ctx = await browser.newContext();
    const page = await openConsole(ctx, sys.gateways[0]!.consoleUrl, sys.publishKey);
    await textIs(page, "#login-error", "this key has no admin scope");
    assert.equal(await page.isVisible("#dashboard"), false);
    await page.fill("#api-key", "not-a-key");
    await page.click("#login-submit");
    await textIs(page, "#login-error", "unknown key");

    await page.fill("#api-key", sys.adminKey);
    await page.click("#login-submit");
    await page.waitForSelector("#dashboard", { state: "visible" });
    assert.equal(await page.inputValue("#api-key"), "", "the field is cleared");
    const stored = await page.evaluate(() => ({
      local: localStorage.length,
      session: sessionStorage.length,
      cookie: document.cookie,
    }));
    assert.deepEqual(stored, { local: 0, session: 0, cookie: "" });
    assert.deepEqual(await ctx.cookies(), []);
    await page.reload();
    assert.equal(await page.isVisible("#dashboard"), false, "a reload forgets the key");
    await ctx.close();
  });

  test("lists the page's user online, shows their presence events and delivers a test push", async () => {
    const user = uid("ann");
    const gw = sys.gateways[0]!;
    const devices = await browser.newContext();
    const device = await devices.newPage();
    await device.goto(pages.pageUrl(gw.url, user, "browser"));
    await textIs(device, "#state", "connected");

    const ops = await browser.newContext();
    const console = await openConsole(ops, gw.consoleUrl, sys.adminKey);
    await console.waitForSelector("#dashboard", { state: "visible" });

    // Online users (the list refreshes itself; the button asks at once).
    const online = `[data-testid=online-user][data-user="${user}"]`;
    await eventually(`${user} listed online`, async () => {
      if (await console.$(online)) return true;
      await console.click("#online-refresh");
      return false;
    });
    // The presence feed shows the user coming online.
    await console.waitForSelector(`[data-testid=presence-event][data-user="${user}"][data-kind=online]`);
    // Counters from the gateway's metrics, and the online count.
    await eventually("counters", async () => Number(await console.textContent("#counter-streams")) >= 1);
    await eventually("online count", async () => Number(await console.textContent("#counter-online")) >= 1);

    // A test push to the user: the console watches it arrive on its own stream.
    await console.selectOption("#push-kind", "users");
    await console.fill("#push-target", user);
    await console.fill("#push-topic", "console.test");
    await console.fill("#push-text", "hello from the console test");
    await console.click("#push-send");
    const arrived = await console.waitForSelector(`[data-testid=received-message][data-user="${user}"]`);
    const id = await arrived.getAttribute("data-message-id");
    assert.match(id ?? "", /^\d+-\d+$/);
    assert.match((await arrived.textContent()) ?? "", /hello from the console test/);
    await textIs(console, "#push-result", `message ${id} arrived`);
    // ... and so does the device.
    await pageShows(device, "hello from the console test");
    assert.equal((await pageMessages(device)).at(-1)!.id, id);
    await eventually("the push counted", async () => Number(await console.textContent("#counter-pushes")) >= 1);

    // The user goes away: the feed shows them going offline.
    await devices.close();
    await console.waitForSelector(`[data-testid=presence-event][data-user="${user}"][data-kind=offline]`);
    await ops.close();
  });

  test("a test push whose stream does not open gives up after 15 s: the stream is stopped, Send works again, and the page says why", async () => {
    const user = uid("bea");
    const ops = await browser.newContext();
    await ops.clock.install(); // the page's timers run when the test says
    const console = await openConsole(ops, sys.gateways[0]!.consoleUrl, sys.adminKey);
    await console.waitForSelector("#dashboard", { state: "visible" });
    // The console's stream fails at the network (a proxy in the way); its other calls work.
    let subscribes = 0;
    await console.route("**/push.v1.PushGateway/Subscribe", (route) => {
      subscribes++;
      return route.abort();
    });
    await console.selectOption("#push-kind", "users");
    await console.fill("#push-target", user);
    await console.fill("#push-text", "never sent");
    await console.click("#push-send");
    await textIs(console, "#push-result", `opening a stream as ${user}…`);
    assert.equal(await console.isDisabled("#push-send"), true);
    await eventually("a Subscribe tried", () => subscribes >= 1);
    await console.clock.runFor(16_000);
    await eventually("the console gave up", async () =>
      /did not open within 15 s.*nothing was pushed/.test((await console.textContent("#push-result")) ?? ""),
    );
    assert.equal(await console.isDisabled("#push-send"), false, "Send is enabled again");
    await textIs(console, "#receiver-state", "(closed)");
    const tried = subscribes;
    await console.clock.runFor(10_000);
    assert.equal(subscribes, tried, "no more attempts: the stream was stopped");
    await ops.close();
  });

  test("shows a group's members, page by page, and a push to the group arrives", async () => {
    const group = uid("team");
    const members = Array.from({ length: 60 }, (_, i) => `m${String(i).padStart(2, "0")}-${group}`);
    await sys.backend().joinGroup({ groupId: group, userIds: members });
    const ops = await browser.newContext();
    const console = await openConsole(ops, sys.gateways[0]!.consoleUrl, sys.adminKey);
    await console.waitForSelector("#dashboard", { state: "visible" });
    await console.fill("#group-id", group);
    await console.click("#group-load");
    await eventually("the first page", async () => (await console.$$("[data-testid=group-member]")).length === 50);
    await console.click("#group-next");
    await eventually("both pages", async () => (await console.$$("[data-testid=group-member]")).length === 60);
    const shown = await console.$$eval("[data-testid=group-member]", (els) => els.map((e) => e.getAttribute("data-user")));
    assert.deepEqual(shown, members);
    assert.equal(await console.isDisabled("#group-next"), true);

    await console.selectOption("#push-kind", "group");
    await console.fill("#push-target", group);
    await console.fill("#push-text", "to the team");
    await console.click("#push-send");
    const arrived = await console.waitForSelector(`[data-testid=received-message][data-user="${members[0]}"]`);
    assert.match((await arrived.textContent()) ?? "", /to the team/);
    await ops.close();
  });
});
