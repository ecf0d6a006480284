// Records what a PushClient emits, for assertions.
import type { Message, PushClient, PushClientEvents } from "@push/client";
import { eventually } from "./wait.js";

/** One event, as emitted. */
export type Recorded = { [K in keyof PushClientEvents]: { kind: K; event: PushClientEvents[K] } }[keyof PushClientEvents];

/** Every event of a client, in order. */
export class Recorder {
  readonly events: Recorded[] = [];

  constructor(readonly client: PushClient) {
    for (const kind of ["connected", "message", "gap", "left", "disconnected", "stopped"] as const) {
      client.on(kind, (event) => this.events.push({ kind, event } as Recorded));
    }
  }

  /** The messages received, in order. */
  get messages(): Message[] {
    return this.events.flatMap((e) => (e.kind === "message" ? [e.event] : []));
  }

  /** The payloads received, as text, in order. */
  get texts(): string[] {
    return this.messages.map((m) => new TextDecoder().decode(m.payload));
  }

  /** The events of one kind. */
  of<K extends keyof PushClientEvents>(kind: K): PushClientEvents[K][] {
    return this.events.flatMap((e) => (e.kind === kind ? [e.event as PushClientEvents[K]] : []));
  }

  /** Waits for the `n`th event of `kind` (1 = the first) and returns it. */
  async nth<K extends keyof PushClientEvents>(kind: K, n = 1, timeoutMs = 20_000): Promise<PushClientEvents[K]> {
    return eventually(`${kind} #${n}`, () => this.of(kind)[n - 1], timeoutMs);
  }

  /** Waits until a message with text `text` arrived. */
  async text(text: string, timeoutMs = 20_000): Promise<void> {
    await eventually(`message ${JSON.stringify(text)}`, () => this.texts.includes(text), timeoutMs);
  }
}
