// Regenerates the console's screenshots in docs/images/ (`npm run screenshots` in web/,
// after `npm run build` and a debug build of the services): a real system, a few
// devices online (Node clients), and the console in chromium.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { PushClient } from "@push/client";
import { launch } from "./browser.js";
import { REPO, System } from "./system.js";
import { eventually } from "./wait.js";

const out = join(REPO, "docs/images");
mkdirSync(out, { recursive: true });
const sys = await System.start();
const browser = await launch();
const devices: PushClient[] = [];
try {
  const admin = sys.backend();
  const users = ["ann", "bob", "chen", "dana", "eli", "fatima", "gus"];
  await admin.joinGroup({ groupId: "team", userIds: ["ann", "bob", "chen", "dana"] });
  for (const user of users) {
    const client = new PushClient({
      baseUrl: sys.gateways[0]!.url,
      deviceId: "phone",
      getToken: async () => sys.deviceToken(user),
    });
    const connected = new Promise((ok) => client.once("connected", ok));
    client.start();
    devices.push(client);
    await connected;
  }
  const enc = (s: string) => new TextEncoder().encode(s);
  await admin.pushToGroup({ groupId: "team", topic: "team.update", payload: enc("standup in 5") });
  await admin.pushToUsers({ userIds: ["ann", "bob"], topic: "chat.message", payload: enc("hi") });
  devices[6]!.stop(); // gus goes offline: the feed shows it

  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  const page = await ctx.newPage();
  await page.goto(sys.gateways[0]!.consoleUrl);
  await page.screenshot({ path: join(out, "console-login.png"), clip: { x: 0, y: 0, width: 1280, height: 420 } });

  await page.fill("#api-key", sys.adminKey);
  await page.click("#login-submit");
  await page.waitForSelector("#dashboard", { state: "visible" });
  await eventually("online users", async () => (await page.$$("[data-testid=online-user]")).length === users.length - 1);
  await page.waitForSelector('[data-testid=presence-event][data-user="gus"][data-kind=offline]');
  await page.fill("#group-id", "team");
  await page.click("#group-load");
  await page.waitForSelector("[data-testid=group-member]");
  await page.fill("#push-target", "ann");
  await page.fill("#push-text", "hello from the console");
  await page.click("#push-send");
  await page.waitForSelector('[data-testid=received-message][data-user="ann"]');
  await eventually("counters", async () => Number(await page.textContent("#counter-pushes")) >= 3);
  await page.screenshot({ path: join(out, "console.png"), fullPage: true });
  console.log(`wrote ${join(out, "console-login.png")} and ${join(out, "console.png")}`);
} finally {
  for (const d of devices) d.stop();
  await browser.close();
  await sys.stop();
}
