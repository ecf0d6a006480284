// How a stream or call ended, in gRPC's terms.
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import type { HistoryRef } from "./cursors.js";

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

/**
 * The history a FAILED_PRECONDITION of a strict resume names: its
 * google.rpc.PreconditionFailure violation of type "CURSOR", whose subject is "inbox",
 * "all" or "group:<id>". Read from the wire (the detail's proto is not the contract's).
 */
export function resyncHistory(err: unknown): HistoryRef | undefined {
  const e = ConnectError.from(err);
  if (e.code !== Code.FailedPrecondition) return undefined;
  for (const d of e.details) {
    if (!("type" in d) || d.type !== "google.rpc.PreconditionFailure" || !(d.value instanceof Uint8Array)) continue;
    try {
      for (const v of violations(d.value)) {
        if (v.type !== "CURSOR") continue;
        if (v.subject === "inbox") return { audience: "user", groupId: "" };
        if (v.subject === "all") return { audience: "all", groupId: "" };
        if (v.subject.startsWith("group:")) return { audience: "group", groupId: v.subject.slice(6) };
      }
    } catch {
      // not a PreconditionFailure after all
    }
  }
  return undefined;
}

/** The violations (type, subject) of an encoded google.rpc.PreconditionFailure. */
function violations(bytes: Uint8Array): { type: string; subject: string }[] {
  const out: { type: string; subject: string }[] = [];
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field !== 1 || wire !== WireType.LengthDelimited) {
      r.skip(wire);
      continue;
    }
    const v = new BinaryReader(r.bytes());
    const violation = { type: "", subject: "" };
    while (v.pos < v.len) {
      const [f, w] = v.tag();
      if (f === 1 && w === WireType.LengthDelimited) violation.type = v.string();
      else if (f === 2 && w === WireType.LengthDelimited) violation.subject = v.string();
      else v.skip(w);
    }
    out.push(violation);
  }
  return out;
}
