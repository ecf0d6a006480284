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
 * Whether a stream that ended with `code` stops the client for good: ABORTED (a newer
 * stream of the device replaced it), PERMISSION_DENIED (e.g. a ban by Disconnect),
 * INVALID_ARGUMENT, and FAILED_PRECONDITION under `strictResume` (a strict resume the
 * gateway could not honour). UNAUTHENTICATED stops it only when the token was fetched
 * after a previous UNAUTHENTICATED (the client decides that, not the code alone).
 */
export function isStop(code: number, strictResume = false): boolean {
  switch (code) {
    case Code.Aborted:
    case Code.PermissionDenied:
    case Code.InvalidArgument:
      return true;
    case Code.FailedPrecondition:
      return strictResume;
    default:
      return false;
  }
}

/**
 * Whether a stream that ended with `code` is opened again: every status but those of
 * `isStop`. UNAUTHENTICATED is retried at once with a fresh token; the others after a
 * backoff: the stream ended cleanly, UNAVAILABLE (a replica down or draining),
 * RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN (network errors), DEADLINE_EXCEEDED, CANCELLED
 * (by something else), and also UNIMPLEMENTED (e.g. an ingress answering 404 during a
 * deploy), NOT_FOUND, DATA_LOSS, OUT_OF_RANGE, ALREADY_EXISTS, FAILED_PRECONDITION
 * without strict resume.
 */
export function isRetryable(code: number, strictResume = false): boolean {
  return !isStop(code, strictResume);
}

/** The encoded details of type `type` ("google.rpc.X") an error carries. */
function details(err: unknown, type: string): Uint8Array[] {
  return ConnectError.from(err).details.flatMap((d) =>
    "type" in d && d.type === type && d.value instanceof Uint8Array ? [d.value] : [],
  );
}

/**
 * The history a FAILED_PRECONDITION of a strict resume names: its
 * google.rpc.PreconditionFailure violation of type "CURSOR", whose subject is "inbox",
 * "all" or "group:<id>". Read from the wire (the detail's proto is not the contract's).
 */
export function resyncHistory(err: unknown): HistoryRef | undefined {
  if (ConnectError.from(err).code !== Code.FailedPrecondition) return undefined;
  for (const value of details(err, "google.rpc.PreconditionFailure")) {
    // Violation { string type = 1; string subject = 2; ... }
    for (const [type, subject] of pairs(value)) {
      if (type !== "CURSOR") continue;
      if (subject === "inbox") return { audience: "user", groupId: "" };
      if (subject === "all") return { audience: "all", groupId: "" };
      if (subject.startsWith("group:")) return { audience: "group", groupId: subject.slice(6) };
    }
  }
  return undefined;
}

/**
 * The indexes of the request's `cursors` an INVALID_ARGUMENT names in its
 * google.rpc.BadRequest as groups the user is not in (field "cursors[3].group_id"): an
 * Ack's cursors for groups the user left. Violations of other fields are not refusals
 * of a group.
 */
export function refusedCursors(err: unknown): number[] {
  if (ConnectError.from(err).code !== Code.InvalidArgument) return [];
  const out = new Set<number>();
  for (const value of details(err, "google.rpc.BadRequest")) {
    // FieldViolation { string field = 1; string description = 2; }
    for (const [field] of pairs(value)) {
      const m = /^cursors\[(\d+)\]\.group_id$/.exec(field);
      if (m) out.add(Number(m[1]));
    }
  }
  return [...out].sort((a, b) => a - b);
}

/**
 * The first two string fields of each item of field 1 (a repeated message) of an
 * encoded message: (type, subject) of a PreconditionFailure's violations, (field,
 * description) of a BadRequest's. Nothing when the bytes are not such a message.
 */
function pairs(bytes: Uint8Array): [string, string][] {
  const out: [string, string][] = [];
  try {
    const r = new BinaryReader(bytes);
    while (r.pos < r.len) {
      const [field, wire] = r.tag();
      if (field !== 1 || wire !== WireType.LengthDelimited) {
        r.skip(wire);
        continue;
      }
      const v = new BinaryReader(r.bytes());
      const item: [string, string] = ["", ""];
      while (v.pos < v.len) {
        const [f, w] = v.tag();
        if ((f === 1 || f === 2) && w === WireType.LengthDelimited) item[f - 1] = v.string();
        else v.skip(w);
      }
      out.push(item);
    }
  } catch {
    return [];
  }
  return out;
}
