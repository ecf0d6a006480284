// A scripted PushGateway in the test process (connect's router transport): each
// Subscribe is a FakeCall the test answers state by state, message by message, or
// ends with a status. For what the real services cannot be made to do on cue (an epoch
// changing while a token refresh opens its stream, two gaps in a row, a malformed id);
// everything else is tested against the real services.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport, type Transport } from "@connectrpc/connect";
import { Audience, Continuity, type AckRequest, type SubscribeRequest } from "@push/client/gen";
import {
  AckResponseSchema,
  HistoryStateSchema,
  MessageSchema,
  PushGateway,
  SubscribeResponseSchema,
  type HistoryState,
  type Message,
} from "@push/client/gen";
import { eventually } from "./wait.js";

/** A history as the tests name it: "user" (the inbox), "all", or a group id. */
export type H = "user" | "all" | `g:${string}`;

function parts(h: H): { audience: Audience; groupId: string } {
  if (h === "user") return { audience: Audience.USER, groupId: "" };
  if (h === "all") return { audience: Audience.ALL, groupId: "" };
  return { audience: Audience.GROUP, groupId: h.slice(2) };
}

/** A HistoryState of history `h`. */
export function state(h: H, epoch: string, messageId: string, continuity: Continuity): HistoryState {
  return create(HistoryStateSchema, { cursor: { ...parts(h), epoch, messageId }, continuity });
}

/** A message of history `h`, its payload `text` (default: its id). */
export function msg(h: H, id: string, text = id): Message {
  return create(MessageSchema, { ...parts(h), id, topic: "t", payload: new TextEncoder().encode(text) });
}

type Item = { states?: HistoryState[]; messages?: Message[] } | { error: ConnectError } | { end: true };

/** One Subscribe, answered by the test. */
export class FakeCall {
  readonly #items: Item[] = [];
  #wake?: () => void;
  #ended = false;

  constructor(
    readonly request: SubscribeRequest,
    /** The credential it came with (without "Bearer "). */
    readonly token: string,
    readonly signal: AbortSignal,
  ) {
    signal.addEventListener("abort", () => this.#wake?.());
  }

  /** Sends one response (states first, then messages). */
  send(states: HistoryState[], messages: Message[] = []): void {
    this.#push({ states, messages });
  }

  /** Ends the stream with a status. */
  fail(code: Code, message = "scripted"): void {
    this.#push({ error: new ConnectError(message, code) });
  }

  /** Ends the stream cleanly. */
  end(): void {
    this.#push({ end: true });
  }

  /** The client closed it. */
  get aborted(): boolean {
    return this.signal.aborted;
  }

  /** Still open: neither closed by the client nor ended by the test. */
  get open(): boolean {
    return !this.signal.aborted && !this.#ended;
  }

  /** The cursors it was opened with, as "h epoch id". */
  get cursors(): string[] {
    return this.request.cursors.map((c) => {
      const h = c.audience === Audience.USER ? "user" : c.audience === Audience.ALL ? "all" : `g:${c.groupId}`;
      return `${h} ${c.epoch} ${c.messageId}`;
    });
  }

  #push(item: Item): void {
    this.#items.push(item);
    this.#wake?.();
  }

  async *serve(): AsyncGenerator<ReturnType<typeof create<typeof SubscribeResponseSchema>>> {
    try {
      for (;;) {
        while (this.#items.length === 0 && !this.signal.aborted) {
          await new Promise<void>((wake) => (this.#wake = wake));
        }
        if (this.signal.aborted) return;
        const item = this.#items.shift()!;
        if ("error" in item) throw item.error;
        if ("end" in item) return;
        yield create(SubscribeResponseSchema, { states: item.states ?? [], messages: item.messages ?? [] });
      }
    } finally {
      this.#ended = true;
    }
  }
}

/** The scripted gateway: its Subscribe calls in order, and the Acks it was sent. */
export class FakeGateway {
  readonly calls: FakeCall[] = [];
  readonly acks: AckRequest[] = [];
  /** Called for each new Subscribe (e.g. to answer it at once). */
  onSubscribe: (call: FakeCall) => void = () => {};
  readonly transport: Transport;

  constructor() {
    this.transport = createRouterTransport(({ service }) =>
      service(PushGateway, {
        subscribe: (req, ctx) => {
          const token = (ctx.requestHeader.get("authorization") ?? "").replace(/^Bearer /, "");
          const call = new FakeCall(req, token, ctx.signal);
          this.calls.push(call);
          this.onSubscribe(call);
          return call.serve();
        },
        ack: (req) => {
          this.acks.push(req);
          return create(AckResponseSchema, {});
        },
      }),
    );
  }

  /** Waits for the `n`th Subscribe (1 = the first). */
  call(n: number, timeoutMs = 20_000): Promise<FakeCall> {
    return eventually(`Subscribe #${n}`, () => this.calls[n - 1], timeoutMs);
  }

  /** The calls still open. */
  get open(): FakeCall[] {
    return this.calls.filter((c) => c.open);
  }

  /** The acks sent, as "h epoch id" per cursor. */
  get acked(): string[][] {
    return this.acks.map((a) =>
      a.cursors.map((c) => {
        const h = c.audience === Audience.USER ? "user" : c.audience === Audience.ALL ? "all" : `g:${c.groupId}`;
        return `${h} ${c.epoch} ${c.messageId}`;
      }),
    );
  }
}

export { Code, Continuity };
