// PushClient: one device's stream, kept open, resumed without gaps or duplicates.
import { create } from "@bufbuild/protobuf";
import { Code, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  AckRequestSchema,
  Continuity,
  PushGateway,
  SubscribeRequestSchema,
  type Message,
  type SubscribeResponse,
} from "./gen/push/v1/push_pb.js";
import {
  audienceName,
  checkSnapshot,
  historyKey,
  isAfter,
  toCursor,
  type CursorSnapshot,
  type HistoryRef,
} from "./cursors.js";
import { Emitter } from "./emitter.js";
import { compareIds, NO_MESSAGE } from "./ids.js";
import { ENDED, isRetryable, refusedCursors, resyncHistory, statusOf, type Status } from "./status.js";
import { refreshAt } from "./token.js";

/** Reconnection delays: exponential with full jitter. */
export interface BackoffOptions {
  /** The first retry waits up to this long (default 500 ms). */
  initialMs?: number;
  /** No retry waits longer (default 30 s). */
  maxMs?: number;
}

/** What a PushClient needs. */
export interface PushClientOptions {
  /**
   * The gateway's gRPC-Web URL, e.g. "https://push.example.com" (it must allow the
   * page's origin: `--cors-allow-origin`). Or give `transport`.
   */
  baseUrl?: string;
  /** A transport of your own (e.g. with interceptors), instead of `baseUrl`. */
  transport?: Transport;
  /** The fetch to use with `baseUrl` (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /**
   * Returns a credential for the stream: the device token (a JWT from your auth
   * service), or an admin API key (which never expires and is not refreshed). It is
   * called at start, before a token's `exp` (10% of its lifetime before, at least 5 s
   * before), and after the gateway answers UNAUTHENTICATED.
   */
  getToken: () => Promise<string>;
  /** This device (the presence session id): stable per installation, e.g. per browser. */
  deviceId: string;
  /** The user; leave empty with a device token (the token's `sub`). */
  userId?: string;
  /** Positions to resume from, as saved from `cursors()`. */
  cursors?: CursorSnapshot[];
  /**
   * Stop (`stopped` with FAILED_PRECONDITION) instead of continuing when a history
   * cannot be resumed from its cursor; the app resyncs it and calls `setCursor`.
   */
  strictResume?: boolean;
  /** Reconnection delays. */
  backoff?: BackoffOptions;
  /**
   * In a browser, follow its `offline` and `online` events (default true): going offline
   * ends the stream at once (a stream over a vanished network may never fail by
   * itself), and coming back online retries at once instead of waiting out the backoff.
   */
  watchNetwork?: boolean;
}

/** The stream is open (again): the gateway answered with where every history stands. */
export interface ConnectedEvent {
  /** The cursors it was opened with. */
  cursors: CursorSnapshot[];
}

/**
 * Messages of a history were missed and are gone (trimmed, expired, or the history
 * started over). What is still retained follows; fetch the rest from your backend
 * (or ListHistory).
 */
export interface GapEvent extends HistoryRef {
  /** The history's epoch from now on. */
  epoch: string;
  /** The stream continues after this message id. */
  messageId: string;
  /** The device's position before the gap, if it had one. */
  previous?: CursorSnapshot;
}

/** The user left a group: nothing more comes from it, and its cursor is forgotten. */
export interface LeftEvent extends HistoryRef {
  /** The last position the device had in it. */
  previous?: CursorSnapshot;
}

/** The stream ended and will be opened again in `retryIn` ms. */
export interface DisconnectedEvent {
  /** Why it ended (code 0: it ended cleanly, e.g. the replica closed it). */
  status: Status;
  /** Milliseconds until the next attempt. */
  retryIn: number;
}

/** The client stopped for good: `stop()` was called (no status) or a status it must not retry. */
export interface StoppedEvent {
  /**
   * Why: ABORTED (a newer stream of this device replaced it), PERMISSION_DENIED (e.g.
   * banned by Disconnect), INVALID_ARGUMENT, UNAUTHENTICATED again with a fresh token,
   * FAILED_PRECONDITION (strictResume: resync the history it names). Undefined after
   * `stop()`.
   */
  status?: Status;
  /** For FAILED_PRECONDITION: the history to resync before starting again with a fresh cursor for it. */
  resync?: HistoryRef;
}

/** The events of a PushClient. */
export interface PushClientEvents {
  connected: ConnectedEvent;
  /** A message, once, in order within its history; the cursor has moved to it. */
  message: Message;
  gap: GapEvent;
  left: LeftEvent;
  disconnected: DisconnectedEvent;
  stopped: StoppedEvent;
}

/** The window's online/offline events, in a browser (none in Node). */
const browserEvents: Pick<EventTarget, "addEventListener" | "removeEventListener"> | undefined =
  typeof globalThis.addEventListener === "function" && typeof navigator !== "undefined" && "onLine" in navigator
    ? globalThis
    : undefined;

interface Token {
  value: string;
  obtainedAt: number;
  /** Fetched because the gateway answered UNAUTHENTICATED. */
  afterUnauthenticated: boolean;
}

interface Stream {
  abort: AbortController;
  token: Token;
  /** The gateway answered (it sends every history's state first). */
  connected: boolean;
  /** Closed by the client; whatever it still yields is ignored. */
  retired: boolean;
  /** Emit `connected` when it opens (not for a make-before-break token refresh). */
  announce: boolean;
}

/**
 * A device's connection to the push gateway over gRPC-Web: it subscribes, keeps a
 * cursor per history (epoch and last message id), drops duplicates, resumes with its
 * cursors whenever it reconnects (exponential backoff with full jitter), refreshes the
 * token before it expires (opening the new stream before closing the old), and tells
 * the app about gaps and groups left. See README.md.
 */
export class PushClient extends Emitter<PushClientEvents> {
  readonly #rpc: Client<typeof PushGateway>;
  readonly #opts: PushClientOptions;
  readonly #cursors = new Map<string, CursorSnapshot>();
  readonly #acked = new Map<string, CursorSnapshot>();
  /** Histories left during this run: late messages of them are dropped. */
  readonly #left = new Set<string>();
  /** Histories whose acks the gateway refused (a group left while connected): not sent again. */
  readonly #ackRefused = new Set<string>();
  /** Histories whose gap was told and that had no message since: the same gap is not told twice. */
  readonly #gapped = new Set<string>();
  #running = false;
  /** Bumped by stop(): continuations of an earlier run see it and do nothing. */
  #run = 0;
  #active?: Stream;
  /** A stream opened with a refreshed token, replacing #active once it answers. */
  #next?: Stream;
  #token?: Token;
  #tokenRejected = false;
  #attempt = 0;
  #retryTimer?: ReturnType<typeof setTimeout>;
  #refreshTimer?: ReturnType<typeof setTimeout>;
  #ackChain: Promise<unknown> = Promise.resolve();

  constructor(options: PushClientOptions) {
    super();
    if (!options.deviceId) throw new TypeError("PushClient: deviceId is required");
    if (!options.transport && !options.baseUrl) throw new TypeError("PushClient: baseUrl or transport is required");
    this.#opts = options;
    const transport =
      options.transport ?? createGrpcWebTransport({ baseUrl: options.baseUrl!, fetch: options.fetch });
    this.#rpc = createClient(PushGateway, transport);
    for (const c of options.cursors ?? []) this.setCursor(c);
  }

  /** Whether the client is running (between `start()` and `stop()` or `stopped`). */
  get running(): boolean {
    return this.#running;
  }

  /** Whether a stream is open and has answered. */
  get connected(): boolean {
    return this.#running && !!this.#active?.connected;
  }

  /** Opens the stream (and keeps it open until `stop()` or a status it must not retry). */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#attempt = 0;
    this.#left.clear();
    this.#gapped.clear();
    if (this.#opts.watchNetwork !== false && browserEvents) {
      browserEvents.addEventListener("offline", this.#offline);
      browserEvents.addEventListener("online", this.#online);
    }
    void this.#open();
  }

  /** Closes the stream for good; `stopped` follows (without a status). */
  stop(): void {
    if (!this.#running) return;
    this.#shutdown();
    this.emit("stopped", {});
  }

  /**
   * The position in every history whose epoch the client knows: save them (e.g. in
   * localStorage, after handling messages) and give them back as `options.cursors`.
   */
  cursors(): CursorSnapshot[] {
    return [...this.#cursors.values()].filter((c) => c.epoch !== "").map((c) => ({ ...c }));
  }

  /**
   * Sets the position in one history, e.g. after resyncing it from the backend
   * following a gap or a FAILED_PRECONDITION (then `start()` again). It may move back.
   */
  setCursor(cursor: CursorSnapshot): void {
    const c = checkSnapshot(cursor);
    this.#cursors.set(historyKey(c), c);
  }

  /** Forgets the position in one history (the next stream starts it from the device's ack, or from now). */
  forget(history: HistoryRef): void {
    this.#cursors.delete(historyKey(history));
  }

  /**
   * Acknowledges what the device has processed (push.v1 Ack): by default the position
   * of every history as of the last `message` event, or the given positions. A
   * position is sent only if it is after the last one acknowledged for its history
   * (never backwards), and never for a group the user left. Resolves to the positions
   * sent (none: nothing new). Rejects with the gateway's error (a ConnectError).
   */
  ack(positions?: CursorSnapshot[]): Promise<CursorSnapshot[]> {
    const run = async (): Promise<CursorSnapshot[]> => {
      let send = (positions ?? this.cursors())
        .map(checkSnapshot)
        .filter((c) => c.epoch !== "" && c.messageId !== NO_MESSAGE)
        .filter((c) => !this.#left.has(historyKey(c)) && !this.#ackRefused.has(historyKey(c)))
        .filter((c) => {
          const prev = this.#acked.get(historyKey(c));
          return !prev || isAfter(c, prev);
        });
      if (send.length === 0) return [];
      const ack = (cursors: CursorSnapshot[]) => {
        const request = create(AckRequestSchema, {
          userId: this.#opts.userId ?? "",
          deviceId: this.#opts.deviceId,
          cursors: cursors.map(toCursor),
        });
        return this.#unary((headers) => this.#rpc.ack(request, { headers }));
      };
      try {
        await ack(send);
      } catch (err) {
        // A group the user left while this stream was open: the gateway tells an open
        // stream nothing (the next resume brings `left`) and refuses acks for it. Leave
        // those out, for good, and acknowledge the others.
        const refused = refusedCursors(err);
        if (refused.length === 0) throw err;
        for (const i of refused) if (send[i]) this.#ackRefused.add(historyKey(send[i]));
        send = send.filter((_, i) => !refused.includes(i));
        if (send.length > 0) await ack(send);
      }
      for (const c of send) {
        const prev = this.#acked.get(historyKey(c));
        if (!prev || isAfter(c, prev)) this.#acked.set(historyKey(c), c);
      }
      return send;
    };
    const result = this.#ackChain.then(run, run);
    this.#ackChain = result.catch(() => undefined);
    return result;
  }

  /** A unary call with the credential; once more with a fresh one after UNAUTHENTICATED. */
  async #unary<T>(call: (headers: Record<string, string>) => Promise<T>): Promise<T> {
    const token = await this.#getToken(false);
    try {
      return await call({ authorization: `Bearer ${token.value}` });
    } catch (err) {
      if (statusOf(err).code !== Code.Unauthenticated) throw err;
      const fresh = await this.#getToken(true);
      return call({ authorization: `Bearer ${fresh.value}` });
    }
  }

  /** The credential: the one held unless it is due for refresh or was rejected (or `fresh`). */
  async #getToken(fresh: boolean): Promise<Token> {
    const held = this.#token;
    const due = held && (refreshAt(held.value, held.obtainedAt) ?? Infinity) <= Date.now();
    if (held && !fresh && !due && !this.#tokenRejected) return held;
    const afterUnauthenticated = this.#tokenRejected;
    const value = await this.#opts.getToken();
    this.#token = { value, obtainedAt: Date.now(), afterUnauthenticated };
    this.#tokenRejected = false;
    return this.#token;
  }

  async #open(): Promise<void> {
    this.#retryTimer = undefined;
    const run = this.#run;
    let token: Token;
    try {
      token = await this.#getToken(false);
    } catch (err) {
      if (run !== this.#run) return;
      // Whatever getToken threw, it is retried with backoff (stop() ends it).
      const message = `getToken failed: ${err instanceof Error ? err.message : String(err)}`;
      this.#failed({ code: Code.Unavailable, codeName: "UNAVAILABLE", message });
      return;
    }
    if (run !== this.#run) return;
    this.#active = this.#subscribe(token, true);
  }

  #subscribe(token: Token, announce: boolean): Stream {
    const stream: Stream = { abort: new AbortController(), token, connected: false, retired: false, announce };
    const cursors = this.cursors();
    const request = create(SubscribeRequestSchema, {
      userId: this.#opts.userId ?? "",
      deviceId: this.#opts.deviceId,
      cursors: cursors.map(toCursor),
      strictResume: this.#opts.strictResume ?? false,
    });
    void (async () => {
      let status = ENDED;
      let resync: HistoryRef | undefined;
      try {
        const responses = this.#rpc.subscribe(request, {
          signal: stream.abort.signal,
          headers: { authorization: `Bearer ${token.value}` },
        });
        for await (const response of responses) {
          if (stream.retired) return;
          if (!stream.connected) {
            stream.connected = true;
            this.#opened(stream, cursors);
          }
          this.#apply(response);
        }
      } catch (err) {
        status = statusOf(err);
        resync = resyncHistory(err);
      }
      if (!stream.retired) this.#ended(stream, status, resync);
    })();
    return stream;
  }

  #opened(stream: Stream, cursors: CursorSnapshot[]): void {
    if (stream === this.#next) {
      // Make-before-break: the stream with the refreshed token answered; close the old one.
      const old = this.#active;
      this.#active = stream;
      this.#next = undefined;
      if (old) this.#retire(old);
    }
    if (stream !== this.#active) return;
    this.#attempt = 0;
    this.#scheduleRefresh(stream.token);
    if (stream.announce) this.emit("connected", { cursors });
  }

  #ended(stream: Stream, status: Status, resync?: HistoryRef): void {
    if (!this.#running) return;
    if (stream === this.#next) {
      // The refreshed stream failed; the current one goes on. Try again shortly.
      this.#next = undefined;
      this.#retryRefresh();
      return;
    }
    if (stream !== this.#active) return;
    this.#active = undefined;
    if (this.#next) {
      // The current stream ended while its replacement was opening: the replacement
      // carries on (a newer stream of this device may be what ended it).
      this.#active = this.#next;
      this.#next = undefined;
      if (
        isRetryable(status.code) ||
        status.code === Code.Unauthenticated ||
        status.code === Code.Aborted
      ) {
        return;
      }
      this.#halt(status, resync);
      return;
    }
    if (status.code === Code.Unauthenticated && stream.token.afterUnauthenticated && !stream.connected) {
      this.#halt(status);
      return;
    }
    this.#failed(status, resync);
  }

  /** After a failed stream (or getToken): retry, or stop. */
  #failed(status: Status, resync?: HistoryRef): void {
    if (status.code === Code.Unauthenticated) {
      // Expired, or logged out by the backend: a fresh token, at once.
      this.#tokenRejected = true;
      this.#retryIn(status, 0);
      return;
    }
    if (!isRetryable(status.code)) {
      this.#halt(status, resync);
      return;
    }
    const initial = this.#opts.backoff?.initialMs ?? 500;
    const max = this.#opts.backoff?.maxMs ?? 30_000;
    const ceiling = Math.min(max, initial * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    this.#retryIn(status, Math.floor(Math.random() * ceiling));
  }

  #retryIn(status: Status, delay: number): void {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    this.emit("disconnected", { status, retryIn: delay });
    if (!this.#running) return; // a listener stopped the client
    this.#retryTimer = setTimeout(() => void this.#open(), delay);
  }

  #scheduleRefresh(token: Token): void {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    const at = refreshAt(token.value, token.obtainedAt);
    if (at === undefined) return;
    this.#refreshTimer = setTimeout(() => void this.#refresh(), Math.max(at - Date.now(), 1000));
  }

  #retryRefresh(): void {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = setTimeout(() => void this.#refresh(), 1000 + Math.random() * 4000);
  }

  /** Gets a fresh token and opens a stream with it beside the current one. */
  async #refresh(): Promise<void> {
    this.#refreshTimer = undefined;
    const run = this.#run;
    let token: Token;
    try {
      token = await this.#getToken(true);
    } catch {
      if (run === this.#run && this.#running) this.#retryRefresh();
      return;
    }
    if (run !== this.#run || !this.#running) return;
    // While reconnecting, the next attempt takes the new token.
    if (!this.#active?.connected || this.#next) return;
    this.#next = this.#subscribe(token, false);
  }

  #apply(response: SubscribeResponse): void {
    for (const state of response.states) {
      const c = state.cursor;
      const audience = c && audienceName(c.audience);
      if (!c || !audience) continue;
      const ref: HistoryRef = { audience, groupId: audience === "group" ? c.groupId : "" };
      const key = historyKey(ref);
      const previous = this.#cursors.get(key);
      this.#ackRefused.delete(key);
      const next: CursorSnapshot = { ...ref, epoch: c.epoch, messageId: c.messageId || NO_MESSAGE };
      switch (state.continuity) {
        case Continuity.LEFT:
          this.#cursors.delete(key);
          this.#acked.delete(key);
          this.#left.add(key);
          this.#gapped.delete(key);
          this.emit("left", { ...ref, previous: previous && { ...previous } });
          continue;
        case Continuity.GAP:
          this.#left.delete(key);
          this.#advance(key, previous, next);
          // One gap may be reported twice before the history's next message (a replay
          // that found more trimmed, a reconnect in between): it is told once.
          if (this.#gapped.has(key)) continue;
          this.#gapped.add(key);
          this.emit("gap", { ...ref, epoch: c.epoch, messageId: next.messageId, previous: previous && { ...previous } });
          continue;
        default: // RESUMED, FROM_NOW
          this.#left.delete(key);
          this.#advance(key, previous, next);
      }
    }
    for (const message of response.messages) {
      if (!this.#running) return; // a listener stopped the client
      const audience = audienceName(message.audience);
      if (!audience) continue;
      const ref: HistoryRef = { audience, groupId: audience === "group" ? message.groupId : "" };
      const key = historyKey(ref);
      if (this.#left.has(key)) continue;
      const cursor = this.#cursors.get(key);
      if (cursor && compareIds(message.id, cursor.messageId) <= 0) continue; // a duplicate
      this.#cursors.set(key, { ...ref, epoch: cursor?.epoch ?? "", messageId: message.id });
      this.#gapped.delete(key);
      this.emit("message", message);
    }
  }

  /** Takes a state's position: a new epoch replaces the cursor, the same epoch never moves it back. */
  #advance(key: string, previous: CursorSnapshot | undefined, next: CursorSnapshot): void {
    if (previous && previous.epoch === next.epoch && compareIds(next.messageId, previous.messageId) <= 0) return;
    this.#cursors.set(key, next);
  }

  /** The browser went offline: end the stream now and retry (with backoff). */
  readonly #offline = (): void => {
    if (!this.#running || !this.#active) return; // already waiting to retry
    for (const s of [this.#active, this.#next]) if (s) this.#retire(s);
    this.#active = this.#next = undefined;
    this.#failed({ code: Code.Unavailable, codeName: "UNAVAILABLE", message: "the browser went offline" });
  };

  /** The browser is online again: a pending retry happens now. */
  readonly #online = (): void => {
    if (!this.#running || this.#retryTimer === undefined) return;
    clearTimeout(this.#retryTimer);
    void this.#open();
  };

  #retire(stream: Stream): void {
    stream.retired = true;
    stream.abort.abort();
  }

  #shutdown(): void {
    this.#running = false;
    this.#run++;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#refreshTimer);
    this.#retryTimer = this.#refreshTimer = undefined;
    for (const s of [this.#active, this.#next]) if (s) this.#retire(s);
    this.#active = this.#next = undefined;
    browserEvents?.removeEventListener("offline", this.#offline);
    browserEvents?.removeEventListener("online", this.#online);
  }

  #halt(status: Status, resync?: HistoryRef): void {
    this.#shutdown();
    this.emit("stopped", resync ? { status, resync } : { status });
  }
}
