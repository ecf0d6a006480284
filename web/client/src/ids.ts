// Message ids (compared as numbers) and epochs (compared as strings).

/** The position before every message of a history. */
export const NO_MESSAGE = "0-0";

/** A message id's two numbers. */
export interface MessageIdParts {
  ms: bigint;
  seq: bigint;
}

const U64_MAX = 2n ** 64n - 1n;

/**
 * Reads a message id `<ms>-<seq>` (or `<ms>`, as Redis reads it: `"5"` is `"5-0"`), two
 * unsigned 64-bit decimal numbers. `undefined` when it is not one.
 */
export function parseMessageId(id: string): MessageIdParts | undefined {
  const m = /^(\d+)(?:-(\d+))?$/.exec(id);
  if (!m) return undefined;
  const ms = BigInt(m[1]!);
  const seq = BigInt(m[2] ?? "0");
  if (ms > U64_MAX || seq > U64_MAX) return undefined;
  return { ms, seq };
}

/** `<ms>-<seq>`, the form the gateway expects. */
export function formatMessageId(id: MessageIdParts): string {
  return `${id.ms}-${id.seq}`;
}

function compareParts(a: MessageIdParts, b: MessageIdParts): number {
  if (a.ms !== b.ms) return a.ms < b.ms ? -1 : 1;
  if (a.seq !== b.seq) return a.seq < b.seq ? -1 : 1;
  return 0;
}

/**
 * Compares two message ids numerically (not as strings: "10-0" comes after "9-0", and
 * "5" equals "5-0"): negative when `a` is before `b`, 0 when equal, positive after.
 * NaN when either is not a message id: such ids cannot be ordered (every comparison
 * of NaN with a number is false).
 */
export function compareIds(a: string, b: string): number {
  const pa = parseMessageId(a);
  const pb = parseMessageId(b);
  if (!pa || !pb) return NaN;
  return compareParts(pa, pb);
}

/** Whether two ids name the same position ("5" and "5-0" do; two equal malformed strings do too). */
export function sameId(a: string, b: string): boolean {
  return a === b || compareIds(a, b) === 0;
}

const DECIMAL = /^\d+$/;

/**
 * Compares two epochs. Epochs are the same only when they are the same string; two
 * different ones are different epochs. 0 when the same; when both are decimal numbers
 * (the gateway makes them from Redis's clock), negative or positive as their values
 * are; NaN when they cannot be ordered (not both numbers, or equal numbers spelt
 * differently).
 */
export function compareEpochs(a: string, b: string): number {
  if (a === b) return 0;
  if (!DECIMAL.test(a) || !DECIMAL.test(b)) return NaN;
  const an = BigInt(a);
  const bn = BigInt(b);
  return an < bn ? -1 : an > bn ? 1 : NaN;
}
