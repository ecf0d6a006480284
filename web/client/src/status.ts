// How a stream or call ended, in gRPC's terms.
import { Code, ConnectError } from "@connectrpc/connect";

/** How a stream or a call ended: a gRPC status code and its message. */
export interface Status {
  /** The gRPC status code (0 = OK: the stream ended cleanly). */
  code: number;
  /** Its name as gRPC spells it, e.g. "UNAVAILABLE". */
  codeName: string;
  /** The server's (or the transport's) message. */
  message: string;
}

const NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** The gRPC name of a status code, e.g. 14 → "UNAVAILABLE". */
export function codeName(code: number): string {
  return NAMES[code] ?? `CODE_${code}`;
}

/** A status from anything a call threw (a ConnectError, a network error, ...). */
export function statusOf(err: unknown): Status {
  const e = ConnectError.from(err);
  return { code: e.code, codeName: codeName(e.code), message: e.rawMessage };
}

/** The status of a stream that ended without an error. */
export const ENDED: Status = { code: 0, codeName: "OK", message: "the stream ended" };

/**
 * Whether a stream that ended with `code` is worth opening again (after a backoff):
 * the replica is unavailable or draining, overloaded or cut off a slow reader,
 * failed internally, the network failed, or the stream ended cleanly.
 */
export function isRetryable(code: number): boolean {
  switch (code) {
    case 0:
    case Code.Canceled: // not by us: a proxy or the network ended the request
    case Code.Unknown:
    case Code.DeadlineExceeded:
    case Code.ResourceExhausted:
    case Code.Internal:
    case Code.Unavailable:
      return true;
    default:
      return false;
  }
}
