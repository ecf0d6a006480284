// PushClient: one device's stream, kept open, resumed without gaps or duplicates.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
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
import { compareIds, NO_MESSAGE, parseMessageId, sameId } from "./ids.js";
import { ENDED, isStop, refusedCursors, resyncHistory, statusOf, type Status } from "./status.js";
import { Timer, withDeadline } from "./timer.js";
import { refreshAfter, tokenLifetime } from "./token.js";

/** Reconnection delays: exponential with full jitter. */
export interface BackoffOptions {
  /** The first retry waits up to this long (default 500 ms). */
  initialMs?: number;
  /**
   * No retry waits longer (default 30 s). The delays start again from `initialMs` only
   * once a stream stayed open at least this long.
   */
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
   * called at start, before a token's end (10% of its lifetime before, at least 5 s
   * before), and after the gateway answers UNAUTHENTICATED. Each call must return a
   * new token: one that comes back unchanged, or has already expired, is not used (the
   * client backs off and asks again).
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
   * How long `getToken` may take (default 30 s). Past it the attempt counts as failed
   * (UNAVAILABLE): the client backs off and asks again.
   */
  tokenTimeoutMs?: number;
  /**
   * How long a Subscribe may take to answer (default 15 s). Past it the stream is
   * dropped as UNAVAILABLE and opened again after a backoff.
   */
  openTimeoutMs?: number;
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
  /**
   * Why it ended (code 0: it ended cleanly, e.g. the replica closed it). UNAVAILABLE
   * too when no stream could be opened: getToken failed or did not answer in time, it
   * returned a token that had expired or the same token again, or Subscribe did not
   * answer in time.
   */
  status: Status;
  /** Milliseconds until the next attempt. */
  retryIn: number;
}

/** The client stopped for good: `stop()` was called (no status) or a status it must not retry. */
export interface StoppedEvent {
  /**
   * Why: ABORTED (a newer stream of this device replaced it), PERMISSION_DENIED (e.g.
   * banned by Disconnect), INVALID_ARGUMENT, FAILED_PRECONDITION (strictResume: resync
   * the history it names), UNAUTHENTICATED again with a token fetched after an
   * UNAUTHENTICATED. Undefined after `stop()`.
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

/** A token is refreshed no sooner than this after it was received (a token too short-lived to refresh in time is not refreshed in a loop). */
const MIN_REFRESH_DELAY_MS = 1000;

interface Token {
  value: string;
  /** When it was received (performance.now()). */
  receivedAt: number;
  /** How long it lives from then (ms); undefined for a credential without `exp`. */
  lifetime?: number;
  /** Fetched because the gateway answered UNAUTHENTICATED: if it is refused too, the client stops. */
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
  /**
   * Until the first answer (past it the stream counts as UNAVAILABLE), and for a
   * refresh's stream until it is trusted (past it, it is dropped).
   */
  opening: Timer;
  /**
   * A refresh's stream while it is judged against the client's positions: the
   * histories it has yet to report. Undefined once it is trusted (or for a stream
   * opened to reconnect).
   */
  pending?: Set<string>;
  /** Histories this judged stream reported as continuing seamlessly: its messages of them count. */
  judged: Set<string>;
  /** It took over while judged, from the stream that ended with this status. */
  tookOver?: { status: Status; token: Token };
}

type Verdict = "apply" | "hold" | "reject";

/** UNAVAILABLE, for what the client itself gives up on. */
function unavailable(message: string): Status {
  return { code: Code.Unavailable, codeName: "UNAVAILABLE", message };
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
  /** Per history, the position of the last message handed to the app: what `ack()` acknowledges. */
  readonly #delivered = new Map<string, CursorSnapshot>();
  readonly #acked = new Map<string, CursorSnapshot>();
  /** Histories left during this run: late messages of them are dropped. */
  readonly #left = new Set<string>();
  /** Histories whose acks the gateway refused (a group left while connected): not sent again. */
  readonly #ackRefused = new Set<string>();
  /** Per history, the last gap told: the same gap (epoch and point) reported again is not told twice. */
  readonly #lastGap = new Map<string, { epoch: string; messageId: string }>();
  #running = false;
  /** Bumped by stop(): continuations of an earlier run see it and do nothing. */
  #run = 0;
  #active?: Stream;
  /** A stream opened with a refreshed token, judged while the current one goes on; it replaces #active once trusted. */
  #next?: Stream;
  #token?: Token;
  /** The token the gateway answered UNAUTHENTICATED to: the next stream needs another. */
  #refused?: string;
  #attempt = 0;
  #refreshAttempt = 0;
  /** Since when (performance.now()) a stream has been answering: the backoff starts over after maxMs of it. */
  #upSince?: number;
  readonly #retryTimer = new Timer();
  readonly #refreshTimer = new Timer();
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
    this.#refreshAttempt = 0;
    this.#upSince = undefined;
    this.#left.clear();
    if (this.#opts.watchNetwork !== false && browserEvents) {
      browserEvents.addEventListener("offline", this.#offline);
      browserEvents.addEventListener("online", this.#online);
    }
    void this.#open();
  }

  /** Closes the stream for good; `stopped` follows (without a status). Delivery ends at once, even inside a listener. */
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
   * Throws a TypeError on a malformed cursor.
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
   * Acknowledges what the device has processed (push.v1 Ack). By default, per history,
   * the position of the last message handed to the app in a `message` event (its epoch
   * and id); never a position the client knows only from the gateway's states
   * (FROM_NOW, RESUMED, GAP, a group joined), nor `options.cursors` or `setCursor`. Or
   * the given positions. A position is sent only if it is after the last one
   * acknowledged for its history (acks never go backwards), and never for a group the
   * user left. The gateway refuses a group left while the stream was open: each
   * refused cursor is left out, for good, and the call made again with the others.
   * Resolves to the positions acknowledged (none: nothing new). Rejects with the
   * gateway's error (a ConnectError).
   */
  ack(positions?: CursorSnapshot[]): Promise<CursorSnapshot[]> {
    const run = async (): Promise<CursorSnapshot[]> => {
      let send = (positions ? positions.map(checkSnapshot) : [...this.#delivered.values()])
        .filter((c) => c.epoch !== "" && !sameId(c.messageId, NO_MESSAGE))
        .filter((c) => !this.#left.has(historyKey(c)) && !this.#ackRefused.has(historyKey(c)))
        .filter((c) => {
          const prev = this.#acked.get(historyKey(c));
          return !prev || isAfter(c, prev);
        })
        .map((c) => ({ ...c }));
      while (send.length > 0) {
        const request = create(AckRequestSchema, {
          userId: this.#opts.userId ?? "",
          deviceId: this.#opts.deviceId,
          cursors: send.map(toCursor),
        });
        try {
          await this.#unary((headers) => this.#rpc.ack(request, { headers }));
          break;
        } catch (err) {
          // A group the user left while this stream was open: the gateway tells an open
          // stream nothing (the next resume brings `left`) and refuses acks for it, naming
          // one cursor at a time. Leave each out, for good, and acknowledge the others.
          const refused = refusedCursors(err).filter((i) => i < send.length);
          if (refused.length === 0) throw err;
          for (const i of refused) this.#ackRefused.add(historyKey(send[i]!));
          send = send.filter((_, i) => !refused.includes(i));
        }
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
    let token = this.#token;
    if (!token || this.#expired(token)) token = this.#keep(await this.#fetchToken());
    try {
      return await call({ authorization: `Bearer ${token.value}` });
    } catch (err) {
      if (statusOf(err).code !== Code.Unauthenticated) throw err;
      const fresh = this.#keep(await this.#fetchToken());
      return call({ authorization: `Bearer ${fresh.value}` });
    }
  }

  /** Holds a token fetched for a call, when it is usable, for the streams too. */
  #keep(token: Token): Token {
    if (!this.#unusable(token) && (!this.#token || this.#expired(this.#token))) this.#token = token;
    return token;
  }

  /** Asks getToken, within its deadline. */
  async #fetchToken(): Promise<Token> {
    const ms = this.#opts.tokenTimeoutMs ?? 30_000;
    const value = await withDeadline(
      this.#opts.getToken(),
      ms,
      () => new ConnectError(`getToken did not answer within ${ms} ms`, Code.Unavailable),
    );
    return { value, receivedAt: performance.now(), lifetime: tokenLifetime(value), afterUnauthenticated: false };
  }

  /** Why a token just fetched cannot be used instead of `replaced` (undefined: it can). */
  #unusable(token: Token, replaced?: string): string | undefined {
    if (token.lifetime === undefined) return undefined; // a credential without exp (an API key) is used as it is
    if (token.lifetime <= 0) return "getToken returned a token that has already expired";
    if (token.value === replaced) return "getToken returned the same token again";
    return undefined;
  }

  /** When (performance.now()) to refresh `token`; undefined: never. */
  #refreshTime(token: Token): number | undefined {
    if (token.lifetime === undefined) return undefined;
    return token.receivedAt + Math.max(refreshAfter(token.lifetime), MIN_REFRESH_DELAY_MS);
  }

  #due(token: Token): boolean {
    return performance.now() >= (this.#refreshTime(token) ?? Infinity);
  }

  #expired(token: Token): boolean {
    return token.lifetime !== undefined && performance.now() - token.receivedAt >= token.lifetime;
  }

  async #open(): Promise<void> {
    this.#retryTimer.clear();
    const run = this.#run;
    let token = this.#token;
    if (!token || this.#refused !== undefined || this.#due(token)) {
      let fresh: Token;
      try {
        fresh = await this.#fetchToken();
      } catch (err) {
        if (run !== this.#run) return;
        // Whatever getToken threw (or its deadline), it is retried with backoff (stop() ends it).
        const message = `getToken failed: ${err instanceof ConnectError ? err.rawMessage : err instanceof Error ? err.message : String(err)}`;
        this.#failed(unavailable(message));
        return;
      }
      if (run !== this.#run) return;
      const problem = this.#unusable(fresh, this.#refused ?? token?.value);
      if (problem) {
        this.#failed(unavailable(problem));
        return;
      }
      fresh.afterUnauthenticated = this.#refused !== undefined;
      this.#refused = undefined;
      this.#token = token = fresh;
    }
    this.#active = this.#subscribe(token, true);
  }

  #subscribe(token: Token, announce: boolean): Stream {
    const cursors = this.cursors();
    const stream: Stream = {
      abort: new AbortController(),
      token,
      connected: false,
      retired: false,
      announce,
      opening: new Timer(),
      // A refresh's stream must report every history the client holds before it is trusted.
      pending: announce ? undefined : new Set(cursors.map(historyKey)),
      judged: new Set(),
    };
    const request = create(SubscribeRequestSchema, {
      userId: this.#opts.userId ?? "",
      deviceId: this.#opts.deviceId,
      cursors: cursors.map(toCursor),
      strictResume: this.#opts.strictResume ?? false,
    });
    const openMs = this.#opts.openTimeoutMs ?? 15_000;
    stream.opening.after(openMs, () => {
      if (stream.retired) return;
      if (stream.connected) {
        if (stream.pending) this.#reject(stream); // it did not state every history in time
        return;
      }
      this.#retire(stream);
      this.#ended(stream, unavailable(`Subscribe did not answer within ${openMs} ms`));
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
            this.#opened(stream, cursors);
            if (stream.retired) return; // a listener stopped the client
          }
          this.#receive(stream, response);
        }
      } catch (err) {
        status = statusOf(err);
        resync = resyncHistory(err);
      }
      if (stream.retired) return;
      stream.retired = true;
      stream.opening.clear();
      this.#ended(stream, status, resync);
    })();
    return stream;
  }

  #opened(stream: Stream, cursors: CursorSnapshot[]): void {
    stream.connected = true;
    if (!stream.pending) stream.opening.clear();
    if (stream !== this.#active) return; // a refresh's stream: judged as it reports
    this.#upSince ??= performance.now();
    if (!stream.pending) this.#scheduleRefresh(stream.token);
    if (stream.announce) this.emit("connected", { cursors });
  }

  #ended(stream: Stream, status: Status, resync?: HistoryRef): void {
    if (!this.#running) return;
    stream.opening.clear();
    if (stream === this.#next) {
      // The refreshed stream failed, whatever the status: the current one goes on. Try again later.
      this.#next = undefined;
      this.#retryRefresh();
      return;
    }
    if (stream !== this.#active) return;
    this.#active = undefined;
    const next = this.#next;
    if (next) {
      this.#next = undefined;
      if (isStop(status.code, this.#opts.strictResume)) {
        this.#halt(status, resync);
        return;
      }
      // The current stream ended while its replacement was being judged: the replacement
      // carries on, still judged; if it cannot continue seamlessly, this end counts.
      this.#active = next;
      next.tookOver = { status, token: stream.token };
      return;
    }
    if (status.code === Code.Unauthenticated && stream.token.afterUnauthenticated) {
      this.#halt(status);
      return;
    }
    this.#failed(status, resync, stream.token);
  }

  /** After a failed stream (or getToken): retry, or stop. */
  #failed(status: Status, resync?: HistoryRef, token?: Token): void {
    const max = this.#opts.backoff?.maxMs ?? 30_000;
    if (this.#upSince !== undefined) {
      // The delays start over only after a stream stayed up at least the longest delay.
      if (performance.now() - this.#upSince >= max) this.#attempt = 0;
      this.#upSince = undefined;
    }
    if (status.code === Code.Unauthenticated) {
      // Expired, or logged out by the backend: a fresh token, at once.
      this.#refused = (token ?? this.#token)?.value ?? "";
      this.#retryIn(status, 0);
      return;
    }
    if (isStop(status.code, this.#opts.strictResume)) {
      this.#halt(status, resync);
      return;
    }
    const initial = this.#opts.backoff?.initialMs ?? 500;
    const ceiling = Math.min(max, initial * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    this.#retryIn(status, Math.floor(Math.random() * ceiling));
  }

  #retryIn(status: Status, delay: number): void {
    this.#refreshTimer.clear();
    const run = this.#run;
    this.emit("disconnected", { status, retryIn: delay });
    if (run !== this.#run || !this.#running) return; // a listener stopped (and maybe restarted) the client
    this.#retryTimer.after(delay, () => void this.#open());
  }

  #scheduleRefresh(token: Token): void {
    this.#refreshTimer.clear();
    const at = this.#refreshTime(token);
    if (at !== undefined) this.#refreshTimer.at(at, () => void this.#refresh());
  }

  /** A refresh's stream failed or could not continue seamlessly: again in 1 to 5 s. */
  #retryRefresh(): void {
    this.#refreshTimer.after(1000 + Math.random() * 4000, () => void this.#refresh());
  }

  /** getToken gave nothing new: ask again after an exponential, jittered delay. */
  #backoffRefresh(): void {
    const initial = this.#opts.backoff?.initialMs ?? 500;
    const max = this.#opts.backoff?.maxMs ?? 30_000;
    const ceiling = Math.min(max, initial * 2 ** this.#refreshAttempt);
    this.#refreshAttempt = Math.min(this.#refreshAttempt + 1, 30);
    this.#refreshTimer.after(Math.random() * ceiling, () => void this.#refresh());
  }

  /** Gets a fresh token and opens a stream with it beside the current one. */
  async #refresh(): Promise<void> {
    const run = this.#run;
    const current = this.#active;
    if (!current?.connected || current.pending || this.#next) return;
    let token: Token;
    try {
      token = await this.#fetchToken();
    } catch {
      if (run === this.#run && this.#running && this.#active === current) this.#retryRefresh();
      return;
    }
    // The stream changed meanwhile (a reconnect takes a token of its own).
    if (run !== this.#run || !this.#running || this.#active !== current || this.#next) return;
    if (this.#unusable(token, current.token.value)) {
      this.#backoffRefresh();
      return;
    }
    this.#token = token;
    this.#next = this.#subscribe(token, false);
  }

  #receive(stream: Stream, response: SubscribeResponse): void {
    const run = this.#run;
    const live = () => run === this.#run && !stream.retired;
    for (const state of response.states) {
      const c = state.cursor;
      const audience = c && audienceName(c.audience);
      if (!c || !audience || (audience === "group" && !c.groupId)) continue;
      const ref: HistoryRef = { audience, groupId: audience === "group" ? c.groupId : "" };
      const key = historyKey(ref);
      // An id that does not parse (never sent) replays the epoch: duplicates over losses.
      const at = parseMessageId(c.messageId) ? c.messageId : NO_MESSAGE;
      if (stream.pending) {
        const verdict = this.#judge(stream, key, c.epoch, at, state.continuity);
        if (verdict === "reject") {
          this.#reject(stream);
          return;
        }
        if (verdict === "hold") continue;
      }
      this.#applyState(ref, key, c.epoch, at, state.continuity);
      if (!live()) return; // a listener stopped the client
    }
    if (stream.pending?.size === 0) this.#trust(stream);
    for (const message of response.messages) {
      const audience = audienceName(message.audience);
      if (!audience) continue;
      const ref: HistoryRef = { audience, groupId: audience === "group" ? message.groupId : "" };
      const key = historyKey(ref);
      if (stream.pending && !stream.judged.has(key)) continue; // never before its state
      if (this.#left.has(key)) continue;
      const cursor = this.#cursors.get(key);
      if (parseMessageId(message.id)) {
        if (cursor && compareIds(message.id, cursor.messageId) <= 0) continue; // a duplicate
        const position = { ...ref, epoch: cursor?.epoch ?? "", messageId: message.id };
        this.#cursors.set(key, position);
        if (position.epoch !== "") this.#delivered.set(key, { ...position });
      }
      // A message whose id does not parse (never sent) is delivered, and not tracked.
      this.emit("message", message);
      if (!live()) return;
    }
  }

  /**
   * Judges a state of a refresh's stream against where the client is now (the current
   * stream went on while it opened): "hold" when it continues from at or before the
   * client's position in the same epoch (its replay up to there is dropped as
   * duplicates); "apply" for a history the client holds no position in, or a group left;
   * "reject" for a gap, another epoch, or a position ahead of the client's.
   */
  #judge(stream: Stream, key: string, epoch: string, at: string, continuity: Continuity): Verdict {
    const pending = stream.pending!;
    const held = this.#cursors.get(key);
    if (continuity === Continuity.LEFT) {
      pending.delete(key);
      return held || !this.#left.has(key) ? "apply" : "hold"; // told already otherwise
    }
    if (continuity !== Continuity.RESUMED && continuity !== Continuity.FROM_NOW) return "reject";
    if (!held || held.epoch === "") {
      pending.delete(key);
      stream.judged.add(key);
      return "apply";
    }
    if (held.epoch !== epoch || !(compareIds(at, held.messageId) <= 0)) return "reject";
    pending.delete(key);
    stream.judged.add(key);
    return "hold";
  }

  /** A refresh's stream reported every history seamlessly: it becomes the stream. */
  #trust(stream: Stream): void {
    stream.pending = undefined;
    stream.judged.clear();
    stream.tookOver = undefined;
    stream.opening.clear();
    if (stream === this.#next) {
      const old = this.#active;
      this.#active = stream;
      this.#next = undefined;
      if (old) this.#retire(old);
    }
    if (stream !== this.#active) return;
    this.#refreshAttempt = 0;
    this.#scheduleRefresh(stream.token);
  }

  /** A refresh's stream cannot continue from where the client is: drop it, not the current one. */
  #reject(stream: Stream): void {
    const tookOver = stream.tookOver;
    this.#retire(stream);
    if (stream === this.#next) {
      this.#next = undefined;
      this.#retryRefresh();
    } else if (stream === this.#active) {
      // The stream it replaced has ended: that end counts, as without a refresh.
      this.#active = undefined;
      this.#failed(tookOver?.status ?? unavailable("the refreshed stream could not continue"), undefined, tookOver?.token);
    }
  }

  /** Takes a state: a gap moves the position to the gateway's point; otherwise it never moves back within an epoch. */
  #applyState(ref: HistoryRef, key: string, epoch: string, at: string, continuity: Continuity): void {
    const previous = this.#cursors.get(key);
    if (continuity === Continuity.LEFT) {
      this.#cursors.delete(key);
      this.#delivered.delete(key);
      this.#acked.delete(key);
      this.#lastGap.delete(key);
      this.#left.add(key);
      this.emit("left", { ...ref, previous: previous && { ...previous } });
      return;
    }
    this.#left.delete(key);
    this.#ackRefused.delete(key);
    const next: CursorSnapshot = { ...ref, epoch, messageId: at };
    if (continuity === Continuity.RESUMED || continuity === Continuity.FROM_NOW) {
      // The same epoch (the same string): never back. Another epoch replaces it.
      if (previous && previous.epoch === epoch && compareIds(at, previous.messageId) <= 0) return;
      this.#cursors.set(key, next);
      return;
    }
    // A gap, or a continuity this client does not know (a needless resync is better than
    // a missed message): the gateway's point holds, even behind ours.
    this.#cursors.set(key, next);
    const last = this.#lastGap.get(key);
    if (last && last.epoch === epoch && sameId(last.messageId, at)) return; // this very gap was told
    this.#lastGap.set(key, { epoch, messageId: at });
    this.emit("gap", { ...ref, epoch, messageId: at, previous: previous && { ...previous } });
  }

  /** The browser went offline: end the stream now and retry (with backoff). */
  readonly #offline = (): void => {
    if (!this.#running || !this.#active) return; // already waiting to retry
    for (const s of [this.#active, this.#next]) if (s) this.#retire(s);
    this.#active = this.#next = undefined;
    this.#failed(unavailable("the browser went offline"));
  };

  /** The browser is online again: a pending retry happens now. */
  readonly #online = (): void => {
    if (!this.#running || !this.#retryTimer.pending) return;
    this.#retryTimer.clear();
    void this.#open();
  };

  #retire(stream: Stream): void {
    stream.retired = true;
    stream.opening.clear();
    stream.abort.abort();
  }

  #shutdown(): void {
    this.#running = false;
    this.#run++;
    this.#retryTimer.clear();
    this.#refreshTimer.clear();
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
