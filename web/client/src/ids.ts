// Message ids and epochs, compared as numbers.

/** The position before every message of a history. */
export const NO_MESSAGE = "0-0";

function parseId(id: string): [bigint, bigint] {
  const m = /^(\d+)-(\d+)$/.exec(id);
  if (!m) return [0n, 0n];
  return [BigInt(m[1]!), BigInt(m[2]!)];
}

/**
 * Compares two message ids `<ms>-<seq>` numerically (not as strings: "10-0" comes
 * after "9-0"): negative when `a` is before `b`, 0 when equal, positive after. An id
 * that is not of that form counts as "0-0".
 */
export function compareIds(a: string, b: string): number {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

/** Compares two epochs (decimal numbers made from Redis's clock) numerically. */
export function compareEpochs(a: string, b: string): number {
  const an = /^\d+$/.test(a) ? BigInt(a) : 0n;
  const bn = /^\d+$/.test(b) ? BigInt(b) : 0n;
  return an < bn ? -1 : an > bn ? 1 : 0;
}
