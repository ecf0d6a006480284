// The test page: a device in a browser, as an app would write it with @push/client.
// Query: gateway (gRPC-Web URL), user, device, ttl (token lifetime, s). It gets its
// tokens from the page server's /token (the app's auth service), shows each message
// as an <li> and keeps its cursors in localStorage, so a reload resumes.
import { PushClient, type CursorSnapshot } from "@push/client";

const q = new URLSearchParams(location.search);
const gateway = q.get("gateway")!;
const user = q.get("user")!;
const device = q.get("device")!;
const ttl = q.get("ttl") ?? "600";
const storageKey = `push-cursors:${user}:${device}`;

const saved: CursorSnapshot[] = JSON.parse(localStorage.getItem(storageKey) ?? "[]");
const client = new PushClient({
  baseUrl: gateway,
  deviceId: device,
  cursors: saved,
  backoff: { initialMs: 200, maxMs: 2000 },
  getToken: async () => {
    const res = await fetch(`/token?${new URLSearchParams({ user, ttl })}`);
    if (!res.ok) throw new Error(`token: ${res.status}`);
    return res.text();
  },
});

const $ = (id: string) => document.getElementById(id)!;
const log = (kind: string, text: string) => {
  const li = document.createElement("li");
  li.dataset.testid = "event";
  li.dataset.kind = kind;
  li.textContent = `${kind} ${text}`;
  $("events").append(li);
};
let connections = 0;

client.on("connected", () => {
  connections++;
  $("state").textContent = "connected";
  $("connections").textContent = String(connections);
  log("connected", "");
});
client.on("disconnected", (e) => {
  $("state").textContent = "disconnected";
  log("disconnected", `${e.status.codeName} ${e.status.message} (retry in ${e.retryIn} ms)`);
});
client.on("stopped", (e) => {
  $("state").textContent = "stopped";
  log("stopped", e.status ? `${e.status.codeName} ${e.status.message}` : "");
});
client.on("gap", (e) => log("gap", `${e.audience} ${e.groupId} epoch ${e.epoch} after ${e.messageId}`));
client.on("left", (e) => log("left", e.groupId));
client.on("message", (m) => {
  const li = document.createElement("li");
  li.dataset.testid = "message";
  li.dataset.id = m.id;
  li.dataset.topic = m.topic;
  li.textContent = new TextDecoder().decode(m.payload);
  $("messages").append(li);
  localStorage.setItem(storageKey, JSON.stringify(client.cursors()));
});
client.start();
(globalThis as { pushClient?: PushClient }).pushClient = client;
