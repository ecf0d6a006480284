// The operator console: counters, online users, presence events, group members and a
// test push that is watched arriving. Served by push-gateway on --console-listen, it
// calls the gateway on its own origin (gRPC-Web) with an admin API key that it keeps in
// this module's memory only (never in storage or cookies).
import { ConnectError, PushClient, codeName, gatewayClient, type Message } from "@push/client";
import { PresenceEvent_Kind, PresenceEvent_Reason, type PresenceEvent } from "@push/client/gen";
import { SentTimes } from "./sent.js";

type Gateway = ReturnType<typeof gatewayClient>;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

/** Everything that lives while a key is entered; dropped by "Forget key". */
interface Session {
  key: string;
  gw: Gateway;
  abort: AbortController;
  timers: ReturnType<typeof setInterval>[];
  /** The stream open for a test push, if any. */
  receiver?: PushClient;
}

let session: Session | undefined;
/** This page's device id for the streams it opens to watch test pushes arrive. */
const consoleDevice = `console-${Math.random().toString(36).slice(2, 10)}`;

function describe(err: unknown): string {
  const e = ConnectError.from(err);
  return `${codeName(e.code)}: ${e.rawMessage}`;
}

function setStatus(text: string, ok = false): void {
  const el = $("status");
  el.textContent = text;
  el.className = ok ? "ok" : "";
}

function item(text: string, attrs: Record<string, string> = {}, ...children: (HTMLElement | string)[]): HTMLLIElement {
  const li = document.createElement("li");
  for (const [k, v] of Object.entries(attrs)) li.setAttribute(k, v);
  if (text) li.textContent = text;
  li.append(...children);
  return li;
}

function span(text: string, className: string): HTMLSpanElement {
  const s = document.createElement("span");
  s.className = className;
  s.textContent = text;
  return s;
}

function fill(list: HTMLElement, items: HTMLLIElement[], empty: string): void {
  list.replaceChildren(...(items.length ? items : [item(empty, { class: "empty" })]));
}

function time(d: Date | undefined): string {
  return d ? d.toLocaleTimeString([], { hour12: false }) : "";
}

// ---- sign in / out ----

async function signIn(key: string): Promise<void> {
  const res = await fetch("api/counters", { headers: { authorization: `Bearer ${key}` }, cache: "no-store" });
  if (res.status === 401 || res.status === 403) throw new Error(res.status === 401 ? "unknown key" : "this key has no admin scope");
  if (!res.ok) throw new Error(`the gateway answered ${res.status}`);
  const gw = gatewayClient({ baseUrl: location.origin, credential: () => key });
  session = { key, gw, abort: new AbortController(), timers: [] };
  $("login").classList.add("hidden");
  $("dashboard").classList.remove("hidden");
  $("logout").classList.remove("hidden");
  $("whoami").textContent = "signed in with an admin key";
  setStatus("", true);
  showCounters(await res.json());
  startCounters(session);
  void loadOnline(session, "");
  void watchPresence(session);
}

function signOut(): void {
  const s = session;
  session = undefined;
  if (s) {
    s.abort.abort();
    s.timers.forEach(clearInterval);
    s.receiver?.stop();
  }
  ($("api-key") as HTMLInputElement).value = "";
  $("dashboard").classList.add("hidden");
  $("logout").classList.add("hidden");
  $("login").classList.remove("hidden");
  $("whoami").textContent = "";
  fill($("presence-events"), [], "waiting for events…");
  fill($("push-received"), [], "nothing yet");
  fill($("online-users"), [], "");
  fill($("group-members"), [], "");
}

// ---- counters ----

interface Counters {
  streams: number | null;
  pushes: number | null;
  deliveries: number | null;
}

function showCounters(c: Counters): void {
  const show = (id: string, v: number | null) => ($(id).textContent = v === null ? "n/a" : String(v));
  show("counter-streams", c.streams);
  show("counter-pushes", c.pushes);
  show("counter-deliveries", c.deliveries);
}

function startCounters(s: Session): void {
  const poll = async () => {
    if (session !== s) return;
    try {
      const res = await fetch("api/counters", { headers: { authorization: `Bearer ${s.key}` }, cache: "no-store", signal: s.abort.signal });
      if (!res.ok) throw new Error(`counters: the gateway answered ${res.status}`);
      showCounters(await res.json());
      const n = await s.gw.countOnlineUsers({}, { signal: s.abort.signal });
      $("counter-online").textContent = String(n.onlineUsers);
    } catch (err) {
      if (session === s) setStatus(err instanceof Error && !(err instanceof ConnectError) ? err.message : describe(err));
    }
  };
  void poll();
  s.timers.push(setInterval(poll, 2000));
}

// ---- online users, paged ----

const ONLINE_PAGE = 20;
/** Tokens of the pages before the current one, to go back. */
let onlineTokens: string[] = [];
let onlineToken = "";
let onlineNext = "";

async function loadOnline(s: Session, token: string): Promise<void> {
  try {
    const res = await s.gw.listOnlineUsers({ pageSize: ONLINE_PAGE, pageToken: token }, { signal: s.abort.signal });
    if (session !== s) return;
    onlineToken = token;
    onlineNext = res.nextPageToken;
    fill(
      $("online-users"),
      res.userIds.map((u) => item("", { "data-testid": "online-user", "data-user": u }, span("online", "tag online"), span(u, "grow"))),
      "no one is online",
    );
    $("online-page").textContent = `page ${onlineTokens.length + 1}`;
    ($("online-prev") as HTMLButtonElement).disabled = onlineTokens.length === 0;
    ($("online-next") as HTMLButtonElement).disabled = !onlineNext;
  } catch (err) {
    if (session === s) setStatus(`online users: ${describe(err)}`);
  }
}

// ---- presence events, live ----

const MAX_EVENTS = 200;

async function watchPresence(s: Session): Promise<void> {
  const list = $("presence-events");
  let cursor = "0"; // the oldest event still retained, then each event seen
  let attempt = 0;
  while (session === s) {
    try {
      $("presence-state").textContent = "(connecting)";
      for await (const res of s.gw.watchPresence({ cursor }, { signal: s.abort.signal })) {
        $("presence-state").textContent = "(live)";
        attempt = 0;
        for (const e of res.events) {
          cursor = e.eventId;
          list.querySelector("li.empty")?.remove();
          list.prepend(presenceItem(e));
          while (list.children.length > MAX_EVENTS) list.lastElementChild?.remove();
        }
      }
    } catch (err) {
      if (session !== s) return;
      setStatus(`presence events: ${describe(err)}`);
    }
    if (session !== s) return;
    $("presence-state").textContent = "(reconnecting)";
    attempt = Math.min(attempt + 1, 5);
    await new Promise((r) => setTimeout(r, Math.random() * 500 * 2 ** attempt));
  }
}

function presenceItem(e: PresenceEvent): HTMLLIElement {
  const online = e.kind === PresenceEvent_Kind.ONLINE;
  const why =
    e.reason === PresenceEvent_Reason.EXPIRED ? "lease expired" : e.reason === PresenceEvent_Reason.LOGOUT ? "logged out" : "";
  const at = e.time ? new Date(Number(e.time.seconds) * 1000 + Math.floor(e.time.nanos / 1e6)) : undefined;
  return item(
    "",
    { "data-testid": "presence-event", "data-user": e.userId, "data-kind": online ? "online" : "offline", "data-event-id": e.eventId },
    span(time(at), "time"),
    span(online ? "online" : "offline", `tag ${online ? "online" : "offline"}`),
    span(`${e.userId}${e.sessionId ? ` (${e.sessionId})` : ""}${why ? ` · ${why}` : ""}`, "grow"),
  );
}

// ---- group members ----

let groupId = "";
let groupNext = "";

async function loadGroup(s: Session, group: string, token: string): Promise<void> {
  try {
    const res = await s.gw.listGroupMembers({ groupId: group, pageSize: 50, pageToken: token }, { signal: s.abort.signal });
    if (session !== s) return;
    groupId = group;
    groupNext = res.nextPageToken;
    const items = res.userIds.map((u) => item(u, { "data-testid": "group-member", "data-user": u }));
    if (token) $("group-members").append(...items);
    else fill($("group-members"), items, `${group} has no members`);
    $("group-page").textContent = `${$("group-members").querySelectorAll("[data-testid=group-member]").length} shown`;
    ($("group-next") as HTMLButtonElement).disabled = !groupNext;
  } catch (err) {
    if (session === s) setStatus(`group members: ${describe(err)}`);
  }
}

// ---- test push, watched arriving ----

/** How long the console's stream waits for a test push before it gives up. */
const ARRIVAL_TIMEOUT_MS = 15_000;
/** How long the console waits for its stream to open before it gives up (and pushes nothing). */
const READY_TIMEOUT_MS = 15_000;

/**
 * Opens a stream as `userId` (with the admin key, under this page's own device id), for
 * one test push: resolves once the gateway has attached it, so a push made afterwards
 * arrives on it. It is a presence session of the user while it is open, so it is closed
 * as soon as the push arrived, and when it did not open within READY_TIMEOUT_MS (the
 * rejection says why).
 */
async function openReceiver(s: Session, userId: string): Promise<PushClient> {
  s.receiver?.stop();
  const client = new PushClient({
    baseUrl: location.origin,
    getToken: async () => s.key,
    userId,
    deviceId: consoleDevice,
    backoff: { maxMs: 2000 },
  });
  s.receiver = client;
  const state = $("receiver-state");
  client.on("connected", () => (state.textContent = `(open as ${userId}, device ${consoleDevice})`));
  let last = "";
  client.on("disconnected", (e) => {
    last = `${e.status.codeName}: ${e.status.message}`;
    state.textContent = `(reconnecting: ${e.status.codeName})`;
  });
  client.on("stopped", (e) => (state.textContent = e.status ? `(failed: ${e.status.codeName} ${e.status.message})` : "(closed)"));
  client.on("message", (m) => showArrival(userId, m));
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      const why = last ? ` (last: ${last})` : "";
      reject(new Error(`the stream as ${userId} did not open within ${READY_TIMEOUT_MS / 1000} s${why}; nothing was pushed`));
    }, READY_TIMEOUT_MS);
    client.once("connected", () => {
      clearTimeout(timer);
      resolve();
    });
    client.once("stopped", (e) => {
      clearTimeout(timer);
      reject(new Error(e.status ? `${e.status.codeName}: ${e.status.message}` : "stopped"));
    });
  });
  client.start();
  try {
    await ready;
  } catch (err) {
    client.stop();
    if (s.receiver === client) s.receiver = undefined;
    throw err;
  }
  return client;
}

/** When the console pushed each message it still waits for (bounded). */
const sentAt = new SentTimes();
/** Message id → resolves when it arrives on the console's stream. */
const waiting = new Map<string, () => void>();

function showArrival(userId: string, m: Message): void {
  const list = $("push-received");
  list.querySelector("li.empty")?.remove();
  const text = new TextDecoder().decode(m.payload);
  const sent = sentAt.take(m.id);
  list.prepend(
    item(
      "",
      { "data-testid": "received-message", "data-message-id": m.id, "data-topic": m.topic, "data-user": userId },
      span(m.id, "time"),
      span(m.topic, "tag msg"),
      span(text, "grow"),
      span(sent !== undefined ? `${Math.max(0, Math.round(performance.now() - sent))} ms` : "", "muted"),
    ),
  );
  while (list.children.length > 50) list.lastElementChild?.remove();
  waiting.get(m.id)?.();
}

async function sendPush(s: Session): Promise<void> {
  const kind = ($("push-kind") as HTMLSelectElement).value;
  const target = ($("push-target") as HTMLInputElement).value.trim();
  const topic = ($("push-topic") as HTMLInputElement).value.trim();
  const payload = new TextEncoder().encode(($("push-text") as HTMLTextAreaElement).value);
  const result = $("push-result");
  result.removeAttribute("data-message-id");
  const users = target.split(/[\s,]+/).filter(Boolean);
  let who = ($("push-receiver") as HTMLInputElement).value.trim();
  if (kind === "users" && users.length === 0) throw new Error("name at least one user");
  if (kind === "group" && !target) throw new Error("name the group");
  if (!who && kind === "users") who = users[0]!;
  if (!who && kind === "group") {
    const members = await s.gw.listGroupMembers({ groupId: target, pageSize: 1 });
    who = members.userIds[0] ?? "";
    if (!who) throw new Error(`${target} has no members to watch the push arrive`);
  }
  if (!who) throw new Error("name a user to watch the push arrive as");
  result.textContent = `opening a stream as ${who}…`;
  const receiver = await openReceiver(s, who);
  try {
    result.textContent = "pushing…";
    const started = performance.now();
    const common = { topic, payload, contentType: "text/plain; charset=utf-8", sender: "console" };
    let id: string;
    if (kind === "users") id = (await s.gw.pushToUsers({ ...common, userIds: users })).messageId;
    else if (kind === "group") id = (await s.gw.pushToGroup({ ...common, groupId: target })).messageId;
    else id = (await s.gw.pushToAll(common)).messageId;
    result.setAttribute("data-message-id", id);
    const arrived = document.querySelector(`[data-testid=received-message][data-message-id="${CSS.escape(id)}"]`);
    if (!arrived) {
      sentAt.add(id, started);
      result.textContent = `pushed ${id}; waiting for it on ${who}'s stream…`;
      const came = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), ARRIVAL_TIMEOUT_MS);
        waiting.set(id, () => {
          clearTimeout(timer);
          resolve(true);
        });
      }).finally(() => waiting.delete(id));
      if (!came) {
        sentAt.take(id);
        result.textContent = `pushed ${id}; it did not arrive on ${who}'s stream within ${ARRIVAL_TIMEOUT_MS / 1000} s`;
        return;
      }
    }
    result.textContent = `message ${id} arrived`;
  } finally {
    if (s.receiver === receiver) {
      receiver.stop();
      s.receiver = undefined;
    }
  }
}

// ---- wiring ----

function main(): void {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("api-key") as HTMLInputElement;
    const key = input.value.trim();
    input.value = ""; // the key lives in `session` only
    $("login-error").textContent = "checking…";
    signIn(key).then(
      () => ($("login-error").textContent = ""),
      (err) => ($("login-error").textContent = err instanceof Error ? err.message : String(err)),
    );
  });
  $("logout").addEventListener("click", signOut);
  $("online-refresh").addEventListener("click", () => session && void loadOnline(session, onlineToken));
  $("online-next").addEventListener("click", () => {
    if (!session || !onlineNext) return;
    onlineTokens.push(onlineToken);
    void loadOnline(session, onlineNext);
  });
  $("online-prev").addEventListener("click", () => {
    if (!session || onlineTokens.length === 0) return;
    void loadOnline(session, onlineTokens.pop()!);
  });
  $("group-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const g = ($("group-id") as HTMLInputElement).value.trim();
    if (session && g) void loadGroup(session, g, "");
  });
  $("group-next").addEventListener("click", () => session && groupNext && void loadGroup(session, groupId, groupNext));
  $("push-kind").addEventListener("change", () => {
    const kind = ($("push-kind") as HTMLSelectElement).value;
    const target = $("push-target") as HTMLInputElement;
    target.disabled = kind === "all";
    $("push-target-label").textContent = kind === "group" ? "Group id" : kind === "all" ? "Every user" : "User ids (comma-separated)";
  });
  $("push-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const s = session;
    if (!s) return;
    const button = $("push-send") as HTMLButtonElement;
    button.disabled = true;
    sendPush(s)
      .catch((err) => ($("push-result").textContent = err instanceof ConnectError ? describe(err) : String(err instanceof Error ? err.message : err)))
      .finally(() => (button.disabled = false));
  });
  // Refresh the first page of online users with the counters, unless paging.
  setInterval(() => session && onlineTokens.length === 0 && void loadOnline(session, onlineToken), 5000);
}

main();
